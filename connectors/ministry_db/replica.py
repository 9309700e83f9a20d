"""The ministry's catalogue replica: a real SQL database reached through SQLAlchemy.

The ministry keeps a replica of the national catalogue of administrative procedures (thủ tục
hành chính). Its tables are the ministry's, so their names stay as a Vietnamese ministry
database spells them (``tthc_thu_tuc``, ``tthc_phi_le_phi``); the project creates them and moves
them forward with numbered migrations recorded in ``tthc_schema_version``, on an SQLite file by
default and on PostgreSQL by URL.

Writes are upserts keyed on the procedure code, one transaction per batch: a batch lands whole
or not at all, and replaying it changes nothing.

Every write transaction is an exchange with a peer, so it is recorded like a REST or SOAP call
(issue #6): given an :class:`~connectors.transport.ExchangeRecorder`, the replica records one
:class:`~connectors.transport.Exchange` per transaction — peer ``ministry_db``, method ``SQL``,
the database URL without its password, the rows written as canonical JSON (table, key, values),
the rows affected or the error as the response, the procedure codes as record keys — after the
commit (outcome ``ok``) or after the rollback (``transport_error`` when the database could not be
reached or gave up, ``peer_error`` when it refused the statement).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from connectors.connection import ConnectionSpec
from connectors.errors import FatalConnectorError, PeerUnavailable
from connectors.transport import (
    TRANSPORT_EXTRAS,
    Exchange,
    ExchangeRecorder,
    NullRecorder,
    record_exchange,
    transport_extra,
)

__all__ = ["MIGRATIONS", "MinistryReplica", "ProcedureRow", "metadata", "sanitize_db_url"]

PEER = "ministry_db"
METHOD = "SQL"
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword", "token", "secret"})

metadata = MetaData()

schema_version = Table(
    "tthc_schema_version",
    metadata,
    Column("phien_ban", Integer, primary_key=True),  # migration number
    Column("mo_ta", Text, nullable=False),
    Column("ap_dung_luc", DateTime(timezone=True), nullable=False),
)

thu_tuc = Table(
    "tthc_thu_tuc",
    metadata,
    Column("ma_tthc", String(64), primary_key=True),
    Column("ten_tthc", Text, nullable=False),
    Column("ma_linh_vuc", String(64)),
    Column("ten_linh_vuc", Text),
    Column("ma_co_quan_cong_bo", String(64)),
    Column("cap_thuc_hien", String(64)),  # comma-separated CAPTHUCHIEN codes, e.g. "1,2"
    Column("muc_do_dvc", String(32)),  # "toan_trinh", "mot_phan", or null
    Column("trang_thai", String(16), nullable=False),  # "cong_bo" | "bai_bo"
    Column("noi_dung", JSON, nullable=False),  # the whole canonical procedure record
    Column("ma_bam_noi_dung", String(64), nullable=False),  # sha256 of noi_dung, for reconciliation
    Column("cap_nhat_luc", DateTime(timezone=True), nullable=False),
)

phi_le_phi = Table(
    "tthc_phi_le_phi",
    metadata,
    Column("ma_tthc", String(64), primary_key=True),
    Column("thu_tu", Integer, primary_key=True),  # position among the procedure's fees
    Column("kenh", String(8)),  # KENH 1/2/3
    Column("ma_phi_le_phi", String(64)),
    Column("so_tien_vnd", BigInteger),  # parsed amount; null when the text is not an amount
    Column("so_tien_goc", Text, nullable=False),  # the text the portal published, kept verbatim
    Column("mo_ta", Text),
)


def _migration_1(conn: Connection) -> None:
    """Create the replica's tables."""
    metadata.create_all(conn, tables=[thu_tuc, phi_le_phi])


