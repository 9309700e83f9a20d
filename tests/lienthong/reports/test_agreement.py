"""Cross-system agreement: injected disagreements appear with the right dossier, age and last exchange."""

from __future__ import annotations

import csv
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import requests
from sqlalchemy import func, select

from connectors.national_portal.client import NationalPortalClient
from lienthong.reports import agreement as agreement_mod
from lienthong.reports import tasks as report_tasks
from lienthong.store import Store, exchange_key, exchange_log

from .conftest import sync_all

VN = ZoneInfo("Asia/Ho_Chi_Minh")
AS_OF = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
T = 10


def _portal_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=VN).astimezone(UTC)


def _last_bus_exchange(store: Store, key: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(
            select(func.max(exchange_log.c.id)).join(exchange_key, exchange_key.c.exchange_id == exchange_log.c.id)
            .where(exchange_key.c.record_key == key, exchange_log.c.flow != agreement_mod.FLOW)).scalar()


def test_a_status_changed_at_the_portal_only_is_reported_with_its_age(province, tmp_path):
    defective = {d["dossierNo"] for d in province.state("onestop", "/_state")["defective"]}
    held = province.state("portal", "/_state/dossiers")["dossiers"]
    victim = next(d["MaHoSo"] for d in held if d["TrangThaiHoSo"] in ("2", "4") and d["MaHoSo"] not in defective)
    record = province.state("portal", f"/_state/dossiers/{victim}")["current"]["record"]
    # someone changes the status at the portal, outside the bus (no exchange-log record of it)
    portal = NationalPortalClient.from_connection(province.resolve("national_portal_default"))
    try:
        result = portal.sync_dossiers([{**record, "TrangThaiHoSo": "5"}], is_updating=True)
    finally:
        portal.close()
    assert victim in result.accepted
    changed_at = _portal_time(province.state("portal", f"/_state/dossiers/{victim}")["current"]["NgayCapNhat"])

    summary = report_tasks.run_agreement(province.resolve, run_id="agreement-1", out_dir=tmp_path, as_of=AS_OF)
    report = agreement_mod.load_agreement(Store(f"sqlite:///{province.bus_db}"), "agreement-1")
    dossiers = next(r for r in report.results if r.check_name == "dossier_status")
    found = {(d.record_key, d.aspect): d for d in dossiers.differences}
    # exactly: the defective dossiers the portal never got, and the injected change
    assert set(found) == {(k, "missing") for k in defective} | {(victim, "status")}
    assert dossiers.checked == len(province.state("onestop", "/_state/dossiers")["dossiers"])
    assert dossiers.agreeing == dossiers.checked - len(defective) - 1
    d = found[(victim, "status")]
    assert d.value_b == "5" and d.value_a.startswith(record["TrangThaiHoSo"])
    assert d.since == changed_at
    assert d.age_seconds == int((AS_OF - changed_at).total_seconds())
    assert "portal only" in d.detail
    store = Store(f"sqlite:///{province.bus_db}")
    assert d.last_exchange_id == _last_bus_exchange(store, victim) is not None
    for key in defective:  # never delivered: their last exchange is the refusal's run, their age since submission
        snap = province.state("onestop", f"/_state/dossiers/{key}")["dossier"]
        missing = found[(key, "missing")]
        assert missing.since == datetime.fromisoformat(snap["submitDate"]).astimezone(UTC)
        assert missing.age_seconds == int((AS_OF - missing.since).total_seconds())

    # the fee check has no payment peers configured here: it says so instead of failing
    fees = next(r for r in report.results if r.check_name == "fee_payment")
    assert fees.checked == 0 and fees.note and "not checked" in fees.note
    # the report's own look-ups are in the exchange log, under their own flow
    with store.engine.connect() as conn:
        lookups = conn.execute(select(func.count()).select_from(exchange_log).where(
            exchange_log.c.flow == agreement_mod.FLOW, exchange_log.c.operation == "TraCuuHoSo")).scalar()
    assert lookups >= dossiers.checked
    # delivered three ways
    with sqlite3.connect(province.ministry_db) as db:
        row = db.execute("SELECT khia_canh, gia_tri_b, tuoi_giay FROM ds_doi_soat_chenh_lech "
                         "WHERE ma_lan_doi_soat = 'agreement-1' AND ma_ban_ghi = ?", (victim,)).fetchone()
    assert row == ("status", "5", d.age_seconds)
    with open(summary["agreement_csv"], encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["record_key"] == victim]
    assert rows and rows[0]["age_seconds"] == str(d.age_seconds)
    assert victim in open(summary["html"], encoding="utf-8").read()


def test_the_one_stop_moving_on_is_a_difference_until_the_next_sync(province, tmp_path):
    moved = requests.post(province.peers.onestop.url + "/_admin/advance", json={"new": 0, "changes": 3},
                          timeout=T).json()["changed"]
    keys = [c["dossierNo"] for c in moved]
    report_tasks.check_agreement(province.resolve, run_id="agreement-2", check="dossier_status", as_of=AS_OF,
                                 dossiers=keys)
    report = agreement_mod.load_agreement(Store(f"sqlite:///{province.bus_db}"), "agreement-2")
    differing = {d.record_key for d in report.differences()}
    assert differing == set(keys) - {d["dossierNo"] for d in province.state("onestop", "/_state")["defective"]}
    for d in report.differences():
        snap = province.state("onestop", f"/_state/dossiers/{d.record_key}")["dossier"]
        assert d.since == datetime.fromisoformat(snap["modifiedAt"]).astimezone(UTC)
    sync_all(province.resolve, "sync-2")
    report_tasks.check_agreement(province.resolve, run_id="agreement-3", check="dossier_status", as_of=AS_OF,
                                 dossiers=keys)
    after = agreement_mod.load_agreement(Store(f"sqlite:///{province.bus_db}"), "agreement-3")
    assert {d.record_key for d in after.differences()} <= {d["dossierNo"] for d in
                                                           province.state("onestop", "/_state")["defective"]}
