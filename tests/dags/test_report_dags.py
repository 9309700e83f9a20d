"""report_kpi and report_agreement through Airflow (dag.test on a migrated SQLite metadata DB)
against the stand-ins as real servers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connectors.connection import connection_from_env
from lienthong import tasks

pytestmark = pytest.mark.airflow
DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


def _sync(run_id: str) -> None:
    tasks.stage_dossier_changes(connection_from_env, run_id=run_id)
    tasks.deliver_dossier_statuses(connection_from_env, run_id=run_id)
    tasks.deliver_dossier_progress(connection_from_env, run_id=run_id)


def test_report_dags_write_the_ministry_tables_and_the_html(airflow_db, dagbag, bus_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    _sync("sync-for-reports")

    run = dagbag.dags["report_agreement"].test()
    assert run.state == "success"
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "check_dossier_status": "success", "check_fee_payment": "success", "write_agreement_report": "success"}
    defective = {d["dossierNo"] for d in __import__("requests").get(bus_env.onestop.url + "/_state", timeout=10)
                 .json()["defective"]}
    with sqlite3.connect(tmp_path / "ministry.db") as db:
        differing = {r[0] for r in db.execute(
            "SELECT ma_ban_ghi FROM ds_doi_soat_chenh_lech WHERE ma_lan_doi_soat = ?", (run.run_id,))}
        checked = dict(db.execute("SELECT kiem_tra, so_ban_ghi FROM ds_doi_soat_tong_hop WHERE ma_lan_doi_soat = ?",
                                  (run.run_id,)).fetchall())
    assert differing == defective  # the dossiers the portal refused, nothing else
    assert checked["dossier_status"] == 40

    run = dagbag.dags["report_kpi"].test(run_conf={"date_from": "2026-11-01", "date_to": "2026-11-30"})
    assert run.state == "success"
    with sqlite3.connect(tmp_path / "ministry.db") as db:
        received = db.execute("SELECT hs_tiep_nhan FROM tk_dvc_truc_tuyen WHERE ma_co_quan = '*' "
                              "AND tu_ngay = '2026-11-01' AND den_ngay = '2026-11-30'").fetchone()
    assert received == (40,)
    html = list((tmp_path / "home" / "reports").glob("report-kpi-2026-11-01_2026-11-30.html"))
    assert len(html) == 1 and 'id="chart-disagreements"' in html[0].read_text(encoding="utf-8")