# -- statistics written by lienthong's reports (lienthong/reports/ministry.py) --------------------
#: online-service KPIs per period and agency; ma_co_quan "*" is the whole province
thong_ke_dvc = Table(
    "tk_dvc_truc_tuyen",
    metadata,
    Column("tu_ngay", String(10), primary_key=True),  # first day, yyyy-mm-dd (Asia/Ho_Chi_Minh)
    Column("den_ngay", String(10), primary_key=True),  # last day, included
    Column("ma_co_quan", String(64), primary_key=True),
    Column("ten_co_quan", Text),
    Column("so_tthc", Integer, nullable=False),
    Column("so_dvc_toan_trinh", Integer, nullable=False),  # mức độ 4 / toàn trình
    Column("so_dvc_mot_phan", Integer, nullable=False),  # mức độ 3 / một phần
    Column("so_tthc_khong_truc_tuyen", Integer, nullable=False),  # mức độ 1-2
    Column("so_tthc_chua_cau_hinh", Integer, nullable=False),  # no LayDVC configuration
    Column("ty_le_toan_trinh", Float),
    Column("ty_le_mot_phan", Float),
    Column("hs_tiep_nhan", Integer, nullable=False),
    Column("hs_truc_tuyen", Integer, nullable=False),
    Column("hs_truc_tuyen_toan_trinh", Integer, nullable=False),
    Column("hs_truc_tuyen_mot_phan", Integer, nullable=False),
    Column("hs_truc_tuyen_khac", Integer, nullable=False),  # procedure at mức độ 1-2 or unknown
    Column("ty_le_hs_truc_tuyen", Float),
    Column("hs_da_xu_ly", Integer, nullable=False),
    Column("hs_dung_han", Integer, nullable=False),
    Column("hs_tre_han", Integer, nullable=False),
    Column("ty_le_dung_han", Float),
    Column("hs_qua_han_chua_xu_ly", Integer, nullable=False),
    # thresholds the toàn trình share is below, e.g. "<50%,<30%": as many as the report was given
    # (VARCHAR(64) until migration 3, which PostgreSQL enforced: a dozen thresholds lost the report)
    Column("canh_bao", Text),
    Column("tinh_den", DateTime(timezone=True), nullable=False),  # as of
    Column("cap_nhat_luc", DateTime(timezone=True), nullable=False),
)

#: one cross-system check of one agreement run
doi_soat_tong_hop = Table(
    "ds_doi_soat_tong_hop",
    metadata,
    Column("ma_lan_doi_soat", String(250), primary_key=True),
    Column("kiem_tra", String(64), primary_key=True),
    Column("he_thong", String(200), nullable=False),
    Column("tinh_den", DateTime(timezone=True), nullable=False),
    Column("so_ban_ghi", Integer, nullable=False),
    Column("so_khop", Integer, nullable=False),
    Column("so_lech", Integer, nullable=False),
    Column("ghi_chu", Text),
    Column("cap_nhat_luc", DateTime(timezone=True), nullable=False),
)

#: one disagreement found by a check
doi_soat_chenh_lech = Table(
    "ds_doi_soat_chenh_lech",
    metadata,
    Column("ma_lan_doi_soat", String(250), primary_key=True),
    Column("kiem_tra", String(64), primary_key=True),
    Column("ma_ban_ghi", String(200), primary_key=True),
    Column("khia_canh", String(32), primary_key=True),
    Column("ma_co_quan", String(64)),
    Column("ma_ho_so", String(200)),
    Column("gia_tri_a", Text),
    Column("gia_tri_b", Text),
    Column("tu_luc", DateTime(timezone=True)),
    Column("tuoi_giay", BigInteger),
    Column("nhat_ky_cuoi", Text),
    Column("cap_nhat_luc", DateTime(timezone=True), nullable=False),
)


def _migration_2(conn: Connection) -> None:
    """Create the report tables (online-service KPIs, cross-system agreement)."""
    metadata.create_all(conn, tables=[thong_ke_dvc, doi_soat_tong_hop, doi_soat_chenh_lech])


def _migration_3(conn: Connection) -> None:
    """``tk_dvc_truc_tuyen.canh_bao`` as TEXT: the warning lists every threshold an agency is below.
    SQLite does not enforce a VARCHAR's length, and its column already takes any text."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE tk_dvc_truc_tuyen ALTER COLUMN canh_bao TYPE TEXT")


#: (number, description, step). Append only; a number is never reused.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "tạo bảng tthc_thu_tuc và tthc_phi_le_phi", _migration_1),
    (2, "tạo bảng thống kê DVC trực tuyến và đối soát (tk_dvc_truc_tuyen, ds_doi_soat_*)", _migration_2),
    (3, "tk_dvc_truc_tuyen.canh_bao kiểu TEXT (mọi ngưỡng cảnh báo)", _migration_3),
]


def sanitize_db_url(url: str) -> str:
    """The database URL as the exchange log may show it: no password (neither in the user-info
    nor as a query parameter), everything else kept."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: keep only what precedes any user-info
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else "(unparsable database URL)"
    query = {k: v for k, v in parsed.query.items() if k.lower() not in _SECRET_QUERY_KEYS}
    return parsed.set(query=query)._replace(password=None).render_as_string(hide_password=False)


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=_json_value).encode()


