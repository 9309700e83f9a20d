"""What is hashed and signed: leaf hashes of exchange-log records, Merkle roots, seal bodies.

Format ``lienthong-seal/1``:

* **leaf** = SHA-256(``0x00`` ‖ canonical JSON of the record) — canonical JSON is sorted keys,
  no spaces, UTF-8 (:func:`lienthong.store.canonical_json`). The record object holds
  ``"v": 1``, every column of ``exchange_log`` by name (times as ISO 8601 UTC with
  microseconds, the JSON header columns as JSON values, floats as JSON numbers), the two
  compressed body blobs replaced by ``{"sha256": <hex of the stored zlib bytes>, "len": n}``
  (so one changed byte of a stored blob changes the leaf; the recorded SHA-256 and size of the
  redacted body are fields of their own), and ``"record_keys"``: its ``exchange_key`` rows,
  sorted.
* **Merkle root** of a batch (records in id order) as RFC 6962: node = SHA-256(``0x01`` ‖ left ‖
  right), the left subtree holding the largest power of two below n leaves.
* **seal body** = canonical JSON of ``{"format", "seq", "first_id", "last_id", "count", "root",
  "prev_hash", "key_fingerprint", "sealed_at"}``; ``seal_hash`` = SHA-256(body) in hex and
  ``signature`` = Ed25519(body) in hex. ``prev_hash`` is the previous seal's ``seal_hash``
  (64 zeros for seal 1). Seal *n* covers every record with ``seals[n-1].last_id < id <= last_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from lienthong.store import canonical_json, exchange_key, exchange_log

__all__ = [
    "FORMAT",
    "GENESIS",
    "LEAF_FIELDS",
    "leaf_hash",
    "load_records",
    "merkle_root",
    "seal_body",
]

FORMAT = "lienthong-seal/1"
GENESIS = "0" * 64
LEAF_VERSION = 1
BLOB_FIELDS = ("request_body", "response_body")
# every column of exchange_log, in table order; a test keeps this list equal to the table's, so a
# new column is a deliberate format decision (a new LEAF_VERSION), never silently unsealed
LEAF_FIELDS = (
    "id", "started_at", "flow", "run_id", "task_id", "peer", "operation", "direction", "method", "url",
    "attempt", "outcome", "peer_code", "http_status", "duration_ms", "record_count", "request_headers",
    "request_body", "request_sha256", "request_size", "response_headers", "response_body", "response_sha256",
    "response_size", "error",
)


def _value(name: str, value: Any) -> Any:
    if name in BLOB_FIELDS:
        blob = bytes(value) if value is not None else None
        return None if blob is None else {"sha256": hashlib.sha256(blob).hexdigest(), "len": len(blob)}
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def leaf_hash(row: Mapping[str, Any], record_keys: Iterable[str]) -> str:
    """The leaf hash (hex) of one exchange-log row and its record keys."""
    record = {name: _value(name, row[name]) for name in LEAF_FIELDS}
    record["v"] = LEAF_VERSION
    record["record_keys"] = sorted(record_keys)
    return hashlib.sha256(b"\x00" + canonical_json(record)).hexdigest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two below n
    return _node(_root(leaves[:split]), _root(leaves[split:]))


def merkle_root(leaves: Sequence[str]) -> str:
    """The RFC 6962 Merkle root (hex) over leaf hashes (hex), in order."""
    if not leaves:
        raise ValueError("a seal covers at least one record")
    return _root([bytes.fromhex(h) for h in leaves]).hex()


def seal_body(seal: Mapping[str, Any]) -> bytes:
    """The signed bytes of a seal (its ``exchange_seal`` row or the values about to become one)."""
    body = {
        "format": FORMAT,
        "seq": seal["seq"],
        "first_id": seal["first_id"],
        "last_id": seal["last_id"],
        "count": seal["count"],
        "root": seal["root"],
        "prev_hash": seal["prev_hash"],
        "key_fingerprint": seal["key_fingerprint"],
        "sealed_at": _value("sealed_at", seal["sealed_at"]),
    }
    return canonical_json(body)


def load_records(conn: Connection, after_id: int, up_to_id: int | None = None,
                 limit: int | None = None) -> list[tuple[int, str]]:
    """``(id, leaf hash)`` of the records with ``after_id < id <= up_to_id``, in id order."""
    query = select(exchange_log).where(exchange_log.c.id > after_id).order_by(exchange_log.c.id)
    if up_to_id is not None:
        query = query.where(exchange_log.c.id <= up_to_id)
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).mappings().all()
    if not rows:
        return []
    keys: dict[int, list[str]] = {}
    key_query = select(exchange_key.c.exchange_id, exchange_key.c.record_key).where(
        exchange_key.c.exchange_id >= rows[0]["id"], exchange_key.c.exchange_id <= rows[-1]["id"])
    for exchange_id, record_key in conn.execute(key_query):
        keys.setdefault(exchange_id, []).append(record_key)
    return [(row["id"], leaf_hash(row, keys.get(row["id"], ()))) for row in rows]
