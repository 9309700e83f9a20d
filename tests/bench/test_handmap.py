"""The engine scenario's reference, the hand-written mapping, does what the YAML chain does: the
same portal record, and the same refusals. A reference that skips the chain's type checks (a
fee's amount a whole number of đồng, yes/no flags true or false, ids text or whole numbers) does
less work than the engine it is measured against."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from bench.handmap import Invalid, map_dossier, naive_dossier
from bench.seed import iter_snapshots, make_templates
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.mapping.engine import RecordInvalid

ENGINE = load_mapping(dossier_status.MAPPING)


@pytest.fixture(scope="module")
def dossier() -> dict[str, Any]:
    """A template dossier with a paid fee, files and results."""
    for _, _, _, text in iter_snapshots(make_templates(60), 0, 60):
        d = json.loads(text)
        if any(f.get("paid") is True for f in d.get("fees") or []) and d.get("files") and d.get("results"):
            return d
    raise AssertionError("no template with a paid fee, files and results")


def _paid(d: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in d["fees"] if f.get("paid") is True)


REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "fee amount with a fraction": lambda d: _paid(d).update(amount=12.5),
    "negative fee amount": lambda d: _paid(d).update(amount=-5),
    "fee amount as text": lambda d: _paid(d).update(amount="100"),
    "fee amount true": lambda d: _paid(d).update(amount=True),
    "paidOnline not true or false": lambda d: _paid(d).update(paidOnline="yes"),
    "feeCode a fraction": lambda d: _paid(d).update(feeCode=1.5),
    "file removed not true or false": lambda d: d["files"][0].update(removed="yes"),
    "file digitized 1": lambda d: d["files"][0].update(digitized=1),
    "fileId a fraction": lambda d: d["files"][0].update(fileId=3.5),
    "file partNo a fraction": lambda d: d["files"][0].update(partNo=1.5),
    "result docId a list": lambda d: d["results"][0].update(docId=[1]),
    "result partNo a fraction": lambda d: d["results"][0].update(partNo=2.5),
}


@pytest.mark.parametrize("change", sorted(REFUSED))
def test_the_hand_written_mapping_refuses_what_the_engine_refuses(dossier: dict[str, Any], change: str) -> None:
    d = copy.deepcopy(dossier)
    REFUSED[change](d)
    with pytest.raises(RecordInvalid):
        ENGINE.apply(d)
    with pytest.raises(Invalid):
        map_dossier(d)
    with pytest.raises(Invalid):
        naive_dossier(d)


ACCEPTED: dict[str, Callable[[dict[str, Any]], None]] = {
    "file id and part number 0": lambda d: d["files"][0].update(fileId=0, partNo=0),
    "fee code a whole number": lambda d: _paid(d).update(feeCode=7, amount=0),
    "file flags left out": lambda d: [d["files"][0].pop(k, None) for k in ("removed", "digitized")],
    "paidOnline left out": lambda d: _paid(d).pop("paidOnline", None),
}


@pytest.mark.parametrize("change", sorted(ACCEPTED))
def test_the_hand_written_mapping_maps_what_the_engine_maps(dossier: dict[str, Any], change: str) -> None:
    d = copy.deepcopy(dossier)
    ACCEPTED[change](d)
    assert map_dossier(d) == naive_dossier(d) == ENGINE.apply(d)
