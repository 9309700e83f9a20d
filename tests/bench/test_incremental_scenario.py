"""The incremental scenario compares the same changes over the two sources: in each repeat, the
dossiers changed over the large source are clones of the same templates, in the same order, as
those changed over the small one (the same records but for their numbers), spread over the whole
large source; and a different set in each repeat."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import pytest

from bench import harness, seed
from bench.harness import Result, Workspace, scenario_incremental


def test_each_repeat_changes_the_same_records_over_both_sources(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    small, large, changes, repeats = 300, 3_000, 30, 3
    changed: dict[str, list[int]] = {}  # the one-stop directory → the indices appended there, in turn
    latest: list[str] = []

    def append_changes(state_dir: Path, templates: Any, indices: list[int]) -> None:
        latest[:] = [str(state_dir)]
        changed.setdefault(str(state_dir), []).append(list(indices))

    def fake_history(ws: Workspace, size: int, name: str) -> tuple[Path, Path, Path]:
        return tmp_path / f"onestop-{size}", tmp_path / f"portal-{size}", tmp_path / f"bus-{size}.db"

    @contextlib.contextmanager
    def fake_standins(*args: Any, **kwargs: Any):
        yield {"onestop": "http://127.0.0.1:1", "portal": "http://127.0.0.1:2"}

    def fake_bus(*args: Any, **kwargs: Any) -> dict[str, Any]:
        n = len(changed[latest[0]][-1])
        return {"times": {"total": 1.0}, "counts": {"stage": {"staged": n}, "progress": {"progress_sent": 0},
                                                     "deliver": {"delivered_update": n, "delivered_new": 0}}}

    monkeypatch.setattr(seed, "append_changes", append_changes)
    monkeypatch.setattr(harness, "_seed_history", fake_history)
    monkeypatch.setattr(harness, "standins", fake_standins)
    monkeypatch.setattr(harness, "run_bus", fake_bus)
    args = argparse.Namespace(incremental_small=small, incremental_large=large, changes=changes, repeats=repeats,
                              batch_size=50, chunk_size=50)
    ws = Workspace(tmp_path / "ws")
    scenario_incremental(ws, args, Result("incremental", {}))

    n = len(ws.templates)
    over_small, over_large = changed[str(tmp_path / f"onestop-{small}")], changed[str(tmp_path / f"onestop-{large}")]
    assert len(over_small) == len(over_large) == repeats
    for picked_small, picked_large in zip(over_small, over_large, strict=True):
        assert len(picked_small) == len(set(picked_small)) == changes
        assert len(picked_large) == len(set(picked_large)) == changes
        assert all(0 <= i < small for i in picked_small) and all(0 <= i < large for i in picked_large)
        # the same templates in the same order: the same changes, but for the dossier numbers
        assert [i % n for i in picked_small] == [j % n for j in picked_large]
        assert max(picked_large) >= small  # spread over the large source, not its first dossiers
    assert len({i for picked in over_small for i in picked}) == changes * repeats  # new dossiers each repeat
