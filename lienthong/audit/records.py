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
* **leaf format 2** (rows with ``leaf_version`` = 2, recorded from issue #6 part 2 until format 3):
  the same object with ``"v": 2`` and every column of ``exchange_log`` (format 1's plus
  ``leaf_version``, ``request_blob_sha256``, ``response_blob_sha256``: a body stored by content
  hash in ``exchange_blob`` leaves an empty compressed body inline and its hash here), plus
  ``"personal"``: the sorted ``[side, path, kind, commitment]`` of the record's
  ``exchange_personal_field`` rows (:mod:`lienthong.audit.personal`). Salts and values are not in
  the leaf, so erasing them (redaction) leaves it unchanged. Rows whose ``leaf_version`` is NULL or
  1 are hashed in format 1 exactly as before (sealed logs of earlier versions still verify); data
  format 1 never covered (a blob reference, personal fields) is then added to the object, so it
  cannot be slipped in unnoticed.
* **leaf format 3** (rows with ``leaf_version`` = 3, everything recorded since): hashed exactly
  like format 2 (same object, same key order) with ``"v": 3``. What differs is the meaning of
  ``request_sha256``/``response_sha256``: for a side with personal fields, SHA-256 of
  ``"lienthong-wire/3" 0x00`` ‖ their salts ‖ the bytes as on the wire, not the plain SHA-256
  of those bytes (:func:`lienthong.audit.personal.wire_digest`, which every checker uses with the
  row's ``leaf_version``): erasing the salts leaves no digest to test guesses of an erased value
  against. Rows of formats 1 and 2 keep their plain digests and verify as before.
* **archive body** (format ``lienthong-archive/1``) = canonical JSON of ``{"format", "first_seq",
  "last_seq", "first_id", "last_id", "records", "bundle_sha256", "manifest_sha256",
  "archived_at", "key_fingerprint"}`` of an ``exchange_archive`` row, signed like a seal body (its
  ``bundle_path`` is left out: a bundle may be moved off-site).
* **Merkle root** of a batch (records in id order) as RFC 6962: node = SHA-256(``0x01`` ‖ left ‖
  right), the left subtree holding the largest power of two below n leaves.
* **seal body** = canonical JSON of ``{"format", "seq", "first_id", "last_id", "count", "root",
  "prev_hash", "key_fingerprint", "sealed_at"}``; ``seal_hash`` = SHA-256(body) in hex and
  ``signature`` = Ed25519(body) in hex. ``prev_hash`` is the previous seal's ``seal_hash``
  (64 zeros for seal 1). Seal *n* covers every record with ``seals[n-1].last_id < id <= last_id``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from lienthong.audit.personal import PersonalField
from lienthong.store import canonical_json, exchange_key, exchange_log, exchange_personal_field

__all__ = [
    "ARCHIVE_FORMAT",
    "FORMAT",
    "GENESIS",
    "LEAF_FIELDS",
    "LEAF_FIELDS_V1",
    "Batch",
    "archive_body",
    "leaf_hash",
    "load_batch",
    "load_records",
    "redacted_ids",
    "scan_batch",
    "merkle_root",
    "seal_body",
]

FORMAT = "lienthong-seal/1"
ARCHIVE_FORMAT = "lienthong-archive/1"
GENESIS = "0" * 64
LEAF_VERSION = 3  # what BusRecorder writes now
FAST_LEAF_VERSIONS = (2, 3)  # hashed alike (format 3 differs from 2 only in what *_sha256 means)
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


def archive_body(archive: Mapping[str, Any]) -> bytes:
    """The signed bytes of an ``exchange_archive`` row (or the values about to become one)."""
    body = {name: archive[name] for name in ("first_seq", "last_seq", "first_id", "last_id", "records",
                                             "bundle_sha256", "manifest_sha256", "key_fingerprint")}
    body["format"] = ARCHIVE_FORMAT
    body["archived_at"] = _value("archived_at", archive["archived_at"])
    return canonical_json(body)


@dataclass
class Batch:
    """Records of an id range as the verifier needs them: ``(id, leaf hash)`` in id order, the
    personal fields of each (with salt and value, None once redacted) and blob references."""

    records: list[tuple[int, str]] = field(default_factory=list)
    personal: dict[int, list[PersonalField]] = field(default_factory=dict)
    blobs: list[tuple[int, str, str]] = field(default_factory=list)  # (id, side, sha256)
    # records with an erased personal field (when ``personal`` holds no salts and values)
    redacted: set[int] = field(default_factory=set)
    values: bool = True  # ``personal`` holds the salts and values
    fast: bool = False  # leaves computed by :func:`scan_batch`'s SQL aggregation


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
    batch.values = personal_values
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


def redacted_ids(conn: Connection, first_id: int, last_id: int) -> set[int]:
    """The records with ``first_id <= id <= last_id`` one of whose personal fields was erased."""
    t = exchange_personal_field
    return set(conn.execute(select(t.c.exchange_id).distinct().where(
        t.c.exchange_id >= first_id, t.c.exchange_id <= last_id, t.c.salt.is_(None), t.c.value.is_(None))).scalars())


# -- the fast path of ``audit verify`` (issue #8) ---------------------------------------------------
# A leaf in format 2 or 3 is SHA-256 of the canonical JSON of one object whose keys, sorted, are the
# columns before "personal", then "personal", "record_count", "record_keys", then the rest and "v".
# SQLite writes the two lists ("personal": tens of [side, path, kind, commitment] per record;
# "record_keys": tens of codes for a feed page) as JSON in C (json_group_array over the primary
# key's index, i.e. in Python's sort order: BINARY collation compares UTF-8 bytes, which is code
# point order); Python encodes the columns, splices the two lists in and hashes. SQLite's JSON is
# Python's canonical JSON for plain strings; a list whose text holds a backslash (some string
# needed an escape, where the two encoders may differ) is not spliced: that chunk goes through
# :func:`load_batch`. A value that is no string (a number, NULL) is written unquoted, so it never
# gives the sealed bytes. And a seal whose fast leaves do not give its signed root is recomputed
# by :func:`load_batch` before anything is reported: this path can only be faster, never say
# something else (if its leaves give the signed root, its bytes are the sealed bytes).
_ENCODE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode
_BEFORE = tuple(n for n in sorted(LEAF_FIELDS) if n < "personal")
_BETWEEN = tuple(n for n in sorted(LEAF_FIELDS) if "personal" < n < "record_keys")
_AFTER = tuple(n for n in sorted(LEAF_FIELDS) if n > "record_keys")
assert _BETWEEN == ("record_count",) and "v" > _AFTER[-1], "the leaf's key order changed"
_POS = {name: i for i, name in enumerate(LEAF_FIELDS)}
_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
_ROWS_SQL = (f"SELECT {', '.join(LEAF_FIELDS)} FROM {exchange_log.name} "
             f"WHERE id > ? AND id <= ? ORDER BY id LIMIT ?")
_PERSONAL_SQL = (
    "SELECT exchange_id, CAST(json_group_array(json_array(side, path, kind, commitment)) AS BLOB) "
    f"FROM {exchange_personal_field.name} WHERE exchange_id >= ? AND exchange_id <= ? GROUP BY exchange_id")
_KEYS_SQL = (
    "SELECT exchange_id, CAST(json_group_array(record_key) AS BLOB) "
    f"FROM {exchange_key.name} WHERE exchange_id >= ? AND exchange_id <= ? GROUP BY exchange_id")
SCAN_CHUNK = 500  # records per round of the three queries


class _NotFast(Exception):
    """This chunk cannot be spliced exactly: compute it with load_batch."""


def _list_text(text: Any) -> bytes:
    """A list as SQLite wrote it (UTF-8), if it is the canonical JSON of its strings."""
    if type(text) is not bytes or b"\\" in text:
        raise _NotFast
    return text


class _Leaves:
    """Per connection: the column converters of the fast path (headers parsed once per text)."""

    @staticmethod
    def usable(conn: Connection) -> bool:
        """SQLite with its JSON functions, storing text as UTF-8 (what the splice assumes)."""
        if conn.dialect.name != "sqlite":
            return False
        raw = conn.connection.dbapi_connection
        try:
            return (raw.execute("PRAGMA encoding").fetchone()[0] == "UTF-8"
                    and raw.execute("SELECT json_group_array(json_array('a'))").fetchone()[0] == '[["a"]]')
        except conn.dialect.dbapi.Error:  # no JSON functions in this SQLite build: the exact path
            return False

    def __init__(self, conn: Connection):
        self.conn = conn
        self.raw = conn.connection.dbapi_connection
        self.started_at = exchange_log.c.started_at.type._cached_result_processor(conn.dialect, None)
        self.headers: dict[str, Any] = {}

    def _time(self, value: Any) -> Any:
        if type(value) is str and len(value) == 26 and _TIME.fullmatch(value):
            return f"{value[:10]}T{value[11:]}+00:00"
        return _value("started_at", self.started_at(value) if self.started_at else value)

    def _json(self, text: Any) -> Any:
        if type(text) is not str:
            raise _NotFast
        parsed = self.headers.get(text, self)
        if parsed is self:
            if len(self.headers) > 4096:
                self.headers.clear()
            parsed = self.headers[text] = json.loads(text)
        return parsed

    def chunk(self, after_id: int, up_to_id: int, limit: int, batch: Batch) -> int | None:
        """Append the leaves of up to ``limit`` records after ``after_id`` to ``batch``; the last
        id read, or None when there was none. Raises _NotFast (nothing appended)."""
        cur = self.raw.cursor()
        try:
            rows = cur.execute(_ROWS_SQL, (after_id, up_to_id, limit)).fetchall()
            if not rows:
                return None
            first, last = rows[0][0], rows[-1][0]
            personal = dict(cur.execute(_PERSONAL_SQL, (first, last)).fetchall())
            keys = dict(cur.execute(_KEYS_SQL, (first, last)).fetchall())
        finally:
            cur.close()
        records: list[tuple[int, str]] = []
        blobs: list[tuple[int, str, str]] = []
        sha256, encode, time, parse = hashlib.sha256, _ENCODE, self._time, self._json
        p = _POS
        i_req, i_resp, i_rh, i_ph = p["request_body"], p["response_body"], p["request_headers"], p["response_headers"]
        i_rb, i_pb, i_count = p["request_blob_sha256"], p["response_blob_sha256"], p["record_count"]
        before = [(n, p[n]) for n in _BEFORE]
        plain_after = [(n, p[n]) for n in _AFTER if n not in (
            "request_body", "response_body", "request_headers", "response_headers", "started_at")]
        i_time, i_version = p["started_at"], p["leaf_version"]
        for row in rows:
            version = row[i_version]
            if version not in FAST_LEAF_VERSIONS:
                raise _NotFast
            record_id = row[0]
            personal_text = _list_text(personal[record_id]) if record_id in personal else b"[]"
            keys_text = _list_text(keys[record_id]) if record_id in keys else b"[]"
            req, resp = row[i_req], row[i_resp]
            if type(req) is not bytes or type(resp) is not bytes:
                raise _NotFast
            after = {n: row[i] for n, i in plain_after}
            after["request_body"] = {"sha256": sha256(req).hexdigest(), "len": len(req)}
            after["response_body"] = {"sha256": sha256(resp).hexdigest(), "len": len(resp)}
            after["request_headers"] = parse(row[i_rh])
            after["response_headers"] = parse(row[i_ph])
            after["started_at"] = time(row[i_time])
            after["v"] = version
            count = row[i_count]
            leaf = sha256(b"\x00" + (encode({n: row[i] for n, i in before})[:-1] + ',"personal":').encode())
            leaf.update(personal_text)
            leaf.update((',"record_count":' + (str(count) if type(count) is int else encode(count))
                         + ',"record_keys":').encode())
            leaf.update(keys_text)
            leaf.update(("," + encode(after)[1:]).encode())
            records.append((record_id, leaf.hexdigest()))
            for side, ref in (("request", row[i_rb]), ("response", row[i_pb])):
                if ref is not None:
                    blobs.append((record_id, side, ref))
        batch.records += records
        batch.blobs += blobs
        return last


def scan_batch(conn: Connection, after_id: int, up_to_id: int, *, chunk: int = SCAN_CHUNK) -> Batch:
    """The leaves and blob references of the records with ``after_id < id <= up_to_id``, without
    the salts and values: what ``audit verify`` checks (``Batch.redacted`` is left empty).

    On SQLite, ``chunk`` records at a time through three queries whose lists SQLite aggregates
    (see above); elsewhere, or for a chunk that cannot be spliced exactly, through
    :func:`load_batch` (same leaves, slower).

    Args:
        conn: a connection to the bus database.
        after_id: the records after this id...
        up_to_id: ...up to this one, inclusive.
        chunk: records per round of queries (bounds the memory: bodies of ``chunk`` records).

    Returns:
        a :class:`Batch` with ``records`` and ``blobs``, ``fast`` when SQLite's path was taken.
    """
    batch = Batch(values=False)
    leaves = _Leaves(conn) if _Leaves.usable(conn) else None
    batch.fast = leaves is not None
    while True:
        last: int | None
        try:
            if leaves is None:
                raise _NotFast
            last = leaves.chunk(after_id, up_to_id, chunk, batch)
        except (_NotFast, TypeError, ValueError, UnicodeError):
            part = load_batch(conn, after_id, up_to_id, chunk, personal_values=False)
            if not part.records:
                return batch
            last = part.records[-1][0]
            batch.records += part.records
            batch.blobs += part.blobs
        if last is None:
            return batch
        after_id = last
