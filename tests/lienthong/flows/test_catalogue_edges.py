"""The catalogue flow at its edges, with in-process fakes for the portal and the one-stop and a
real bus database (each case was found in review and failed before its fix): a withdrawal that a
lost answer or a crash must not lose, a LayThuTuc detail that names another procedure, texts too
long for the ministry database, a fee text with two amounts, an empty national list, and dead
letters that nothing ever resolved."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import select

from connectors.errors import FieldError, PeerUnavailable, ProtocolError, RecordRejected
from connectors.ministry_db.replica import MinistryReplica
from lienthong.flows import catalogue
from lienthong.store import catalogue_current
from tests.conftest import postgres_database
from tests.lienthong.test_mapping_procedure import SOURCE

AGENCIES = [{"MADONVI": c} for c in ("000.00.00.G09", "000.00.02.H49", "000.00.10.H49")]


def detail(code: str, **changes) -> dict:
    d = copy.deepcopy(SOURCE["procedure"])
    d.update(MATTHC=code, **changes)
    return d


class FakePortal:
    def __init__(self, details: dict[str, dict]):
        self.details = details  # listed code -> LayThuTuc detail

    def list_agencies(self):
        return AGENCIES

    def list_services(self):
        return []

    def list_procedures(self):
        return [{"MATTHC": c, "TENTTHC": d["TENTTHC"]} for c, d in self.details.items()]

    def get_procedure(self, code):
        return self.details.get(code)


class FakeOneStop:
    """Applies each call; ``lose_answer`` codes are applied but their answer is lost (timeout)."""

    def __init__(self):
        self.held: dict[str, str] = {}
        self.lose_answer: set[str] = set()

    def upsert_procedure(self, record):
        self.held[record["serviceCode"]] = "active"
        if record["serviceCode"] in self.lose_answer:
            self.lose_answer.discard(record["serviceCode"])
            raise PeerUnavailable("read timeout after the one-stop applied the PUT", peer="onestop",
                                  operation="upsert_procedure")
        return {}

    def withdraw_procedure(self, code):
        if code not in self.held:
            return None
        self.held[code] = "withdrawn"
        return {}


A, B = "1.000001.000.00.00.H49", "1.000002.000.00.00.H49"


def test_onestop_withdrawal_is_lost_when_the_upsert_answer_was_lost(store):
    portal = FakePortal({A: detail(A), B: detail(B)})
    onestop = FakeOneStop()
    catalogue.pull_catalogue(store, portal, run_id="r1")
    onestop.lose_answer = {A}
    with pytest.raises(PeerUnavailable):  # the task fails; A is held by the one-stop, not acked
        catalogue.push_catalogue(store, run_id="r1", onestop=onestop)
    assert onestop.held[A] == "active"
    del portal.details[A]  # the national catalogue withdraws A before the next run
    pulled = catalogue.pull_catalogue(store, portal, run_id="r2")
    assert pulled.withdrawn == 1
    catalogue.push_catalogue(store, run_id="r2", onestop=onestop)
    assert onestop.held[A] == "withdrawn", "A was withdrawn nationally but stays published at the one-stop"


def test_ministry_withdrawal_is_lost_after_a_crash_between_commit_and_ack(store, tmp_path, monkeypatch):
    portal = FakePortal({A: detail(A), B: detail(B)})
    replica = MinistryReplica(f"sqlite:///{tmp_path / 'ministry.db'}")
    catalogue.pull_catalogue(store, portal, run_id="r1")
    real_ack = catalogue._ack

    def crash(*args, **kwargs):
        raise SystemExit("worker killed after the replica committed, before the ack")

    monkeypatch.setattr(catalogue, "_ack", crash)
    with pytest.raises(SystemExit):
        catalogue.push_catalogue(store, run_id="r1", replica=replica)
    monkeypatch.setattr(catalogue, "_ack", real_ack)
    assert replica.procedures(published_only=True).keys() == {A, B}
    del portal.details[A]
    catalogue.pull_catalogue(store, portal, run_id="r2")
    catalogue.push_catalogue(store, run_id="r2", replica=replica)
    assert replica.procedures(published_only=True).keys() == {B}, "A withdrawn nationally, still cong_bo"


def test_a_detail_that_names_another_code_is_dead_lettered_and_the_listed_procedure_kept(store):
    portal = FakePortal({A: detail(A), B: detail(B)})
    catalogue.pull_catalogue(store, portal, run_id="r1")
    portal.details[A] = detail(A + " ")  # LayThuTuc(A) now names it with a trailing blank
    pulled = catalogue.pull_catalogue(store, portal, run_id="r2")
    with store.engine.connect() as conn:
        published = sorted(r.procedure_code for r in conn.execute(select(catalogue_current)) if r.published)
    # still listed: kept with its last good snapshot, never withdrawn, and no "A " published
    assert (pulled.withdrawn, pulled.added, published) == (0, 0, [A, B])
    assert [(r["record_key"], [(e["field"], e["rule"]) for e in r["errors"]]) for r in pulled.rejected] == [
        (A, [("MATTHC", "matches_listed_code")])]


def test_two_details_naming_one_code_lose_no_procedure(store):
    portal = FakePortal({A: detail(A), B: detail(A)})  # LayThuTuc(B) answers A's code
    pulled = catalogue.pull_catalogue(store, portal, run_id="r1")
    assert (pulled.listed, pulled.normalised) == (2, 1)
    assert [d["record_key"] for d in store.dead_letters(catalogue.FLOW)] == [B]


def test_an_overlong_detail_code_is_dead_lettered_not_a_failed_pull_on_postgresql():
    from lienthong.store import Store

    with postgres_database("review_cat_bus") as url:
        store = Store(url)
        store.create_schema()
        try:
            portal = FakePortal({A: detail(A), B: detail("1." + "0" * 70)})
            pulled = catalogue.pull_catalogue(store, portal, run_id="r1")  # raised DataError
            assert pulled.normalised == 1 and [r["record_key"] for r in pulled.rejected] == [B]
        finally:
            store.dispose()


def test_an_overlong_domain_code_is_dead_lettered_and_the_batch_delivered_on_postgresql(store):
    portal = FakePortal({A: detail(A), B: detail(B, LINHVUCTHUCHIEN=[{"MALINHVUC": "G09-" + "X" * 61,
                                                                        "TENLINHVUC": "Hộ tịch"}])})
    catalogue.pull_catalogue(store, portal, run_id="r1")
    with postgres_database("review_cat_min") as url:
        replica = MinistryReplica(url)
        try:
            (report,) = catalogue.push_catalogue(store, run_id="r1", replica=replica)  # raised DataError
            assert replica.procedures(published_only=True).keys() == {A}
            assert [(r["record_key"], [(e["field"], e["rule"], e["message"]) for e in r["errors"]])
                    for r in report.rejected] == [
                (B, [("ma_linh_vuc", "max_length", "65 characters; the ministry database holds at most 64")])]
        finally:
            replica.dispose()


def test_a_fee_text_with_two_amounts_is_refused_and_a_unit_with_a_number_is_not():
    from lienthong.mapping.transforms import TransformError, vnd_from_text

    # refused (format), as "100.000 - 200.000 đồng" is; it was read as 20000, the second tier dropped
    for text in ("20.000 đồng/bản chính; 10.000 đồng/bản sao", "20.000đ/bản; 10.000đ/bản sao"):
        with pytest.raises(TransformError) as info:
            vnd_from_text(text)
        assert info.value.rule == "format" and "more than one amount" in str(info.value)
    assert [vnd_from_text(t) for t in ("20.000 đồng/01 bản", "2.000 đồng/trang", "50.000 đồng")] == [
        "20000", "2000", "50000"]


def test_an_empty_national_list_withdraws_nothing_and_fails_the_pull(store):
    """An empty LayDanhSachTTHC while procedures are published is a listing cut short or a portal
    fault, not a province's whole catalogue repealed: nothing is withdrawn, and the task fails."""
    portal = FakePortal({A: detail(A), B: detail(B)})
    catalogue.pull_catalogue(store, portal, run_id="r1")
    portal.details = {}
    with pytest.raises(ProtocolError, match="the list of procedures is empty while 2 are published"):
        catalogue.pull_catalogue(store, portal, run_id="r2")
    with store.engine.connect() as conn:
        assert sorted(r.procedure_code for r in conn.execute(select(catalogue_current)) if r.published) == [A, B]
    assert store.dead_letters(catalogue.FLOW) == []


