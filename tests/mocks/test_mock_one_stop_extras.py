"""The one-stop stand-in: the modifiedFrom/modifiedTo filter of the paged list, and progress
histories that look like a real one-stop's (docs/wire/onestop.md)."""

from __future__ import annotations

from datetime import datetime

import pytest
import requests

from mocks.server import load_seed

TIMEOUT = 5
LIST = "/api/v1/dossiers"


def _numbers(answer: dict) -> list[str]:
    return [d["dossierNo"] for d in answer["items"]]


# -- modifiedFrom / modifiedTo ------------------------------------------------------------------------------
def test_modified_window_is_inclusive_from_exclusive_to(os_calls):
    answer = os_calls.get(LIST, modifiedFrom="2026-11-02T12:24:00+07:00", modifiedTo="2026-11-02T16:47:00+07:00").json()
    assert _numbers(answer) == ["000.00.03.H49-261102-0001", "000.00.08.H49-261102-0002", "000.00.08.H49-261102-0003"]
    assert [d["modifiedAt"] for d in answer["items"]] == [
        "2026-11-02T12:24:00+07:00", "2026-11-02T14:24:00+07:00", "2026-11-02T15:37:00+07:00"]
    assert (answer["total"], answer["page"], answer["size"]) == (3, 1, 100)
    # one second later excludes the first; the 16:47 dossier appears once `to` passes it
    later = os_calls.get(LIST, modifiedFrom="2026-11-02T12:24:01+07:00", modifiedTo="2026-11-02T16:47:01+07:00").json()
    assert _numbers(later) == ["000.00.06.H49-261102-0002", "000.00.08.H49-261102-0002", "000.00.08.H49-261102-0003"]


@pytest.mark.parametrize("since", ["2026-11-02T05:24:00Z", "2026-11-02T05:24:00+00:00",
                                   "2026-11-02T06:24:00.000+01:00"])
def test_modified_bounds_compare_instants_whatever_the_offset(os_calls, since):
    answer = os_calls.get(LIST, modifiedFrom=since, modifiedTo="2026-11-02T09:47:00Z").json()
    assert _numbers(answer) == ["000.00.03.H49-261102-0001", "000.00.08.H49-261102-0002", "000.00.08.H49-261102-0003"]


