"""Stand-in for the provincial one-stop system (docs/wire/onestop.md).

    from mocks.one_stop import OneStopMock
    mock = OneStopMock(state_dir=None, port=0, seed=49, seed_dossiers=40).start()
    ...
    mock.stop()
"""

from mocks.one_stop.app import DEFAULT_API_KEY, OneStopMock, decode_cursor, encode_cursor
from mocks.one_stop.payments import CALLBACK_OUTCOMES, PAYMENT_STATUSES
from mocks.one_stop.world import DEFECT_KINDS, FINAL_STATUSES, LEGAL_TRANSITIONS, STATUSES

__all__ = [
    "CALLBACK_OUTCOMES",
    "DEFAULT_API_KEY",
    "DEFECT_KINDS",
    "FINAL_STATUSES",
    "LEGAL_TRANSITIONS",
    "PAYMENT_STATUSES",
    "STATUSES",
    "OneStopMock",
    "decode_cursor",
    "encode_cursor",
]
