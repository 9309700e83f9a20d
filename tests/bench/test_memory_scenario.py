"""The memory scenario's figures: the bus process's peak at each size, from the runs they claim
(the full sync's loopback runs when it reuses them, never its --portal-latency-ms rounds)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import pytest

from bench import harness
from bench.harness import Result, Workspace, scenario_memory

SMALL, LARGE = 150, 450


def _bus_run(peak: float, sync_peak: float, size: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "bus", "times": {"total": 2.0}, "peak_rss_mb": peak,
            "peak_after_mb": {"progress": sync_peak, "seal": peak},
            "counts": {"deliver": {"delivered_new": size}, "progress": {"progress_sent": 0}}, **extra}


@pytest.fixture
def fake_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Bus runs of the large size answer from this list, in turn."""
    answers: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def fake_standins(*args: Any, **kwargs: Any):
        yield {"onestop": "http://127.0.0.1:1", "portal": "http://127.0.0.1:2"}

    monkeypatch.setattr(harness, "standins", fake_standins)
    monkeypatch.setattr(harness, "run_bus", lambda *a, **kw: answers.pop(0))
    monkeypatch.setattr(harness, "expected_progress", lambda ws, count: 0)
    monkeypatch.setattr(Workspace, "onestop", lambda self, count: tmp_path / f"onestop-{count}")
    return answers


def _args(tmp_path: Path, repeats: int = 1) -> argparse.Namespace:
    return argparse.Namespace(memory_small=SMALL, memory_large=LARGE, repeats=repeats, batch_size=50, chunk_size=50,
                              postgres=None, keep=False, out=tmp_path / "out")


def test_the_reused_full_sync_runs_are_its_loopback_ones(tmp_path: Path, fake_bus: list[dict[str, Any]]) -> None:
    full = Result("full_sync", {"dossiers": SMALL})
    full.runs = ([{"kind": "ceiling", "total": 1.0}]
                 + [_bus_run(100.0, 90.0, SMALL, portal_latency_ms=0.0) for _ in range(3)]
                 + [_bus_run(160.0, 150.0, SMALL, portal_latency_ms=30.0) for _ in range(3)])
    fake_bus += [_bus_run(140.0, 130.0, LARGE) for _ in range(3)]
    result = Result("memory", {})
    scenario_memory(Workspace(tmp_path / "ws"), _args(tmp_path), result, full)
    assert result.sizes["sync_peak_mb"] == {SMALL: 90.0, LARGE: 130.0}
    assert result.sizes["with_seal_peak_mb"] == {SMALL: 100.0, LARGE: 140.0}
    ratios = [line.ratio for line in result.lines if line.target == "≤ 1.5"]
    assert ratios == [pytest.approx(130 / 90), pytest.approx(140 / 100)]
