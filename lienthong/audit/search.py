"""Find exchanges in the log and show one, with personal data masked unless asked for.

:func:`search_exchanges` filters by record key (dossier code, receipt number, procedure code: all
are rows of ``exchange_key``), peer, operation, outcome and a ``started_at`` range (``since``
inclusive, ``until`` exclusive). :func:`format_exchange` prints one exchange with its headers and
decoded bodies; :func:`mask_text` / :func:`mask_json` hide Vietnamese ID numbers (CMND 9 digits,
CCCD 12 digits), phone numbers (``0`` + 9–10 digits, ``+84``…, also in groups: ``0912 345 678``)
and e-mail addresses, keeping a short hint (``0**********9``). Digit runs are matched whole (no letter or digit either side), so
14-digit times (``20261102081500``), dossier codes (``000.00.01.H49-261102-0001``) and procedure
codes are left alone.

Personal values are checked where they are read: :func:`get_exchange` recomputes each stored
salt and value's commitment (the one the seal covers) and lists the fields that do not give it
in ``personal_altered``; :func:`format_exchange` then shows ``[altered]`` in their place, never
the stored value, under a warning (``audit show`` exits 1, the auditor page says so too). ``audit
verify`` checks them all only with ``--deep`` (see :mod:`lienthong.audit.verify`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from lienthong.audit.personal import (
    PERSONAL_FIELDS,
    SALTED_DIGEST_SINCE,
    PersonalField,
    commitment,
    restore_body,
)
from lienthong.exchange_log import personal_fields, record_key_stored
from lienthong.store import (
    Store,
    exchange_archive,
    exchange_blob,
    exchange_key,
    exchange_log,
    exchange_personal_field,
    exchange_redaction,
    exchange_seal_leaf,
)

__all__ = [
    "PERSONAL_FIELDS",
    "altered_fields",
    "erased_by_redaction",
    "archive_of",
    "archived_ranges",
    "format_body",
    "format_exchange",
    "format_line",
    "get_exchange",
    "iter_exchanges",
    "judged_personal_fields",
    "mask_json",
    "mask_text",
    "parse_time",
    "visible_text",
    "search_exchanges",
]

# field names whose value is personal whatever it looks like (compared case-insensitively): the
# list declared in lienthong.audit.personal, whose values are also committed (and erasable)
_EDGE_BEFORE = r"(?<![0-9A-Za-z_])"
_EDGE_AFTER = r"(?![0-9A-Za-z_])"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(_EDGE_BEFORE + r"(?:\+84\d{9,10}|0\d{9,10})" + _EDGE_AFTER)
# as people write them: 0912 345 678, 0912.345.678, 091 234 5678, +84 912 345 678, 0236.3822.123 (one
# separator throughout; 9 or 10 digits after the 0 or +84, checked in _hint_grouped)
_PHONE_GROUPED = re.compile(_EDGE_BEFORE + r"(?:\+84[ .-]?|0)\d{2,4}([ .-])\d{3,4}\1\d{3,4}" + _EDGE_AFTER)
#: what :func:`format_body` puts in a personal field's place: said as is, never masked like a value
_PLACEHOLDERS = frozenset({"[redacted]", "[altered]"})
_ID = re.compile(_EDGE_BEFORE + r"(?:\d{12}|\d{9})" + _EDGE_AFTER)
# as people write them: CCCD 001 203 004 567, 001-203-004-567, 0012 0300 4567, CMND 123.456.789 (one
# separator throughout; 9 or 12 digits in all, checked in _hint_grouped_id); never a part of a longer
# grouping (0 912 345 678 901)
_ID_GROUPED = re.compile(_EDGE_BEFORE + r"(?<!\d[ .-])\d{3,4}([ .-])\d{3,4}(?:\1\d{3,4}){1,2}"
                         + _EDGE_AFTER + r"(?![ .-]\d)")


def _hint(value: str) -> str:
    """First and last character kept (``+84`` kept whole), the rest starred."""
    if value.startswith("+84") and len(value) > 4:
        return "+84" + "*" * (len(value) - 4) + value[-1]
    if len(value) <= 2:
        return "*" * len(value)
    return value[0] + "*" * (len(value) - 2) + value[-1]


def _hint_email(value: str) -> str:
    local, _, domain = value.partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{domain}"


def _hint_bytes(value: bytes) -> bytes:
    """:func:`_hint` (or :func:`_hint_email`) of a personal value as a body holds it."""
    text = bytes(value).decode("utf-8", errors="replace")
    return (_hint_email(text) if "@" in text else _hint(text)).encode()


def _hint_grouped(match: re.Match[str]) -> str:
    value = match.group()
    digits = sum(c.isdigit() for c in value) - (2 if value.startswith("+84") else 1)
    return _hint(value) if 9 <= digits <= 10 else value


def _hint_grouped_id(match: re.Match[str]) -> str:
    """An ID number written in groups: 9 (CMND) or 12 (CCCD) digits in all; all zeros is a placeholder."""
    value = match.group()
    digits = [c for c in value if c.isdigit()]
    return _hint(value) if len(digits) in (9, 12) and set(digits) != {"0"} else value


def mask_text(text: str) -> str:
    """``text`` with e-mail addresses, phone numbers and ID numbers (also written in groups)
    replaced by short hints."""
    text = _EMAIL.sub(lambda m: _hint_email(m.group()), text)
    text = _PHONE_GROUPED.sub(_hint_grouped, text)
    text = _ID_GROUPED.sub(_hint_grouped_id, text)
    text = _PHONE.sub(lambda m: _hint(m.group()), text)
    return _ID.sub(lambda m: _hint(m.group()), text)


def mask_json(value: Any, field: str | None = None) -> Any:
    """A JSON value with personal fields (by name) and personal-looking values (by pattern) masked."""
    if isinstance(value, dict):
        return {k: mask_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v, field) for v in value]
    personal = field is not None and field.lower() in PERSONAL_FIELDS
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        if personal:
            return _hint(str(value))
        if isinstance(value, float):  # a fraction's digits are no ID number
            return value
        masked = mask_text(str(value))
        return value if masked == str(value) else masked
    if isinstance(value, str):
        if personal and value and value not in _PLACEHOLDERS:
            return _hint_email(value) if "@" in value else _hint(value)
        return mask_text(value)
    return value


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; naive ones are UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))  # noqa: FURB162 (Python < 3.11)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def selection_query(*, key: str | None = None, peer: str | None = None, operation: str | None = None,
                    outcome: str | None = None, since: datetime | None = None, until: datetime | None = None):
    """The ``exchange_log`` ids matching the filters, in id order (a select of one column)."""
    query = select(exchange_log.c.id).order_by(exchange_log.c.id)
    if key:
        query = query.where(exchange_log.c.id.in_(
            select(exchange_key.c.exchange_id).where(exchange_key.c.record_key == record_key_stored(key))))
    if peer:
        query = query.where(exchange_log.c.peer == peer)
    if operation:
        query = query.where(exchange_log.c.operation == operation)
    if outcome:
        query = query.where(exchange_log.c.outcome == outcome)
    if since is not None:
        query = query.where(exchange_log.c.started_at >= since)
    if until is not None:
        query = query.where(exchange_log.c.started_at < until)
    return query


_PAGE = 500  # ids per query: below every SQLite build's bound-variable limit


def _keys_of(conn, ids: list[int]) -> dict[int, list[str]]:
    keys: dict[int, list[str]] = {i: [] for i in ids}
    for start in range(0, len(ids), _PAGE):
        chunk = ids[start:start + _PAGE]
        for exchange_id, record_key in conn.execute(
                select(exchange_key.c.exchange_id, exchange_key.c.record_key)
                .where(exchange_key.c.exchange_id.in_(chunk))):
            keys[exchange_id].append(record_key)
    return {i: sorted(k) for i, k in keys.items()}


_SUMMARY = [exchange_log.c[name] for name in (
    "id", "started_at", "flow", "run_id", "peer", "operation", "direction", "method", "attempt", "outcome",
    "http_status", "peer_code", "duration_ms", "error")]


def iter_exchanges(store: Store, *, key: str | None = None, peer: str | None = None,
                   operation: str | None = None, outcome: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, limit: int | None = None, after: int = 0,
                   page: int = _PAGE) -> Iterator[dict[str, Any]]:
    """:func:`search_exchanges` one page of ``page`` ids at a time (by id, after the last one read):
    a long log is never held whole, nor put in one ``IN (...)`` past the database's bound-variable
    limit (999 in older SQLite builds)."""
    left = limit
    with store.engine.connect() as conn:
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            ids = list(conn.execute(selection_query(key=key, peer=peer, operation=operation, outcome=outcome,
                                                    since=since, until=until)
                                    .where(exchange_log.c.id > after).limit(size)).scalars())
            if not ids:
                return
            rows = {r["id"]: dict(r) for r in conn.execute(
                select(*_SUMMARY).where(exchange_log.c.id.in_(ids))).mappings()}
            keys = _keys_of(conn, ids)
            for i in ids:
                yield {**rows[i], "record_keys": keys[i]}
            after = ids[-1]
            if left is not None:
                left -= len(ids)
            if len(ids) < size:
                return


def search_exchanges(store: Store, *, key: str | None = None, peer: str | None = None,
                     operation: str | None = None, outcome: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int | None = None,
                     after: int = 0) -> list[dict[str, Any]]:
    """Exchanges matching every filter given, oldest first, without bodies; each with its
    ``record_keys``; only those after exchange ``after`` (the last of the page before)."""
    return list(iter_exchanges(store, key=key, peer=peer, operation=operation, outcome=outcome, since=since,
                               until=until, limit=limit, after=after))


def get_exchange(store: Store, exchange_id: int) -> dict[str, Any] | None:
    """One exchange as stored (bodies compressed), with ``record_keys`` and ``seal_seq``."""
    with store.engine.connect() as conn:
        row = conn.execute(select(exchange_log).where(exchange_log.c.id == exchange_id)).mappings().first()
        if row is None:
            return None
        record = dict(row)
        record["record_keys"] = _keys_of(conn, [exchange_id])[exchange_id]
        record["seal_seq"] = conn.execute(select(exchange_seal_leaf.c.seal_seq).where(
            exchange_seal_leaf.c.exchange_id == exchange_id)).scalar()
        record["personal"], record["personal_altered"] = judged_personal_fields(conn, exchange_id)
        record["blobs"] = {}
        for side in ("request", "response"):
            ref = record.get(f"{side}_blob_sha256")
            if ref:
                blob = conn.execute(select(exchange_blob.c.content_type, exchange_blob.c.size)
                                    .where(exchange_blob.c.sha256 == ref)).first()
                record["blobs"][side] = {"sha256": ref, "content_type": blob[0] if blob else None,
                                         "size": blob[1] if blob else None, "present": blob is not None}
    return record


def archived_ranges(store: Store) -> list[dict[str, Any]]:
    """The ranges of the log that ``audit archive`` moved to evidence bundles and pruned from the
    database (``first_id``, ``last_id``, ``first_seq``, ``last_seq``, ``bundle_path``), by id: a
    search of the database does not see them."""
    a = exchange_archive
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(a.c.first_id, a.c.last_id, a.c.first_seq, a.c.last_seq,
                                                     a.c.bundle_path).order_by(a.c.first_id)).mappings()]


def archive_of(store: Store, exchange_id: int) -> dict[str, Any] | None:
    """The archived range (see :func:`archived_ranges`) holding exchange ``exchange_id``, which the
    seals' leaf index still names, or None."""
    with store.engine.connect() as conn:
        if conn.execute(select(exchange_seal_leaf.c.seal_seq)
                        .where(exchange_seal_leaf.c.exchange_id == exchange_id)).first() is None:
            return None
    return next((a for a in archived_ranges(store) if a["first_id"] <= exchange_id <= a["last_id"]), None)


