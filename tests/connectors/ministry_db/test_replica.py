"""The ministry replica on a real SQLite file and on the local PostgreSQL server."""

from __future__ import annotations


import pytest
from sqlalchemy import text

from connectors.errors import PeerUnavailable
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
