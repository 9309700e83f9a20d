"""``lienthong audit redact``: erase the personal values of chosen exchanges, keeping the seal valid.

Each personal value was stored apart from its record (``exchange_personal_field``), the record's
body holding only a token of its salted commitment, and the leaf committing to that token and
commitment (:mod:`lienthong.audit.personal`). Redaction sets salt and value to NULL for the
matched records, notes who, why and when in ``exchange_redaction``, and leaves the leaf as it was:
``audit verify`` then reports those records *verified with redactions*.

On SQLite the erasure is physical: the update runs with ``PRAGMA secure_delete=ON`` (freed bytes
are zeroed) and the WAL is checkpointed and truncated afterwards, so the values are gone from the
database files (``checkpointed`` says whether the checkpoint completed: a reader holding an old
snapshot can delay it). ``vacuum=True`` (``--vacuum``) also rebuilds the file with ``VACUUM``, which
leaves no stale copy a page reorganisation might have left in free space (slow on a large database;
it waits for writers). On PostgreSQL the old row versions stay on disk until ``VACUUM`` runs.

Occurrences of an erased value *outside* the committed fields (a phone number typed into a free
text note) are sealed bytes and cannot be removed without breaking the seal; they are counted in
``residual_occurrences`` (never printed) so the operator knows.
"""

from __future__ import annotations

import getpass
import os
import zlib
from dataclasses import dataclass, field

from sqlalchemy import select, update

from lienthong.audit.personal import token
from lienthong.exchange_log import record_key_stored
from lienthong.store import (
    Store,
    exchange_blob,
    exchange_key,
    exchange_log,
    exchange_personal_field,
    exchange_redaction,
    utcnow,
)

__all__ = ["ACTOR_ENV", "RedactionError", "RedactionResult", "redact_exchanges"]

ACTOR_ENV = "LIENTHONG_ACTOR"


class RedactionError(ValueError):
    """The redaction request is not acceptable (no selection, no reason)."""


@dataclass
class RedactionResult:
    redaction_id: int | None = None
    exchange_ids: list[int] = field(default_factory=list)  # the records whose fields were erased now
    matched: int = 0  # the exchanges in the database that the key (and ids) selected
    fields: int = 0
    already_redacted: int = 0  # fields of the matched records erased by an earlier redaction
    residual_occurrences: int = 0  # erased values still found in sealed bodies outside committed fields
    checkpointed: bool | None = None  # SQLite: the WAL checkpoint completed (None on other databases)
    vacuumed: bool = False


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    if os.environ.get(ACTOR_ENV):
        return os.environ[ACTOR_ENV]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def redact_exchanges(store: Store, *, reason: str, key: str | None = None,
                     exchange_ids: list[int] | None = None, actor: str | None = None,
                     vacuum: bool = False) -> RedactionResult:
    """Erase the personal values (and their salts) of the exchanges carrying record ``key``
    (narrowed to ``exchange_ids`` when given), recording who and why.

    Raises:
        RedactionError: no reason, or neither ``key`` nor ``exchange_ids``.
    """
    if not reason or not reason.strip():
        raise RedactionError("a redaction needs a reason (the lawful request it answers)")
    if not key and not exchange_ids:
        raise RedactionError("choose the records to redact: a record key and/or exchange ids")
    result = RedactionResult()
    t = exchange_personal_field
    with store.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
            conn.commit()
        try:
            with conn.begin():
                query = select(exchange_log.c.id).order_by(exchange_log.c.id)
                if key:
                    carrying = select(exchange_key.c.exchange_id).where(
                        exchange_key.c.record_key == record_key_stored(key))
                    query = query.where(exchange_log.c.id.in_(carrying))
                if exchange_ids:
                    query = query.where(exchange_log.c.id.in_(list(exchange_ids)))
                ids = list(conn.execute(query).scalars())
                result.matched = len(ids)
                rows = conn.execute(select(t).where(t.c.exchange_id.in_(ids))).mappings().all() if ids else []
                live = [r for r in rows if r["salt"] is not None or r["value"] is not None]
                result.already_redacted = len(rows) - len(live)
                if not live:
                    return result
                values = {_inner(bytes(r["value"])) for r in live if r["value"] is not None}
                values = {v for v in values if len(v) >= 4}
                redaction_id = conn.execute(exchange_redaction.insert().values(
                    at=utcnow(), actor=_actor(actor), reason=reason.strip(),
                    record_key=None if key is None else record_key_stored(key),
                    exchange_ids=sorted({r["exchange_id"] for r in live}), fields=len(live))).inserted_primary_key[0]
                for r in live:
                    conn.execute(update(t).where(t.c.exchange_id == r["exchange_id"], t.c.side == r["side"],
                                                 t.c.path == r["path"])
                                 .values(salt=None, value=None, redaction_id=redaction_id))
                result.redaction_id = redaction_id
                result.exchange_ids = sorted({r["exchange_id"] for r in live})
                result.fields = len(live)
                result.residual_occurrences = _residual(conn, result.exchange_ids, values, live)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA secure_delete=OFF")
                conn.commit()
                if vacuum and result.redaction_id is not None:
                    conn.exec_driver_sql("VACUUM")
                    result.vacuumed = True
                busy, _log, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
                result.checkpointed = busy == 0
                conn.commit()
    return result


def _inner(value: bytes) -> bytes:
    """A JSON string's bytes without its quotes (how it would appear inside free text)."""
    return value[1:-1] if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"' else value


def _residual(conn, ids: list[int], values: set[bytes], fields) -> int:
    """How many times the erased values still occur in the stored bodies of ``ids``."""
    if not values:
        return 0
    tokens = {token(r["kind"], r["commitment"]) for r in fields}
    count = 0
    rows = conn.execute(select(exchange_log.c.request_body, exchange_log.c.response_body,
                               exchange_log.c.request_blob_sha256, exchange_log.c.response_blob_sha256,
                               exchange_log.c.url, exchange_log.c.error)
                        .where(exchange_log.c.id.in_(ids))).all()
    for req, resp, req_ref, resp_ref, url, error in rows:
        bodies = [zlib.decompress(bytes(req)), zlib.decompress(bytes(resp)), (url or "").encode(),
                  (error or "").encode()]
        for ref in (req_ref, resp_ref):
            if ref:
                data = conn.execute(select(exchange_blob.c.data).where(exchange_blob.c.sha256 == ref)).scalar()
                if data is not None:
                    bodies.append(zlib.decompress(bytes(data)))
        for body in bodies:
            for tok in tokens:
                body = body.replace(tok, b"")
            count += sum(body.count(v) for v in values)
    return count
