"""The ministry's catalogue replica: a real SQL database reached through SQLAlchemy.

The ministry keeps a replica of the national catalogue of administrative procedures (thủ tục
hành chính). Its tables are the ministry's, so their names stay as a Vietnamese ministry
database spells them (``tthc_thu_tuc``, ``tthc_phi_le_phi``); the project creates them and moves
them forward with numbered migrations recorded in ``tthc_schema_version``, on an SQLite file by
default and on PostgreSQL by URL.

Writes are upserts keyed on the procedure code, one transaction per batch: a batch lands whole
or not at all, and replaying it changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
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
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from connectors.connection import ConnectionSpec
from connectors.errors import PeerUnavailable

__all__ = ["MIGRATIONS", "MinistryReplica", "ProcedureRow", "metadata"]

PEER = "ministry_db"

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


#: (number, description, step). Append only; a number is never reused.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "tạo bảng tthc_thu_tuc và tthc_phi_le_phi", _migration_1),
]


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


class MinistryReplica:
    """Reads and writes the ministry's catalogue replica.

    Args:
        url: an SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg2://...``).
    """

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=True)

    @classmethod
    def from_connection(cls, spec: ConnectionSpec) -> MinistryReplica:
        """``extra.sqlalchemy_url``, an ``sqlite`` connection (host = file) or a ``postgres`` one."""
        return cls(spec.sqlalchemy_url())

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

    # -- schema --------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, in order; return their numbers."""
        applied: list[int] = []
        with self._begin() as conn:
            metadata.create_all(conn, tables=[schema_version])
            done = set(conn.execute(select(schema_version.c.phien_ban)).scalars())
            for number, description, step in MIGRATIONS:
                if number in done:
                    continue
                step(conn)
                conn.execute(schema_version.insert().values(phien_ban=number, mo_ta=description,
                                                            ap_dung_luc=datetime.now(UTC)))
                applied.append(number)
        return applied

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(schema_version.c.phien_ban).order_by(
                schema_version.c.phien_ban.desc()).limit(1)).scalar() or 0)

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, rows: Iterable[ProcedureRow]) -> int:
        """Insert or replace procedures and their fees, all in one transaction."""
        now = datetime.now(UTC)
        count = 0
        try:
            with self._begin() as conn:
                for row in rows:
                    values = {
                        "ten_tthc": row.ten_tthc, "ma_linh_vuc": row.ma_linh_vuc, "ten_linh_vuc": row.ten_linh_vuc,
                        "ma_co_quan_cong_bo": row.ma_co_quan_cong_bo, "cap_thuc_hien": row.cap_thuc_hien,
                        "muc_do_dvc": row.muc_do_dvc, "trang_thai": "cong_bo", "noi_dung": row.noi_dung,
                        "ma_bam_noi_dung": row.ma_bam_noi_dung, "cap_nhat_luc": now,
                    }
                    changed = conn.execute(update(thu_tuc).where(thu_tuc.c.ma_tthc == row.ma_tthc)
                                           .values(**values)).rowcount
                    if not changed:
                        conn.execute(thu_tuc.insert().values(ma_tthc=row.ma_tthc, **values))
                    conn.execute(delete(phi_le_phi).where(phi_le_phi.c.ma_tthc == row.ma_tthc))
                    if row.fees:
                        conn.execute(phi_le_phi.insert(), [
                            {"ma_tthc": row.ma_tthc, "thu_tu": i, **fee} for i, fee in enumerate(row.fees)])
                    count += 1
        except OperationalError as exc:
            raise PeerUnavailable(f"{PEER}: write failed ({type(exc.orig).__name__}); nothing of the batch "
                                  "was kept", peer=PEER, operation="upsert") from None
        return count

    def withdraw(self, codes: Iterable[str]) -> int:
        """Mark procedures withdrawn (bãi bỏ); their rows stay for history."""
        codes = list(codes)
        if not codes:
            return 0
        with self._begin() as conn:
            return conn.execute(update(thu_tuc).where(thu_tuc.c.ma_tthc.in_(codes))
                                .values(trang_thai="bai_bo", cap_nhat_luc=datetime.now(UTC))).rowcount

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
            raise PeerUnavailable(f"{PEER}: read failed ({type(exc).__name__})", peer=PEER,
                                  operation="read") from None
        return rows
