"""The bus database: cursors, the outbox, acknowledgements, dead letters, runs and the exchange log.

Plain SQLAlchemy Core on any SQLAlchemy URL: an SQLite file by default, PostgreSQL in the
scale-out shape. Everything a flow needs to survive a crash lives here, so a rerun continues
where the last one stopped (design §4).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeDecorator

from connectors.connection import ConnectionSpec

__all__ = ["DatabaseUnavailable", "Store", "blocked_keys", "canonical_json", "content_hash", "execute_many", "fit_key",
           "insert_ignore", "metadata", "resolve_dead_letters", "sqlalchemy_url", "throwaway_database",
           "upsert_acknowledgements", "utcnow", "write_lock"]

_log = logging.getLogger(__name__)
metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


class AwareDateTime(TypeDecorator):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: the bus stores aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


sync_cursor = Table(
    "sync_cursor",
    metadata,
    Column("flow", String(64), primary_key=True),
    Column("cursor", Text, nullable=False),
    Column("updated_at", AwareDateTime, nullable=False),
    Column("run_id", String(250)),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("record_key", String(200), nullable=False),
    Column("source_seq", Integer, nullable=False),
    Column("source_version", Integer),
    Column("source_payload", JSON, nullable=False),
    # pending → delivered | unchanged | rejected | superseded | stale; held while an earlier change
    # of the same record waits in dead letters (the per-record ordering guard); rejected → discarded
    # when an operator closes its dead letter without resending it (`lienthong deadletter discard`)
    Column("state", String(16), nullable=False, default="pending"),
    Column("operation", String(16)),  # insert | update, once delivered
    Column("payload_hash", String(64)),  # sha256 of what the peer received
    # sends that may have reached the peer without an answer; > 0 without an ack means "ask first"
    Column("attempts", Integer, nullable=False, default=0),
    Column("sent_at", AwareDateTime),
    Column("last_error", Text),
    Column("staged_run_id", String(250)),
    Column("staged_at", AwareDateTime, nullable=False),
    Column("done_run_id", String(250)),
    Column("done_at", AwareDateTime),
    UniqueConstraint("flow", "record_key", "source_seq", name="uq_outbox_event"),
    Index("ix_outbox_pending", "flow", "state", "id"),
    Index("ix_outbox_key", "flow", "record_key"),
)

delivery_state = Table(
    "delivery_state",
    metadata,
    Column("peer", String(64), primary_key=True),
    Column("record_key", String(200), primary_key=True),
    Column("payload_hash", String(64), nullable=False),
    Column("created_on_peer", Boolean, nullable=False),
    Column("source_version", Integer),  # the source's version of the acknowledged snapshot
    Column("peer_status", String(16)),  # the status the peer holds (final statuses never regress)
    Column("outbox_id", Integer),
    Column("acked_at", AwareDateTime, nullable=False),
    Column("acked_run_id", String(250)),
)

dead_letter = Table(
    "dead_letter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("record_key", String(200), nullable=False),
    Column("outbox_id", Integer),
    Column("run_id", String(250)),
    Column("stage", String(32), nullable=False),  # mapping | peer
    Column("error_class", String(100), nullable=False),
    Column("errors", JSON, nullable=False),  # [{field, rule, message}]
    Column("peer_code", String(32)),
    Column("attempts", Integer, nullable=False, default=0),  # sends to the peer before it was given up
    Column("source_payload", JSON, nullable=False),  # the original record, unmodified
    Column("created_at", AwareDateTime, nullable=False),
    Column("resolved_at", AwareDateTime),
    Column("resolution", Text),
    Index("ix_dead_letter_key", "flow", "record_key"),
)

progress_outbox = Table(
    "progress_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("record_key", String(200), nullable=False),  # the dossier
    Column("entry_key", String(250), nullable=False),  # the progress entry (dossier#step)
    Column("step_id", Integer, nullable=False),
    Column("occurred_at", String(14), nullable=False),  # ThoiDiemXuLy: the order of sending
    Column("source_payload", JSON, nullable=False),
    Column("payload", JSON(none_as_null=True)),  # the mapped record, once mapped (payload_hash set)
    Column("payload_hash", String(64)),
    # pending → in_flight → acked; rejected (dead-lettered); held behind a rejected earlier entry;
    # rejected → discarded (its dead letter closed without resending it: never sent)
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("staged_run_id", String(250)),
    Column("staged_at", AwareDateTime, nullable=False),
    Column("done_run_id", String(250)),
    Column("done_at", AwareDateTime),
    UniqueConstraint("flow", "entry_key", name="uq_progress_entry"),
    # The order deliver_progress sends in, read from the index, never sorted: dossier by dossier,
    # each in time order. It also finds a dossier's entries in a state. Entries of one dossier are
    # staged together, so a chunk's state changes touch few pages (in global time order, each of a
    # chunk's entries lay on a page of its own: issue #8, most of the bytes a sync wrote).
    Index("ix_progress_send", "flow", "state", "record_key", "occurred_at", "step_id", "id"),
)

catalogue_current = Table(
    "catalogue_current",
    metadata,
    Column("procedure_code", String(64), primary_key=True),
    Column("record", JSON, nullable=False),  # the canonical procedure record last pulled
    Column("record_hash", String(64), nullable=False),
    Column("published", Boolean, nullable=False),  # False once withdrawn from the national catalogue
    Column("updated_run_id", String(250)),
    Column("updated_at", AwareDateTime, nullable=False),
)

catalogue_change = Table(
    "catalogue_change",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(250), nullable=False),
    Column("procedure_code", String(64), nullable=False),
    Column("procedure_name", Text),
    Column("kind", String(16), nullable=False),  # added | amended | withdrawn
    Column("fields", JSON, nullable=False),  # canonical fields that changed, for amendments
    Column("agency_code", String(64)),
    Column("at", AwareDateTime, nullable=False),
    Index("ix_catalogue_change_run", "run_id"),
)

delivery_lease = Table(  # which worker handles which record right now (lienthong/leases.py)
    "delivery_lease",
    metadata,
    Column("flow", String(64), primary_key=True),
    Column("record_key", String(200), primary_key=True),
    Column("worker", String(120), nullable=False),
    Column("expires_at", AwareDateTime, nullable=False),
)

# -- payment receipts (lienthong/flows/payment_receipts.py) ------------------------------------
payment_txn = Table(  # one row per payment request (MaThamChieu) the bus follows
    "payment_txn",
    metadata,
    Column("reference", String(64), primary_key=True),  # MaThamChieu
    Column("dossier_code", String(64)),  # as the one-stop's payment request names it
    # whole đồng, 64-bit: a land fee passes 2^31 (the platform takes 12 digits, the ledger up to 10^12)
    Column("request_amount", BigInteger),  # what the one-stop asked for (whole đồng)
    Column("onestop_status", String(16)),  # pending | paid | failed | unmatched, as last listed
    # what the platform says: pending | paid | failed | unknown (QUERY could not find it); discarded:
    # an operator closed its platform dead letter (`lienthong deadletter discard`), never asked again
    Column("platform_status", String(16), nullable=False, default="pending"),
    Column("platform_amount", BigInteger),
    Column("transaction_id", String(64)),  # MaGiaoDich
    Column("bank", String(32)),
    Column("paid_at", String(40)),  # ISO 8601 with +07:00
    Column("answer", JSON(none_as_null=True)),  # the verified QUERY answer (checksum checked)
    Column("receipt_no", String(40)),  # SoBienLai, read from the GET_BILL PDF
    Column("receipt_sha256", String(64)),  # the PDF, in exchange_blob (pinned)
    # one-stop fee status: todo → updated | already (callback got there) | held (mismatch/unknown/conflict);
    # discarded: its onestop dead letter closed by an operator, the result never sent
    Column("onestop_state", String(16), nullable=False, default="todo"),
    # ledger: todo → accepted | unchanged (it already held it) | held | rejected (dead-lettered) → discarded
    # (its dead letter closed by an operator: never submitted again)
    Column("ledger_state", String(16), nullable=False, default="todo"),
    Column("ledger_hash", String(64)),  # sha256 of the ledger record acknowledged
    Column("hold_reason", String(40)),  # amount_differs | unknown_dossier | paid_twice | ...
    Column("first_seen_run", String(250)),
    Column("updated_run", String(250)),
    Column("updated_at", AwareDateTime, nullable=False),
    # when the platform was first asked (QUERY) about it; an unfinished payment is asked again at
    # next_ask_at (sooner while it is young, at most daily), and no longer once it has been asked
    # about for ASK_FOR (next_ask_at NULL while unfinished: given up; NULL once paid, and once
    # failed for FAILED_ASK_FOR, first_asked_at then being when the failure was recorded)
    Column("first_asked_at", AwareDateTime),
    Column("next_ask_at", AwareDateTime),
    # the dossier's applicant, read by the fee step's look-up of a paid payment's dossier, so the
    # ledger step need not read the dossier again; erased once the ledger holds the receipt
    Column("payer_name", Text),
    # when the one-stop opened the request (its createdAt, ISO 8601 with offset): the time of the
    # transaction's INIT, which GET_BILL must name (contract §4.9) when the reference names none
    Column("requested_at", String(40)),
    Index("ix_payment_txn_platform", "platform_status"),
    Index("ix_payment_txn_ask", "next_ask_at", "reference"),  # the payments due to be asked, in order
    Index("ix_payment_txn_updated", "updated_at"),  # what changed since the last reconciliation
    # the fee and ledger steps' work (finished payments not yet recorded, or held), found without
    # reading every finished payment of the years before
    Index("ix_payment_txn_fees_work", "onestop_state", "platform_status", "reference"),
    Index("ix_payment_txn_ledger_work", "ledger_state", "platform_status", "reference"),
)

reconciliation_item = Table(  # a disagreement kept for follow-up until a later run no longer finds it
    "reconciliation_item",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("record_key", String(200), nullable=False),  # the payment reference
    Column("kind", String(40), nullable=False),  # amount_differs | unknown_dossier | missing_receipt | ...
    Column("dossier_code", String(64)),
    Column("receipt_no", String(40)),
    Column("details", JSON, nullable=False),
    Column("first_seen_at", AwareDateTime, nullable=False),
    Column("first_seen_run", String(250)),
    Column("last_seen_at", AwareDateTime, nullable=False),
    Column("last_seen_run", String(250)),
    Column("resolved_at", AwareDateTime),
    Column("resolved_run", String(250)),
    Index("ix_reconciliation_open", "flow", "record_key", "kind", "resolved_at"),
)

sync_run = Table(
    "sync_run",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("flow", String(64), primary_key=True),
    Column("started_at", AwareDateTime, nullable=False),
    Column("finished_at", AwareDateTime),
    Column("counts", JSON, nullable=False, default=dict),
)

exchange_log = Table(
    "exchange_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", AwareDateTime, nullable=False),
    Column("flow", String(64)),
    Column("run_id", String(250)),
    Column("task_id", String(250)),
    Column("peer", String(64), nullable=False),
    Column("operation", String(100), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("method", String(10), nullable=False),
    Column("url", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("peer_code", String(32)),
    Column("http_status", Integer),
    Column("duration_ms", Float, nullable=False),
    Column("record_count", Integer, nullable=False),
    Column("request_headers", JSON, nullable=False),
    Column("request_body", LargeBinary, nullable=False),  # zlib-compressed, secrets redacted
    Column("request_sha256", String(64), nullable=False),
    Column("request_size", Integer, nullable=False),
    Column("response_headers", JSON, nullable=False),
    Column("response_body", LargeBinary, nullable=False),
    Column("response_sha256", String(64), nullable=False),
    Column("response_size", Integer, nullable=False),
    Column("error", Text),
    # leaf format 2 (lienthong.audit.records): NULL on rows written before it (leaf format 1)
    Column("leaf_version", Integer),
    # a body stored once in exchange_blob by content hash (binary or large), else NULL and inline
    Column("request_blob_sha256", String(64)),
    Column("response_blob_sha256", String(64)),
    Index("ix_exchange_run", "run_id"),
    Index("ix_exchange_peer_op", "peer", "operation", "started_at"),
)

exchange_key = Table(
    "exchange_key",
    metadata,
    Column("exchange_id", Integer, ForeignKey("exchange_log.id"), primary_key=True),
    Column("record_key", String(200), primary_key=True),
    Index("ix_exchange_key_key", "record_key"),
)

# the exchange log's seals (lienthong.audit): one signed Merkle root per batch of records, chained
exchange_seal = Table(
    "exchange_seal", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False), Column("first_id", Integer, nullable=False, unique=True),
    Column("last_id", Integer, nullable=False, unique=True), Column("count", Integer, nullable=False),
    Column("root", String(64), nullable=False), Column("prev_hash", String(64), nullable=False, unique=True),
    Column("seal_hash", String(64), nullable=False, unique=True), Column("signature", String(128), nullable=False),
    Column("key_fingerprint", String(64), nullable=False), Column("sealed_at", AwareDateTime, nullable=False),
)
exchange_seal_leaf = Table(  # one row per sealed record: its leaf hash, so the verifier can name it
    "exchange_seal_leaf", metadata,
    Column("exchange_id", Integer, primary_key=True, autoincrement=False),  # a record is sealed once
    Column("seal_seq", Integer, nullable=False), Column("leaf_hash", String(64), nullable=False),
    Index("ix_exchange_seal_leaf_seq", "seal_seq", "exchange_id"),
)
exchange_blob = Table(  # large or binary bodies (receipt PDFs...), once per content: sha256 of the bytes
    "exchange_blob", metadata,
    Column("sha256", String(64), primary_key=True), Column("content_type", String(200)),
    Column("size", Integer, nullable=False), Column("data", LargeBinary, nullable=False),  # zlib-compressed
    Column("pinned", Boolean, nullable=False, default=False),  # kept by a flow (read_blob): never pruned
    Column("created_at", AwareDateTime, nullable=False),
)
exchange_personal_field = Table(  # salted commitments to personal values; salt and value erased on redaction
    "exchange_personal_field", metadata,
    Column("exchange_id", Integer, ForeignKey("exchange_log.id"), primary_key=True, autoincrement=False),
    Column("side", String(8), primary_key=True),  # request | response
    Column("path", Text, primary_key=True),  # JSON pointer, or xml:<Element>[n]
    Column("kind", String(8), nullable=False),  # json | xml: how the token sits in the stored body
    Column("commitment", String(64), nullable=False),
    Column("salt", LargeBinary), Column("value", LargeBinary),  # NULL once redacted
    Column("redaction_id", Integer),
)
exchange_redaction = Table(  # who erased which personal values, when and why
    "exchange_redaction", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("at", AwareDateTime, nullable=False),
    Column("actor", String(200), nullable=False), Column("reason", Text, nullable=False),
    Column("record_key", String(200)), Column("exchange_ids", JSON, nullable=False),
    Column("fields", Integer, nullable=False),
)
exchange_archive = Table(  # sealed batches moved to evidence bundles and pruned from exchange_log
    "exchange_archive", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("first_seq", Integer, nullable=False), Column("last_seq", Integer, nullable=False),
    Column("first_id", Integer, nullable=False), Column("last_id", Integer, nullable=False),
    Column("records", Integer, nullable=False), Column("bundle_path", Text, nullable=False),
    Column("bundle_sha256", String(64), nullable=False), Column("manifest_sha256", String(64), nullable=False),
    Column("archived_at", AwareDateTime, nullable=False),
    # Ed25519 over the row without its path (lienthong.audit.records.archive_body): the row is what
    # lets a seal's records be absent, so a forged one must not pass (NULL: a row of revision < 0007)
    Column("key_fingerprint", String(64)), Column("signature", Text),
)


def sqlalchemy_url(spec: ConnectionSpec) -> str:
    """The SQLAlchemy URL for a bus-database connection (see ``ConnectionSpec.sqlalchemy_url``)."""
    return spec.sqlalchemy_url()


# Encoders built once: ``json.dumps`` with options builds a new encoder on every call.
_json_text = json.JSONEncoder(ensure_ascii=False).encode
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


class DatabaseUnavailable(RuntimeError):
    """The server to make a throw-away database on cannot be reached, or refused to create it."""


@contextmanager
def throwaway_database(admin_url: str, prefix: str, *, keep: bool = False, connect_timeout: int = 10) -> Iterator[str]:
    """A new, empty PostgreSQL database named ``<prefix>_<10 random hex digits>`` on the server of
    ``admin_url`` (a database there its user may connect to and ``CREATE DATABASE`` from); yields
    the new database's URL and drops it afterwards, also when the body failed, unless ``keep``.

    What the test suite and ``python -m bench --postgres`` run a bus against. The URL yielded holds
    the password for the caller's engine: never show it as is.

    Raises:
        DatabaseUnavailable: the server cannot be reached or refused the ``CREATE DATABASE``
            (the message names the server without its password).
    """
    import uuid

    url = make_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": connect_timeout})
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"cannot create a database on {url.render_as_string(hide_password=True)}: "
                                      f"{type(exc.orig).__name__}: {str(exc.orig).strip()}") from None
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            if not keep:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching to WAL needs the database's lock, and another process
    # writing it then made the pragma fail with "database is locked" once the driver's own timeout
    # (5 s by default) ran out, instead of waiting like every later statement.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Handle on the bus database.

    Args:
        url: an SQLAlchemy URL. SQLite files get WAL mode and a busy timeout so that several
            task processes can write at once.
    """

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # JSON columns keep Vietnamese text as UTF-8, not \u escapes (a third of the bytes of a
        # staged dossier); what is read back is the same.
        self.engine: Engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_text)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @classmethod
    def from_connection(cls, spec: ConnectionSpec) -> Store:
        return cls(sqlalchemy_url(spec))

    def create_schema(self) -> None:
        """Create the schema, or upgrade it to the newest revision (``lienthong/migrations``);
        idempotent and cheap when the database is already there."""
        from lienthong.migrations import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- planner statistics (PostgreSQL) -------------------------------------------------------------
    #: A table is analyzed once this many rows changed since its last ANALYZE, plus this share of its
    #: rows (autovacuum's own rule: 50 rows + 10 %; looser here, so a run rarely pays for it).
    ANALYZE_BASE_ROWS = 1000
    ANALYZE_SCALE = 0.2
    #: ``default_statistics_target`` of these ANALYZEs (PostgreSQL's default is 100): a sample of
    #: 300 × this rows. What the flows' plans need is the table's size and its few states, not
    #: fine histograms; at 93,000 progress entries (323 MB) an ANALYZE took 600 ms with the
    #: default and 45 ms with 10, and a first sync analyzes each outbox table a few dozen times
    #: as it grows (issue #8). A column whose target was set (``ALTER TABLE … SET STATISTICS``)
    #: keeps its own; autovacuum's ANALYZE keeps the server's default.
    ANALYZE_STATISTICS_TARGET = 10

    def keep_statistics(self, tables: Iterable[Table]) -> list[str]:
        """On PostgreSQL, ANALYZE the ``tables`` that changed much since their statistics were
        taken; return the names analyzed (nothing to do on SQLite, whose planner keeps to indexes).

        A first sync grows the outbox tables from nothing to millions of rows within one run. Until
        they are analyzed PostgreSQL plans for a few rows and reads a whole index or table where
        one index probe would do: a step's cost then grows with the table (issue #8, found by
        ``python -m bench --postgres``). Autovacuum would analyze them, when it is on and gets
        there; the flows call this between batches instead of relying on it. A table another
        worker is analyzing is left to it (``lock_timeout``), and a failure here never fails a step.
        """
        if self.engine.dialect.name != "postgresql":
            return []
        names = [t.name for t in tables]
        analyzed: list[str] = []
        try:
            with self.engine.begin() as conn:
                due = list(conn.execute(text(
                    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
                    "WHERE s.relname = ANY(:names) AND s.schemaname = current_schema() "
                    "AND s.n_mod_since_analyze > :base + :scale * GREATEST(c.reltuples, 0)"),
                    {"names": names, "base": self.ANALYZE_BASE_ROWS, "scale": self.ANALYZE_SCALE}).scalars())
                if due:
                    conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                    conn.execute(text(f"SET LOCAL default_statistics_target = {int(self.ANALYZE_STATISTICS_TARGET)}"))
                    for name in sorted(due):
                        conn.execute(text(f'ANALYZE "{name}"'))
                        analyzed.append(name)
        except DBAPIError as exc:  # another worker's ANALYZE holds the lock, or no privilege: plans stay
            _log.info("planner statistics of %s not refreshed: %s", ", ".join(names), type(exc).__name__)
            return []
        if analyzed:
            _log.info("analyzed %s (grown since their planner statistics)", ", ".join(analyzed))
        return analyzed

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def settled_max_id(self, table: Table) -> int | None:
        """The highest ``id`` of ``table`` below which no row can still appear: what a bookmark over
        ids may move to. On PostgreSQL a transaction takes its id from the sequence inside its
        ``INSERT`` and may commit after one that took a higher id; read under ``LOCK TABLE ... IN
        SHARE MODE``, which waits for the transactions still writing the table (and holds new
        writers back for that one read), every id up to the answer is committed or never will be.
        SQLite has one writer at a time, so its ids commit in order. None for an empty table."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"LOCK TABLE {table.name} IN SHARE MODE")
            return conn.execute(select(func.max(table.c.id))).scalar()

    # -- cursors -------------------------------------------------------------------------------
    def get_cursor(self, flow: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(sync_cursor.c.cursor).where(sync_cursor.c.flow == flow)).scalar()

    @staticmethod
    def set_cursor(conn: Connection, flow: str, cursor: str, run_id: str | None) -> None:
        """Store the flow's bookmark: one upsert, so two steps writing a flow's first bookmark at
        once (each finding no row to update) do not fail on the key; the last to commit wins."""
        def build() -> Any:
            stmt = dialect_insert(conn, sync_cursor)
            return stmt.on_conflict_do_update(index_elements=[sync_cursor.c.flow], set_={
                name: stmt.excluded[name] for name in ("cursor", "updated_at", "run_id")})

        conn.execute(built_once(("set_cursor", conn.dialect.name), build),
                     {"flow": flow, "cursor": cursor, "updated_at": utcnow(), "run_id": run_id})

    # -- runs ----------------------------------------------------------------------------------
    def add_run_counts(self, flow: str, run_id: str, counts: dict[str, Any], *, finished: bool = False) -> None:
        """Merge ``counts`` into the run's summary (numbers add up, lists extend).

        Steps of one run may add at once (the catalogue's two pushes run in parallel): the run's row
        is made first if missing (a conflict skipped, never an error) and read locked, so one step
        waits for the other instead of writing its merge over it (a lost update on PostgreSQL; on
        SQLite the insert takes the write lock before the read)."""
        with self.begin() as conn:
            conn.execute(built_once(("run_row", conn.dialect.name),
                                    lambda: dialect_insert(conn, sync_run).on_conflict_do_nothing()),
                         {"flow": flow, "run_id": run_id, "started_at": utcnow(), "counts": {}})
            row = conn.execute(
                select(sync_run.c.counts).where(sync_run.c.flow == flow, sync_run.c.run_id == run_id)
                .with_for_update()
            ).first()
            merged: dict[str, Any] = dict(row.counts) if row else {}
            for key, value in counts.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    merged[key] = merged.get(key, 0) + value
                elif isinstance(value, list):
                    merged[key] = list(merged.get(key, [])) + value
                else:
                    merged[key] = value
            values: dict[str, Any] = {"counts": merged}
            if finished:
                values["finished_at"] = utcnow()
            conn.execute(
                sync_run.update().where(sync_run.c.flow == flow, sync_run.c.run_id == run_id).values(**values)
            )

    def run_summary(self, flow: str, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sync_run).where(sync_run.c.flow == flow, sync_run.c.run_id == run_id)
            ).mappings().first()
            if row is None:
                return None
            exchanges = conn.execute(
                select(func.count()).select_from(exchange_log).where(exchange_log.c.run_id == run_id)
            ).scalar_one()
        return {**dict(row), "exchanges": exchanges}

    def latest_run(self, flow: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            run_id = conn.execute(
                select(sync_run.c.run_id).where(sync_run.c.flow == flow).order_by(sync_run.c.started_at.desc())
            ).scalar()
        return self.run_summary(flow, run_id) if run_id else None

    # -- dead letters --------------------------------------------------------------------------
    @staticmethod
    def add_dead_letter(
        conn: Connection,
        *,
        flow: str,
        record_key: str,
        outbox_id: int | None,
        run_id: str | None,
        stage: str,
        error: Exception,
        errors: list[dict[str, str]],
        source_payload: Any,
        peer_code: str | None = None,
        attempts: int = 0,
    ) -> None:
        conn.execute(
            dead_letter.insert().values(
                attempts=attempts,
                flow=flow,
                record_key=record_key,
                outbox_id=outbox_id,
                run_id=run_id,
                stage=stage,
                error_class=type(error).__name__,
                errors=errors,
                peer_code=peer_code,
                source_payload=source_payload,
                created_at=utcnow(),
            )
        )

    def dead_letters(self, flow: str | None = None, *, unresolved_only: bool = True) -> list[dict[str, Any]]:
        query = select(dead_letter).order_by(dead_letter.c.id)
        if flow:
            query = query.where(dead_letter.c.flow == flow)
        if unresolved_only:
            query = query.where(dead_letter.c.resolved_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


_BUILT: dict[tuple[Any, ...], Any] = {}


def built_once(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The statement ``build()`` makes, made once per ``key`` (name the dialect and whatever else
    shapes it in the key): building a statement and its cache key costs more than running it
    (issue #8)."""
    stmt = _BUILT.get(key)
    if stmt is None:
        stmt = _BUILT[key] = build()
    return stmt


def dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT on ``table`` in the connection's dialect (PostgreSQL or SQLite), which both give
    ``ON CONFLICT`` clauses: ``.on_conflict_do_nothing()``, ``.on_conflict_do_update()``."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _same_columns(table: Table, rows: list[dict[str, Any]]) -> None:
    """Refuse rows that do not all name the same columns: a statement run for many rows is built
    from the first, and SQLAlchemy would silently drop the values of columns it does not name."""
    first = rows[0].keys()
    odd = next((i for i, r in enumerate(rows) if r.keys() != first), None)
    if odd is not None:
        raise ValueError(f"insert into {table.name}: row {odd} names columns {sorted(rows[odd])}, "
                         f"row 0 names {sorted(first)}; every row must name the same columns")


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]], constraint: str) -> int:
    """Insert rows, skipping those that would break the unique ``constraint``; return how many were new.

    Raises:
        ValueError: the rows do not all name the same columns (:func:`_same_columns`).
    """
    if not rows:
        return 0
    _same_columns(table, rows)
    plan = _driver_insert_plan(conn, table, rows)
    if plan is not None:
        values = _driver_values(plan, rows)
        columns = plan[3]
        if conn.dialect.name == "sqlite":
            return conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) "
                                        f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING",
                                        values).rowcount
        return _execute_values(conn, f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES %s "
                                     f"ON CONFLICT ON CONSTRAINT {constraint} DO NOTHING", values)

    def build() -> Any:
        stmt = dialect_insert(conn, table)
        # SQLite names no constraint in ON CONFLICT: any unique conflict skips the row there
        return stmt.on_conflict_do_nothing(constraint=constraint) if conn.dialect.name == "postgresql" \
            else stmt.on_conflict_do_nothing()

    return conn.execute(built_once(("insert_ignore", conn.dialect.name, table.name, constraint), build),
                        rows).rowcount


