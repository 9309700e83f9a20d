"""The one-stop stand-in behaves as docs/wire/onestop.md says, deterministically."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict

import pytest
import requests

from mocks.one_stop import DEFECT_KINDS, FINAL_STATUSES, LEGAL_TRANSITIONS, OneStopMock, encode_cursor

TIMEOUT = 5
DOSSIER_NO = re.compile(r"^(000\.00\.0[1-8]\.H49)-(\d{6})-(\d{4})$")
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+07:00$")
LEGAL = {(s, t) for s, targets in LEGAL_TRANSITIONS.items() for t, _ in targets}
WIRE_FIELDS = [
    "dossierNo", "receiptNo", "serviceCode", "serviceName", "domainCode", "domainName", "govAgencyCode",
    "govAgencyName", "handlingUnitName", "applicantName", "applicantType", "applicantIdType", "applicantIdNo",
    "contactEmail", "contactTelNo", "address", "briefNote", "submissionChannel", "resultDelivery", "dossierStatus",
    "submitDate", "receiveDate", "dueDate", "finishDate", "releaseDate", "files", "fees", "results", "progress",
    "version", "modifiedAt",
]


def test_seeded_world_has_40_dossiers_each_with_one_event_per_change(os_calls):
    state = os_calls.state()
    events = os_calls.events()
    dossiers = os_calls.dossiers()
    assert state["counts"]["dossiers"] == 40 == len(dossiers)
    assert state["counts"]["created"] == 40
    assert state["lastSeq"] == state["counts"]["events"] == len(events)
    assert state["counts"]["events"] == 40 + state["counts"]["changes"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    per_dossier = defaultdict(list)
    for event in events:
        per_dossier[event["dossier"]["dossierNo"]].append(event)
    assert set(per_dossier) == {d["dossierNo"] for d in dossiers}
    for dossier in dossiers:
        mine = per_dossier[dossier["dossierNo"]]
        assert [e["dossier"]["version"] for e in mine] == list(range(1, dossier["version"] + 1))
        assert mine[-1]["dossier"] == dossier  # the last event carries the current snapshot
        for e in mine:
            assert e["changedAt"] == e["dossier"]["modifiedAt"]
            assert len(e["dossier"]["progress"]) == e["dossier"]["version"]
    assert sum(state["counts"]["byStatus"].values()) == 40
    # the world is spread over units and procedures
    assert len({d["govAgencyCode"] for d in dossiers}) >= 6
    assert len({d["serviceName"] for d in dossiers}) >= 10


def test_snapshots_have_exactly_the_wire_fields_and_types(os_calls):
    for d in os_calls.dossiers():
        assert list(d) == WIRE_FIELDS
        assert d["applicantType"] in {"citizen", "business", "agency", "organization"}
        assert d["applicantIdType"] in {"cccd", "cmnd", "mst"}
        assert d["submissionChannel"] in {"counter", "online", "postal"}
        assert d["resultDelivery"] in {"counter", "postal"}
        for name in ("submitDate", "receiveDate", "dueDate", "finishDate", "releaseDate", "modifiedAt"):
            assert d[name] is None or ISO.match(d[name]), (name, d[name])
        for f in d["files"]:
            assert set(f) == {"fileId", "displayName", "partNo", "url", "removed", "digitized"}
        for fee in d["fees"]:
            assert set(fee) == {"feeCode", "feeName", "feeKind", "amount", "paid", "paidOnline"}
            assert isinstance(fee["amount"], int) and fee["amount"] > 0 and fee["feeKind"] in {"fee", "charge"}
        for r in d["results"]:
            assert set(r) == {"docId", "docName", "partNo", "url", "resultCode"}
        for p in d["progress"]:
            assert set(p) == {"stepId", "actor", "actorTitle", "department", "action", "note", "status",
                              "startedAt", "finishedAt", "dueAt"}


def test_histories_use_legal_transitions_only(os_calls):
    os_calls.advance(new=10, changes=60)
    for d in os_calls.dossiers():
        steps = d["progress"]
        assert [p["stepId"] for p in steps] == list(range(1, len(steps) + 1))
        assert steps[0]["status"] in {"receiving", "new", "interoperating"}
        for before, after in zip(steps, steps[1:]):
            assert (before["status"], after["status"]) in LEGAL
            assert before["finishedAt"] <= after["finishedAt"]
        assert steps[-1]["status"] == d["dossierStatus"]
        if d["dossierStatus"] == "releasing" or d["dossierStatus"] == "done":
            assert d["results"] and d["finishDate"]
        if d["dossierStatus"] == "done":
            assert d["releaseDate"]
        if d["dossierStatus"] in FINAL_STATUSES:
            assert d["finishDate"]


def test_same_seed_gives_the_same_world_and_the_same_moves(onestop_factory):
    a, b = onestop_factory("a"), onestop_factory("b")
    assert a.events() == b.events()
    assert a.advance(new=5, changes=7) == b.advance(new=5, changes=7)
    assert a.events() == b.events()
    assert a.state()["clock"] == b.state()["clock"]
    other = onestop_factory("c", seed=7)
    assert other.dossiers() != a.dossiers()


def test_world_is_reproducible_across_a_restart(tmp_path, onestop_factory):
    restarted = OneStopMock(tmp_path / "r", port=0).start()
    try:
        requests.post(restarted.url + "/_admin/advance", json={"new": 2, "changes": 3}, timeout=TIMEOUT)
    finally:
        restarted.stop()
    restarted = OneStopMock(tmp_path / "r", port=0, seed=999).start()  # stored seed wins over the argument
    try:
        requests.post(restarted.url + "/_admin/advance", json={"new": 1, "changes": 4}, timeout=TIMEOUT)
        after_restart = requests.get(restarted.url + "/_state/events", timeout=TIMEOUT).json()["events"]
    finally:
        restarted.stop()
    continuous = onestop_factory("continuous")
    continuous.advance(new=2, changes=3)
    continuous.advance(new=1, changes=4)
    assert after_restart == continuous.events()


def test_state_survives_stop_and_start(tmp_path):
    first = OneStopMock(tmp_path / "s", port=0).start()
    try:
        did = requests.post(first.url + "/_admin/advance", json={"new": 3, "changes": 2}, timeout=TIMEOUT).json()
        before = requests.get(first.url + "/_state/dossiers", timeout=TIMEOUT).json()
    finally:
        first.stop()
    assert (tmp_path / "s" / "onestop.db").exists()
    second = OneStopMock(tmp_path / "s", port=0).start()
    try:
        state = requests.get(second.url + "/_state", timeout=TIMEOUT).json()
        assert state["lastSeq"] == did["lastSeq"]
        assert state["counts"]["dossiers"] == 43
        assert requests.get(second.url + "/_state/dossiers", timeout=TIMEOUT).json() == before
    finally:
        second.stop()


def test_feed_pages_cover_every_event_exactly_once_in_seq_order(os_calls):
    os_calls.advance(new=30, changes=40)
    everything = os_calls.events()
    assert len(everything) > 150
    for limit in (1, 7, 100, 500):
        assert os_calls.feed(limit=limit) == everything


def test_feed_cursor_semantics(os_calls):
    last = os_calls.state()["lastSeq"]
    first = os_calls.get("/api/v1/dossiers/changes", limit=10).json()
    assert [i["seq"] for i in first["items"]] == list(range(1, 11))
    assert first["hasMore"] is True
    second = os_calls.get("/api/v1/dossiers/changes", after=first["nextCursor"], limit=10).json()
    assert [i["seq"] for i in second["items"]] == list(range(11, 21))
    # the whole rest of the feed, then an empty page that hands the same cursor back
    rest = os_calls.get("/api/v1/dossiers/changes", after=second["nextCursor"], limit=500).json()
    assert rest["items"][-1]["seq"] == last and rest["hasMore"] is False
    end = rest["nextCursor"]
    empty = os_calls.get("/api/v1/dossiers/changes", after=end).json()
    assert empty == {"items": [], "nextCursor": end, "hasMore": False}
    # new changes show up after the cursor, and only they
    did = os_calls.advance(new=1, changes=2)
    news = os_calls.get("/api/v1/dossiers/changes", after=end).json()
    assert [i["seq"] for i in news["items"]] == [last + 1, last + 2, last + 3] and did["lastSeq"] == last + 3
    assert news["items"][0]["dossier"]["dossierNo"] == did["created"][0]
    assert news["items"][0]["dossier"]["version"] == 1
    # re-reading from an old cursor is repeatable
    assert os_calls.get("/api/v1/dossiers/changes", after=first["nextCursor"], limit=10).json() == second


def test_feed_default_limit_is_100(os_calls):
    os_calls.advance(new=40)
    page = os_calls.get("/api/v1/dossiers/changes").json()
    assert len(page["items"]) == 100 and page["hasMore"] is True


@pytest.mark.parametrize("after", ["garbage", "c1.", "c1.!!!", encode_cursor(5) + "==", "c1.c2VxOjA1"])
def test_malformed_cursor_is_400(os_calls, after):
    response = os_calls.get("/api/v1/dossiers/changes", after=after)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_cursor_past_the_end_is_400(os_calls):
    response = os_calls.get("/api/v1/dossiers/changes", after=encode_cursor(os_calls.state()["lastSeq"] + 1))
    assert response.status_code == 400


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-1", "1.5"])
def test_bad_limit_is_400(os_calls, limit):
    assert os_calls.get("/api/v1/dossiers/changes", limit=limit).status_code == 400


@pytest.mark.parametrize("path", ["/api/v1/dossiers/changes", "/api/v1/dossiers", "/api/v1/dossiers/x"])
def test_api_key_is_required(os_calls, path):
    missing = requests.get(os_calls.url + path, timeout=TIMEOUT)
    wrong = requests.get(os_calls.url + path, headers={"X-Api-Key": "demo-onestop-key-x"}, timeout=TIMEOUT)
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert requests.get(os_calls.url + "/health", timeout=TIMEOUT).json() == {"status": "ok"}


def test_api_key_is_configurable(tmp_path):
    mock = OneStopMock(tmp_path, port=0, api_key="another-key", seed_dossiers=2).start()
    try:
        url = mock.url + "/api/v1/dossiers"
        assert requests.get(url, headers={"X-Api-Key": "another-key"}, timeout=TIMEOUT).json()["total"] == 2
        assert requests.get(url, headers={"X-Api-Key": "demo-onestop-key"}, timeout=TIMEOUT).status_code == 401
    finally:
        mock.stop()


def test_dossier_by_number_and_paged_list(os_calls):
    dossiers = os_calls.dossiers()
    one = dossiers[7]
    assert os_calls.get(f"/api/v1/dossiers/{one['dossierNo']}").json() == one
    missing = os_calls.get("/api/v1/dossiers/000.00.01.H49-261102-9999")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    pages = [os_calls.get("/api/v1/dossiers", page=p, size=15).json() for p in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [15, 15, 10, 0]
    assert all(p["total"] == 40 and p["size"] == 15 for p in pages)
    assert [d for p in pages for d in p["items"]] == dossiers
    assert os_calls.get("/api/v1/dossiers", page=0).status_code == 400
    assert os_calls.get("/api/v1/dossiers", size=501).status_code == 400


def test_advance_creates_and_moves_exactly_as_asked(os_calls):
    before = {d["dossierNo"]: d for d in os_calls.dossiers()}
    last = os_calls.state()["lastSeq"]
    did = os_calls.advance(new=3, changes=5)
    assert len(did["created"]) == 3 and len(did["changed"]) == 5
    assert did["lastSeq"] == last + 8 == os_calls.state()["lastSeq"]
    new_events = [e for e in os_calls.events() if e["seq"] > last]
    assert len(new_events) == 8
    assert [e["dossier"]["dossierNo"] for e in new_events[:3]] == did["created"]
    assert all(e["dossier"]["version"] == 1 for e in new_events[:3])
    # each change is legal and chains from the status the dossier had
    status = {no: d["dossierStatus"] for no, d in before.items()}
    status.update({e["dossier"]["dossierNo"]: e["dossier"]["dossierStatus"] for e in new_events[:3]})
    for change, event in zip(did["changed"], new_events[3:]):
        assert change["from"] == status[change["dossierNo"]]
        assert (change["from"], change["to"]) in LEGAL
        assert change["from"] not in FINAL_STATUSES
        assert event["dossier"]["dossierNo"] == change["dossierNo"]
        assert event["dossier"]["dossierStatus"] == change["to"]
        assert event["dossier"]["progress"][-1]["status"] == change["to"]
        status[change["dossierNo"]] = change["to"]
    current = {d["dossierNo"]: d for d in os_calls.dossiers()}
    assert {no: d["dossierStatus"] for no, d in current.items()} == status
    assert len(current) == 43


def test_advance_validates_its_body(os_calls):
    for body in ({"new": -1}, {"changes": "2"}, {"new": True}, {"other": 1}, [1]):
        response = os_calls.post("/_admin/advance", body)
        assert response.status_code == 400, body
    assert os_calls.post("/_admin/advance", {}).json()["created"] == []


def test_every_twentieth_dossier_is_defective_in_a_cycle(os_calls):
    os_calls.advance(new=40)  # 80 dossiers: defects at 20, 40, 60, 80
    state = os_calls.state()
    defective = state["defective"]
    assert [(d["index"], d["defect"]) for d in defective] == [
        (20, "missing_receive_date"), (40, "unmapped_status"), (60, "empty_service_code"),
        (80, "missing_receive_date")]
    assert state["counts"]["defective"] == 4
    # churn a lot: defects stay
    os_calls.advance(changes=300)
    by_no = {d["dossierNo"]: d for d in os_calls.dossiers()}
    for entry in os_calls.state()["defective"]:
        d = by_no[entry["dossierNo"]]
        if entry["defect"] == "missing_receive_date":
            assert d["receiveDate"] is None and d["dossierStatus"] not in {"receiving", "interoperating"}
            assert d["receiptNo"]
        elif entry["defect"] == "unmapped_status":
            assert d["dossierStatus"] == "interoperating" and d["version"] == 1
        else:
            assert d["serviceCode"] == "" and d["serviceName"]
    # nobody else carries a defect
    flagged = {e["dossierNo"] for e in os_calls.state()["defective"]}
    for no, d in by_no.items():
        if no in flagged:
            continue
        assert d["serviceCode"]
        assert d["dossierStatus"] != "interoperating"
        assert (d["receiveDate"] is None) == (d["dossierStatus"] == "receiving")


def test_defect_kinds_are_the_documented_ones():
    assert DEFECT_KINDS == ("missing_receive_date", "unmapped_status", "empty_service_code")


def test_dossier_numbers_follow_unit_date_daily_counter(os_calls):
    os_calls.advance(new=60)
    counters = defaultdict(list)
    for d in os_calls.dossiers():  # creation order
        m = DOSSIER_NO.match(d["dossierNo"])
        assert m, d["dossierNo"]
        unit, day, number = m.groups()
        assert unit == d["govAgencyCode"]
        assert day == d["submitDate"][2:4] + d["submitDate"][5:7] + d["submitDate"][8:10]
        counters[(unit, day)].append(int(number))
    for numbers in counters.values():
        assert numbers == list(range(1, len(numbers) + 1))
    assert len({day for _, day in counters}) >= 2  # the clock crossed days, counters restarted


def test_world_clock_starts_2026_11_02_0800_and_only_moves_forward(os_calls):
    events = os_calls.events()
    assert events[0]["changedAt"] > "2026-11-02T08:00:00+07:00"
    assert events[0]["changedAt"] < "2026-11-02T09:00:00+07:00"
    times = [e["changedAt"] for e in events]
    assert times == sorted(times)
    assert os_calls.state()["clock"] == times[-1]


def test_personal_data_is_realistic_and_fake(os_calls):
    os_calls.advance(new=60)
    kinds = Counter()
    for d in os_calls.dossiers():
        kinds[d["applicantIdType"]] += 1
        if d["applicantIdType"] == "cccd":
            assert re.fullmatch(r"049[0-3]\d{8}", d["applicantIdNo"])
        elif d["applicantIdType"] == "cmnd":
            assert re.fullmatch(r"\d{9}", d["applicantIdNo"])
        else:
            assert re.fullmatch(r"400\d{7}", d["applicantIdNo"])
        assert d["contactTelNo"] is None or re.fullmatch(r"09\d{8}", d["contactTelNo"])
        assert d["contactEmail"] is None or re.fullmatch(r"[a-z0-9.]+@gmail\.com", d["contactEmail"])
        assert d["address"].endswith(", tỉnh Quảng Nam")
        assert len(d["applicantName"].split()) >= 3
    assert kinds["cccd"] > 40 and kinds["mst"] > 0


def test_reset_rebuilds_the_initial_world(os_calls, onestop_factory):
    os_calls.advance(new=5, changes=5)
    assert os_calls.post("/_admin/faults", {"error_rate": 1.0, "operations": ["dossier"]}).status_code == 200
    assert os_calls.post("/_admin/reset").status_code == 200
    assert os_calls.events() == onestop_factory("fresh").events()
    assert os_calls.get("/_admin/faults", key=False).json()["faults"]["error_rate"] == 0.0


def test_error_faults_answer_the_status_and_spare_the_test_doors(os_calls):
    assert os_calls.post("/_admin/faults", {"error_rate": 1.0, "http_status": 503}).status_code == 200
    response = os_calls.get("/api/v1/dossiers/changes")
    assert response.status_code == 503
    assert os_calls.get("/api/v1/dossiers").status_code == 503
    assert os_calls.state()["faults"]["injected"] == {"http_503": 2}
    assert os_calls.advance(new=1)["created"]  # test doors never get faults
    os_calls.post("/_admin/faults", {})
    assert os_calls.get("/api/v1/dossiers/changes").status_code == 200


def test_faults_can_target_one_operation(os_calls):
    os_calls.post("/_admin/faults", {"error_rate": 1.0, "http_status": 500, "operations": ["dossier"]})
    no = os_calls.dossiers()[0]["dossierNo"]
    assert os_calls.get(f"/api/v1/dossiers/{no}").status_code == 500
    assert os_calls.get("/api/v1/dossiers/changes").status_code == 200


def test_drop_fault_closes_the_connection(os_calls):
    os_calls.post("/_admin/faults", {"drop_rate": 1.0})
    with pytest.raises(requests.ConnectionError):
        os_calls.get("/api/v1/dossiers/changes")


def test_latency_fault_delays_the_answer(os_calls):
    os_calls.post("/_admin/faults", {"latency_ms": 300})
    started = time.monotonic()
    assert os_calls.get("/api/v1/dossiers", size=1).status_code == 200
    assert time.monotonic() - started >= 0.25


def test_seeded_faults_repeat_exactly(os_calls):
    def run() -> list[int]:
        os_calls.post("/_admin/faults", {"error_rate": 0.5, "http_status": 502, "seed": 7})
        return [os_calls.get("/api/v1/dossiers", size=1).status_code for _ in range(16)]

    first = run()
    assert set(first) == {200, 502}
    assert run() == first


def test_ambiguous_faults_are_portal_only(os_calls):
    response = os_calls.post("/_admin/faults", {"ambiguous_rate": 0.5})
    assert response.status_code == 400
    assert "national portal" in response.json()["message"]


def test_feed_reads_while_the_world_moves(os_calls):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=6) as pool:
        movers = [pool.submit(os_calls.advance, 2, 3) for _ in range(5)]
        readers = [pool.submit(os_calls.feed, 13) for _ in range(5)]
        results = [m.result() for m in movers]
        pages = [r.result() for r in readers]
    assert sum(len(r["created"]) for r in results) == 10
    everything = os_calls.events()
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    for seen in pages:  # each reader saw a prefix of the final feed, in order, without gaps
        assert seen == everything[: len(seen)]
