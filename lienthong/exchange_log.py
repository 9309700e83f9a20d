"""The exchange log: one row per HTTP attempt, written by the transport layer (design §4.4).

Connectors hand each :class:`~connectors.transport.Exchange` to a recorder; the recorder here
binds the correlation keys of the run (flow, Airflow run id, task id) and writes the row, with
its record keys (dossier codes...) in a side table so an auditor can search by them. Bodies are
already redacted of secrets by the transport; the row keeps the size of those bytes and their
digest: in leaf format 3, salted with the salts of the body's personal fields when it has any
(:func:`lienthong.audit.personal.wire_digest`), so that erasing them leaves nothing to test
guesses of an erased value against; the plain SHA-256 when it has none.

How a body is stored (issue #6):

* personal values in JSON and SOAP/XML bodies (ID numbers, phones, e-mails, names: the list in
  :mod:`lienthong.audit.personal`) are replaced by tokens naming their salted commitments; the
  values and salts go to ``exchange_personal_field`` (erasable by ``audit redact``);
* a body that is binary (a content type other than JSON/XML/text/HTML/form, or no content type and
  not UTF-8) or larger than ``blob_threshold`` (256 KiB; ``$LIENTHONG_BLOB_THRESHOLD``) is stored
  once in ``exchange_blob`` under the SHA-256 of the stored bytes (insert-ignore: the same receipt
  PDF twice is one blob); the row keeps an empty compressed body and the hash in
  ``*_blob_sha256``. :func:`read_blob` reads it back by hash;
* otherwise the body is inline, zlib-compressed.

:func:`exchange_body` gives back the bytes as they went on the wire, whichever way they were stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from connectors.transport import Exchange, _cause
from lienthong.audit.personal import PersonalField, commit_body, restore_body, wire_digest
from lienthong.store import (
    Store,
    exchange_blob,
    exchange_key,
    exchange_log,
    exchange_personal_field,
    fit_key,
    insert_ignore,
    insert_many,
    utcnow,
)

__all__ = [
    "DEFAULT_BLOB_THRESHOLD",
    "BlobCorruptError",
    "BlobNotFoundError",
    "BusRecorder",
    "answer_transactions",
    "blob_info",
    "exchange_body",
    "exchanges_for_key",
    "is_binary",
    "personal_fields",
    "put_blob",
    "read_blob",
    "read_body",
    "record_key_stored",
    "storable",
]

log = logging.getLogger(__name__)

DEFAULT_BLOB_THRESHOLD = 256 * 1024
BLOB_THRESHOLD_ENV = "LIENTHONG_BLOB_THRESHOLD"
LEAF_VERSION = 3  # lienthong.audit.records: the leaf format of the rows written here
_EMPTY = zlib.compress(b"")
_RECORD_KEY_LENGTH = exchange_key.c.record_key.type.length
_TEXT_TYPES = ("json", "xml", "html", "javascript", "x-www-form-urlencoded", "multipart/form-data")
#: Text columns of a row with a length: a longer value (a peer's MaLoi or error_code) is cut to fit.
_FITTED = {c.name: c.type.length for c in exchange_log.columns if getattr(c.type, "length", None)}


class BlobNotFoundError(LookupError):
    """No blob with this SHA-256 in ``exchange_blob`` (never stored, or pruned by ``audit archive``)."""


class BlobCorruptError(ValueError):
    """The stored blob does not decompress to bytes with its SHA-256 (altered in the database)."""


def content_type(headers: Mapping[str, Any] | None) -> str | None:
    for name, value in (headers or {}).items():
        if str(name).lower() == "content-type":
            return str(value)
    return None


def is_binary(body: bytes, ctype: str | None) -> bool:
    """Binary: a content type other than JSON/XML/text/HTML/form; without one, not UTF-8."""
    if not body:
        return False
    media = (ctype or "").split(";")[0].strip().lower()
    if media:
        return not (media.startswith("text/") or any(t in media for t in _TEXT_TYPES))
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def storable(text: str) -> str:
    """``text`` as any bus database holds it: a NUL (PostgreSQL's text refuses it) shown as ``\\0``
    and a lone surrogate (a JSON ``\\ud800`` escape in a peer's answer; no database encodes it)
    as its ``\\udXXX`` escape. Anything else unchanged."""
    if "\x00" in text:
        text = text.replace("\x00", "\\0")
    return text if text.isascii() else _without_surrogates(text)


def _without_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _storable_row(row: dict[str, Any]) -> None:
    """Make every text value of an exchange-log row storable (:func:`storable`), and one longer
    than its column fit it (:func:`lienthong.store.fit_key`: cut, ended by a hash of the whole):
    the exchange happened at the peer, so what the peer put in it never stops its record."""
    for name, value in row.items():
        if isinstance(value, str):
            value = storable(value)
            limit = _FITTED.get(name)
            row[name] = fit_key(value, limit) if limit and len(value) > limit else value
        elif isinstance(value, dict):
            row[name] = {storable(str(k)): storable(v) if isinstance(v, str) else v for k, v in value.items()}


def _threshold() -> int:
    raw = os.environ.get(BLOB_THRESHOLD_ENV)
    return int(raw) if raw and raw.strip().isdigit() else DEFAULT_BLOB_THRESHOLD


_BLOB_PINNED = select(exchange_blob.c.pinned).where(exchange_blob.c.sha256 == bindparam("b_sha"))
# Found present, a blob stays held until the transaction that relies on it commits (PostgreSQL: a
# row lock; to be pinned, the stronger one its UPDATE needs, so two pinners never deadlock).
_BLOB_HELD = _BLOB_PINNED.with_for_update(read=True)
_BLOB_HELD_TO_PIN = _BLOB_PINNED.with_for_update()


def _write_lock(conn: Connection) -> None:
    """On SQLite, take the database's write lock now unless this transaction writes already (the
    driver opens a transaction only at its first write: a blob found present before it could be
    pruned before the reference to it is written)."""
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def put_blob(conn: Connection, data: bytes, content_type: str | None = None, *, pinned: bool = False) -> str:
    """Store ``data`` once under its SHA-256 (insert-ignore) in the caller's transaction; return the
    hash. ``pinned`` blobs (a flow keeping a receipt) are never pruned by ``audit archive``.

    A blob found already stored is held until the caller's transaction ends (PostgreSQL: a row
    lock; SQLite: the write lock), so ``audit archive``, which deletes a blob only after taking
    the same lock and finding no record referencing it, never deletes it under the reference the
    caller is about to commit."""
    sha = hashlib.sha256(data).hexdigest()
    _write_lock(conn)
    held = _BLOB_HELD_TO_PIN if pinned else _BLOB_HELD
    for _ in range(3):
        present = conn.execute(held, {"b_sha": sha}).first()
        if present is not None:
            if pinned and not present[0]:
                conn.execute(update(exchange_blob).where(exchange_blob.c.sha256 == sha).values(pinned=True))
            return sha
        if insert_ignore(conn, exchange_blob, [{"sha256": sha, "content_type": content_type, "size": len(data),
                                                "data": zlib.compress(data), "pinned": pinned,
                                                "created_at": utcnow()}], "exchange_blob_pkey"):
            return sha
        # another transaction stored it between the two statements: hold that one
    raise RuntimeError(f"blob {sha[:16]}… neither stays stored nor can be stored (pruned three times over)")


def blob_info(store: Store, sha256: str) -> dict[str, Any] | None:
    """``{sha256, content_type, size, pinned, created_at}`` of a stored blob, or None."""
    t = exchange_blob
    with store.engine.connect() as conn:
        row = conn.execute(select(t.c.sha256, t.c.content_type, t.c.size, t.c.pinned, t.c.created_at)
                           .where(t.c.sha256 == sha256)).mappings().first()
    return dict(row) if row else None


def read_blob(store: Store | Connection, sha256: str) -> bytes:
    """The bytes stored under ``sha256`` (checked against it).

    Raises:
        BlobNotFoundError: no such blob.
        BlobCorruptError: the stored data does not give its hash back.
    """
    query = select(exchange_blob.c.data).where(exchange_blob.c.sha256 == sha256)
    if isinstance(store, Store):
        with store.engine.connect() as conn:
            stored = conn.execute(query).scalar()
    else:
        stored = store.execute(query).scalar()
    if stored is None:
        raise BlobNotFoundError(f"no blob {sha256[:16]}… in exchange_blob")
    try:
        data = zlib.decompress(bytes(stored))
    except zlib.error:
        raise BlobCorruptError(f"blob {sha256[:16]}… does not decompress") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BlobCorruptError(f"blob {sha256[:16]}… does not hash to its name")
    return data


_INSERT_EXCHANGE = exchange_log.insert()


@dataclass
class BusRecorder:
    """Writes exchanges to the bus database, each in its own transaction, before the caller
    sees the answer — or, inside :meth:`holding`, in the transaction that acts on the answer
    (:meth:`begin`), so that a call costs one commit instead of two.

    Attributes:
        store: the bus database.
        flow: the flow the exchanges belong to (``dossier_status``...).
        run_id: the Airflow run id (or a CLI run id).
        task_id: the Airflow task id, when inside a task.
    """

    store: Store
    flow: str
    run_id: str | None = None
    task_id: str | None = None
    blob_threshold: int = field(default_factory=_threshold)
    _held: list[tuple[dict[str, Any], list[tuple[bytes, str | None]], list[PersonalField], list[str]]] | None = \
        field(default=None, init=False, repr=False)

    def _side(self, side: str, body: bytes, headers: Mapping[str, Any] | None, row: dict[str, Any],
              blobs: list[tuple[bytes, str | None]], personal: list[PersonalField]) -> None:
        ctype = content_type(headers)
        binary = is_binary(body, ctype)
        try:
            stored, fields = (body, []) if binary else commit_body(body, ctype, side)
        except Exception as exc:  # noqa: BLE001 (never lose the record over a commitment bug)
            log.error("exchange log: personal fields of a %s %s body not committed (%s): stored as sent",
                      self.flow, side, type(exc).__name__)
            stored, fields = body, []
        personal.extend(fields)
        # the bytes as on the wire (secrets redacted), salted when a personal value is in them
        row[f"{side}_sha256"] = wire_digest(body, fields, LEAF_VERSION)
        row[f"{side}_size"] = len(body)
        if binary or len(stored) > self.blob_threshold:
            row[f"{side}_body"] = _EMPTY
            row[f"{side}_blob_sha256"] = hashlib.sha256(stored).hexdigest()
            blobs.append((stored, ctype))
        else:
            row[f"{side}_body"] = zlib.compress(stored)
            row[f"{side}_blob_sha256"] = None

    def record(self, exchange: Exchange) -> None:
        row: dict[str, Any] = {
            "started_at": exchange.started_at,
            "flow": self.flow,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "peer": exchange.peer,
            "operation": exchange.operation,
            "direction": exchange.direction,
            "method": exchange.method,
            "url": exchange.url,
            "attempt": exchange.attempt,
            "outcome": exchange.outcome,
            "peer_code": exchange.peer_code,
            "http_status": exchange.response_status,
            "duration_ms": exchange.duration_ms,
            "record_count": len(exchange.record_keys),
            "request_headers": exchange.request_headers,
            "response_headers": exchange.response_headers,
            "error": exchange.error,
            "leaf_version": LEAF_VERSION,
        }
        blobs: list[tuple[bytes, str | None]] = []
        personal: list[PersonalField] = []
        self._side("request", exchange.request_body, exchange.request_headers, row, blobs, personal)
        self._side("response", exchange.response_body, exchange.response_headers, row, blobs, personal)
        _storable_row(row)
        prepared = (row, blobs, personal, sorted({record_key_stored(k) for k in exchange.record_keys}))
        if self._held is not None:
            self._held.append(prepared)
            return
        with self.store.begin() as conn:
            self._write_all(conn, [prepared])

    @classmethod
    def _write_all(cls, conn: Connection, prepared: list[tuple[Any, ...]]) -> None:
        """Write prepared exchanges in one transaction, holding all their stored bodies first, in
        the order ``audit archive`` locks blobs in (by hash), so the two never deadlock on
        PostgreSQL."""
        blobs = [blob for _row, exchange_blobs, *_ in prepared for blob in exchange_blobs]
        if len(blobs) > 1:
            blobs.sort(key=lambda blob: hashlib.sha256(blob[0]).digest())
        for data, ctype in blobs:
            put_blob(conn, data, ctype)
        for row, _blobs, personal, keys in prepared:
            cls._write(conn, row, personal, keys)

    @staticmethod
    def _write(conn: Connection, row: dict[str, Any], personal: list[PersonalField], keys: list[str]) -> None:
        """One prepared exchange's rows (its stored bodies are put by :meth:`_write_all`)."""
        # one statement object with parameters: compiled once, not built per exchange
        exchange_id = conn.execute(_INSERT_EXCHANGE, row).inserted_primary_key[0]
        insert_many(conn, exchange_key, ("exchange_id", "record_key"), [(exchange_id, k) for k in keys])
        insert_many(conn, exchange_personal_field,
                    ("exchange_id", "side", "path", "kind", "commitment", "salt", "value"),
                    [(exchange_id, f.side, f.path, f.kind, f.commitment, f.salt, f.value) for f in personal])

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Within the block, exchanges are prepared at once but written by the next :meth:`begin`
        (the transaction in which the caller acts on the answer), never later than what they
        caused. Whatever is still held when the block ends (an exception) is written then, in
        its own transaction. Nested blocks share the outer one."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                try:
                    with self.store.begin() as conn:
                        self._write_all(conn, held)
                except Exception as exc:
                    for row, _blobs, _personal, keys in held:  # never lost without a word
                        log.error("exchange log: %s %s attempt %d started %s (HTTP %s, outcome %s, keys: %s) "
                                  "NOT RECORDED: %s", row["peer"], row["operation"], row["attempt"],
                                  row["started_at"].isoformat(), row["http_status"], row["outcome"],
                                  ", ".join(keys[:20]) or "none", _cause(exc))
                    raise

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction of :attr:`store` that first writes the held exchanges; they stop being
        held once it commits."""
        held = list(self._held or ())
        with self.store.begin() as conn:
            self._write_all(conn, held)
            yield conn
        if self._held:
            del self._held[:len(held)]


@contextmanager
def answer_transactions(store: Store, client: Any) -> Iterator[Callable[[], AbstractContextManager[Connection]]]:
    """How to open the transactions that act on a client's answers. When the client's exchange
    recorder writes to this bus database, a call's exchange-log rows are held and written in the
    next such transaction, so they commit together with what the answer caused (recorded no later
    than trusted, one commit instead of two); otherwise, plain transactions of ``store``.

    ``client`` is any connector with a ``transport`` (portal, one-stop...)."""
    recorder = getattr(getattr(client, "transport", None), "recorder", None)
    if isinstance(recorder, BusRecorder) and recorder.store is store:
        with recorder.holding():
            yield recorder.begin
    else:
        yield store.begin


def read_body(blob: bytes) -> bytes:
    """The stored body bytes of an exchange (personal values as commitment tokens; empty when the
    body is in ``exchange_blob``: see :func:`exchange_body`)."""
    return zlib.decompress(blob)


def personal_fields(conn: Connection, exchange_id: int, side: str | None = None) -> list[PersonalField]:
    """The personal fields of one exchange (salt and value None once redacted)."""
    t = exchange_personal_field
    query = select(t).where(t.c.exchange_id == exchange_id).order_by(t.c.side, t.c.path)
    if side is not None:
        query = query.where(t.c.side == side)
    return [PersonalField(r["side"], r["path"], r["kind"], r["commitment"],
                          None if r["salt"] is None else bytes(r["salt"]),
                          None if r["value"] is None else bytes(r["value"]))
            for r in conn.execute(query).mappings()]


def exchange_body(store: Store, row: Mapping[str, Any], side: str, *, restore: bool = True) -> bytes:
    """The ``side`` (request | response) body of an exchange-log row: from ``exchange_blob`` when
    stored by hash, with personal values put back when ``restore`` (``"[redacted]"`` where they
    were erased), else with their commitment tokens."""
    ref = row.get(f"{side}_blob_sha256")
    stored = read_blob(store, ref) if ref else zlib.decompress(bytes(row[f"{side}_body"]))
    if not restore:
        return stored
    with store.engine.connect() as conn:
        fields = personal_fields(conn, row["id"], side)
    return restore_body(stored, fields) if fields else stored


def record_key_stored(record_key: str) -> str:
    """``record_key`` as ``exchange_key`` holds it (:func:`lienthong.store.fit_key`): a peer's
    dossier number or reference longer than the column failed the whole record on PostgreSQL.
    Every lookup by key goes through it, so the whole key finds its exchanges. A lone surrogate
    (from a JSON escape) is kept as its ``\\udXXX`` escape: no database encodes it."""
    return fit_key(record_key if record_key.isascii() else _without_surrogates(record_key), _RECORD_KEY_LENGTH)


def exchanges_for_key(store: Store, record_key: str) -> list[dict[str, Any]]:
    """Every exchange that carried ``record_key``, oldest first (bodies left compressed)."""
    query = (
        select(exchange_log)
        .join(exchange_key, exchange_key.c.exchange_id == exchange_log.c.id)
        .where(exchange_key.c.record_key == record_key_stored(record_key))
        .order_by(exchange_log.c.id)
    )
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def count_exchanges(store: Store, run_id: str | None = None) -> int:
    query = select(func.count()).select_from(exchange_log)
    if run_id:
        query = query.where(exchange_log.c.run_id == run_id)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
