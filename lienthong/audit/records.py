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
* **leaf format 2** (rows with ``leaf_version`` = 2, everything recorded since issue #6 part 2):
  the same object with ``"v": 2`` and every column of ``exchange_log`` (format 1's plus
  ``leaf_version``, ``request_blob_sha256``, ``response_blob_sha256``: a body stored by content
  hash in ``exchange_blob`` leaves an empty compressed body inline and its hash here), plus
  ``"personal"``: the sorted ``[side, path, kind, commitment]`` of the record's
  ``exchange_personal_field`` rows (:mod:`lienthong.audit.personal`). Salts and values are not in
  the leaf, so erasing them (redaction) leaves it unchanged. Rows whose ``leaf_version`` is NULL or
  1 are hashed in format 1 exactly as before (sealed logs of earlier versions still verify); data
  format 1 never covered (a blob reference, personal fields) is then added to the object, so it
  cannot be slipped in unnoticed.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from lienthong.audit.personal import PersonalField
from lienthong.store import canonical_json, exchange_key, exchange_log, exchange_personal_field

__all__ = [
    "FORMAT",
    "GENESIS",
    "LEAF_FIELDS",
    "LEAF_FIELDS_V1",
    "Batch",
    "leaf_hash",
    "load_batch",
    "load_records",
    "merkle_root",
    "seal_body",
]

FORMAT = "lienthong-seal/1"
GENESIS = "0" * 64
LEAF_VERSION = 2  # what BusRecorder writes now
BLOB_FIELDS = ("request_body", "response_body")
# the columns of exchange_log that leaf format 1 covers, in table order
LEAF_FIELDS_V1 = (
    "id", "started_at", "flow", "run_id", "task_id", "peer", "operation", "direction", "method", "url",
    "attempt", "outcome", "peer_code", "http_status", "duration_ms", "record_count", "request_headers",
    "request_body", "request_sha256", "request_size", "response_headers", "response_body", "response_sha256",
    "response_size", "error",
)
# every column of exchange_log, in table order; a test keeps this list equal to the table's, so a
# new column is a deliberate format decision (a new LEAF_VERSION), never silently unsealed
LEAF_FIELDS = (*LEAF_FIELDS_V1, "leaf_version", "request_blob_sha256", "response_blob_sha256")
LEAF_FIELDS_V2_ONLY = LEAF_FIELDS[len(LEAF_FIELDS_V1):]


def _value(name: str, value: Any) -> Any:
    if name in BLOB_FIELDS:
        blob = bytes(value) if value is not None else None
        return None if blob is None else {"sha256": hashlib.sha256(blob).hexdigest(), "len": len(blob)}
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="microseconds")
    return value


_CONVERTED = ("started_at", *BLOB_FIELDS)  # the only exchange_log columns whose leaf value is not the column's


def leaf_hash(row: Mapping[str, Any], record_keys: Iterable[str],
              personal: Iterable[Sequence[str]] = ()) -> str:
    """The leaf hash (hex) of one exchange-log row, its record keys and its personal-field
    commitments (``(side, path, kind, commitment)`` each)."""
    version = row.get("leaf_version") or 1
    entries = sorted([str(side), str(path), str(kind), str(c)] for side, path, kind, c in personal)
    if version == 1:
        record = {name: _value(name, row[name]) for name in LEAF_FIELDS_V1}
        for name in LEAF_FIELDS_V2_ONLY:  # never in format 1: present means added afterwards
            if name != "leaf_version" and row.get(name) is not None:
                record[name] = row[name]
        if entries:
            record["personal"] = entries
    else:  # the hot path of verify: only the time and the bodies need converting
        get = row.get
        record = {name: get(name) for name in LEAF_FIELDS}
        for name in _CONVERTED:
            record[name] = _value(name, record[name])
        record["personal"] = entries
    record["v"] = version
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


@dataclass
class Batch:
    """Records of an id range as the verifier needs them: ``(id, leaf hash)`` in id order, the
    personal fields of each (with salt and value, None once redacted) and blob references."""

    records: list[tuple[int, str]] = field(default_factory=list)
    personal: dict[int, list[PersonalField]] = field(default_factory=dict)
    blobs: list[tuple[int, str, str]] = field(default_factory=list)  # (id, side, sha256)


def _personal_rows(conn: Connection, first_id: int, last_id: int, *,
                   values: bool = True) -> dict[int, list[PersonalField]]:
    out: dict[int, list[PersonalField]] = {}
    # Tens of rows per exchange: read as plain tuples through the driver (about twice as fast as
    # SQLAlchemy rows of a select(), which the benchmark's verify profile showed).
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    # Sealing needs only the commitments; the salts and values (verify re-checks them) stay unread.
    columns = "exchange_id, side, path, kind, commitment" + (", salt, value" if values else ", NULL, NULL")
    rows = conn.exec_driver_sql(
        f"SELECT {columns} FROM {exchange_personal_field.name} "
        f"WHERE exchange_id >= {mark} AND exchange_id <= {mark}", (first_id, last_id)).fetchall()
    for r in rows:
        out.setdefault(r[0], []).append(PersonalField(r[1], r[2], r[3], r[4],
                                                      None if r[5] is None else bytes(r[5]),
                                                      None if r[6] is None else bytes(r[6])))
    return out


def load_batch(conn: Connection, after_id: int, up_to_id: int | None = None, limit: int | None = None, *,
               personal_values: bool = True) -> Batch:
    """The records with ``after_id < id <= up_to_id`` (at most ``limit``), in id order
    (``personal_values``: also read the salts and values behind the commitments)."""
    query = select(exchange_log).where(exchange_log.c.id > after_id).order_by(exchange_log.c.id)
    if up_to_id is not None:
        query = query.where(exchange_log.c.id <= up_to_id)
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).mappings().all()
    batch = Batch()
    if not rows:
        return batch
    first, last = rows[0]["id"], rows[-1]["id"]
    keys: dict[int, list[str]] = {}
    key_query = select(exchange_key.c.exchange_id, exchange_key.c.record_key).where(
        exchange_key.c.exchange_id >= first, exchange_key.c.exchange_id <= last)
    for exchange_id, record_key in conn.execute(key_query):
        keys.setdefault(exchange_id, []).append(record_key)
    batch.personal = _personal_rows(conn, first, last, values=personal_values)
    for row in rows:
        record_id = row["id"]
        fields = batch.personal.get(record_id, ())
        batch.records.append((record_id, leaf_hash(row, keys.get(record_id, ()),
                                                   [(f.side, f.path, f.kind, f.commitment) for f in fields])))
        for side in ("request", "response"):
            ref = row[f"{side}_blob_sha256"]
            if ref is not None:
                batch.blobs.append((record_id, side, ref))
    return batch


def load_records(conn: Connection, after_id: int, up_to_id: int | None = None,
                 limit: int | None = None, *, chunk: int = 20) -> list[tuple[int, str]]:
    """``(id, leaf hash)`` of the records with ``after_id < id <= up_to_id``, in id order.

    Read ``chunk`` records at a time and keep only their leaf hashes, so sealing a large batch
    never holds that many bodies in memory (the benchmark's memory scenario)."""
    out: list[tuple[int, str]] = []
    while limit is None or len(out) < limit:
        take = chunk if limit is None else min(chunk, limit - len(out))
        records = load_batch(conn, after_id, up_to_id, take, personal_values=False).records
        out.extend(records)
        if len(records) < take:
            break
        after_id = records[-1][0]
    return out
