"""Smoke test of the benchmark harness: ``python -m bench --quick`` runs every scenario at small
sizes and writes JSON with a ratio and a verdict per line. Speed is not asserted here (design §7):
only the structure and the exact record counts each scenario checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert scenarios["audit"]["runs"][0]["records"] == QUICK["audit_records"]
    diffs = [r for r in scenarios["catalogue"]["runs"] if r.get("kind") != "first"]
    assert diffs and all(r["amended"] == QUICK["catalogue_changed"] for r in diffs)
    assert all(r["pushed"] == {"onestop": QUICK["catalogue_changed"], "ministry": QUICK["catalogue_changed"]}
               for r in diffs)
    verdicts = {line["scenario"]: line["verdict"] for line in scenarios["catalogue"]["lines"] if line["verdict"]}
    assert verdicts == {"catalogue": "PASS"}
