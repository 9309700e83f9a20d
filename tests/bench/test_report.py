"""``python -m bench --report``: one table from the result files of several invocations (the
README's table is the audit scenario from one invocation, memory from another...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.harness import main


def _line(scenario: str, measure: str, value: float, reference: float, target: str, verdict: str | None,
          unit: str = "records/s") -> dict[str, Any]:
    return {"scenario": scenario, "measure": measure, "value": value, "unit": unit, "reference": reference,
            "reference_label": "ref", "ratio": value / reference, "target": target, "verdict": verdict, "note": ""}


def _result(path: Path, started: str, commit: str, command: str, scenarios: dict[str, list[dict[str, Any]]],
            **extra: Any) -> Path:
    doc = {"started_at": started, "finished_at": started, "partial": False, "command": command, "quick": False,
           "machine": {"cores": 2, "platform": "Linux", "python": "3.11.7", "load_average": [1.25, 1.0, 0.5]},
           "commit": commit,
           "scenarios": {name: {"sizes": {}, "lines": lines, "runs": [], "seconds": 1.0, "error": None}
                         for name, lines in scenarios.items()},
           "table": "", **extra}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_report_takes_each_scenario_from_the_latest_file_that_ran_it(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    old = _result(tmp_path / "old.json", "2026-11-28T01:00:00+00:00", "a" * 40, "python -m bench --scenario audit",
                  {"audit": [_line("audit", "records verified per second", 5000.0, 100000.0, ">= 1.0", "FAIL")],
                   "engine": [_line("engine", "dossiers mapped", 12000.0, 18000.0, ">= 0.50", "PASS")]})
    new = _result(tmp_path / "new.json", "2026-11-28T03:00:00+00:00", "b" * 40,
                  "python -m bench --scenario audit --scenario memory",
                  {"audit": [_line("audit", "records verified per second", 9000.0, 100000.0, ">= 1.0", "FAIL")],
                   "memory": [_line("memory", "bus peak RSS", 155.0, 148.0, "<= 1.5", "PASS", unit="MB")]},
                  partial=True)
    # the order of the arguments does not matter: the file that started later wins
    assert main(["--report", str(new), "--report", str(old)]) == 0
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| ") and "scenario" not in r]
    assert [r.split("|")[1].strip() for r in rows] == ["memory", "engine", "audit"]  # the harness's order
    audit = next(r for r in rows if r.startswith("| audit"))
    assert "9,000 records/s" in audit and "0.09" in audit and "FAIL" in audit
    assert "5,000" not in out
    memory = next(r for r in rows if r.startswith("| memory"))
    assert "155 MB" in memory and "1.05" in memory and "PASS" in memory
    sources = [r for r in out.splitlines() if r.startswith("- ")]
    assert sources == [
        f"- engine: `python -m bench --scenario audit` at aaaaaaa, 2026-11-28 01:00 UTC, 2 cores, load 1.2 [{old}]",
        ("- memory, audit: `python -m bench --scenario audit --scenario memory` at bbbbbbb, 2026-11-28 03:00 UTC, "
         f"2 cores, load 1.2 (did not finish) [{new}]"),
    ]
    assert "measured at different commits: aaaaaaa, bbbbbbb" in out


def test_report_of_one_commit_says_nothing_about_commits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = _result(tmp_path / "one.json", "2026-11-28T01:00:00+00:00", "c" * 40, "python -m bench",
                  {"catalogue": [_line("catalogue", "records pushed", 50.0, 50.0, "= 1.00", "PASS", unit="records")]})
    assert main(["--report", str(one)]) == 0
    out = capsys.readouterr().out
    row = next(r for r in out.splitlines() if r.startswith("| catalogue"))
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "catalogue", "records pushed", "50.0 records", "50.0 ref", "1.00", "= 1.00", "PASS"]
    assert "different commits" not in out


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot be read"),
    ("{not json", "not JSON"),
    ('{"started_at": "2026-11-28T01:00:00+00:00"}', "no 'started_at' and 'scenarios'"),
    ('{"started_at": "x", "scenarios": {"speed": {"lines": []}}}', "scenario 'speed' is not one this harness writes"),
])
def test_a_file_that_is_no_result_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      content: str | None, problem: str) -> None:
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["--report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and problem in err
