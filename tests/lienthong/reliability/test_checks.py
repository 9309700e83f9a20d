"""The reliability checks fed crafted stand-in states: a check that cannot see a loss, a duplicate or
a wrong value lets ``make reliability`` say PASS over it. Each state is what the stand-ins' test
doors answer (``/_state/...``), served to :mod:`lienthong.reliability.checks` in place of HTTP."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.reliability import checks
from lienthong.store import Store

SAMPLES = Path(__file__).resolve().parents[3] / "fixtures" / "samples" / "onestop"
ONESTOP, PORTAL, PLATFORM, LEDGER = "http://onestop", "http://portal", "http://platform", "http://ledger"


@pytest.fixture()
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    s.create_schema()
    yield s
    s.dispose()


def _serve(monkeypatch, doors: dict[str, object]) -> None:
    monkeypatch.setattr(checks, "_get", lambda url: copy.deepcopy(doors[url]))


# --- dossiers ---------------------------------------------------------------------------------
def _dossier_world() -> tuple[dict, dict, list[dict]]:
    """A one-stop dossier with four finished steps, and what the portal holds once it is delivered."""
    source = json.loads((SAMPLES / "dossier.done-with-result.json").read_text(encoding="utf-8"))
    record = load_mapping(dossier_status.MAPPING).apply(source)
    progress = load_mapping(dossier_status.PROGRESS_MAPPING)
    entries = sorted((progress.apply({**e, "dossierNo": source["dossierNo"]}) for e in source["progress"]
                      if e["finishedAt"]), key=lambda r: r["ThoiDiemXuLy"])
    assert len(entries) == 4
    return source, record, entries


def _check_dossiers(monkeypatch, store, source, held, progress):
    _serve(monkeypatch, {
        ONESTOP + "/_state": {"defective": []},
        ONESTOP + "/_state/dossiers": {"dossiers": source},
        PORTAL + "/_state/dossiers": {"dossiers": held},
        PORTAL + "/_state/progress": {"progress": [{"MaHoSo": p["MaHoSo"], "record": p, "seq": i}
                                                   for i, p in enumerate(progress, start=1)]},
    })
    return checks.check_dossiers(store, ONESTOP, PORTAL)


def test_a_delivered_dossier_is_counted_delivered(monkeypatch, store):
    source, record, entries = _dossier_world()
    result = _check_dossiers(monkeypatch, store, [source], [record], entries)
    assert (result.records, result.delivered, result.lost, result.duplicated) == (1, 1, 0, 0), result.problems


def test_a_wrong_progress_entry_or_a_wrong_status_field_is_a_loss(monkeypatch, store):
    source, record, entries = _dossier_world()
    wrong = copy.deepcopy(entries)
    wrong[1]["NoiDungXuLy"] = "something else"
    result = _check_dossiers(monkeypatch, store, [source], [record], wrong)
    assert (result.delivered, result.lost, result.duplicated) == (0, 1, 0)
    result = _check_dossiers(monkeypatch, store, [source], [{**record, "TrangThaiHoSo": "2"}], entries)
    assert (result.delivered, result.lost) == (0, 1)
    assert result.problems == [f"{source['dossierNo']}: the portal holds other values in TrangThaiHoSo"]


def test_a_progress_entry_held_twice_is_a_duplicate(monkeypatch, store):
    source, record, entries = _dossier_world()
    result = _check_dossiers(monkeypatch, store, [source], [record], [*entries[:2], entries[1], *entries[2:]])
    assert (result.delivered, result.lost, result.duplicated) == (0, 0, 1)
    assert result.details["progress_duplicates"] == 1


def test_a_progress_entry_lost_beside_one_held_twice_is_still_counted_lost(monkeypatch, store):
    """A duplicate must not hide a loss in the same dossier: entry 4 never reached the portal and
    entry 2 reached it twice."""
    source, record, entries = _dossier_world()
    result = _check_dossiers(monkeypatch, store, [source], [record], [entries[0], entries[1], entries[1], entries[2]])
    assert (result.delivered, result.lost, result.duplicated) == (0, 1, 1), result.problems
