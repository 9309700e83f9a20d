"""The sealed exchange log (design §4 invariant 5): the record can't be quietly altered.

:mod:`~lienthong.audit.seal` seals exchange-log records in id order, in batches: one Merkle tree
per batch over each record's leaf hash, its root chained to the previous seal and signed with an
Ed25519 key that lives in a file outside the database. :mod:`~lienthong.audit.verify` recomputes
everything with the public key and names the first record or seal that does not match.
"""

from lienthong.audit.keys import (
    generate_keypair,
    key_fingerprint,
    load_private_key,
    load_public_key,
)
from lienthong.audit.seal import SealResult, seal_exchanges
from lienthong.audit.verify import Failure, VerifyResult, verify_exchanges

__all__ = [
    "Failure",
    "SealResult",
    "VerifyResult",
    "generate_keypair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "seal_exchanges",
    "verify_exchanges",
]
