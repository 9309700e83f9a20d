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


def test_each_size_is_a_median_over_the_repeats(tmp_path: Path, fake_bus: list[dict[str, Any]]) -> None:
    """Without a full sync to reuse, both sizes run --repeats times; the figures are their medians."""
    fake_bus += [_bus_run(peak, peak - 10, SMALL) for peak in (100.0, 180.0, 101.0)]
    fake_bus += [_bus_run(peak, peak - 10, LARGE) for peak in (140.0, 90.0, 141.0)]
    result = Result("memory", {})
    scenario_memory(Workspace(tmp_path / "ws"), _args(tmp_path, repeats=3), result, None)
    assert fake_bus == []
    assert result.sizes["with_seal_peak_mb"] == {SMALL: 101.0, LARGE: 140.0}
    assert result.sizes["sync_peak_mb"] == {SMALL: 91.0, LARGE: 130.0}
    assert [r["source"] for r in result.runs] == [SMALL] * 3 + [LARGE] * 3
    assert result.sizes["repeats"] == 3


def test_the_payment_memory_sizes_are_medians_over_the_repeats(tmp_path: Path, fake_bus: list[dict[str, Any]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.harness import scenario_receipts_memory

    seeded = {SMALL: {"paid": 100, "failed": 10, "pending": 5}, LARGE: {"paid": 300, "failed": 30, "pending": 15}}
    def world(ws: Workspace, size: int, name: str) -> tuple[Path, Path, dict[str, int]]:
        (tmp_path / name).mkdir()
        return tmp_path / name, tmp_path / f"platform-{name}", seeded[size]

    monkeypatch.setattr(harness, "_payments_world", world)
    monkeypatch.setattr(harness, "_payments_checked", lambda run, seeded, what: None)

    def run(peak: float) -> dict[str, Any]:
        return {"times": {"total": 2.0}, "peak_rss_mb": peak, "peak_after_mb": {"reconcile": peak - 10, "seal": peak}}

    fake_bus += [run(p) for p in (100.0, 180.0, 101.0, 140.0, 90.0, 141.0)]
    args = argparse.Namespace(payment_memory_small=SMALL, payment_memory_large=LARGE, repeats=3, batch_size=50,
                              chunk_size=50, ledger_batch_size=100, postgres=None, keep=False, out=tmp_path / "out")
    result = Result("receipts_memory", {})
    scenario_receipts_memory(Workspace(tmp_path / "ws"), args, result, None)
    assert fake_bus == []
    assert result.sizes["with_seal_peak_mb"] == {SMALL: 101.0, LARGE: 140.0}
    assert result.sizes["steps_peak_mb"] == {SMALL: 91.0, LARGE: 130.0}
    assert result.sizes["payments"] == {SMALL: 115, LARGE: 345}
