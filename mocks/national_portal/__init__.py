"""Stand-in for the National Public Service Portal's adapter (contract §1–§3, §4.1, §4.2, §4.4, §5, §7–§9).

    from mocks.national_portal import NationalPortalMock
    portal = NationalPortalMock(state_dir=None, port=0, session_ttl=600).start()
    ...
    portal.stop()
"""

from mocks.national_portal.app import DEFAULT_ACCOUNT, FINAL_STATUSES, NationalPortalMock, PortalAccount
from mocks.national_portal.rules import RecordRules, RuleError

__all__ = ["DEFAULT_ACCOUNT", "FINAL_STATUSES", "NationalPortalMock", "PortalAccount", "RecordRules", "RuleError"]
