"""How the ministry replica fails: a statement held by someone else's lock ends at the statement
timeout as a retriable error; a schema or a row the database refuses is not retried."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
from sqlalchemy import create_engine, make_url, text

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import ConfigurationError, FatalConnectorError, PeerUnavailable
from connectors.ministry_db.replica import MinistryReplica, ProcedureRow
from connectors.transport import MemoryRecorder

from .test_replica import pg_url, row  # noqa: F401 - pg_url is a fixture

TABLES = "tthc_phi_le_phi, tthc_thu_tuc, tthc_schema_version"


def _pg_spec(url: str, **extra) -> ConnectionSpec:
    u = make_url(url)
    return ConnectionSpec(conn_id="ministry_db_default", conn_type="postgres", host=u.host or "", port=u.port,
                          schema=u.database or "", login=u.username or "", password=Secret(u.password), extra=extra)


@pytest.fixture
def pg_replica(pg_url):  # noqa: F811 - the fixture imported above
    replicas: list[MinistryReplica] = []

    def make(**extra) -> MinistryReplica:
        replicas.append(MinistryReplica.from_connection(_pg_spec(pg_url, **extra), recorder=MemoryRecorder()))
        return replicas[-1]

    yield make
    for r in replicas:
        r.dispose()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLES}"))
    engine.dispose()


# -- 1. statement timeout ---------------------------------------------------------------------------
def test_postgres_sessions_carry_a_statement_timeout(pg_replica):
    """Without one a statement waiting on a lock held by someone else in the ministry database
    held the task for ever."""
    for extra, expected in [({}, "30s"), ({"statement_timeout": "2.5"}, "2500ms"),
                            # the connection's own libpq options win, as for connect_timeout
                            ({"statement_timeout": 2, "options": "-c statement_timeout=4321"}, "4321ms"),
                            ({"options": "-c search_path=public"}, "30s")]:
        replica = pg_replica(**extra)
        with replica.engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == expected, extra
            assert conn.execute(text("SHOW search_path")).scalar().startswith(
                "public" if "search_path" in extra.get("options", "") else '"$user"')


def test_a_bad_statement_timeout_names_the_connection():
    spec = ConnectionSpec(conn_id="ministry_db_default", conn_type="sqlite", host="/tmp/unused.db",
                          extra={"statement_timeout": "-1"})
    with pytest.raises(ConfigurationError, match="connection ministry_db_default: extra.statement_timeout"):
        MinistryReplica.from_connection(spec)


def test_a_statement_held_by_a_lock_ends_at_the_statement_timeout_postgres(pg_replica, pg_url):  # noqa: F811
    replica = pg_replica(statement_timeout=0.3)
    replica.migrate()
    replica.upsert([row()])
    other = create_engine(pg_url)
    try:
        with other.connect() as holder:
            holder.execute(text("LOCK TABLE tthc_thu_tuc IN ACCESS EXCLUSIVE MODE"))  # held until rollback
            t0 = time.monotonic()
            with pytest.raises(PeerUnavailable, match=r"statement timeout \(0\.3 s, extra\.statement_timeout\)") \
                    as write:
                replica.upsert([row(name="Đăng ký khai sinh (sửa đổi)")])
            with pytest.raises(PeerUnavailable, match="statement timeout") as read:
                replica.procedures()
            assert time.monotonic() - t0 < 5
            holder.rollback()
    finally:
        other.dispose()
    assert (write.value.operation, read.value.operation) == ("upsert", "read")
    assert replica.recorder.exchanges[-1].outcome == "transport_error"
    assert replica.procedures()["1.000894.000.00.00.H49"]["ten_tthc"] == "Đăng ký khai sinh"  # nothing kept


def test_a_statement_held_by_a_lock_ends_at_the_busy_timeout_sqlite(tmp_path):
    path = tmp_path / "ministry.db"
    spec = ConnectionSpec(conn_id="ministry_db_default", conn_type="sqlite", host=str(path),
                          extra={"statement_timeout": 0.3})
    replica = MinistryReplica.from_connection(spec)
    replica.migrate()
    replica.upsert([row()])
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        t0 = time.monotonic()
        with pytest.raises(PeerUnavailable, match=r"statement timeout \(0\.3 s, extra\.statement_timeout\)"):
            replica.withdraw(["1.000894.000.00.00.H49"])
        assert time.monotonic() - t0 < 3  # not the driver's own 5 s
        # the report tables' writes too
        with pytest.raises(PeerUnavailable, match="statement timeout") as report:
            with replica.write_transaction("upsert_kpis", {"statements": []}) as (conn, _result):
                conn.execute(text("UPDATE tthc_thu_tuc SET muc_do_dvc = 'mot_phan'"))
        assert report.value.operation == "upsert_kpis"
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert replica.procedures()["1.000894.000.00.00.H49"]["trang_thai"] == "cong_bo"
    replica.dispose()


# -- 2. what no retry fixes ----------------------------------------------------------------------
PASSWORD = "S3cr@t-Pw_9"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_replica(request, tmp_path):
    if request.param == "sqlite":
        r = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}", recorder=MemoryRecorder())
        yield r
        r.dispose()
        return
    url = make_url(request.getfixturevalue("pg_url")).set(password=PASSWORD)  # trust auth: never asked for
    r = MinistryReplica(url.render_as_string(hide_password=False), recorder=MemoryRecorder())
    yield r
    with r.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLES}"))
    r.dispose()


def _fatal(call, *patterns: str) -> FatalConnectorError:
    with pytest.raises(FatalConnectorError) as caught:
        call()
    error = caught.value
    assert not isinstance(error, PeerUnavailable)
    for pattern in patterns:
        assert re.search(pattern, str(error)), (pattern, str(error))
    assert PASSWORD not in str(error) and "S3cr" not in str(error)
    return error


def test_a_schema_the_replica_does_not_expect_is_not_retried(any_replica):
    """A missing table or column (the ministry's schema is not what we expect) was a retriable
    PeerUnavailable, retried for nothing; it is a FatalConnectorError naming the table."""
    replica = any_replica
    replica.migrate()
    replica.upsert([row()])
    with replica.engine.begin() as conn:
        conn.execute(text("ALTER TABLE tthc_thu_tuc DROP COLUMN muc_do_dvc"))
    error = _fatal(lambda: replica.upsert([row()]), "tthc_thu_tuc", "(?i)muc_do_dvc", "nothing of the batch was kept")
    assert error.operation == "upsert"
    assert replica.recorder.exchanges[-1].outcome == "peer_error"
    assert _fatal(lambda: replica.procedures(), "tthc_thu_tuc", "muc_do_dvc").operation == "read"
    with replica.engine.begin() as conn:
        conn.execute(text("DROP TABLE tthc_phi_le_phi"))
        conn.execute(text("DROP TABLE tthc_thu_tuc"))
    _fatal(lambda: replica.withdraw(["1.000894.000.00.00.H49"]), "tthc_thu_tuc", "(?i)does not exist|no such table")
    _fatal(lambda: replica.procedures(), "tthc_thu_tuc", "(?i)does not exist|no such table")


def test_a_row_the_database_refuses_is_not_retried(any_replica):
    replica = any_replica
    replica.migrate()
    bad = ProcedureRow(ma_tthc="3.000181.000.00.00.H49", ten_tthc=None, ma_linh_vuc=None,  # type: ignore[arg-type]
                       ten_linh_vuc=None, ma_co_quan_cong_bo=None, cap_thuc_hien=None, muc_do_dvc=None,
                       noi_dung={}, ma_bam_noi_dung="x")
    error = _fatal(lambda: replica.upsert([row(), bad]), "tthc_thu_tuc", "(?i)null", "IntegrityError")
    assert (error.peer, error.operation) == ("ministry_db", "upsert")
    assert replica.procedures() == {}
    if replica.engine.dialect.name == "postgresql":  # SQLite stores an overlong text
        long = ProcedureRow(**{**row().__dict__, "ma_linh_vuc": "G" * 65})
        _fatal(lambda: replica.upsert([long]), "tthc_thu_tuc", "DataError", "(?i)too long")