def erased_by_redaction(conn: Any, first_id: int, last_id: int) -> dict[int, set[tuple[str, str]]]:
    """The erased fields of records ``first_id..last_id`` whose ``redaction_id`` names an ``audit
    redact`` (any other erased one is altered, as ``audit verify --deep`` judges it)."""
    t = exchange_personal_field
    out: dict[int, set[tuple[str, str]]] = {}
    for exchange_id, side, path in conn.execute(
            select(t.c.exchange_id, t.c.side, t.c.path)
            .join(exchange_redaction, exchange_redaction.c.id == t.c.redaction_id)
            .where(t.c.exchange_id >= first_id, t.c.exchange_id <= last_id, t.c.salt.is_(None), t.c.value.is_(None))):
        out.setdefault(exchange_id, set()).add((side, path))
    return out


def judged_personal_fields(conn: Any, exchange_id: int) -> tuple[list[PersonalField], list[PersonalField]]:
    """One exchange's personal fields (by side and path) and those of them that are altered
    (:func:`altered_fields`, an erasure without its ``audit redact`` included): what ``audit show``,
    the auditor page and ``lienthong exchanges --bodies`` show."""
    fields = personal_fields(conn, exchange_id)
    lawful = erased_by_redaction(conn, exchange_id, exchange_id).get(exchange_id, set())
    return fields, altered_fields(fields, erased_by_redaction=lawful)


