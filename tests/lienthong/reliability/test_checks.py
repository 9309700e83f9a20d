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


# --- payments ---------------------------------------------------------------------------------
DOSSIER = "000.00.01.H49-261102-0001"
BILL = "ab" * 32  # the SHA-256 of the receipt PDF the platform's GET_BILL serves for TT-1


def _payment_world() -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """One payment paid at the platform, its fee paid at the one-stop and its receipt in the ledger;
    one still pending everywhere."""
    platform = [
        {"MaThamChieu": "TT-1", "MaHoSo": DOSSIER, "SoTien": 150000, "status": "paid", "TrangThaiGD": "00",
         "origin": "seed", "MaGiaoDich": "GD-1", "ThoiGianGD": "20261102081500", "ThoiGianKhoiTao": "20261102080000",
         "MaNganHang": "VCB", "SoBienLai": "BL2026-000001", "NguoiNop": "Trần Văn Đức", "PdfSha256": BILL},
        {"MaThamChieu": "TT-2", "MaHoSo": DOSSIER, "SoTien": 50000, "status": "pending", "TrangThaiGD": "",
         "origin": "seed", "MaGiaoDich": "", "ThoiGianGD": "", "ThoiGianKhoiTao": "20261102090000",
         "MaNganHang": "", "SoBienLai": "", "NguoiNop": "Trần Văn Đức", "PdfSha256": None},
    ]
    onestop = [
        {"reference": "TT-1", "dossierNo": DOSSIER, "amount": 150000, "currency": "VND", "status": "paid",
         "createdAt": "2026-11-02T08:00:00+07:00", "paidAt": "2026-11-02T08:15:00+07:00", "transactionId": "GD-1",
         "bank": "VCB", "receiptNo": None, "confirmedBy": "api", "updatedAt": "2026-11-02T08:15:00+07:00",
         "callbackCount": 0},
        {"reference": "TT-2", "dossierNo": DOSSIER, "amount": 50000, "currency": "VND", "status": "pending",
         "createdAt": "2026-11-02T09:00:00+07:00", "paidAt": None, "transactionId": None, "bank": None,
         "receiptNo": None, "confirmedBy": None, "updatedAt": "2026-11-02T09:00:00+07:00", "callbackCount": 0},
    ]
    receipts = [{"seq": 1, "batch": 1, "ReceiptNumber": "BL2026-000001", "DossierCode": DOSSIER,
                 "PaymentReference": "TT-1", "AmountVND": 150000, "PaidAt": "2026-11-02T08:15:00+07:00",
                 "PayerName": "Trần Văn Đức", "AgencyCode": "000.00.01.H49", "PdfSha256": BILL}]
    return platform, onestop, receipts, []


def _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks, dossiers=None):
    _serve(monkeypatch, {
        PLATFORM + "/_state/payments": {"payments": platform},
        ONESTOP + "/_state/payments": {"payments": onestop, "callbacks": callbacks},
        LEDGER + "/_state/receipts": {"receipts": receipts},
        ONESTOP + "/_state/dossiers": {"dossiers": dossiers if dossiers is not None else [
            {"dossierNo": DOSSIER, "applicantName": "Trần Văn Đức"}]},
    })
    return checks.check_payments(store, ONESTOP, PLATFORM, LEDGER)


def test_a_paid_payment_with_its_receipt_and_fee_is_delivered(monkeypatch, store):
    result = _check_payments(monkeypatch, store, *_payment_world())
    assert (result.records, result.delivered, result.lost, result.duplicated) == (1, 1, 0, 0), result.problems


def test_a_receipt_with_another_amount_or_booked_twice_is_seen(monkeypatch, store):
    platform, onestop, receipts, callbacks = _payment_world()
    result = _check_payments(monkeypatch, store, platform, onestop, [{**receipts[0], "AmountVND": 15000}], callbacks)
    assert (result.delivered, result.lost) == (0, 1)
    twice = [*receipts, {**receipts[0], "seq": 2, "ReceiptNumber": "BL2026-000002"}]
    result = _check_payments(monkeypatch, store, platform, onestop, twice, callbacks)
    assert result.duplicated == 1 and result.problems[0] == "TT-1: 2 receipts in the ledger"


@pytest.mark.parametrize(("outcomes", "duplicated"), [
    (["paid"], 0), (["failed", "paid"], 0), (["paid", "paid"], 1), (["failed", "failed", "paid"], 1),
    (["paid", "failed"], 1)])
