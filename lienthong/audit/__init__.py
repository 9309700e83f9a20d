"""The sealed exchange log (design §4 invariant 5): the record can't be quietly altered.

:mod:`~lienthong.audit.seal` seals exchange-log records in id order, in batches: one Merkle tree
per batch over each record's leaf hash, its root chained to the previous seal and signed with an
Ed25519 key that lives in a file outside the database. :mod:`~lienthong.audit.verify` recomputes
everything with the public key and names the first record or seal that does not match.
:mod:`~lienthong.audit.personal` commits personal values by salted hashes so that
:mod:`~lienthong.audit.redact` can erase them with the seal intact; :mod:`~lienthong.audit.archive`
moves old sealed batches to verified bundles and prunes them.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each name of this package lives. They are imported when first used, so that a process
#: that only records exchanges (``lienthong.audit.personal``) does not load the archive, bundle,
#: signature and verification code (a fifth of a task process's start-up).
_HOMES = {
    "ArchiveError": "archive", "ArchiveResult": "archive", "archive_exchanges": "archive",
    "Failure": "verify", "VerifyResult": "verify", "verify_exchanges": "verify",
    "RedactionError": "redact", "RedactionResult": "redact", "redact_exchanges": "redact",
    "SealResult": "seal", "seal_exchanges": "seal",
    "generate_keypair": "keys", "key_fingerprint": "keys", "load_private_key": "keys", "load_public_key": "keys",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


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
