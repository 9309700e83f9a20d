"""The audit scenario's judged figure is a median over several verify runs of the same log (the
harness's --repeats unless --audit-repeats says otherwise), never one run printed as a median."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import harness
from bench.harness import Result, Workspace, scenario_audit


@pytest.mark.parametrize(("argv", "runs"), [([], 3), (["--repeats", "5"], 5), (["--audit-repeats", "2"], 2),
                                            (["--quick"], 1)])
def test_records_per_second_is_the_median_of_the_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        argv: list[str], runs: int) -> None:
    import lienthong.audit.verify as verify

    args = harness.parser().parse_args(argv)
    getattr(harness, "apply_quick", lambda args: None)(args)  # what main does with --quick
    records = args.audit_records
    db = tmp_path / "bus.db"
    db.write_bytes(b"")
    monkeypatch.setattr(harness, "build_exchange_log", lambda ws, args, target: (db, 1.0, 2 * target))
    monkeypatch.setattr(verify, "default_workers", lambda: 1)
    clock = iter(range(1000))
    monkeypatch.setattr(harness.time, "perf_counter", lambda: float(next(clock)) * 0.5)  # each verify: 0.5 s

    class Verdict:
        ok, records_checked, seals_checked = True, records, 1

        def to_dict(self) -> dict[str, Any]:
            return {}

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(verify, "verify_exchanges", lambda store, key, **kw: calls.append(kw) or Verdict())
    result = Result("audit", {})
    scenario_audit(Workspace(tmp_path / "ws"), args, result)
    default = [r for r in result.runs if r["kind"] == "default"]
    assert len(default) == runs == result.sizes["repeats"]
    assert result.lines[0].value == pytest.approx(records / 0.5)
