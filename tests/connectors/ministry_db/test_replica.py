"""The ministry replica on a real SQLite file and on the local PostgreSQL server."""

from __future__ import annotations


import pytest
from sqlalchemy import event, make_url, text

from connectors.connection import ConnectionSpec, Secret, connection_from_env
from connectors.errors import ConfigurationError, PeerUnavailable
from connectors.ministry_db.replica import MIGRATIONS, MinistryReplica, ProcedureRow
from tests.conftest import postgres_database

@pytest.fixture(scope="module")
def pg_url():
    """A throw-away database on the PostgreSQL server at 127.0.0.1:5432 (trust auth)."""
    with postgres_database("lienthong_replica") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def replica(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'ministry.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    r = MinistryReplica(url)
    yield r
    if request.param == "postgresql":
        with r.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS tthc_phi_le_phi, tthc_thu_tuc, tthc_schema_version"))
    r.dispose()


def row(code="1.000894.000.00.00.H49", name="Đăng ký khai sinh", fees=()):
    return ProcedureRow(ma_tthc=code, ten_tthc=name, ma_linh_vuc="G09-TP03", ten_linh_vuc="Hộ tịch",
                        ma_co_quan_cong_bo="000.00.01.H49", cap_thuc_hien="3", muc_do_dvc="toan_trinh",
                        noi_dung={"code": code, "name": name}, ma_bam_noi_dung="h-" + name, fees=fees)


def test_migrations_apply_once_in_order(replica):
    assert replica.migrate() == [n for n, _, _ in MIGRATIONS]
    assert replica.migrate() == []
    assert replica.schema_version() == MIGRATIONS[-1][0]


def test_upsert_is_idempotent_and_keeps_fee_text(replica):
    replica.migrate()
    fees = [{"kenh": "1", "ma_phi_le_phi": "LP1", "so_tien_vnd": 50000, "so_tien_goc": "50.000", "mo_ta": "Lệ phí"},
            {"kenh": "2", "ma_phi_le_phi": "LP2", "so_tien_vnd": None, "so_tien_goc": "Không", "mo_ta": None}]
    assert replica.upsert([row(fees=fees), row("2.000488.000.00.00.H49", "Cấp giấy phép xây dựng")]) == 2
    replica.upsert([row(fees=fees)])
    held = replica.procedures()
    assert set(held) == {"1.000894.000.00.00.H49", "2.000488.000.00.00.H49"}
    first = held["1.000894.000.00.00.H49"]
    assert first["ten_tthc"] == "Đăng ký khai sinh" and first["trang_thai"] == "cong_bo"
    assert [(f["so_tien_vnd"], f["so_tien_goc"]) for f in first["fees"]] == [(50000, "50.000"), (None, "Không")]
    # an amendment replaces the fees, it does not add to them
    replica.upsert([row(fees=fees[:1], name="Đăng ký khai sinh (sửa đổi)")])
    first = replica.procedures()["1.000894.000.00.00.H49"]
    assert first["ten_tthc"] == "Đăng ký khai sinh (sửa đổi)" and len(first["fees"]) == 1


def test_withdraw_keeps_the_row_for_history(replica):
    replica.migrate()
    replica.upsert([row()])
    assert replica.withdraw(["1.000894.000.00.00.H49"]) == 1
    assert replica.procedures()["1.000894.000.00.00.H49"]["trang_thai"] == "bai_bo"
    assert replica.procedures(published_only=True) == {}


def test_a_failed_batch_leaves_nothing_behind(replica):
    replica.migrate()
    replica.upsert([row()])
    bad = ProcedureRow(ma_tthc="3.000181.000.00.00.H49", ten_tthc=None, ma_linh_vuc=None, ten_linh_vuc=None,  # type: ignore[arg-type]
                       ma_co_quan_cong_bo=None, cap_thuc_hien=None, muc_do_dvc=None, noi_dung={},
                       ma_bam_noi_dung="x")
    with pytest.raises(Exception):  # noqa: B017 - NOT NULL violation, whatever the driver calls it
        replica.upsert([row("2.000488.000.00.00.H49", "Cấp giấy phép xây dựng"), bad])
    assert set(replica.procedures()) == {"1.000894.000.00.00.H49"}


def test_unreachable_database_is_retriable():
    r = MinistryReplica("postgresql+psycopg2://nobody@127.0.0.1:9/none")
    with pytest.raises(PeerUnavailable):
        r.migrate()


def test_postgres_sslmode_from_the_connection_reaches_the_driver():
    """'postgres://u:p@db/ministry?sslmode=verify-full' puts sslmode in extra, and sqlalchemy_url()
    used to drop it: psycopg2 fell back to sslmode=prefer (plain text if the server or a man in the
    middle says so)."""
    env = {"AIRFLOW_CONN_MINISTRY_DB_DEFAULT":
           "postgres://ministry:p%40ss@db.example:5432/ministry?sslmode=verify-full"}
    spec = connection_from_env("ministry_db_default", env)
    assert spec.extra == {"sslmode": "verify-full"}
    replica = MinistryReplica.from_connection(spec)
    _args, params = replica.engine.dialect.create_connect_args(replica.engine.url)
    assert params.get("sslmode") == "verify-full", f"driver parameters: {sorted(params)}"


def test_libpq_extras_of_the_connection_reach_the_server(pg_url):
    """On the wire: the server sees the application_name and options the connection's extras set."""
    url = make_url(pg_url)
    spec = ConnectionSpec(conn_id="ministry_db_default", conn_type="postgres", host=url.host or "", port=url.port,
                          schema=url.database or "", login=url.username or "", password=Secret(url.password),
                          extra={"application_name": "lienthong-replica", "options": "-c statement_timeout=4321",
                                 "batch_size": 50})
    replica = MinistryReplica.from_connection(spec)
    try:
        with replica.engine.connect() as conn:
            assert conn.execute(text("SELECT current_setting('application_name')")).scalar() == "lienthong-replica"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "4321ms"
    finally:
        replica.dispose()


def _driver_arguments(replica: MinistryReplica) -> dict:
    """What psycopg2.connect would be called with (URL query and connect_args), caught before it is."""
    seen: dict = {}

    class Caught(Exception):
        pass

    @event.listens_for(replica.engine, "do_connect")
    def capture(dialect, conn_rec, cargs, cparams):
        seen.update(cparams)
        raise Caught

    with pytest.raises(Caught):
        replica.engine.connect()
    return seen


@pytest.mark.parametrize("extra, url_query, expected", [
    ({}, "", 4),  # README: every peer connection's extra.connect_timeout defaults to 3.05 s (libpq: whole seconds)
    ({"connect_timeout": 5}, "", 5),
    ({"connect_timeout": 5}, "?connect_timeout=9", 9),  # an extra.sqlalchemy_url's own setting wins
])
def test_postgres_connections_open_with_a_connect_timeout(extra, url_query, expected):
    """The replica passed no connect timeout to psycopg2, so an unreachable host held the task for
    the kernel's TCP timeout."""
    if url_query:
        extra = {**extra, "sqlalchemy_url": "postgresql+psycopg2://ministry:pw@db.example:5432/ministry" + url_query}
    spec = ConnectionSpec(conn_id="ministry_db_default", conn_type="postgres", host="db.example", port=5432,
                          schema="ministry", login="ministry", password=Secret("pw"), extra=extra)
    replica = MinistryReplica.from_connection(spec)
    assert int(_driver_arguments(replica)["connect_timeout"]) == expected


def test_a_bad_connect_timeout_names_the_connection():
    spec = ConnectionSpec(conn_id="ministry_db_default", conn_type="sqlite", host="/tmp/unused.db",
                          extra={"connect_timeout": "soon"})
    with pytest.raises(ConfigurationError, match="connection ministry_db_default: extra.connect_timeout"):
        MinistryReplica.from_connection(spec)