_DRIVER_PLANS: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[str, ...]], Any]] = weakref.WeakKeyDictionary()
#: Rows per statement of :func:`_execute_values` (psycopg2 writes their values into one INSERT).
VALUES_PAGE = 500


def _driver_path(conn: Connection) -> bool:
    """Can rows go to this connection's driver directly: SQLite's, or psycopg2 (``execute_values``)."""
    return conn.dialect.name == "sqlite" or (conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2")


@contextmanager
def _driver_cursor(conn: Connection) -> Iterator[Any]:
    """A cursor of the connection's own DBAPI connection, in its transaction, closed afterwards."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


def _execute_values(conn: Connection, sql: str, values: list[tuple[Any, ...]]) -> int:
    """Run an ``INSERT … VALUES %s …`` for ``values`` through psycopg2's ``execute_values``, a page of
    rows per statement, in the connection's transaction; the rows inserted (the sum of the pages'
    row counts: psycopg2 keeps only the last page's)."""
    from psycopg2.extras import execute_values

    inserted = 0
    with _driver_cursor(conn) as cursor:
        for start in range(0, len(values), VALUES_PAGE):
            execute_values(cursor, sql, values[start:start + VALUES_PAGE], page_size=VALUES_PAGE)
            inserted += cursor.rowcount
    return inserted


def _driver_values(plan: tuple[tuple[str, ...], list[Any], tuple[Any, ...], tuple[str, ...]],
                   rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows as the driver takes them, in the plan's column order (:func:`_driver_insert_plan`):
    each named value through its column's bind processor, then the left-out columns' defaults."""
    names, processors, tail, _ = plan
    return [(*(v if p is None else p(v) for v, p in zip((r[n] for n in names), processors, strict=True)), *tail)
            for r in rows]


def _driver_insert_plan(conn: Connection, table: Table, rows: list[dict[str, Any]]
                        ) -> tuple[tuple[str, ...], list[Any], tuple[Any, ...], tuple[str, ...]] | None:
    """On SQLite and on PostgreSQL through psycopg2, rows sent to the driver, each value converted
    by its column type's own bind processor (so what is stored is what SQLAlchemy would store): for
    thousands of staged rows, SQLAlchemy's per-row parameter handling cost more than the inserts
    (issue #8; on PostgreSQL it also sent an ``ON CONFLICT`` insert row by row, one round trip
    each). Returns the row keys in order, their processors, the converted constant defaults of the
    columns the rows leave out, and every column the statement names; None (SQLAlchemy's way) for
    another driver, or when the rows name a column the table does not have, or a column they leave
    out has a default computed in Python. The rows all name the same columns (:func:`insert_ignore`
    checks)."""
    if not _driver_path(conn):
        return None
    first = rows[0].keys()
    names = tuple(first)
    plans = _DRIVER_PLANS.setdefault(conn.dialect, {})
    key = (table.name, names)
    if key not in plans:
        omitted = [c for c in table.columns if c.name not in first and c.default is not None]
        if any(n not in table.c for n in names) or any(not c.default.is_scalar for c in omitted):
            plans[key] = None
        else:
            # the processors SQLAlchemy's own execution uses (the dialect's implementation of each type)
            tail = []
            for c in omitted:
                convert = c.type._cached_bind_processor(conn.dialect)
                tail.append(c.default.arg if convert is None else convert(c.default.arg))
            plans[key] = (names, [table.c[n].type._cached_bind_processor(conn.dialect) for n in names],
                          tuple(tail), (*names, *(c.name for c in omitted)))
    return plans[key]


def upsert_acknowledgements(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Record peers' acknowledgements: one upsert on ``delivery_state`` (peer, record_key) for all
    ``rows``; an existing row gets the given columns (every row names the same ones), keeps the others.
    A key given twice ends with its last row, as row by row. Through psycopg2 the rows go in pages
    of statements (``execute_batch``), not one round trip each."""
    if not rows:
        return
    _same_columns(delivery_state, rows)
    columns = tuple(rows[0])
    plan = _driver_insert_plan(conn, delivery_state, rows) if conn.dialect.name == "postgresql" else None
    if plan is not None:
        from psycopg2.extras import execute_batch

        named = plan[3]
        changed = [n for n in columns if n not in ("peer", "record_key")]
        sql = (f"INSERT INTO {delivery_state.name} ({', '.join(named)}) VALUES ({', '.join(['%s'] * len(named))}) "
               f"ON CONFLICT (peer, record_key) DO "
               + (f"UPDATE SET {', '.join(f'{n} = EXCLUDED.{n}' for n in changed)}" if changed else "NOTHING"))
        with _driver_cursor(conn) as cursor:
            execute_batch(cursor, sql, _driver_values(plan, rows), page_size=VALUES_PAGE)
        return

    def build() -> Any:
        stmt = dialect_insert(conn, delivery_state)
        return stmt.on_conflict_do_update(
            index_elements=[delivery_state.c.peer, delivery_state.c.record_key],
            set_={name: stmt.excluded[name] for name in columns if name not in ("peer", "record_key")})

    conn.execute(built_once(("upsert_acknowledgements", conn.dialect.name, columns), build), rows)


def insert_many(conn: Connection, table: Table, columns: tuple[str, ...], values: list[tuple[Any, ...]]) -> None:
    """Insert rows given as tuples of ``columns``, in one statement run for all of them.

    For columns whose values need no type processing (text, integers, bytes, None). On SQLite the
    statement goes straight to the driver: SQLAlchemy's per-row parameter processing cost more
    than the inserts themselves on the exchange log's key and personal-field rows (issue #8); through
    psycopg2 it goes to ``execute_values``, a page of rows per statement.
    """
    if not values:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) "
                             f"VALUES ({', '.join('?' * len(columns))})", values)
    elif _driver_path(conn):
        _execute_values(conn, f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES %s", values)
    else:
        conn.execute(table.insert(), [dict(zip(columns, v, strict=True)) for v in values])


_COMPILED: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, Any]]] = weakref.WeakKeyDictionary()


