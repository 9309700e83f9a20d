"""The receipts scenario's naive way stops on a refusal, as the ceiling does: a result the one-stop
refused, or a QUERY the platform refused, voids the run instead of counting the payment as done
(the table would show a figure for work that did not happen)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from bench import harness
from bench.harness import Workspace, standins
from bench.payment_clients import ReferenceRefused, ledger_receipts, onestop_results, run_payments_naive

DOSSIERS, SAMPLE = 150, 30


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path, Path, dict[str, int]]:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return (ws, *harness._payments_world(ws, DOSSIERS, "payments"))


def _fresh(ws: Workspace, base: Path, name: str) -> Path:
    import shutil

    target = ws.path(f"onestop-{name}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target


def test_the_naive_way_records_what_it_counts(world: tuple[Workspace, Path, Path, dict[str, int]]) -> None:
    ws, base, platform, _ = world
    with standins(_fresh(ws, base, "naive-ok"), platform_dir=platform, ledger_dir=ws.fresh("ledger-ok")) as urls:
        run = run_payments_naive(urls, SAMPLE)
        held = onestop_results(urls["onestop"])
        receipts = ledger_receipts(urls["ledger"])
    assert run["payments"] == SAMPLE
    assert held.get("paid", 0) == run["paid"] == len(receipts) > 0
    assert held.get("failed", 0) == run["failed"]
    assert run["paid"] + run["failed"] + run["pending"] == SAMPLE


@pytest.mark.parametrize(("peer", "operation"), [("onestop", "payment_result"), ("platform", None)])
def test_a_refusal_voids_the_naive_run(world: tuple[Workspace, Path, Path, dict[str, int]], peer: str,
                                       operation: str | None) -> None:
    ws, base, platform, _ = world
    with standins(_fresh(ws, base, f"naive-{peer}"), platform_dir=platform,
                  ledger_dir=ws.fresh(f"ledger-{peer}")) as urls:
        plan = {"error_rate": 1.0, "http_status": 500}
        if operation:
            plan["operations"] = [operation]
        requests.post(f"{urls[peer]}/_admin/faults", json=plan, timeout=30).raise_for_status()
        with pytest.raises(ReferenceRefused):
            run_payments_naive(urls, SAMPLE)
