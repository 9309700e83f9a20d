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
