"""A generated province, synced once per module: the stand-ins as real servers, the dossier flow and
the catalogue pull run through the same task functions as the DAGs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import StandIns, start_standins

T = 10


@dataclass
class Province:
    peers: StandIns
    home: Path
    bus_db: Path
    ministry_db: Path

    def resolve(self, conn_id: str):
        from connectors.connection import connection_from_env

        return connection_from_env(conn_id)

    def state(self, peer: str, path: str) -> dict:
        base = self.peers.onestop.url if peer == "onestop" else self.peers.portal.url
        return requests.get(base + path, timeout=T).json()


def sync_all(resolve, run_id: str) -> None:
    from lienthong import tasks

    tasks.stage_dossier_changes(resolve, run_id=run_id)
    tasks.deliver_dossier_statuses(resolve, run_id=run_id)
    tasks.deliver_dossier_progress(resolve, run_id=run_id)


@pytest.fixture(scope="module")
def province(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Province]:
    home = tmp_path_factory.mktemp("province")
    peers = start_standins(home / "mocks", seed_dossiers=60, catalogue_size=120)
    with pytest.MonkeyPatch.context() as mp:
        for conn_id, conn in peers.connections(home / "bus.db").items():
            mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        mp.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT", json.dumps({"conn_type": "sqlite", "host": str(home / "ministry.db")}))
        mp.setenv("LIENTHONG_HOME", str(home / "home"))
        try:
            # the world moves on: more dossiers, many finished (on time or late), some still open
            requests.post(peers.onestop.url + "/_admin/advance", json={"new": 25, "changes": 160}, timeout=30
                          ).raise_for_status()
            p = Province(peers, home, home / "bus.db", home / "ministry.db")
            from lienthong import tasks

            sync_all(p.resolve, "sync-1")
            tasks.pull_procedure_catalogue(p.resolve, run_id="catalogue-1")
            yield p
        finally:
            peers.onestop.stop()
            peers.portal.stop()