def altered_fields(fields: list[PersonalField],
                   erased_by_redaction: set[tuple[str, str]] | None = None) -> list[PersonalField]:
    """The fields whose stored salt and value do not give their sealed commitment. An erased
    field, salt and value both gone, is redacted, not altered; given ``erased_by_redaction`` (the
    ``(side, path)`` of the fields whose ``redaction_id`` names a row of ``exchange_redaction``),
    only those are, as ``audit verify --deep`` judges: any other erased one is altered."""
    def erased(f: PersonalField) -> bool:
        return f.salt is None and f.value is None

    return [f for f in fields if (
        (erased_by_redaction is not None and (f.side, f.path) not in erased_by_redaction) if erased(f) else
        (f.salt is None or f.value is None or commitment(f.salt, f.path, f.value) != f.commitment))]


# C0 controls but tab and new line, DEL and C1 controls: in a peer's text they would drive the
# auditor's terminal (move the cursor, erase a line, set the title); shown as \x1b, \r...
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible_text(text: str) -> str:
    """``text`` with a peer's control characters shown as ``\\x1b``, ``\\r``... (new lines and tabs kept)."""
    return _CONTROL.sub(lambda m: "\\r" if m.group() == "\r" else f"\\x{ord(m.group()):02x}", text)


def _time(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds") if value else "-"


def format_line(row: dict[str, Any]) -> str:
    """One search result on one line."""
    status = f"http {row['http_status']}" if row.get("http_status") is not None else "no answer"
    code = f" code {row['peer_code']}" if row.get("peer_code") not in (None, "") else ""
    keys = ",".join(row.get("record_keys") or []) or "-"
    return visible_text(f"#{row['id']:<6} {_time(row['started_at'])}  {row['peer']}/{row['operation']}  "
                    f"{row['outcome']}  {status}{code}  attempt {row['attempt']}  keys {keys}")


def format_body(blob: bytes, reveal: bool, fields: list[PersonalField] | None = None,
                altered: list[PersonalField] | None = None, *, indent: int | None = 2) -> str:
    """A stored (compressed) body as text: its personal values put back (``fields``: the body's
    side's) and masked unless ``reveal``, an ``altered`` one shown as ``[altered]``, an erased one
    as ``[redacted]``; JSON re-indented (``indent=None``: on one line)."""
    try:
        raw = zlib.decompress(bytes(blob))
    except zlib.error:
        return "(the stored body does not decompress)"
    for f in altered or ():  # never shown: the stored value is not the one the seal covers
        raw = restore_body(raw, [dataclasses.replace(f, value=None)],
                           b'"[altered]"' if f.kind == "json" else b"[altered]")
    if fields:
        shown = [f for f in fields if f not in (altered or ())]
        if not reveal:  # a SOAP/XML body has no field names mask_json could go by: hint its values here
            shown = [dataclasses.replace(f, value=_hint_bytes(f.value)) if f.kind != "json" and f.value else f
                     for f in shown]
        raw = restore_body(raw, shown)  # erased: "[redacted]"
    if not raw:
        return "(empty)"
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text if reveal else mask_text(text)
    return json.dumps(parsed if reveal else mask_json(parsed), ensure_ascii=False, indent=indent)


def format_exchange(record: dict[str, Any], *, reveal: bool = False,
                    sides: tuple[str, ...] = ("request", "response")) -> str:
    """One exchange in full: fields, record keys, headers and decoded bodies (of ``sides`` only);
    personal data masked unless ``reveal``; control characters (a peer's text) shown as ``\\x1b``,
    ``\\r``..."""
    text = (lambda s: s) if reveal else mask_text

    def headers(value: Any) -> str:
        return json.dumps(value if reveal else mask_json(value), ensure_ascii=False, indent=2)

    seal = f"seal {record['seal_seq']}" if record.get("seal_seq") is not None else "not sealed yet"
    lines = [
        f"exchange #{record['id']}  ({seal})",
        f"started_at:   {_time(record['started_at'])}  ({record['duration_ms']} ms)",
        f"flow/run:     {record['flow'] or '-'} / {record['run_id'] or '-'} / {record['task_id'] or '-'}",
        f"peer:         {record['peer']}  operation {record['operation']}  ({record['direction']})",
        f"request:      {record['method']} {text(record['url'])}  attempt {record['attempt']}",
        (f"outcome:      {record['outcome']}  http {record['http_status'] if record['http_status'] is not None else '-'}"
         f"  peer code {record['peer_code'] if record['peer_code'] is not None else '-'}"),
        f"record keys:  {text(', '.join(record.get('record_keys') or [])) or '-'}",
    ]
    altered = record.get("personal_altered") or []
    if altered:
        lines.insert(1, f"WARNING: {len(altered)} stored personal value(s) do not match their sealed commitment "
                        f"(altered in the database; shown as [altered]): "
                        f"{', '.join(f'{f.side} {f.path}' for f in altered)}")
    if record.get("error"):
        lines.append(f"error:        {text(record['error'])}")
    for side in sides:
        lines.append(f"--- {side} headers ---")
        lines.append(headers(record[f"{side}_headers"]))
        fields = [f for f in record.get("personal") or [] if f.side == side]
        # salted with the fields' salts (leaf format 3): not the SHA-256 of the bytes a peer would compute
        salted = "salted " if fields and (record.get("leaf_version") or 1) >= SALTED_DIGEST_SINCE else ""
        lines.append(f"--- {side} body ({record[f'{side}_size']} bytes, {salted}sha256 {record[f'{side}_sha256']}) ---")
        blob = (record.get("blobs") or {}).get(side)
        if blob:
            state = "" if blob["present"] else "; MISSING from exchange_blob"
            lines.append(f"(stored by content hash: sha256 {blob['sha256']}, {blob['content_type'] or 'no content type'}"
                         f", {blob['size'] if blob['size'] is not None else '?'} bytes{state}; read it with "
                         f"lienthong.exchange_log.read_blob)")
        else:
            lines.append(format_body(record[f"{side}_body"], reveal, fields, [f for f in altered if f.side == side]))
        erased = sum(1 for f in fields if f.salt is None and f.value is None and f not in altered)
        if erased:
            lines.append(f"({erased} personal field(s) of this body were redacted)")
    return visible_text("\n".join(lines))
