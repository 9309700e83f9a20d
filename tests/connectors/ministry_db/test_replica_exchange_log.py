"""Every write transaction of the ministry replica is an exchange the transport layer records
(issue #6): one per batch, after its commit or its rollback, without the database password."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event

from connectors.errors import PeerUnavailable
from connectors.ministry_db.replica import MIGRATIONS, MinistryReplica, ProcedureRow, sanitize_db_url
from connectors.transport import MemoryRecorder

from .test_replica import pg_url, row  # noqa: F401 - pg_url is a fixture

PASSWORD = "S3cr%40t-Pw_9"  # percent-encoded "S3cr@t-Pw_9"
PLAIN_PASSWORD = "S3cr@t-Pw_9"


@pytest.fixture(params=["sqlite", "postgresql"])
def recorded(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'ministry.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    recorder = MemoryRecorder()
    replica = MinistryReplica(url, recorder=recorder)
    yield replica, recorder
    if request.param == "postgresql":
        from sqlalchemy import text

        with replica.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS tthc_phi_le_phi, tthc_thu_tuc, tthc_schema_version"))
    replica.dispose()


def body(blob: bytes) -> dict:
    return json.loads(blob)


@pytest.mark.parametrize("url, expected", [
    (f"postgresql+psycopg2://lienthong:{PASSWORD}@db.bo.gov.vn:5432/tthc?sslmode=require",
     "postgresql+psycopg2://lienthong@db.bo.gov.vn:5432/tthc?sslmode=require"),
    (f"postgresql://lienthong@db.bo.gov.vn/tthc?password={PASSWORD}&application_name=lienthong",
     "postgresql://lienthong@db.bo.gov.vn/tthc?application_name=lienthong"),
    ("postgresql+psycopg2://db.bo.gov.vn/tthc", "postgresql+psycopg2://db.bo.gov.vn/tthc"),
    ("sqlite:////var/lib/lienthong/ministry.db", "sqlite:////var/lib/lienthong/ministry.db"),
])
def test_the_logged_url_has_no_password(url, expected):
    logged = sanitize_db_url(url)
    assert logged == expected
    assert "S3cr" not in logged and "***" not in logged


def test_one_exchange_per_batch_naming_the_rows_and_what_they_did(recorded):
    replica, recorder = recorded
    numbers = [n for n, _, _ in MIGRATIONS]
    assert replica.migrate() == numbers
    (migration,) = recorder.exchanges  # every migration due, in the one transaction
    assert (migration.peer, migration.operation, migration.method, migration.outcome) == (
        "ministry_db", "migrate_schema", "SQL", "ok")
    assert body(migration.response_body)["migrations_applied"] == numbers
    assert [s["key"]["phien_ban"] for s in body(migration.request_body)["statements"]] == numbers
    replica.migrate()
    assert len(recorder.exchanges) == 1  # nothing to migrate: no transaction worth recording

    fees = [{"kenh": "1", "ma_phi_le_phi": "LP1", "so_tien_vnd": 50000, "so_tien_goc": "50.000", "mo_ta": "Lệ phí"}]
    replica.upsert([row(fees=fees), row("2.000488.000.00.00.H49", "Cấp giấy phép xây dựng")])
    upsert = recorder.exchanges[-1]
    assert (upsert.peer, upsert.operation, upsert.method, upsert.outcome, upsert.attempt) == (
        "ministry_db", "upsert_procedures", "SQL", "ok", 1)
    assert upsert.record_keys == ("1.000894.000.00.00.H49", "2.000488.000.00.00.H49")
    assert upsert.url == sanitize_db_url(replica.url) and upsert.response_status is None
    request = body(upsert.request_body)
    procedures = [s for s in request["statements"] if s["table"] == "tthc_thu_tuc"]
    assert [s["key"]["ma_tthc"] for s in procedures] == list(upsert.record_keys)
    assert procedures[0]["values"]["ten_tthc"] == "Đăng ký khai sinh"
    assert procedures[0]["values"]["noi_dung"] == {"code": "1.000894.000.00.00.H49", "name": "Đăng ký khai sinh"}
    fee_rows = {s["key"]["ma_tthc"]: s["rows"] for s in request["statements"] if s["table"] == "tthc_phi_le_phi"}
    assert fee_rows["1.000894.000.00.00.H49"][0]["so_tien_goc"] == "50.000"
    assert body(upsert.response_body) == {"committed": True, "rows_affected": {
        "tthc_thu_tuc": {"inserted": 2, "updated": 0}, "tthc_phi_le_phi": {"deleted": 0, "inserted": 1}}}
    assert upsert.request_body == json.dumps(request, ensure_ascii=False, sort_keys=True,
                                             separators=(",", ":")).encode()  # canonical JSON

    replica.upsert([row(name="Đăng ký khai sinh (sửa đổi)")])
    assert body(recorder.exchanges[-1].response_body)["rows_affected"] == {
        "tthc_thu_tuc": {"inserted": 0, "updated": 1}, "tthc_phi_le_phi": {"deleted": 1, "inserted": 0}}

    assert replica.withdraw(["2.000488.000.00.00.H49"]) == 1
    withdraw = recorder.exchanges[-1]
    assert (withdraw.operation, withdraw.outcome, withdraw.record_keys) == (
        "withdraw_procedures", "ok", ("2.000488.000.00.00.H49",))
    assert body(withdraw.request_body)["statements"][0]["values"]["trang_thai"] == "bai_bo"
    assert body(withdraw.response_body) == {"committed": True, "rows_affected": {"tthc_thu_tuc": {"updated": 1}}}
    assert len(recorder.exchanges) == 4
    assert replica.upsert([]) == 0 and replica.withdraw([]) == 0 and len(recorder.exchanges) == 4


def test_the_exchange_is_recorded_after_the_commit(tmp_path):
    seen: list[set[str]] = []

    class Looking:
        def record(self, exchange):
            if exchange.operation == "upsert_procedures":  # what another reader sees at that moment
                seen.append(set(MinistryReplica(replica.url).procedures()))

    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}", recorder=Looking())
    replica.migrate()
    replica.upsert([row()])
    assert seen == [{"1.000894.000.00.00.H49"}]


def test_a_refused_batch_is_recorded_as_refused_and_nothing_is_kept(recorded):
    replica, recorder = recorded
    replica.migrate()
    bad = ProcedureRow(ma_tthc="3.000001.000.00.00.H49", ten_tthc=None, ma_linh_vuc=None, ten_linh_vuc=None,
                       ma_co_quan_cong_bo=None, cap_thuc_hien=None, muc_do_dvc=None, noi_dung={},
                       ma_bam_noi_dung="h")  # ten_tthc is NOT NULL
    with pytest.raises(Exception, match="(?i)null"):
        replica.upsert([row(), bad])
    failed = recorder.exchanges[-1]
    assert (failed.operation, failed.outcome) == ("upsert_procedures", "peer_error")
    assert failed.record_keys == ("1.000894.000.00.00.H49", "3.000001.000.00.00.H49")
    assert body(failed.response_body)["committed"] is False and "IntegrityError" in failed.error
    assert replica.procedures() == {}


def test_a_failed_commit_is_recorded_as_a_failure(tmp_path):
    recorder = MemoryRecorder()
    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}", recorder=recorder)
    replica.migrate()

    def refuse(conn):
        raise RuntimeError("disk full at commit")

    event.listen(replica.engine, "commit", refuse)
    with pytest.raises(RuntimeError):
        replica.upsert([row()])
    event.remove(replica.engine, "commit", refuse)
    failed = recorder.exchanges[-1]
    assert failed.outcome == "transport_error" and "disk full at commit" in failed.error
    assert body(failed.response_body) == {"committed": False, "rolled_back": True, "error": failed.error}
    assert replica.procedures() == {}


def test_an_unreachable_database_is_a_transport_error_without_the_password():
    recorder = MemoryRecorder()
    replica = MinistryReplica(f"postgresql+psycopg2://lienthong:{PASSWORD}@127.0.0.1:9/none", recorder=recorder)
    with pytest.raises(PeerUnavailable):
        replica.upsert([row()])
    (failed,) = recorder.exchanges
    assert failed.outcome == "transport_error"
    assert failed.url == "postgresql+psycopg2://lienthong@127.0.0.1:9/none"
    for field in (failed.url, failed.error, failed.request_body.decode(), failed.response_body.decode(),
                  json.dumps(failed.request_headers)):
        assert "S3cr" not in field and PLAIN_PASSWORD not in field
    replica.dispose()


def test_other_writes_use_a_recorded_transaction(tmp_path):
    from connectors.ministry_db.replica import thu_tuc

    recorder = MemoryRecorder()
    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}", recorder=recorder)
    replica.migrate()
    replica.upsert([row()])
    request = {"statements": [{"table": "tthc_thu_tuc", "action": "update",
                               "key": {"ma_tthc": "1.000894.000.00.00.H49"}, "values": {"muc_do_dvc": "mot_phan"}}]}
    with replica.write_transaction("mark_level", request, record_keys=["1.000894.000.00.00.H49"]) as (conn, result):
        result["rows_affected"] = conn.execute(thu_tuc.update().values(muc_do_dvc="mot_phan")).rowcount
    recorded = recorder.exchanges[-1]
    assert (recorded.operation, recorded.outcome, recorded.record_keys) == (
        "mark_level", "ok", ("1.000894.000.00.00.H49",))
    assert body(recorded.response_body) == {"committed": True, "rows_affected": 1}
    assert replica.procedures()["1.000894.000.00.00.H49"]["muc_do_dvc"] == "mot_phan"
