"""The KPIs of a generated province equal an independent recount from the stand-ins' raw state.

The recount reads the stand-ins' own state files with plain SQL (the one-stop's dossier snapshots,
the portal's catalogue rows) and the portal's level source, and counts with plain Python; it shares
no code with ``lienthong.reports``. The report's three outputs (ministry table, CSV, HTML) carry
the same numbers.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from lienthong.reports import tasks as report_tasks
from lienthong.reports.kpi import compute_kpis, parse_period
from lienthong.store import Store

VN = ZoneInfo("Asia/Ho_Chi_Minh")
AS_OF = datetime(2026, 11, 6, 12, 0, tzinfo=UTC)
COUNTED = ["procedures", "level_full", "level_partial", "level_none", "level_unknown", "received",
           "received_online", "online_full", "online_partial", "online_none", "online_unknown", "processed",
           "on_time", "late", "finished_without_due", "open_past_due"]


def _instant(text):
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def recount(province, first: date, last: date, as_of: datetime, thresholds=(0.5, 0.3)) -> dict[str, dict]:
    """Every KPI per agency code ("*" = province), from the raw state."""
    from mocks.national_portal.catalogue_service import dvc_level

    start = datetime.combine(first, time(0), tzinfo=VN).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=VN).astimezone(UTC)
    at = min(end, as_of)
    seed = province.state("portal", "/_state/catalogue")["seed"]
    level_words = {4: "full", "4": "full", "Toàn trình": "full", 3: "partial", "3": "partial",
                   "Một phần": "partial", 2: "none", "2": "none"}
    rows: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    level_of = {}
    with sqlite3.connect(province.home / "mocks" / "national_portal.db") as db:
        published = db.execute("SELECT code, record FROM catalogue WHERE trang_thai = 1 AND defect IS NULL").fetchall()
    for code, text in published:
        record = json.loads(text)
        level = level_words[dvc_level(seed, code)]
        level_of[code] = level
        agencies = sorted({a["MADONVI"] for a in record["COQUANTHUCHIEN"]}) or [record["MACOQUANCONGBO"]]
        for key in ["*", *agencies]:
            rows[key]["procedures"] += 1
            rows[key][f"level_{level}"] += 1
    with sqlite3.connect(province.home / "mocks" / "onestop.db") as db:
        dossiers = [json.loads(r[0]) for r in db.execute("SELECT snapshot FROM dossiers")]
    for d in dossiers:
        keys = ["*", d["govAgencyCode"]]
        submitted, finished, due = _instant(d["submitDate"]), _instant(d["finishDate"]), _instant(d["dueDate"])
        for key in keys:
            r = rows[key]
            if start <= submitted < end:
                r["received"] += 1
                if d["submissionChannel"] == "online":
                    r["received_online"] += 1
                    r["online_" + level_of.get(d["serviceCode"], "unknown")] += 1
            if finished is not None and start <= finished < end:
                r["processed"] += 1
                if due is None:
                    r["finished_without_due"] += 1
                elif finished <= due:
                    r["on_time"] += 1
                else:
                    r["late"] += 1
            if due is not None and due < at and (finished is None or finished >= at) and submitted < at:
                r["open_past_due"] += 1
    out = {}
    for key, r in rows.items():
        counts = {name: r.get(name, 0) for name in COUNTED}
        n = counts["procedures"]
        counts["share_full"] = counts["level_full"] / n if n else None
        counts["online_share"] = counts["received_online"] / counts["received"] if counts["received"] else None
        timed = counts["on_time"] + counts["late"]
        counts["on_time_rate"] = counts["on_time"] / timed if timed else None
        counts["flags"] = [t for t in thresholds if n and counts["level_full"] / n < t]
        out[key] = counts
    return out


def _as_counts(row) -> dict:
    d = row.as_dict()
    return {k: d[k] for k in [*COUNTED, "share_full", "online_share", "on_time_rate", "flags"]}


@pytest.mark.parametrize("first,last", [("2026-11-01", "2026-11-30"), ("2026-11-03", "2026-11-04")])
def test_kpis_equal_an_independent_recount(province, first, last):
    store = Store(f"sqlite:///{province.bus_db}")
    report_tasks.refresh_facts(province.resolve)
    report = compute_kpis(store, parse_period(first, last), as_of=AS_OF)
    expected = recount(province, date.fromisoformat(first), date.fromisoformat(last), AS_OF)
    got = {r.agency_code: _as_counts(r) for r in report.rows()}
    assert got.keys() == expected.keys()
    for code in expected:
        assert got[code] == expected[code], code
    p = report.province
    # a generated province exercises every branch, or the comparison proves little
    if first == "2026-11-01":
        assert p.received > 80 and 0 < p.received_online < p.received
        assert p.on_time > 0 and p.late > 0 and p.open_past_due > 0
        assert p.level_full and p.level_partial and p.level_none
        assert report.flagged() and any(not r.flags for r in report.agencies if r.procedures)


def test_outputs_carry_the_computed_numbers_and_reruns_are_safe(province, tmp_path):
    out = tmp_path / "out"
    first = report_tasks.kpi_report(province.resolve, date_from="2026-11-01", date_to="2026-11-30", out_dir=out)
    again = report_tasks.kpi_report(province.resolve, date_from="2026-11-01", date_to="2026-11-30", out_dir=out)
    assert first["ministry_rows"] == again["ministry_rows"] == first["agencies"] + 1
    expected = recount(province, date(2026, 11, 1), date(2026, 11, 30), datetime.now(UTC))["*"]
    with sqlite3.connect(province.ministry_db) as db:
        rows = db.execute("SELECT ma_co_quan, so_tthc, so_dvc_toan_trinh, hs_tiep_nhan, hs_truc_tuyen, hs_dung_han, "
                          "hs_tre_han, canh_bao FROM tk_dvc_truc_tuyen WHERE tu_ngay = '2026-11-01' "
                          "AND den_ngay = '2026-11-30'").fetchall()
        versions = [r[0] for r in db.execute("SELECT phien_ban FROM tthc_schema_version ORDER BY phien_ban")]
    assert len(rows) == first["agencies"] + 1  # upserted: the rerun replaced its rows
    assert 2 in versions
    by_agency = {r[0]: r for r in rows}
    assert by_agency["*"][1:7] == (expected["procedures"], expected["level_full"], expected["received"],
                                   expected["received_online"], expected["on_time"], expected["late"])
    flagged = [r for r in rows if r[7]]
    assert flagged and all(r[7].startswith("<50%") for r in flagged)
    with open(first["kpi_csv"], encoding="utf-8") as f:
        province_row = next(r for r in csv.DictReader(f) if r["agency_code"] == "*")
    assert int(province_row["received_online"]) == expected["received_online"]
    assert int(province_row["level_full"]) == expected["level_full"]
    html = open(first["html"], encoding="utf-8").read()
    assert f"<b>{expected['procedures']}</b> TTHC" in html


def test_cli_report_kpi_and_agreement(province, tmp_path, capsys):
    from lienthong.cli import main

    assert main(["report", "kpi", "--from", "2026-11-01", "--to", "2026-11-30", "--threshold", "60",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "HTML report: " in out and (tmp_path / "report-kpi-2026-11-01_2026-11-30.html").exists()
    summary = json.loads(out[: out.rindex("HTML report: ")])
    assert summary["flagged"] >= 1 and summary["received"] > 0
    assert main(["report", "agreement", "--check", "dossier_status", "--run-id", "cli-agreement",
                 "--out", str(tmp_path), "--no-ministry"]) == 0
    assert (tmp_path / "agreement-cli-agreement.csv").exists()
    # a byte-order mark first, so that a spreadsheet reads the Vietnamese names as UTF-8
    for name in ("kpi-2026-11-01_2026-11-30.csv", "kpi-2026-11-01_2026-11-30-days.csv", "agreement-cli-agreement.csv"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\xef\xbb\xbf") and not data[3:].startswith(b"\xef\xbb\xbf")
    assert "Sở" in (tmp_path / "kpi-2026-11-01_2026-11-30.csv").read_text(encoding="utf-8-sig")


def test_write_demo_report_returns_the_html_with_kpis_and_agreement(province, tmp_path):
    class Topology:  # what the demo passes: a home and the environment of the local stand-ins
        home = tmp_path / "demo-home"

        @staticmethod
        def environment() -> dict[str, str]:
            return {}

    path = report_tasks.write_demo_report(Topology())
    assert path.exists() and path.parent == tmp_path / "demo-home" / "reports"
    html = path.read_text(encoding="utf-8")
    assert 'id="chart-levels"' in html and 'id="chart-disagreements"' in html and "dossier_status" in html


def test_report_writes_to_the_ministry_database_are_in_the_exchange_log(tmp_path, monkeypatch):
    """A write to a ministry database is an exchange like any other (issue #6): the KPI upsert is
    recorded as one SQL exchange with the agencies as record keys, after its commit."""
    import json as _json

    from sqlalchemy import select as _select

    from connectors.connection import connection_from_env
    from lienthong.exchange_log import read_body
    from lienthong.reports import tasks as report_tasks
    from lienthong.store import exchange_key, exchange_log

    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", _json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "bus.db")}))
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       _json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    summary = report_tasks.kpi_report(connection_from_env, date_from="2026-11-01", date_to="2026-11-30",
                                      out_dir=tmp_path / "out", with_agreement=False)
    store = report_tasks.open_store(connection_from_env)
    with store.engine.connect() as conn:
        rows = conn.execute(_select(exchange_log).where(exchange_log.c.operation == "upsert_kpis")).mappings().all()
        keys = set(conn.execute(_select(exchange_key.c.record_key).where(
            exchange_key.c.exchange_id.in_([r["id"] for r in rows]))).scalars())
    assert len(rows) == 1 and rows[0]["peer"] == "ministry_db" and rows[0]["flow"] == "reports"
    assert rows[0]["outcome"] == "ok"
    request = _json.loads(read_body(rows[0]["request_body"]))
    assert request["table"] == "tk_dvc_truc_tuyen" and len(request["rows"]) == summary["ministry_rows"]
    assert keys == {r["key"]["ma_co_quan"] for r in request["rows"]}
