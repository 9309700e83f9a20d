"""The sealed exchange log (design §4 invariant 5): the record can't be quietly altered.

:mod:`~lienthong.audit.seal` seals exchange-log records in id order, in batches: one Merkle tree
per batch over each record's leaf hash, its root chained to the previous seal and signed with an
Ed25519 key that lives in a file outside the database. :mod:`~lienthong.audit.verify` recomputes
everything with the public key and names the first record or seal that does not match.
:mod:`~lienthong.audit.personal` commits personal values by salted hashes so that
:mod:`~lienthong.audit.redact` can erase them with the seal intact; :mod:`~lienthong.audit.archive`
moves old sealed batches to verified bundles and prunes them.
"""

from lienthong.audit.keys import (
    generate_keypair,
    key_fingerprint,
    load_private_key,
    load_public_key,
)
from lienthong.audit.archive import ArchiveError, ArchiveResult, archive_exchanges
from lienthong.audit.redact import RedactionError, RedactionResult, redact_exchanges
from lienthong.audit.seal import SealResult, seal_exchanges
from lienthong.audit.verify import Failure, VerifyResult, verify_exchanges

__all__ = [
    "ArchiveError",
    "ArchiveResult",
    "Failure",
    "RedactionError",
    "RedactionResult",
    "SealResult",
    "VerifyResult",
    "archive_exchanges",
    "generate_keypair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "redact_exchanges",
    "seal_exchanges",
    "verify_exchanges",
]