def test_a_dead_letter_is_resolved_by_the_pull_that_normalises_the_procedure_again(store):
    """Nothing resolved a catalogue dead letter: fixed at the portal, the procedure was pulled and
    pushed again, but its letter stayed listed for ever (and `deadletter replay` said "resolved 0")."""
    portal = FakePortal({A: detail(A), B: detail(B)})
    portal.details[A] = detail(A + " ")  # LayThuTuc(A) names another code: refused
    catalogue.pull_catalogue(store, portal, run_id="r1")
    assert [d["record_key"] for d in store.dead_letters(catalogue.FLOW)] == [A]
    catalogue.pull_catalogue(store, portal, run_id="r2")  # still refused: the same letter, not a second
    assert [d["record_key"] for d in store.dead_letters(catalogue.FLOW)] == [A]
    portal.details[A] = detail(A)  # the portal fixed it
    pulled = catalogue.pull_catalogue(store, portal, run_id="r3")
    assert pulled.added == 1 and store.dead_letters(catalogue.FLOW) == []
    (letter,) = store.dead_letters(catalogue.FLOW, unresolved_only=False)
    assert letter["resolution"] == "normalised and published by run r3"


def test_a_push_the_destination_accepts_later_resolves_its_dead_letter(store):
    class RefusingOneStop(FakeOneStop):
        refuse: set[str] = {B}

        def upsert_procedure(self, record):
            if record["serviceCode"] in self.refuse:
                raise RecordRejected(record["serviceCode"], [FieldError("serviceName", "max_length", "too long")])
            return super().upsert_procedure(record)

    portal, onestop = FakePortal({A: detail(A), B: detail(B)}), RefusingOneStop()
    catalogue.pull_catalogue(store, portal, run_id="r1")
    catalogue.push_catalogue(store, run_id="r1", onestop=onestop)
    assert [(d["record_key"], d["stage"]) for d in store.dead_letters(catalogue.FLOW)] == [(B, "onestop")]
    onestop.refuse = set()
    (report,) = catalogue.push_catalogue(store, run_id="r2", onestop=onestop)
    assert report.upserted == 1 and store.dead_letters(catalogue.FLOW) == []