@dataclass(frozen=True)
class ProcedureRow:
    """One procedure as the replica stores it, with its fees."""

    ma_tthc: str
    ten_tthc: str
    ma_linh_vuc: str | None
    ten_linh_vuc: str | None
    ma_co_quan_cong_bo: str | None
    cap_thuc_hien: str | None
    muc_do_dvc: str | None
    noi_dung: dict[str, Any]
    ma_bam_noi_dung: str
    fees: Sequence[dict[str, Any]] = ()

    def nul_columns(self) -> list[str]:
        """Text columns (``fees[i].column`` for fees) holding a NUL character, which PostgreSQL text
        cannot store (psycopg2 refuses the whole statement); ``noi_dung`` is JSON and keeps it escaped."""
        found = [name for name in ("ma_tthc", "ten_tthc", "ma_linh_vuc", "ten_linh_vuc", "ma_co_quan_cong_bo",
                                   "cap_thuc_hien", "muc_do_dvc") if "\x00" in str(getattr(self, name) or "")]
        for i, fee in enumerate(self.fees):
            found += [f"fees[{i}].{k}" for k, v in fee.items() if isinstance(v, str) and "\x00" in v]
        return found

    def overlong_columns(self) -> list[tuple[str, int, int]]:
        """(column, the value's length, the column's limit) for each text longer than its column
        (``fees[i].column`` for fees): PostgreSQL refuses the whole statement, SQLite would store it."""
        found = _overlong(thu_tuc, lambda name: getattr(self, name, None), "")
        for i, fee in enumerate(self.fees):
            found += _overlong(phi_le_phi, fee.get, f"fees[{i}].")
        return found


def _overlong(table: Table, value_of: Callable[[str], Any], prefix: str) -> list[tuple[str, int, int]]:
    """(prefix + column, length, limit) for each of ``table``'s length-bound columns whose text
    (``value_of(column name)``) is longer than the column holds."""
    return [(prefix + column.name, len(value), column.type.length) for column in table.columns
            if getattr(column.type, "length", None) and isinstance(value := value_of(column.name), str)
            and len(value) > column.type.length]


