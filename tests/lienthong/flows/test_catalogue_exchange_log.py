"""The catalogue flow's SQL writes to the ministry database are in the exchange log (issue #6),
like its REST calls: one exchange per batch transaction, with the flow, run and task, the procedure
codes as record keys and bodies that name the rows written; the sealed log still verifies."""

from __future__ import annotations

import json
import zlib

import pytest
import requests
from sqlalchemy import select

from connectors.connection import connection_from_env
from lienthong import tasks
from lienthong.audit.keys import generate_keypair, load_private_key, load_public_key
from lienthong.audit.search import search_exchanges
from lienthong.audit.seal import seal_exchanges
from lienthong.audit.verify import verify_exchanges
from lienthong.flows import catalogue
from lienthong.store import catalogue_current, exchange_key, exchange_log

T = 20
BATCH = 40


@pytest.fixture
def ministry_env(bus_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT", json.dumps(
        {"conn_type": "sqlite", "host": str(tmp_path / "ministry.db"), "extra": {"batch_size": BATCH}}))
    return bus_env


def sync(run_id: str) -> dict:
    pulled = tasks.pull_procedure_catalogue(connection_from_env, run_id=run_id, task_id="pull")
    ministry = tasks.push_procedure_catalogue(connection_from_env, run_id=run_id, task_id="push_ministry",
                                              destination="ministry")
    return {**pulled, **ministry}


def sql_exchanges(store, run_id: str) -> list[dict]:
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(exchange_log).where(
            exchange_log.c.peer == "ministry_db", exchange_log.c.run_id == run_id).order_by(exchange_log.c.id))
            .mappings()]
        for r in rows:
            r["keys"] = sorted(conn.execute(select(exchange_key.c.record_key).where(
                exchange_key.c.exchange_id == r["id"])).scalars())
    return rows


def decoded(blob: bytes) -> dict:
    return json.loads(zlib.decompress(blob))


@pytest.mark.catalogue_size(150)
def test_the_ministry_writes_of_a_catalogue_run_are_recorded_and_sealed(ministry_env, tmp_path):
    first = sync("c1")
    store = tasks.open_store(connection_from_env)
    with store.engine.connect() as conn:
        published = {r.procedure_code for r in conn.execute(select(catalogue_current)) if r.published}
    assert first["ministry_upserted"] == len(published) > BATCH

    exchanges = sql_exchanges(store, "c1")
    assert exchanges[0]["operation"] == "migrate_schema"
    upserts = [e for e in exchanges if e["operation"] == "upsert_procedures"]
    assert len(upserts) == -(-len(published) // BATCH)  # one exchange per batch transaction
    assert [e["operation"] for e in exchanges[1:]] == ["upsert_procedures"] * len(upserts)
    written: list[str] = []
    for e in upserts:
        assert (e["flow"], e["task_id"], e["method"], e["outcome"], e["direction"]) == (
            catalogue.FLOW, "push_ministry", "SQL", "ok", "outbound")
        assert e["url"] == f"sqlite:///{tmp_path / 'ministry.db'}"
        assert 0 < e["record_count"] <= BATCH
        request, response = decoded(e["request_body"]), decoded(e["response_body"])
        named = [s["key"]["ma_tthc"] for s in request["statements"] if s["table"] == "tthc_thu_tuc"]
        assert sorted(named) == e["keys"]
        assert response["committed"] is True
        assert sum(response["rows_affected"]["tthc_thu_tuc"].values()) == len(named)
        written += named
    assert sorted(written) == sorted(published)  # every procedure written, each once

    # a second run with no change writes nothing, so it records nothing
    sync("c2")
    assert sql_exchanges(store, "c2") == []

    # a withdrawal is one more SQL exchange naming the procedure
    base = ministry_env.portal.url
    changed = requests.post(f"{base}/_admin/catalogue/publish", json={"withdraw": 1, "seed": 3}, timeout=T).json()
    (gone,) = changed["withdrawn"]
    sync("c3")
    (withdrawal,) = sql_exchanges(store, "c3")
    assert (withdrawal["operation"], withdrawal["keys"], withdrawal["outcome"]) == (
        "withdraw_procedures", [gone], "ok")
    assert decoded(withdrawal["response_body"])["rows_affected"] == {"tthc_thu_tuc": {"updated": 1}}

    # an auditor finds a procedure's SQL write by its code, and the sealed log verifies
    found = search_exchanges(store, key=gone, peer="ministry_db")
    assert [f["operation"] for f in found] == ["upsert_procedures", "withdraw_procedures"]
    private, public, _ = generate_keypair(tmp_path / "keys" / "seal.key")
    sealed = seal_exchanges(store, load_private_key(private))
    assert sealed.records >= len(exchanges) + 1
    result = verify_exchanges(store, load_public_key(public))
    assert result.ok, result.failure
    assert result.unsealed_records == 0


def _http_exchanges(store, peer: str, run_id: str) -> list[dict]:
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(exchange_log).where(
            exchange_log.c.peer == peer, exchange_log.c.run_id == run_id).order_by(exchange_log.c.id)).mappings()]
        for r in rows:
            r["keys"] = sorted(conn.execute(select(exchange_key.c.record_key).where(
                exchange_key.c.exchange_id == r["id"])).scalars())
    return rows