def test_replay_resolves_catalogue_letters_and_a_procedure_still_refused_is_dead_lettered_anew(store):
    portal = FakePortal({A: detail(A + " "), B: detail(B)})
    catalogue.pull_catalogue(store, portal, run_id="r1")
    (letter,) = store.dead_letters(catalogue.FLOW)
    assert catalogue.replay(store, dead_letter_ids=[letter["id"]], by="op") == ([letter["id"]], [A])
    assert store.dead_letters(catalogue.FLOW) == []
    catalogue.pull_catalogue(store, portal, run_id="r2")  # not fixed: refused again, a new letter
    assert [(d["record_key"], d["run_id"]) for d in store.dead_letters(catalogue.FLOW)] == [(A, "r2")]


def _unparsable_fee(code: str) -> dict:
    d = detail(code)
    d["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][0]["PHILEPHI"][0]["SOTIEN"] = "liên hệ"
    return d


@pytest.mark.parametrize("published_before", [False, True])
def test_the_dead_letter_of_a_procedure_withdrawn_nationally_is_resolved_by_the_pull(store, published_before):
    """A procedure refused by the pull and then withdrawn nationally kept its dead letter open for
    ever: only a pull that normalised and published it resolved one, and none ever would again."""
    portal = FakePortal({A: detail(A) if published_before else _unparsable_fee(A), B: detail(B)})
    catalogue.pull_catalogue(store, portal, run_id="r1")
    portal.details[A] = _unparsable_fee(A)
    catalogue.pull_catalogue(store, portal, run_id="r2")
    assert [(d["record_key"], d["stage"]) for d in store.dead_letters(catalogue.FLOW)] == [(A, "normalise")]
    del portal.details[A]  # withdrawn nationally: no longer listed
    pulled = catalogue.pull_catalogue(store, portal, run_id="r3")
    assert pulled.withdrawn == (1 if published_before else 0)
    assert store.dead_letters(catalogue.FLOW) == []
    (letter,) = store.dead_letters(catalogue.FLOW, unresolved_only=False)
    assert letter["resolution"] == "no longer published nationally (withdrawn) in run r3"


def test_a_listed_procedure_whose_detail_is_not_published_is_not_published(store):
    """Contract §4.5: clients treat TRANGTHAI 1 as published and anything else as hidden. A listed
    procedure whose LayThuTuc detail said TRANGTHAI 0 (withdrawn between the list and the detail,
    or listed though hidden) was added, and kept published at every destination."""
    C = "1.000003.000.00.00.H49"
    portal, onestop = FakePortal({A: detail(A), B: detail(B, TRANGTHAI="1"), C: detail(C, TRANGTHAI=0)}), FakeOneStop()
    pulled = catalogue.pull_catalogue(store, portal, run_id="r1")
    assert (pulled.listed, pulled.added, pulled.hidden, pulled.rejected) == (3, 2, 1, [])
    catalogue.push_catalogue(store, run_id="r1", onestop=onestop)
    assert onestop.held == {A: "active", B: "active"}
    portal.details[A]["TRANGTHAI"] = 2  # hidden now, still listed
    pulled = catalogue.pull_catalogue(store, portal, run_id="r2")
    assert (pulled.added, pulled.amended, pulled.withdrawn, pulled.hidden) == (0, 0, 1, 2)
    (report,) = catalogue.push_catalogue(store, run_id="r2", onestop=onestop)
    assert (report.upserted, report.withdrawn) == (0, 1) and onestop.held == {A: "withdrawn", B: "active"}
    assert store.dead_letters(catalogue.FLOW) == []


def test_related_procedures_in_another_order_are_no_change_and_one_more_is(store):
    """TTHCLIENQUAN and TTHCLIENTHONG are sets of procedure codes: the same codes in another order
    (or one given twice) made the procedure "amended" and pushed it again to every destination."""
    X, Y, Z = "1.000010.000.00.00.H49", "2.000020.000.00.00.H49", "1.000030.000.00.00.H49"
    portal, onestop = FakePortal({A: detail(A, TTHCLIENQUAN=[Y, X], TTHCLIENTHONG=[Z, X]), B: detail(B)}), FakeOneStop()
    catalogue.pull_catalogue(store, portal, run_id="r1")
    catalogue.push_catalogue(store, run_id="r1", onestop=onestop)
    portal.details[A].update(TTHCLIENQUAN=[X, Y, X], TTHCLIENTHONG=[X, Z])
    pulled = catalogue.pull_catalogue(store, portal, run_id="r2")
    (report,) = catalogue.push_catalogue(store, run_id="r2", onestop=onestop)
    assert (pulled.amended, pulled.unchanged, report.upserted) == (0, 2, 0)
    portal.details[A].update(TTHCLIENQUAN=[Z, Y, X])
    pulled = catalogue.pull_catalogue(store, portal, run_id="r3")
    (report,) = catalogue.push_catalogue(store, run_id="r3", onestop=onestop)
    assert (pulled.amended, report.upserted) == (1, 1)
    with store.engine.connect() as conn:
        record = conn.execute(select(catalogue_current.c.record).where(
            catalogue_current.c.procedure_code == A)).scalar_one()
    assert (record["related"], record["interconnected"]) == (f"{X},{Z},{Y}", f"{X},{Z}")


def test_a_refused_procedure_is_dead_lettered_once_whatever_the_order_of_layDVC(store):
    """A refused procedure's dead letter keeps its LayDVC levels; read in LayDVC's order, the same
    refusal was dead-lettered again by every run that listed the services in another order."""
    class Services(FakePortal):
        services = [{"MATTHC": A, "APDUNGDVC": [{"MUCDO": 3}]}, {"MATTHC": A, "APDUNGDVC": [{"MUCDO": "Toàn trình"}]}]

        def list_services(self):
            return self.services

    portal = Services({A: _unparsable_fee(A), B: detail(B)})
    catalogue.pull_catalogue(store, portal, run_id="r1")
    portal.services = portal.services[::-1]
    catalogue.pull_catalogue(store, portal, run_id="r2")
    assert [(d["record_key"], d["run_id"]) for d in store.dead_letters(catalogue.FLOW)] == [(A, "r1")]
