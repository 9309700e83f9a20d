"""The catalogue scenario judges what the destinations received (the one-stop stand-in's log of
upserts and withdrawals, the ministry replica's rows written), not what the bus says it pushed:
a bus that reports the 5 changed procedures while delivering nothing, or while re-sending every
procedure, fails the line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench import harness
from bench.harness import Line, QUICK, Result, Workspace, scenario_catalogue


def _args(tmp_path: Path) -> argparse.Namespace:
    args = harness.parser().parse_args(["--quick", "--out", str(tmp_path / "out")])
    for key, value in QUICK.items():
        setattr(args, key, value)
    return args


def _judged(result: Result) -> list[Line]:
    return [line for line in result.lines if line.passed is not None]


def test_the_real_bus_pushes_exactly_the_changed_procedures_to_each_destination(tmp_path: Path) -> None:
    args = _args(tmp_path)
    result = Result("catalogue", {})
    scenario_catalogue(Workspace(tmp_path / "ws"), args, result)
    changed = QUICK["catalogue_changed"]
    (diff,) = [r for r in result.runs if r.get("kind") != "first"]
    published = sorted(diff["published"])
    assert len(published) == changed
    assert diff["received"] == {"onestop": published, "ministry": published}
    judged = _judged(result)
    assert [line.value for line in judged] == [float(changed), float(changed)]
    assert all(line.passed for line in judged)


@pytest.mark.parametrize("lie", ["delivers nothing", "re-sends every procedure"])
def test_a_bus_whose_counts_do_not_match_what_arrived_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           lie: str) -> None:
    from lienthong import tasks
    from lienthong.flows import catalogue

    real = tasks.push_procedure_catalogue
    changed = QUICK["catalogue_changed"]

    def push(resolve: Any, *, run_id: str, destination: str, **kw: Any) -> dict[str, Any]:
        claim = {f"{destination}_upserted": changed, f"{destination}_withdrawn": 0}
        if not run_id.startswith("catalogue-diff"):
            return real(resolve, run_id=run_id, destination=destination, **kw)
        if lie == "delivers nothing":
            return claim
        # forget the destination's acknowledgements: every procedure is pushed again
        store = tasks.open_store(resolve)
        with store.begin() as conn:
            conn.exec_driver_sql("DELETE FROM delivery_state WHERE peer = ?",
                                 (catalogue.ONESTOP if destination == "onestop" else catalogue.MINISTRY,))
        real(resolve, run_id=run_id, destination=destination, **kw)
        return claim

    monkeypatch.setattr(tasks, "push_procedure_catalogue", push)
    result = Result("catalogue", {})
    scenario_catalogue(Workspace(tmp_path / "ws"), _args(tmp_path), result)
    judged = _judged(result)
    assert judged and not any(line.passed for line in judged)
    expected = 0.0 if lie == "delivers nothing" else float(QUICK["catalogue_size"])
    assert all(line.value == expected for line in judged), [(line.measure, line.value) for line in judged]