def test_one_bound_alone_and_paging_of_the_filtered_list(os_calls):
    everything = os_calls.dossiers()
    since = [d for d in everything if datetime.fromisoformat(d["modifiedAt"]) >= datetime.fromisoformat(
        "2026-11-04T00:00:00+07:00")]
    assert len(since) == 29
    pages = [os_calls.get(LIST, modifiedFrom="2026-11-04T00:00:00+07:00", page=p, size=10).json() for p in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [10, 10, 9, 0]
    assert all(p["total"] == 29 for p in pages)
    assert [d for p in pages for d in p["items"]] == since  # creation order, whole snapshots
    before = os_calls.get(LIST, modifiedTo="2026-11-03T00:00:00+07:00").json()
    assert before["total"] == 4 and all(d["modifiedAt"] < "2026-11-03" for d in before["items"])
    assert os_calls.get(LIST, modifiedFrom="2026-11-02T12:24:00+07:00",
                        modifiedTo="2026-11-02T12:24:00+07:00").json() == {"items": [], "page": 1, "size": 100,
                                                                           "total": 0}


def test_a_dossier_moves_into_a_later_window_when_it_changes(os_calls):
    clock = os_calls.state()["clock"]
    assert os_calls.get(LIST, modifiedFrom=clock).json()["total"] == 1  # the last event's dossier
    moved = os_calls.advance(new=1, changes=2)
    answer = os_calls.get(LIST, modifiedFrom=clock, modifiedTo="2027-01-01T00:00:00+07:00").json()
    after = {d["dossierNo"] for d in answer["items"] if d["modifiedAt"] > clock}
    assert after == set(moved["created"]) | {c["dossierNo"] for c in moved["changed"]}


@pytest.mark.parametrize("raw", [{"dossierNo": "RAW-NO-MODIFIED"},
                                 {"dossierNo": "RAW-BAD-MODIFIED", "modifiedAt": "yesterday"},
                                 {"dossierNo": "RAW-NAIVE-MODIFIED", "modifiedAt": "2026-11-02T08:00:00"},
                                 {"dossierNo": "RAW-NUMBER-MODIFIED", "modifiedAt": 20261102080000},
                                 {"dossierNo": "RAW-OBJECT-MODIFIED", "modifiedAt": {"at": "2026-11-05"}},
                                 {"dossierNo": "RAW-DAY-32", "modifiedAt": "2026-11-32T08:00:00+07:00"}],
                         ids=["absent", "not-iso", "no-offset", "number", "object", "no-such-day"])
def test_listing_by_modified_time_skips_a_raw_dossier_without_an_iso_modifiedat(os_calls, raw):
    """mocks/README.md, POST /_admin/dossiers/raw: 'one without an ISO modifiedAt is not found by the
    modifiedFrom/modifiedTo listing'. The listing called datetime.fromisoformat on every stored modifiedAt and
    answered 500 for the whole listing instead."""
    assert requests.post(os_calls.url + "/_admin/dossiers/raw", json={"dossier": raw}, timeout=TIMEOUT).ok
    found = {"dossierNo": "RAW-ISO-MODIFIED", "modifiedAt": "2026-11-30T08:00:00+07:00"}
    assert requests.post(os_calls.url + "/_admin/dossiers/raw", json={"dossier": found}, timeout=TIMEOUT).ok
    for bounds in ({"modifiedFrom": "2026-11-01T00:00:00+07:00"}, {"modifiedTo": "2027-01-01T00:00:00+07:00"}):
        response = os_calls.get(LIST, size=500, **bounds)
        assert response.status_code == 200, response.text
        numbers = _numbers(response.json())
        assert raw["dossierNo"] not in numbers and "RAW-ISO-MODIFIED" in numbers
        assert response.json()["total"] == 41
    assert raw["dossierNo"] in _numbers(os_calls.get(LIST, size=500).json())  # the plain list has it


@pytest.mark.parametrize("name", ["modifiedFrom", "modifiedTo"])
@pytest.mark.parametrize("value", ["2026-11-02T08:00:00", "2026-11-02", "2026-11-02 08:00:00+07:00", "hôm qua", "",
                                   "2026-11-02T08:00:00+0700", "2026-13-02T08:00:00+07:00",
                                   "2026-11-02T08:00:00 07:00"])
def test_bad_modified_bounds_are_400(os_calls, name, value):
    response = os_calls.get(LIST, **{name: value})
    assert response.status_code == 400
    assert response.json() == {"error": "bad_request", "message": (
        f"{name} must be an ISO 8601 date-time with offset, e.g. 2026-11-02T08:00:00+07:00 "
        f"(write + as %2B in a query string)")}


def test_an_unencoded_plus_is_a_space_and_refused(os_calls):
    response = requests.get(os_calls.url + LIST + "?modifiedFrom=2026-11-02T08:00:00+07:00",
                            headers=os_calls.headers, timeout=TIMEOUT)
    assert response.status_code == 400
    encoded = requests.get(os_calls.url + LIST + "?modifiedFrom=2026-11-02T08:00:00%2B07:00",
                           headers=os_calls.headers, timeout=TIMEOUT)
    assert encoded.status_code == 200 and encoded.json()["total"] == 40


def test_reversed_window_is_400_and_the_key_is_still_checked_first(os_calls):
    response = os_calls.get(LIST, modifiedFrom="2026-11-05T00:00:00+07:00", modifiedTo="2026-11-04T00:00:00+07:00")
    assert response.status_code == 400
    assert response.json() == {"error": "bad_request", "message": "modifiedFrom must not be later than modifiedTo"}
    assert os_calls.get(LIST, key=False, modifiedFrom="x").status_code == 401


# -- progress histories ---------------------------------------------------------------------------------------
def test_progress_entries_look_like_a_real_one_stops(os_calls):
    os_calls.advance(new=160, changes=400)
    names = load_seed()["names"]
    families = set(names["family"])
    snapshots = [e["dossier"] for e in os_calls.events()]
    checked = 0
    for snap in snapshots:
        progress = snap["progress"]
        assert [p["stepId"] for p in progress] == list(range(1, len(progress) + 1))
        finished = []
        for p in progress:
            actor = p["actor"]
            assert isinstance(actor, str) and 0 < len(actor) <= 50, actor
            words = actor.split()
            assert actor == "Cán bộ một cửa" or (words[0] in families and len(words) >= 3), actor
            assert p["finishedAt"] is not None  # every entry is a finished step
            assert datetime.fromisoformat(p["startedAt"]) <= datetime.fromisoformat(p["finishedAt"])
            finished.append(datetime.fromisoformat(p["finishedAt"]))
            checked += 1
        assert finished == sorted(finished)
        assert finished[-1] == datetime.fromisoformat(snap["modifiedAt"])
    assert checked > 1000
    # a history only grows: every snapshot's progress starts with the previous snapshot's
    last: dict[str, list] = {}
    for snap in snapshots:
        before = last.get(snap["dossierNo"], [])
        assert snap["progress"][:len(before)] == before
        last[snap["dossierNo"]] = snap["progress"]


def test_online_submission_is_by_a_person(os_calls):
    by_no = {d["dossierNo"]: d for d in os_calls.dossiers()}
    business = by_no["000.00.03.H49-261102-0002"]
    assert (business["applicantType"], business["submissionChannel"]) == ("business", "online")
    assert business["applicantName"] == "Công ty TNHH Nông sản Kỳ Hà"
    first = business["progress"][0]
    assert (first["actor"], first["actorTitle"], first["action"]) == (
        "Hoàng Thị Thảo", "Người nộp hồ sơ", "Nộp hồ sơ trực tuyến")
    citizen = by_no["000.00.08.H49-261102-0001"]
    assert citizen["submissionChannel"] == "online"
    assert citizen["progress"][0]["actor"] == citizen["applicantName"] == "Lương Thanh Phương"


def test_defects_are_still_the_three_kinds(os_calls):
    state = os_calls.state()
    assert state["defectKinds"] == ["missing_receive_date", "unmapped_status", "empty_service_code"]
    assert [d["defect"] for d in state["defective"]] == ["missing_receive_date", "unmapped_status"]
