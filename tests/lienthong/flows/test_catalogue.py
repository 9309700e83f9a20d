"""Procedure catalogue sync against the stand-ins as real servers and a real ministry database.

The invariant: after a sync, the one-stop catalogue and the ministry replica hold exactly the
national catalogue's published, well-formed procedures — field by field, as the mappings make them
— and a sync pushes only what changed."""

from __future__ import annotations

import json

import pytest
import requests

from connectors.connection import connection_from_env
from connectors.ministry_db.replica import MinistryReplica
from lienthong import tasks
from lienthong.flows import catalogue
from lienthong.mapping import load_mapping

T = 20


@pytest.fixture
def catalogue_env(bus_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    return bus_env


def get(standins, peer, path):
    base = standins.onestop.url if peer == "onestop" else standins.portal.url
    return requests.get(base + path, timeout=T).json()


def post(standins, peer, path, body=None):
    base = standins.onestop.url if peer == "onestop" else standins.portal.url
    return requests.post(base + path, json=body or {}, timeout=T).json()


def sync(run_id):
    pulled = tasks.pull_procedure_catalogue(connection_from_env, run_id=run_id, task_id="pull")
    onestop = tasks.push_procedure_catalogue(connection_from_env, run_id=run_id, task_id="onestop",
                                             destination="onestop")
    ministry = tasks.push_procedure_catalogue(connection_from_env, run_id=run_id, task_id="ministry",
                                              destination="ministry")
    return {**pulled, **onestop, **ministry}


def expected(standins):
    """The canonical records of every published, well-formed national procedure."""
    store = tasks.open_store(connection_from_env)
    from sqlalchemy import select

    from lienthong.store import catalogue_current

    with store.engine.connect() as conn:
        return {r.procedure_code: r.record for r in conn.execute(select(catalogue_current)) if r.published}


def onestop_held(standins):
    return {p["serviceCode"]: p for p in get(standins, "onestop", "/_state/procedures")["procedures"]
            if p.get("status") != "withdrawn"}


def ministry_held():
    replica = MinistryReplica.from_connection(connection_from_env("ministry_db_default"))
    try:
        return replica.procedures(published_only=True)
    finally:
        replica.dispose()


def assert_destinations_agree(standins):
    records = expected(standins)
    to_onestop = load_mapping(catalogue.TO_ONESTOP)
    held = onestop_held(standins)
    assert set(held) == set(records)
    for code, record in records.items():
        mapped = to_onestop.apply(record)
        assert {k: held[code].get(k) for k in mapped} == mapped, code
    replica = ministry_held()
    assert set(replica) == set(records)
    for code, record in records.items():
        assert replica[code]["noi_dung"] == record, code


@pytest.mark.catalogue_size(1000)  # a third of the demo's catalogue keeps the suite quick; two malformed
def test_first_sync_equals_the_national_catalogue_then_nothing_is_pushed(catalogue_env):
    first = sync("c1")
    state = get(catalogue_env, "portal", "/_state/catalogue")
    malformed = {m["code"] for m in state["malformed"]}
    assert first["rejected"] == len(malformed)
    assert first["added"] == first["normalised"] == len(expected(catalogue_env))
    assert first["onestop_upserted"] == first["ministry_upserted"] == first["added"]
    assert_destinations_agree(catalogue_env)
    second = sync("c2")
    assert (second["added"], second["amended"], second["withdrawn"]) == (0, 0, 0)
    assert second["onestop_upserted"] == second["ministry_upserted"] == 0
    # malformed procedures are reported every run but dead-lettered once, with their field and rule
    letters = tasks.open_store(connection_from_env).dead_letters(catalogue.FLOW)
    assert sorted(d["record_key"] for d in letters) == sorted(malformed)
    rules = {d["record_key"]: {e["rule"] for e in d["errors"]} for d in letters}
    defects = {m["code"]: m["defect"] for m in state["malformed"]}
    expected_rule = {"empty_code": "required", "unparsable_fee": "format", "unknown_agency": "unknown_agency"}
    for code, defect in defects.items():
        assert expected_rule[defect] in rules[code], (code, defect)


@pytest.mark.catalogue_size(300)  # the changes are what matter here, not the size
def test_amended_new_and_withdrawn_procedures_are_exactly_the_changes(catalogue_env):
    sync("c1")
    published = post(catalogue_env, "portal", "/_admin/catalogue/publish", {"add": 1, "amend": 1, "withdraw": 1,
                                                                             "seed": 5})
    counts = sync("c2")
    assert (counts["added"], counts["amended"], counts["withdrawn"]) == (1, 1, 1)
    assert counts["onestop_upserted"] == counts["ministry_upserted"] == 2
    assert counts["onestop_withdrawn"] == counts["ministry_withdrawn"] == 1
    assert_destinations_agree(catalogue_env)
    report = catalogue.change_report(tasks.open_store(connection_from_env), "c2")
    assert f"**added** {published['added'][0]}" in report
    assert f"**withdrawn** {published['withdrawn'][0]}" in report
    assert f"**amended** {published['amended'][0]['code']}" in report
