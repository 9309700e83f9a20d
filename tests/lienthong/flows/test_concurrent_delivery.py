"""Several workers deliver the same flow's outbox at once (issue #9): no dossier is sent twice, no
progress entry is held twice, every dossier's snapshots and steps keep their order, and the
exchange log the workers wrote together still seals and verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lienthong.audit import generate_keypair, seal_exchanges, verify_exchanges
from lienthong.store import delivery_lease
from tests.lienthong.flows.test_dossier_scenarios import (
    assert_portal_agrees,
    expected_dossiers,
    histories,
    post,
    run,
    store,
)

REPO = Path(__file__).resolve().parents[3]

WORKER = """
import json, sys
from connectors.connection import connection_from_env
from lienthong import tasks
run_id, name = sys.argv[1], sys.argv[2]
d = tasks.deliver_dossier_statuses(connection_from_env, run_id=run_id, task_id=name, batch_size=3)
p = tasks.deliver_dossier_progress(connection_from_env, run_id=run_id, task_id=name, chunk_size=4)
print(json.dumps({**d, **p}))
"""


def _workers(run_id: str, n: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, run_id, f"worker{i}"], cwd=REPO, env={**os.environ},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_three_workers_delivering_at_once_send_each_dossier_and_step_once(bus_env, tmp_path):
    # slow portal answers so that the workers really overlap
    post(bus_env, "portal", "/_admin/faults", {"latency_ms": 40, "operations": ["DongBoHoSoMC", "CapNhatTienDoHoSoMC"]})
    from connectors.connection import connection_from_env
    from lienthong import tasks

    tasks.stage_dossier_changes(connection_from_env, run_id="c1", task_id="stage")
    results = _workers("c1", 3)
    post(bus_env, "portal", "/_admin/faults", {})
    delivered = sum(r["delivered_new"] + r["delivered_update"] for r in results)
    assert delivered == len(expected_dossiers(bus_env)), "each dossier delivered by exactly one worker"
    assert sum(1 for r in results if r["delivered_new"] + r["progress_sent"] > 0) >= 2, \
        f"the work was shared: {results}"
    assert_portal_agrees(bus_env)  # every progress entry held exactly once, in order
    for code in expected_dossiers(bus_env):
        assert [h["isUpdating"] for h in histories(bus_env, code)] == ["False"], code
    with store().engine.connect() as conn:
        assert conn.execute(delivery_lease.select()).all() == [], "every lease given back"

    # the world moves on; the workers deliver the changes, again each once and in order
    post(bus_env, "onestop", "/_admin/advance", {"new": 3, "changes": 10})
    tasks.stage_dossier_changes(connection_from_env, run_id="c2", task_id="stage")
    _workers("c2", 3)
    run("c3")  # anything left to a busy worker's lease is picked up by the next run
    assert_portal_agrees(bus_env)

    key = tmp_path / "seal.key"
    generate_keypair(key)
    sealed = seal_exchanges(store(), key)
    assert sealed.records > 0
    assert verify_exchanges(store(), key.with_name(key.name + ".pub")).ok
