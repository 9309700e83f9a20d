"""Smoke test of the benchmark harness: ``python -m bench --quick`` runs every scenario at small
sizes and writes JSON with a ratio and a verdict per line. Speed is not asserted here (design §7):
only the structure and the exact record counts each scenario checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import QUICK, SCENARIOS

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_every_scenario_with_ratios_and_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1 = some target missed: still a complete report
    latest = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    stamped = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1 and json.loads(stamped[0].read_text(encoding="utf-8")) == latest
    assert latest["machine"]["cores"] >= 1
    assert latest["commit"] is None or len(latest["commit"]) == 40
    assert set(latest["scenarios"]) == set(SCENARIOS)
    for name, scenario in latest["scenarios"].items():
        assert scenario["error"] is None, (name, scenario["runs"][-1])
        assert scenario["lines"], name
        assert any(line["verdict"] in ("PASS", "FAIL") for line in scenario["lines"]), name
        for line in scenario["lines"]:
            assert isinstance(line["ratio"], float) and line["ratio"] > 0, (name, line)
    for line in latest["table"].splitlines()[2:]:
        assert line.startswith("| ")
    assert "PASS" in done.stdout or "FAIL" in done.stdout

    scenarios = latest["scenarios"]
    full = scenarios["full_sync"]
    n = QUICK["dossiers"]
    bus_runs = [r for r in full["runs"] if r["kind"] == "bus"]
    assert bus_runs and all(r["counts"]["deliver"]["delivered_new"] == n for r in bus_runs)
    assert all(r["portal"]["dossiers"] == n for r in full["runs"] if r["kind"] in ("bus", "ceiling"))
    entries = full["sizes"]["progress_entries"]
    assert all(r["counts"]["progress"]["progress_sent"] == entries for r in bus_runs)
    assert all(r["portal"] == {"dossiers": QUICK["naive_sample"], "progress": r["progress"]}
               for r in full["runs"] if r["kind"] == "naive")
    # what "≥ 20× naive" can reach at most here: the ceiling over naive, shown without a verdict
    bound = [line for line in full["lines"] if line["measure"] == "ceiling vs naive (bound)"]
    assert len(bound) == 1 and bound[0]["verdict"] is None and bound[0]["ratio"] > 1
    # the whole path: every exchange the bus logged was sealed
    assert all(r["counts"]["sealed"] > 0 for r in bus_runs)

    incremental = scenarios["incremental"]["runs"]
    assert {r["source"] for r in incremental} == {QUICK["incremental_large"], QUICK["incremental_small"]}
    for r in incremental:
        assert r["counts"]["stage"]["staged"] == QUICK["changes"]
        assert r["counts"]["deliver"]["delivered_update"] == QUICK["changes"]

    memory = {r["source"] for r in scenarios["memory"]["runs"]}
    assert QUICK["memory_large"] in memory
    audit = scenarios["audit"]
    assert audit["runs"][0]["records"] == QUICK["audit_records"]
    # judged on exchange-log records; what those calls carried is shown beside it, not judged
    judged, carried = audit["lines"]
    assert judged["verdict"] in ("PASS", "FAIL") and carried["verdict"] is None
    per_call = audit["sizes"]["records_carried"] / QUICK["audit_records"]
    assert per_call > 1 and carried["value"] == pytest.approx(judged["value"] * per_call)
    diffs = [r for r in scenarios["catalogue"]["runs"] if r.get("kind") != "first"]
    assert diffs and all(r["amended"] == QUICK["catalogue_changed"] for r in diffs)
    assert all(r["pushed"] == {"onestop": QUICK["catalogue_changed"], "ministry": QUICK["catalogue_changed"]}
               for r in diffs)
    verdicts = {line["scenario"]: line["verdict"] for line in scenarios["catalogue"]["lines"] if line["verdict"]}
    assert verdicts == {"catalogue": "PASS"}

    # the payment flow: every finished payment recorded at the one-stop once, every paid one booked
    # once at the ledger, by the bus and by the ceiling alike; the naive way over its sample
    receipts = scenarios["receipts"]
    sizes = receipts["sizes"]
    paid, failed, pending = sizes["platform_paid"], sizes["platform_failed"], sizes["platform_pending"]
    assert paid > 0 and failed > 0 and pending > 0 and sizes["payments"] == paid + failed + pending
    whole = {"onestop": {"paid": paid, "failed": failed, "pending": pending}, "receipts": paid, "distinct": paid}
    assert [r["held"] for r in receipts["runs"] if r["kind"] in ("ceiling", "bus")] == [whole, whole]
    bus = next(r for r in receipts["runs"] if r["kind"] == "bus")
    assert bus["counts"]["ledger"]["receipts_accepted"] == paid
    assert bus["counts"]["fees"]["fees_updated"] == paid + failed
    assert bus["counts"]["reconcile"]["counts"]["mismatches"] == 0
    assert bus["counts"]["sealed"] == bus["counts"]["reconcile"]["exchanges"]
    naive = next(r for r in receipts["runs"] if r["kind"] == "naive")
    assert naive["payments"] == QUICK["naive_payments"]
    assert naive["held"]["receipts"] == naive["held"]["distinct"] == naive["paid"]
    judged = {line["measure"]: line["verdict"] for line in receipts["lines"]}
    assert judged["bus throughput vs ceiling"] in ("PASS", "FAIL")
    assert judged["bus throughput vs naive"] is None and judged["ceiling vs naive (bound)"] is None
    # its memory: the smaller world is the receipts scenario's own bus run, the larger one runs anew
    # (a first run over it, its counts checked like the bus run above)
    memory = scenarios["receipts_memory"]
    large = QUICK["payment_memory_large"]
    assert [r["source"] for r in memory["runs"]] == [large]
    assert memory["sizes"]["payments"][str(QUICK["payment_memory_small"])] == sizes["payments"]
    run = memory["runs"][0]
    assert run["payments"] == memory["sizes"]["payments"][str(large)] > sizes["payments"]
    assert run["counts"]["ledger"]["receipts_accepted"] > paid and run["counts"]["reconcile"]["counts"]["mismatches"] == 0
    assert [line["target"] for line in memory["lines"]] == ["≤ 1.5", "< 500 MB"] * 2
    assert all(line["verdict"] in ("PASS", "FAIL") for line in memory["lines"])
    # a run after a few new payments over each backlog: the new ones asked, recorded and booked, none
    # of the backlog's payments asked again (finished, or given up after 30 days)
    incremental = scenarios["receipts_incremental"]
    small, large, changes = (QUICK[k] for k in ("payment_incremental_small", "payment_incremental_large",
                                                "payment_changes"))
    assert [(r["source"], r["repeat"]) for r in incremental["runs"]] == [(small, 0), (large, 0)]
    for r in incremental["runs"]:
        collected = r["counts"]["collect"]
        assert collected["requests_new"] == collected["queried"] == changes
        # the newest pages of 500: the new requests' pages and one before them with nothing new
        assert collected["requests_listing"] == "newest"
        assert changes <= collected["requests_listed"] <= min(r["backlog_payments"] + changes, changes + 2 * 500)
        assert r["counts"]["fees"]["fees_updated"] == changes
    assert [line["target"] for line in incremental["lines"]] == ["≤ 2.0"]


def test_portal_latency_adds_unjudged_lines_and_every_call_waits(tmp_path: Path) -> None:
    """``--portal-latency-ms``: the bus, the ceiling and the naive way run again against a national
    stand-in that waits before each answer; their lines carry no verdict (the targets are for the
    loopback stand-in), and each run took at least its portal calls times the delay (a floor that
    ``time.sleep`` guarantees, not a speed)."""
    out = tmp_path / "out"
    delay_ms = 30.0
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--scenario", "full_sync",
                           "--portal-latency-ms", str(delay_ms), "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    full = json.loads((out / "latest.json").read_text(encoding="utf-8"))["scenarios"]["full_sync"]
    assert full["error"] is None
    assert full["sizes"]["portal_latency_ms"] == [0.0, delay_ms]
    judged = [line for line in full["lines"] if line["verdict"] is not None]
    assert [line["measure"] for line in judged] == ["bus throughput vs ceiling", "bus throughput vs naive"]
    delayed = [line for line in full["lines"] if "after 30 ms" in line["measure"]]
    assert [line["measure"] for line in delayed] == ["bus vs ceiling, portal answers after 30 ms",
                                                     "bus vs naive, portal answers after 30 ms"]
    assert all(line["verdict"] is None and line["ratio"] > 0 for line in delayed)
    runs = {(r["kind"], r["portal_latency_ms"]): r for r in full["runs"]}
    assert set(runs) == {(kind, ms) for kind in ("ceiling", "bus", "naive") for ms in (0.0, delay_ms)}
    n = QUICK["dossiers"]
    for latency in (0.0, delay_ms):  # the delay changes the time, never what arrived
        assert runs[("bus", latency)]["counts"]["deliver"]["delivered_new"] == n
        assert runs[("ceiling", latency)]["portal"]["dossiers"] == n
    bus = runs[("bus", delay_ms)]
    bus_calls = bus["counts"]["deliver"]["portal_calls"] + bus["counts"]["progress"]["progress_calls"]
    assert bus["times"]["total"] >= bus_calls * delay_ms / 1000
    for kind in ("ceiling", "naive"):
        assert runs[(kind, delay_ms)]["total"] >= runs[(kind, delay_ms)]["calls"] * delay_ms / 1000


def test_portal_latency_is_refused_when_not_a_positive_delay() -> None:
    for bad, says in (("0", "more than 0"), ("-5", "more than 0"), ("120001", "at most 120000"),
                      ("soon", "not a number")):
        done = subprocess.run([sys.executable, "-m", "bench", "--portal-latency-ms", bad], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and says in done.stderr, (bad, done.stderr[-500:])


def test_postgres_puts_each_bus_run_in_a_throw_away_database_there(tmp_path: Path) -> None:
    """``--postgres URL``: the bus of the full sync, memory and receipts scenarios keeps its database
    on that server (the scale-out deployment's), one fresh database per run, dropped afterwards; its lines
    say so, the counts are as exact as on SQLite, and the password never reaches the output."""
    from tests.conftest import PG_ADMIN_URL, postgres_databases

    before = postgres_databases("lienthong_bench_")
    secret = "not-in-any-output-7f3a"  # trust auth here: the server ignores it, the harness must hide it
    url = PG_ADMIN_URL.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in url
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--scenario", "full_sync", "--scenario", "memory",
                           "--scenario", "receipts", "--postgres", url, "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    body = (out / "latest.json").read_text(encoding="utf-8")
    assert secret not in body and secret not in done.stdout and secret not in done.stderr
    latest = json.loads(body)
    assert "--postgres postgresql+psycopg2://postgres:***@127.0.0.1:5432/postgres" in latest["command"]
    full, memory, receipts = (latest["scenarios"][name] for name in ("full_sync", "memory", "receipts"))
    assert full["error"] is None and memory["error"] is None and receipts["error"] is None
    assert full["sizes"]["bus_db"] == memory["sizes"]["bus_db"] == receipts["sizes"]["bus_db"] == "PostgreSQL"
    judged = [line["measure"] for scenario in (full, memory, receipts) for line in scenario["lines"]
              if line["verdict"]]
    assert judged and all(m.endswith("(bus DB: PostgreSQL)") for m in judged)
    n, entries = QUICK["dossiers"], full["sizes"]["progress_entries"]
    bus = [r for r in full["runs"] if r["kind"] == "bus"]
    assert bus and all(r["counts"]["deliver"]["delivered_new"] == n and r["counts"]["progress"]["progress_sent"] == entries
                       and r["counts"]["sealed"] > 0 for r in bus)
    assert [r["counts"]["deliver"]["delivered_new"] for r in memory["runs"]] == [QUICK["memory_large"]]
    # the payment flow on PostgreSQL: every paid payment booked once, nothing left to reconcile
    paid = receipts["sizes"]["platform_paid"]
    (pay,) = [r for r in receipts["runs"] if r["kind"] == "bus"]
    assert pay["counts"]["ledger"]["receipts_accepted"] == paid and pay["held"]["distinct"] == paid
    assert pay["counts"]["reconcile"]["counts"]["mismatches"] == 0
    assert pay["counts"]["sealed"] == pay["counts"]["reconcile"]["exchanges"]
    assert postgres_databases("lienthong_bench_") == before  # every run's database was dropped


@pytest.mark.parametrize(("argv", "says"), [
    (["--postgres", "sqlite:///bus.db", "--scenario", "full_sync"], "not a PostgreSQL URL"),
    (["--postgres", "postgresql+psycopg2://postgres@db.example.org:5432/postgres", "--scenario", "full_sync"],
     "must be on this machine"),
    (["--postgres", "no url at all", "--scenario", "full_sync"], "not a SQLAlchemy URL"),
    (["--postgres", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", "--scenario", "audit"],
     "full_sync, memory, receipts, receipts_memory and receipts_incremental scenarios only"),
    (["--postgres", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"],
     "full_sync, memory, receipts, receipts_memory and receipts_incremental scenarios only"),
])
def test_postgres_is_refused_where_it_cannot_apply(argv: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and says in done.stderr, (argv, done.stderr[-500:])


def test_profile_without_the_profiler_is_refused_before_anything_runs(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import harness

    real = harness.importlib.util.find_spec
    monkeypatch.setattr(harness.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyinstrument" else real(name, *a))
    with pytest.raises(SystemExit) as refused:
        harness.main(["--profile", "--scenario", "full_sync", "--out", str(tmp_path / "out")])
    assert refused.value.code == 2
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