def test_a_failed_payment_completed_later_is_not_a_duplicate(monkeypatch, store, outcomes, duplicated):
    """The bus now books a payment the platform completes after reporting it failed (the one-stop
    applies failed, then paid): the check counted any second applied result as a duplicate. The
    same result twice, or paid then failed, still is."""
    platform, onestop, receipts, _ = _payment_world()
    callbacks = [{"reference": "TT-1", "outcome": outcome} for outcome in outcomes]
    result = _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks)
    assert result.duplicated == duplicated, result.problems
    if duplicated:
        assert result.problems[0] == f"TT-1: the one-stop applied {len(outcomes)} payment results ({', '.join(outcomes)})"
    else:
        assert (result.delivered, result.lost) == (1, 0), result.problems


@pytest.mark.parametrize(("field", "value"), [("PaidAt", "2026-11-02T09:15:00+07:00"), ("AgencyCode", "000.00.02.H49")])
def test_a_receipt_with_another_payment_time_or_agency_is_a_loss(monkeypatch, store, field, value):
    """PaidAt is the platform's ThoiGianGD and AgencyCode the unit of the dossier code (the receipt
    mapping): a ledger receipt with another one is not this payment's receipt."""
    platform, onestop, receipts, callbacks = _payment_world()
    result = _check_payments(monkeypatch, store, platform, onestop, [{**receipts[0], field: value}], callbacks)
    assert (result.delivered, result.lost) == (0, 1), result.problems


@pytest.mark.parametrize(("field", "value", "name"), [
    ("PayerName", "Trần Văn Đông", "payer name"), ("PayerName", "", "payer name"),
    ("PdfSha256", "cd" * 32, "receipt PDF"), ("PdfSha256", "AB" * 32, "receipt PDF")])
def test_a_receipt_with_another_payer_or_pdf_is_a_loss_naming_the_field(monkeypatch, store, field, value, name):
    """PayerName is the applicant of the one-stop's dossier and PdfSha256 the hash of the PDF the
    platform's GET_BILL serves (the receipt mapping): the check compared neither, so a receipt
    naming another payer or another PDF counted delivered."""
    platform, onestop, receipts, callbacks = _payment_world()
    result = _check_payments(monkeypatch, store, platform, onestop, [{**receipts[0], field: value}], callbacks)
    assert (result.records, result.delivered, result.lost, result.duplicated) == (1, 0, 1, 0), result.problems
    assert result.problems == [f"TT-1: the ledger's receipt differs in {name}"]


def test_the_payer_name_is_the_dossier_applicant_compared_in_nfc(monkeypatch, store):
    """The mapping normalises the name to NFC: a one-stop name in NFD is the same payer; the
    platform's NguoiNop is not the source, so another one there changes nothing."""
    import unicodedata
    platform, onestop, receipts, callbacks = _payment_world()
    platform[0]["NguoiNop"] = "Someone Else"
    result = _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks, dossiers=[
        {"dossierNo": DOSSIER, "applicantName": unicodedata.normalize("NFD", "Trần Văn Đức")}])
    assert (result.records, result.delivered, result.lost) == (1, 1, 0), result.problems
    result = _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks, dossiers=[])
    assert (result.delivered, result.lost) == (0, 1)
    assert result.problems == ["TT-1: the ledger's receipt differs in payer name"]


@pytest.mark.parametrize(("field", "value"), [("paidAt", "2026-11-03T08:15:00+07:00"), ("bank", "TCB")])
def test_a_fee_paid_at_another_time_or_bank_is_a_loss(monkeypatch, store, field, value):
    platform, onestop, receipts, callbacks = _payment_world()
    onestop[0][field] = value
    result = _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks)
    assert (result.delivered, result.lost) == (0, 1), result.problems


def test_a_paid_time_written_in_another_offset_is_the_same_time(monkeypatch, store):
    platform, onestop, receipts, callbacks = _payment_world()
    onestop[0]["paidAt"] = "2026-11-02T01:15:00+00:00"
    result = _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks)
    assert (result.delivered, result.lost) == (1, 0), result.problems


@pytest.mark.parametrize("status", ["paid", "failed"])
def test_a_fee_marked_at_the_one_stop_that_the_platform_did_not_settle_is_seen(monkeypatch, store, status):
    """Nothing is applied that the platform did not settle: TT-2 is still pending at the platform."""
    platform, onestop, receipts, callbacks = _payment_world()
    onestop[1].update(status=status, paidAt="2026-11-02T09:05:00+07:00" if status == "paid" else None,
                      transactionId="GD-2", bank="VCB")
    result = _check_payments(monkeypatch, store, platform, onestop, receipts, callbacks)
    assert result.duplicated == 1, result.problems
    assert result.problems == [f"TT-2: the one-stop holds {status!r}; the platform holds 'pending'"]


