"""Reports: leftovers found in review, each failing before its fix."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from lienthong.store import Store

AS_OF = datetime(2026, 12, 5, tzinfo=UTC)


def _bus_only(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "bus.db")}))
    for name in ("ONESTOP_DEFAULT", "NATIONAL_PORTAL_DEFAULT", "PAYMENT_PLATFORM_DEFAULT", "MINISTRY_LEDGER_DEFAULT"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{name}", raising=False)
    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    return store


@pytest.mark.parametrize("check, systems", [("dossier_status", "onestop↔national_portal"),
                                            ("fee_payment", "payment_platform↔onestop↔ministry_ledger")])
def test_a_check_that_could_not_start_names_its_systems_not_itself(tmp_path, monkeypatch, check, systems):
    """A check whose connections are not configured was recorded with its own name as its
    systems ("dossier_status" in he_thong / the HTML's systems column) instead of the systems it
    compares."""
    from connectors.connection import connection_from_env
    from lienthong.reports import tasks as report_tasks
    from lienthong.reports.agreement import load_agreement

    store = _bus_only(tmp_path, monkeypatch)
    summary = report_tasks.check_agreement(connection_from_env, run_id="r-1", check=check, as_of=AS_OF)
    assert "skipped" in summary
    [result] = load_agreement(store, "r-1").results
    assert (result.check_name, result.systems) == (check, systems)
    store.dispose()


def _publish(store: Store, code: str, agency: str, level: str) -> None:
    from lienthong.store import catalogue_current, utcnow

    record = {"procedure_code": code, "online_level": level, "publishing_agency_code": agency,
              "agencies": {"implementing": [{"code": agency, "name": "Sở Tư pháp"}]}}
    with store.begin() as conn:
        conn.execute(catalogue_current.insert().values(procedure_code=code, record=record, record_hash="h",
                                                       published=True, updated_at=utcnow()))


@pytest.mark.parametrize("given, flags", [(None, [0.5, 0.3]), ([], []), ([0.9], [0.9])])
def test_an_explicit_empty_threshold_list_flags_nobody(tmp_path, monkeypatch, given, flags):
    """`thresholds=[]` (the DAG's param emptied) was read as "not given" and flagged agencies
    against the defaults 50 % and 30 %; only None means the defaults now."""
    from connectors.connection import connection_from_env
    from lienthong.reports import tasks as report_tasks
    from lienthong.reports.render import render_html

    store = _bus_only(tmp_path, monkeypatch)
    _publish(store, "1.000001", "AG-A", "none")  # toàn trình share 0 %
    captured = {}
    real_write_files = report_tasks.write_files

    def write_files(out_dir, **reports):
        captured.update(reports)
        return real_write_files(out_dir, **reports)

    monkeypatch.setattr(report_tasks, "write_files", write_files)
    summary = report_tasks.kpi_report(connection_from_env, date_from="2026-11-01", date_to="2026-11-30",
                                      thresholds=given, out_dir=tmp_path / "out", ministry=False,
                                      with_agreement=False, as_of=AS_OF)
    kpi = captured["kpi"]
    assert list(kpi.thresholds) == flags
    assert [r.flags for r in kpi.agencies] == [flags]
    assert summary["flagged"] == (1 if flags else 0)
    if not flags:
        assert "không đặt ngưỡng" in render_html(kpi, None)
    store.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ministry_url(request, tmp_path):
    from tests.conftest import postgres_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ministry.db'}"
        return
    with postgres_database("lienthong_ministry") as url:
        yield url


@pytest.mark.parametrize("upgraded", [False, True], ids=["fresh", "upgraded"])
def test_many_thresholds_fit_the_ministry_tables_warning_column(tmp_path, ministry_url, upgraded, monkeypatch):
    """canh_bao was VARCHAR(64): an agency under a dozen thresholds made a warning text longer
    than that, and PostgreSQL refused the whole report (SQLite kept it). Migration 3 makes it
    TEXT, also in a database created before it."""
    from sqlalchemy import select, text

    from connectors.ministry_db import replica as replica_module
    from connectors.ministry_db.replica import MinistryReplica, thong_ke_dvc
    from lienthong.reports.kpi import compute_kpis, parse_period
    from lienthong.reports.ministry import write_kpis

    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    _publish(store, "1.000001", "AG-A", "none")
    thresholds = [round(0.05 * n, 3) for n in range(1, 20)] + [0.125, 0.375, 0.625, 0.875]
    report = compute_kpis(store, parse_period("2026-11-01", "2026-11-30"), thresholds=thresholds, as_of=AS_OF)
    replica = MinistryReplica(ministry_url)
    try:
        if upgraded:  # a ministry database migrated before migration 3, its column as it was
            with monkeypatch.context() as mp:
                mp.setattr(replica_module, "MIGRATIONS", replica_module.MIGRATIONS[:2])
                assert replica.migrate() == [1, 2]
            if replica.engine.dialect.name == "postgresql":
                with replica.engine.begin() as conn:
                    conn.execute(text("ALTER TABLE tk_dvc_truc_tuyen ALTER COLUMN canh_bao TYPE VARCHAR(64)"))
        assert write_kpis(replica, report) == 2
        with replica.engine.connect() as conn:
            warnings = dict(conn.execute(select(thong_ke_dvc.c.ma_co_quan, thong_ke_dvc.c.canh_bao)).all())
        expected = ",".join(f"<{t * 100:g}%" for t in sorted(thresholds, reverse=True))
        assert len(expected) > 64
        assert warnings == {"*": expected, "AG-A": expected}
        assert replica.schema_version() == 3
    finally:
        replica.dispose()
        store.dispose()


def test_a_partial_day_period_is_refused_for_the_ministry_table_not_written_over_another(tmp_path, monkeypatch,
                                                                                         capsys):
    """tk_dvc_truc_tuyen is keyed by (first day, last day, agency): the KPIs of 00:00-12:00 and of
    12:00-24:00 on one day both went to the row of that day, the second overwriting the first. A
    period that does not start and end at local midnight is now refused for the ministry table
    (before any work, naming the bound), and still reported with --no-ministry."""
    from connectors.connection import connection_from_env
    from connectors.ministry_db.replica import MinistryReplica
    from lienthong.cli import main
    from lienthong.reports import tasks as report_tasks
    from lienthong.reports.kpi import compute_kpis, parse_period
    from lienthong.reports.ministry import write_kpis

    store = _bus_only(tmp_path, monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    _publish(store, "1.000001", "AG-A", "full")
    with pytest.raises(ValueError, match=r"2026-11-01T12:00.*local midnight.*--no-ministry"):
        report_tasks.kpi_report(connection_from_env, date_from="2026-11-01", date_to="2026-11-01T12:00",
                                out_dir=tmp_path / "out", as_of=AS_OF)
    assert not (tmp_path / "ministry.db").exists()  # refused before any work
    code = main(["report", "kpi", "--from", "2026-11-01T12:00", "--to", "2026-11-02",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "2026-11-01T12:00" in capsys.readouterr().err
    summary = report_tasks.kpi_report(connection_from_env, date_from="2026-11-01", date_to="2026-11-01T12:00",
                                      out_dir=tmp_path / "out", ministry=False, as_of=AS_OF)
    assert "ministry_rows" not in summary
    # the writer itself refuses too; whole days given as date-times are whole days
    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}")
    try:
        with pytest.raises(ValueError, match="local midnight"):
            write_kpis(replica, compute_kpis(store, parse_period("2026-11-01T00:00", "2026-11-01T12:00"),
                                             as_of=AS_OF))
        assert write_kpis(replica, compute_kpis(store, parse_period("2026-11-01T00:00", "2026-11-02T00:00"),
                                                as_of=AS_OF)) == 2
    finally:
        replica.dispose()
        store.dispose()