@pytest.mark.catalogue_size(120)
def test_every_catalogue_call_is_recorded_once_and_with_what_it_caused(ministry_env):
    """The pull's records are written in groups and the one-stop push's with the acknowledgement
    each call caused (one commit, not two): still one record per call, in call order, and every
    acknowledged procedure has the call that delivered it."""
    from lienthong.store import delivery_state

    pulled = tasks.pull_procedure_catalogue(connection_from_env, run_id="c1", task_id="pull")
    pushed = tasks.push_procedure_catalogue(connection_from_env, run_id="c1", task_id="push_onestop",
                                            destination="onestop")
    store = tasks.open_store(connection_from_env)
    portal = _http_exchanges(store, "national_portal", "c1")
    details = [e for e in portal if e["operation"] == "LayThuTuc"]
    listed = requests.get(f"{ministry_env.portal.url}/_state/catalogue", timeout=T).json()
    assert pulled["listed"] > catalogue.PULL_RECORD_EVERY * 2  # several groups, and a remainder
    codes = [k for e in details for k in e["keys"]]
    assert len(codes) == len(set(codes)) == len(details) >= pulled["listed"] - len(listed["malformed"])
    assert [e["id"] for e in portal] == sorted(e["id"] for e in portal)
    assert all(e["outcome"] == "ok" and e["task_id"] == "pull" for e in portal)

    upserts = [e for e in _http_exchanges(store, "onestop", "c1") if e["outcome"] == "ok"]
    delivered = [k for e in upserts for k in e["keys"]]
    with store.engine.connect() as conn:
        acked = set(conn.execute(select(delivery_state.c.record_key).where(
            delivery_state.c.peer == catalogue.ONESTOP)).scalars())
    assert pushed["onestop_upserted"] == len(acked) == len(set(delivered)) == len(delivered)
    assert acked == set(delivered)


@pytest.mark.catalogue_size(120)
def test_a_pull_that_fails_midway_keeps_the_records_of_every_call_and_applies_nothing(ministry_env):
    from connectors.errors import PeerUnavailable
    from lienthong.store import catalogue_current

    base = ministry_env.portal.url
    assert requests.post(f"{base}/_admin/faults", json={"error_rate": 1.0, "operations": ["LayThuTuc"]},
                         timeout=T).status_code == 200
    with pytest.raises(PeerUnavailable):
        tasks.pull_procedure_catalogue(connection_from_env, run_id="c1", task_id="pull")
    store = tasks.open_store(connection_from_env)
    portal = _http_exchanges(store, "national_portal", "c1")
    failed = [e for e in portal if e["operation"] == "LayThuTuc"]
    attempts = int(connection_from_env("national_portal_default").extra.get("max_attempts", 3))
    assert len(failed) == attempts and {e["outcome"] for e in failed} == {"http_error"}  # every attempt, none lost
    assert len({tuple(e["keys"]) for e in failed}) == 1
    assert {e["operation"] for e in portal} >= {"LayDanhSachTTHC", "LayDVC", "LayThuTuc"}
    with store.engine.connect() as conn:
        assert conn.execute(select(catalogue_current)).all() == []