def _connect_args(url: str, connect_timeout: float, statement_timeout: float) -> tuple[dict[str, Any], str]:
    """The driver arguments of ``url``'s engine, and the statement timeout its sessions run with
    as an error message names it (``""`` when none is known).

    PostgreSQL through psycopg2 or psycopg: libpq's ``connect_timeout`` (whole seconds) and
    ``-c statement_timeout=<ms>`` added to its ``options``, each unless the URL's query already sets
    it. SQLite: the driver's busy timeout (how long a statement waits for another connection's
    lock), unless the URL's query sets ``timeout``."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - create_engine reports the URL itself
        return {}, ""
    ours = f"{statement_timeout:g} s, extra.statement_timeout"
    if parsed.get_backend_name() == "sqlite":
        if "timeout" in parsed.query:
            return {}, "the busy timeout the database URL sets"
        return {"timeout": float(statement_timeout)}, ours
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in ("psycopg2", "psycopg"):
        return {}, ""
    args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = max(1, math.ceil(connect_timeout))
    options = parsed.query.get("options", "")
    options = " ".join(options) if isinstance(options, tuple) else str(options)
    if "statement_timeout" in options:  # the connection's own libpq options win
        return args, "the one the connection's options set"
    args["options"] = f"{options} -c statement_timeout={max(1, math.ceil(statement_timeout * 1000))}".strip()
    return args, ours


#: What a statement the database refused for good says about the refusal, by its class.
_REFUSALS: tuple[tuple[type[DBAPIError], str], ...] = (
    (ProgrammingError, "the ministry schema is not what the replica expects"),
    (IntegrityError, "a row breaks a constraint of the table"),
    (DataError, "a value does not fit its column"),
)
#: SQLite's words for a schema it does not hold (its driver calls them OperationalError).
_SQLITE_SCHEMA_MISMATCH = ("no such table", "no such column", "has no column named")


def _refusal(exc: SQLAlchemyError) -> str | None:
    """What no retry fixes about a failed statement, or ``None`` when retrying may help: a missing
    table or column (``ProgrammingError``; SQLite's "no such table/column"), a constraint
    (``IntegrityError``), a value the column does not take (``DataError``)."""
    for kind, what in _REFUSALS:
        if isinstance(exc, kind):
            return what
    if isinstance(exc, OperationalError) and any(m in str(exc.orig) for m in _SQLITE_SCHEMA_MISMATCH):
        return _REFUSALS[0][1]
    return None


def _tables_of(exc: SQLAlchemyError) -> list[str]:
    """The replica's tables the failed statement names (its SQL text, never its parameters), else
    the table the driver reports."""
    statement = str(getattr(exc, "statement", None) or "")
    named = [name for name in metadata.tables if re.search(rf"\b{name}\b", statement)]
    table = getattr(getattr(getattr(exc, "orig", None), "diag", None), "table_name", None)
    return named or ([table] if table else [])


def _timed_out(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` is a statement the statement timeout cancelled (PostgreSQL's
    query_canceled for it) or one that waited out SQLite's busy timeout."""
    orig = getattr(exc, "orig", None)
    message = str(orig or "").lower()
    if getattr(orig, "pgcode", None) == "57014":
        return "statement timeout" in message
    return isinstance(exc, OperationalError) and ("database is locked" in message
                                                  or "database table is locked" in message)


class MinistryReplica:
    """Reads and writes the ministry's catalogue replica.

    Args:
        url: an SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg2://...``).
        recorder: where each write transaction is recorded (the bus's exchange log in a flow);
            nothing is recorded without one.
        connect_timeout: seconds a PostgreSQL connection may take to open (libpq's
            ``connect_timeout``, rounded up to whole seconds), unless the URL sets its own; without
            one an unreachable host holds a task for the kernel's TCP timeout (minutes).
        statement_timeout: seconds one statement may run, waiting for locks included
            (PostgreSQL's ``statement_timeout``, unless the URL's ``options`` set one; SQLite's
            busy timeout, unless the URL sets ``timeout``); without one a lock held by someone else
            in the ministry database held a task for ever. A statement it ends is a retriable
            :class:`PeerUnavailable` naming it.
    """

    def __init__(self, url: str, recorder: ExchangeRecorder | None = None, *,
                 connect_timeout: float = TRANSPORT_EXTRAS["connect_timeout"][0],
                 statement_timeout: float = TRANSPORT_EXTRAS["statement_timeout"][0]):
        self.url = url
        self.recorder: ExchangeRecorder = recorder or NullRecorder()
        self.log_url = sanitize_db_url(url)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        connect_args, self._statement_timeout = _connect_args(url, connect_timeout, statement_timeout)
        self.engine: Engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    @classmethod
    def from_connection(cls, spec: ConnectionSpec, recorder: ExchangeRecorder | None = None) -> MinistryReplica:
        """``extra.sqlalchemy_url``, an ``sqlite`` connection (host = file) or a ``postgres`` one;
        ``extra.connect_timeout`` (default 3.05 s, as for every peer) bounds opening a connection,
        ``extra.statement_timeout`` (default 30 s) each statement."""
        return cls(spec.sqlalchemy_url(), recorder=recorder,
                   connect_timeout=float(transport_extra(spec.extra, "connect_timeout", conn_id=spec.conn_id)),
                   statement_timeout=float(transport_extra(spec.extra, "statement_timeout", conn_id=spec.conn_id)))

    def _failure(self, exc: SQLAlchemyError, operation: str, consequence: str = "") -> Exception:
        """The connector error to raise for a failed statement of ``operation``: what no retry fixes
        (a missing table or column, a constraint, a value the column does not take) is a
        FatalConnectorError naming the table and the database's words for it, without the password;
        a statement the statement timeout ended (someone else held a lock) is a retriable
        PeerUnavailable naming the timeout, and so is anything else (the database unreachable, a
        connection dropped). ``consequence`` says what was (not) kept."""
        orig = getattr(exc, "orig", None) or exc
        tail = f"; {consequence}" if consequence else ""
        if _timed_out(exc):
            return PeerUnavailable(f"{PEER}: {operation} cancelled: a statement ran or waited for a lock longer "
                                   f"than the statement timeout ({self._statement_timeout or 'set by the database'})"
                                   f"{tail}", peer=PEER, operation=operation)
        refusal = _refusal(exc)
        if refusal:
            detail = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
            password = self.engine.url.password
            if password:
                detail = detail.replace(str(password), "***")
            tables = ", ".join(_tables_of(exc)) or "?"
            kind = type(exc).__name__ if type(exc).__name__ == type(orig).__name__ \
                else f"{type(exc).__name__}: {type(orig).__name__}"
            return FatalConnectorError(
                f"{PEER}: {operation} refused on table {tables}: {refusal} ({kind}: {detail[:300]}){tail}; retrying will not help until the ministry "
                "database or the data is corrected", peer=PEER, operation=operation)
        return PeerUnavailable(f"{PEER}: {operation} failed ({type(orig).__name__}){tail}", peer=PEER,
                               operation=operation)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction; a database that refuses connections is a retriable failure."""
        try:
            conn = self.engine.connect()
        except OperationalError as exc:
            raise PeerUnavailable(f"{PEER}: cannot connect ({type(exc.orig).__name__})", peer=PEER,
                                  operation="connect") from None
        with conn, conn.begin():
            yield conn

    @contextmanager
    def _recorded(self, operation: str, record_keys: Sequence[str], request: dict[str, Any], *,
                  failed_as: tuple[str, str] = ("", "nothing of the transaction was kept")
                  ) -> Iterator[dict[str, Any]]:
        """Run one write transaction and record it once its fate is known: after the commit (ok)
        or after the rollback (the error), never before. The body yields a dict to fill with what
        the statements affected; it becomes the response body. A failed statement is raised as
        :meth:`_failure` makes it, for ``failed_as`` = (the error's operation, default
        ``operation``; what was kept)."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        result: dict[str, Any] = {}
        outcome, error, peer_code = "ok", None, None
        try:
            yield result
        except BaseException as exc:
            outcome = "peer_error" if isinstance(exc, DBAPIError) and (
                not isinstance(exc, OperationalError) or _refusal(exc)) else "transport_error"
            if isinstance(exc, DBAPIError):
                peer_code = getattr(exc.orig, "pgcode", None) or type(exc.orig).__name__
                detail = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
                error = f"{type(exc).__name__}: {type(exc.orig).__name__}: {detail}"[:500]
            else:
                error = f"{type(exc).__name__}: {exc}"[:500]
            password = self.engine.url.password
            if password:
                error = error.replace(str(password), "***")
            if isinstance(exc, SQLAlchemyError):
                raise self._failure(exc, failed_as[0] or operation, failed_as[1]) from None
            raise
        finally:
            # a transaction that wrote nothing (no migration due) is no exchange
            if not (outcome == "ok" and result.pop("nothing_written", False)):
                self._record(operation, record_keys, request, result, started, t0, outcome, error, peer_code)

    @contextmanager
    def write_transaction(self, operation: str, request: dict[str, Any], *,
                          record_keys: Sequence[str] = ()) -> Iterator[tuple[Connection, dict[str, Any]]]:
        """One recorded write transaction for writes other than :meth:`upsert`/:meth:`withdraw`
        (report tables...): yields ``(conn, result)``; ``request`` names the rows written (table,
        key, values), ``result`` is filled with what the statements affected. Recorded after the
        commit or the rollback, like every write of the replica."""
        with self._recorded(operation, record_keys, request) as result, self._begin() as conn:
            yield conn, result

    def _record(self, operation: str, record_keys: Sequence[str], request: dict[str, Any], result: dict[str, Any],
                started: datetime, t0: float, outcome: str, error: str | None, peer_code: str | None) -> None:
        response = {"committed": True, **result} if outcome == "ok" else \
            {"committed": False, "rolled_back": True, "error": error}
        record_exchange(self.recorder, Exchange(
            peer=PEER, operation=operation, method=METHOD, url=self.log_url, started_at=started,
            duration_ms=round((time.perf_counter() - t0) * 1000, 3), attempt=1, outcome=outcome,
            record_keys=tuple(record_keys),
            request_headers={"dialect": self.engine.dialect.name, "transaction": "one per batch"},
            request_body=_canonical(request), response_body=_canonical(response), peer_code=peer_code,
            error=error))

    # -- schema --------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, in order; return their numbers."""
        applied: list[int] = []
        request: dict[str, Any] = {"operation": "migrate", "statements": []}
        with self._recorded("migrate_schema", (), request, failed_as=("migrate", "no migration was applied")
                            ) as result, self._begin() as conn:
            metadata.create_all(conn, tables=[schema_version])
            done = set(conn.execute(select(schema_version.c.phien_ban)).scalars())
            for number, description, step in MIGRATIONS:
                if number in done:
                    continue
                step(conn)
                values = {"phien_ban": number, "mo_ta": description, "ap_dung_luc": datetime.now(UTC)}
                conn.execute(schema_version.insert().values(**values))
                request["statements"].append({"table": schema_version.name, "action": "insert",
                                              "key": {"phien_ban": number}, "values": values})
                applied.append(number)
            result["nothing_written"] = not applied
            result["migrations_applied"] = applied
        return applied

    def schema_version(self) -> int:
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(select(schema_version.c.phien_ban).order_by(
                    schema_version.c.phien_ban.desc()).limit(1)).scalar() or 0)
        except SQLAlchemyError as exc:
            raise self._failure(exc, "read") from None

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, rows: Iterable[ProcedureRow]) -> int:
        """Insert or replace procedures and their fees, all in one transaction (one recorded exchange)."""
        rows = list(rows)
        if not rows:
            return 0
        now = datetime.now(UTC)
        writes = []
        for row in rows:
            values = {
                "ten_tthc": row.ten_tthc, "ma_linh_vuc": row.ma_linh_vuc, "ten_linh_vuc": row.ten_linh_vuc,
                "ma_co_quan_cong_bo": row.ma_co_quan_cong_bo, "cap_thuc_hien": row.cap_thuc_hien,
                "muc_do_dvc": row.muc_do_dvc, "trang_thai": "cong_bo", "noi_dung": row.noi_dung,
                "ma_bam_noi_dung": row.ma_bam_noi_dung, "cap_nhat_luc": now,
            }
            fees = [{"ma_tthc": row.ma_tthc, "thu_tu": i, **fee} for i, fee in enumerate(row.fees)]
            writes.append((row.ma_tthc, values, fees))
        request = {"operation": "upsert", "statements": [
            {"table": thu_tuc.name, "action": "upsert", "key": {"ma_tthc": code}, "values": values}
            for code, values, _ in writes] + [
            {"table": phi_le_phi.name, "action": "replace", "key": {"ma_tthc": code}, "rows": fees}
            for code, _, fees in writes]}
        codes = [code for code, _, _ in writes]
        with self._recorded("upsert_procedures", codes, request,
                            failed_as=("upsert", "nothing of the batch was kept")) as result:
            updated = inserted = fees_deleted = fees_inserted = 0
            with self._begin() as conn:
                for code, values, fees in writes:
                    changed = conn.execute(update(thu_tuc).where(thu_tuc.c.ma_tthc == code)
                                           .values(**values)).rowcount
                    if changed:
                        updated += changed
                    else:
                        inserted += conn.execute(thu_tuc.insert().values(ma_tthc=code, **values)).rowcount
                    fees_deleted += conn.execute(delete(phi_le_phi).where(phi_le_phi.c.ma_tthc == code)).rowcount
                    if fees:
                        conn.execute(phi_le_phi.insert(), fees)
                        fees_inserted += len(fees)
            result["rows_affected"] = {
                thu_tuc.name: {"inserted": inserted, "updated": updated},
                phi_le_phi.name: {"deleted": fees_deleted, "inserted": fees_inserted},
            }
        return len(writes)

    def withdraw(self, codes: Iterable[str]) -> int:
        """Mark procedures withdrawn (bãi bỏ); their rows stay for history."""
        codes = list(codes)
        if not codes:
            return 0
        now = datetime.now(UTC)
        request = {"operation": "withdraw", "statements": [
            {"table": thu_tuc.name, "action": "update", "key": {"ma_tthc": sorted(codes)},
             "values": {"trang_thai": "bai_bo", "cap_nhat_luc": now}}]}
        with self._recorded("withdraw_procedures", codes, request,
                            failed_as=("withdraw", "no procedure of the batch was withdrawn")) as result:
            with self._begin() as conn:
                changed = conn.execute(update(thu_tuc).where(thu_tuc.c.ma_tthc.in_(codes))
                                       .values(trang_thai="bai_bo", cap_nhat_luc=now)).rowcount
            result["rows_affected"] = {thu_tuc.name: {"updated": changed}}
        return changed

    # -- reads ---------------------------------------------------------------------------------
    def procedures(self, *, published_only: bool = False) -> dict[str, dict[str, Any]]:
        """Every procedure row with its fees, keyed by ma_tthc."""
        query = select(thu_tuc)
        if published_only:
            query = query.where(thu_tuc.c.trang_thai == "cong_bo")
        try:
            with self.engine.connect() as conn:
                rows = {r["ma_tthc"]: dict(r) for r in conn.execute(query).mappings()}
                for fee in conn.execute(select(phi_le_phi).order_by(phi_le_phi.c.ma_tthc, phi_le_phi.c.thu_tu)
                                        ).mappings():
                    if fee["ma_tthc"] in rows:
                        rows[fee["ma_tthc"]].setdefault("fees", []).append(dict(fee))
        except SQLAlchemyError as exc:
            raise self._failure(exc, "read") from None
        return rows