def execute_many(conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
    """Run ``statement`` (an UPDATE or DELETE whose row count the caller does not need) once for
    each of ``rows``, in the connection's transaction.

    Through psycopg2 the statements go in pages (``execute_batch``: one round trip per
    :data:`VALUES_PAGE` rows), each value converted by its bind parameter's own processor, as
    SQLAlchemy's execution would: the driver's ``executemany`` sends one statement per round trip,
    which cost the dossier flow about 0.4 ms per delivered dossier on PostgreSQL (issue #8). Elsewhere
    it is SQLAlchemy's ``executemany``. ``statement`` should be built once (a module constant):
    its compiled form is kept per dialect.
    """
    if not rows:
        return
    if len(rows) == 1 or conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg2":
        conn.execute(statement, rows)
        return
    from psycopg2.extras import execute_batch

    compiled_for = _COMPILED.setdefault(conn.dialect, {})
    held = compiled_for.get(id(statement))
    if held is None or held[0] is not statement:
        held = compiled_for[id(statement)] = (statement, statement.compile(dialect=conn.dialect))
    compiled = held[1]
    if compiled.positional:  # pragma: no cover - psycopg2's paramstyle is pyformat (named)
        conn.execute(statement, rows)
        return
    processors = compiled._bind_processors  # what SQLAlchemy's own execution applies
    params = []
    for row in rows:
        values = compiled.construct_params(row)
        for name, process in processors.items():
            if name in values:
                values[name] = process(values[name])
        params.append(values)
    with _driver_cursor(conn) as cursor:
        execute_batch(cursor, compiled.string, params, page_size=VALUES_PAGE)


def canonical_json(value: Any) -> bytes:
    """The bytes a payload hash is computed over: sorted keys, no spaces, UTF-8."""
    return _CANONICAL(value).encode()


def content_hash(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s canonical JSON: what acknowledgements compare payloads by."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def fit_key(text: str, limit: int) -> str:
    """A peer's key or code as a column of ``limit`` characters holds it: unchanged when it fits;
    one longer, or holding a NUL character (which PostgreSQL's text refuses), is cut to fit (NULs
    shown as ``\\0``) and ends in ``…`` and a hash of the whole, so two keys cut alike stay apart
    and the whole key finds it again through this same function."""
    if len(text) <= limit and "\x00" not in text:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return text.replace("\x00", "\\0")[: limit - 13] + "…" + digest


@contextmanager
def sqlite_file_lock(engine: Engine, suffix: str) -> Iterator[None]:
    """An exclusive lock on the file ``<database><suffix>`` beside an SQLite database, waited for
    and held until the block ends: it serialises, across processes, work SQLite's own locks do not
    (DDL under the Python driver, a job of several transactions). Nothing to hold on another
    dialect or an in-memory database (one process)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}{suffix}", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_lock(conn: Connection) -> None:
    """On SQLite, take the database's write lock now unless this transaction writes already: the
    driver opens a transaction only at its first write, so what is read before it is read outside
    any transaction, and another process may commit in between. (PostgreSQL: nothing to do.)"""
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def blocked_keys(conn: Connection, flow: str, keys: Iterable[str]) -> set[str]:
    """Keys of ``keys`` with an unresolved dead letter in ``flow``: a flow leaves them alone until
    the dead letter is replayed (the per-record ordering guard).

    The dead letters found stay as read until the caller's transaction ends: a replay resolving
    one waits for the flow to have held the record's changes (and then puts them back in line),
    instead of committing in between and leaving them held with no dead letter to replay. A replay
    that resolved one first makes this read wait and not find it. On PostgreSQL they are read
    ``FOR SHARE``, locked in id order as :func:`resolve_dead_letters` locks them (in another order
    a replay of several dead letters and a batch could each wait for the other: a deadlock); on
    SQLite the read takes the database's write lock first, when the caller's transaction has not
    written yet (a batch whose leases were all held already)."""
    keys = list(keys)
    if not keys:
        return set()
    write_lock(conn)
    return set(conn.execute(_BLOCKED, {"b_flow": flow, "b_keys": keys}).scalars())


_BLOCKED = select(dead_letter.c.record_key).where(
    dead_letter.c.flow == bindparam("b_flow"), dead_letter.c.record_key.in_(bindparam("b_keys", expanding=True)),
    dead_letter.c.resolved_at.is_(None)).order_by(dead_letter.c.id).with_for_update(read=True)


def resolve_dead_letters(conn: Connection, query: Any, resolution: str) -> list[Any]:
    """Resolve the unresolved dead letters ``query`` (a SELECT of ``dead_letter`` columns, its
    ``resolved_at IS NULL`` condition included) finds, with ``resolution``, in the caller's
    transaction; return their rows, in id order: those this call resolved, and only those.

    The letters are locked before they are resolved (PostgreSQL: ``FOR UPDATE`` in id order, the
    order :func:`blocked_keys` locks them in; SQLite: the database's write lock, before the read),
    so two replays at once resolve each dead letter once: the second waits for the first and no
    longer finds the ones it resolved (each requeued its records once)."""
    write_lock(conn)
    letters = conn.execute(query.order_by(dead_letter.c.id).with_for_update()).all()
    if letters:
        ids = [lt.id for lt in letters]
        for start in range(0, len(ids), 500):
            conn.execute(dead_letter.update().where(dead_letter.c.id.in_(ids[start:start + 500]),
                                                    dead_letter.c.resolved_at.is_(None))
                         .values(resolved_at=utcnow(), resolution=resolution))
    return letters


# -- reports (lienthong/reports) -----------------------------------------------------------------
# The facts the KPI reports count, one row per dossier: its newest staged one-stop snapshot,
# reduced to what statistics need. Filled from the outbox by lienthong.reports.facts (nothing in
# the sync flows depends on it).
dossier_fact = Table(
    "dossier_fact",
    metadata,
    Column("dossier_no", String(200), primary_key=True),
    Column("agency_code", String(64)),  # govAgencyCode: the receiving unit
    Column("agency_name", Text),
    Column("procedure_code", String(64)),  # serviceCode (catalogue_current.procedure_code)
    Column("channel", String(16)),  # submissionChannel: counter | online | postal
    Column("status", String(32)),  # the one-stop's status key
    Column("submitted_at", AwareDateTime),
    Column("received_at", AwareDateTime),
    Column("due_at", AwareDateTime),
    Column("finished_at", AwareDateTime),
    Column("released_at", AwareDateTime),
    Column("modified_at", AwareDateTime),
    Column("progress_count", Integer, nullable=False, default=0),
    Column("source_version", Integer),
    Column("outbox_id", Integer),  # the outbox row the fact was taken from
    Column("updated_at", AwareDateTime, nullable=False),
    Index("ix_dossier_fact_agency", "agency_code"),
    Index("ix_dossier_fact_submitted", "submitted_at"),
)

agreement_run = Table(  # one cross-system check of one report run
    "agreement_run",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("check_name", String(64), primary_key=True),  # dossier_status | fee_payment | ...
    Column("systems", String(200), nullable=False),  # e.g. "onestop↔national_portal"
    Column("as_of", AwareDateTime, nullable=False),
    Column("started_at", AwareDateTime, nullable=False),
    Column("finished_at", AwareDateTime),
    Column("checked", Integer, nullable=False, default=0),
    Column("agreeing", Integer, nullable=False, default=0),
    Column("differing", Integer, nullable=False, default=0),
    Column("note", Text),  # why a check did not run (a peer not configured...)
)

agreement_difference = Table(  # one disagreement found by a check
    "agreement_difference",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("check_name", String(64), primary_key=True),
    Column("record_key", String(200), primary_key=True),  # the dossier, the payment reference...
    Column("aspect", String(32), primary_key=True),  # missing | status | progress | amount | receipt ...
    Column("agency_code", String(64)),
    Column("dossier_no", String(200)),
    Column("value_a", Text),  # what the first system holds
    Column("value_b", Text),  # what the second system holds
    Column("since", AwareDateTime),  # when the difference began at the latest
    Column("age_seconds", Integer),  # as_of − since
    Column("last_exchange_id", Integer),  # the last exchange-log record that carried the key
    Column("last_exchange", Text),  # that record, in one line
    Column("detail", Text),
    Index("ix_agreement_difference_key", "record_key"),
)