# --- catalogue --------------------------------------------------------------------------------
CANONICAL = Path(__file__).resolve().parents[3] / "fixtures" / "samples" / "canonical"


def _catalogue_world() -> tuple[dict, dict, dict]:
    """A published procedure with three fees, as the one-stop and the ministry replica hold it."""
    from lienthong.flows import catalogue

    record = json.loads((CANONICAL / "procedure.full-three-channels.json").read_text(encoding="utf-8"))
    code = record["procedure_code"] if "procedure_code" in record else record["code"]
    onestop = {**load_mapping(catalogue.TO_ONESTOP).apply(record), "version": 1}
    mapped = load_mapping(catalogue.TO_MINISTRY).apply(record)
    ministry = {**{k: v for k, v in mapped.items() if k != "fees"}, "trang_thai": "cong_bo", "noi_dung": record,
                "ma_bam_noi_dung": "00" * 32, "cap_nhat_luc": "2026-11-02T08:00:00+00:00",
                "fees": [{"ma_tthc": code, "thu_tu": i, **fee} for i, fee in enumerate(mapped["fees"])]}
    assert len(ministry["fees"]) == 3
    return record, onestop, ministry


def _fake_catalogue_peers(monkeypatch, record, ministry) -> None:
    """The catalogue check's peers, faked: the clean pull from the portal finds ``record``, the
    ministry replica holds ``ministry`` (for checks and for :mod:`connectors.ministry_db.replica`'s
    other users), the portal client is never called."""
    from connectors.ministry_db import replica as replica_module
    from lienthong.flows import catalogue
    from lienthong.store import catalogue_current, utcnow

    def pull(truth_store, client, *, run_id):
        with truth_store.begin() as conn:
            conn.execute(catalogue_current.insert().values(
                procedure_code=ministry["ma_tthc"], record=record, record_hash="00" * 32, published=True,
                updated_run_id=run_id, updated_at=utcnow()))

    class Replica:
        def __init__(self, url=None):
            pass

        @classmethod
        def from_connection(cls, spec):
            return cls()

        def procedures(self, *, published_only):
            return {ministry["ma_tthc"]: copy.deepcopy(ministry)}

        def dispose(self):
            pass

    class Client:
        @classmethod
        def from_connection(cls, spec):
            return cls()

        def close(self):
            pass

    monkeypatch.setattr(catalogue, "pull_catalogue", pull)
    monkeypatch.setattr(replica_module, "MinistryReplica", Replica)
    monkeypatch.setattr(checks, "MinistryReplica", Replica)
    monkeypatch.setattr(checks, "NationalPortalClient", Client)


def _check_catalogue(monkeypatch, store, record, onestop, ministry):
    _fake_catalogue_peers(monkeypatch, record, ministry)
    _serve(monkeypatch, {ONESTOP + "/_state/procedures": {"procedures": [onestop]}})
    return checks.check_catalogue(store, None, ONESTOP, None)


def test_a_procedure_held_alike_by_both_is_delivered(monkeypatch, store):
    result = _check_catalogue(monkeypatch, store, *_catalogue_world())
    assert (result.records, result.delivered, result.lost, result.duplicated) == (1, 1, 0, 0), result.problems


def test_a_procedure_the_one_stop_holds_with_another_name_is_a_loss(monkeypatch, store):
    record, onestop, ministry = _catalogue_world()
    result = _check_catalogue(monkeypatch, store, record, {**onestop, "serviceName": "khác"}, ministry)
    assert (result.delivered, result.lost) == (0, 1)


@pytest.mark.parametrize("damage", ["fee amount", "fee lost", "fee twice", "name column"])
def test_a_ministry_row_whose_columns_or_fees_differ_is_a_loss(monkeypatch, store, damage):
    """The replica's columns and fee rows are what the ministry reads; the stored noi_dung alone
    being right does not make them right."""
    record, onestop, ministry = _catalogue_world()
    if damage == "fee amount":
        ministry["fees"][2]["so_tien_vnd"] = 200000
    elif damage == "fee lost":
        del ministry["fees"][1]
    elif damage == "fee twice":
        ministry["fees"].append({**ministry["fees"][2], "thu_tu": 3})
    else:
        ministry["ten_tthc"] = "Đăng ký kết hôn"
    result = _check_catalogue(monkeypatch, store, record, onestop, ministry)
    assert (result.delivered, result.lost) == (0, 1), result.problems
    assert result.problems[0].startswith(f"{ministry['ma_tthc']}: the ministry replica holds other ")
