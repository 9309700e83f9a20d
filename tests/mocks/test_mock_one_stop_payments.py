"""The one-stop stand-in's fee status, payment requests and confirm-callback receiver
(docs/wire/onestop.md "Payments"; contract §4.9, §6.5, §6.6, §7.11)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mocks.one_stop import DEFAULT_API_KEY, OneStopMock
from mocks.payment_platform import (
    ANSWER_ORDERS,
    BAD_CHECKSUM,
    DEFAULT_PARTNER,
    DEFAULT_SECRET,
    REQUEST_ORDERS,
    PaymentPlatformMock,
    checksum,
)

TIMEOUT = 5
KEY = {"X-Api-Key": DEFAULT_API_KEY}
FIRST_REF = "dvc0000006H49261102000120261104123827"
FIRST_DOSSIER = "000.00.06.H49-261102-0001"


@pytest.fixture
def one(tmp_path: Path) -> Iterator[OneStopMock]:
    mock = OneStopMock(tmp_path / "onestop", port=0).start()
    yield mock
    mock.stop()


@pytest.fixture
def pay(tmp_path: Path) -> Iterator[PaymentPlatformMock]:
    mock = PaymentPlatformMock(tmp_path / "platform", port=0).start()
    yield mock
    mock.stop()


def get(mock: OneStopMock, path: str, *, key: bool = True, **params: Any) -> requests.Response:
    return requests.get(mock.url + path, params=params or None, headers=KEY if key else {}, timeout=TIMEOUT)


def post(mock: OneStopMock, path: str, body: Any, *, key: bool = True) -> requests.Response:
    return requests.post(mock.url + path, json=body, headers=KEY if key else {}, timeout=TIMEOUT)


def state(mock: OneStopMock) -> dict[str, Any]:
    return get(mock, "/_state/payments", key=False).json()


def payment(mock: OneStopMock, ref: str) -> dict[str, Any]:
    response = get(mock, f"/api/v1/payments/{ref}")
    assert response.status_code == 200, response.text
    return response.json()


def confirm(ref: str, *, amount: int, txn: str = "GD26110412345678", ma_loi: str = "00",
            partner: str = DEFAULT_PARTNER, secret: str = DEFAULT_SECRET, when: str = "20261104125000",
            info: str | None = None) -> dict[str, Any]:
    """A confirm callback as the platform signs it (§4.9, §6.6)."""
    body = {"LoaiBanTin": "CONFIRM", "MaLoi": ma_loi, "MaDoiTac": partner, "MaThamChieu": ref, "SoTien": amount,
            "MaTienTe": "VND", "MaGiaoDich": txn, "MaNganHang": "VCB", "ThoiGianGD": when,
            "ThongTinGiaoDich": info if info is not None else f"THANH TOAN HO SO {FIRST_DOSSIER}"}
    body["MaXacThuc"] = checksum(body, ANSWER_ORDERS["CONFIRM"], secret)
    return body


def result(ref: str, **overrides: Any) -> dict[str, Any]:
    body = {"result": "paid", "transactionId": "GD26110499990001", "amount": 2000,
            "paidAt": "2026-11-04T12:50:00+07:00", "bank": "BIDV", "receiptNo": "BL2026-000901"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


# -- seeding ---------------------------------------------------------------------------------
def test_seeded_requests_are_the_platforms_seeded_payments_all_pending(one, pay):
    mine = state(one)
    theirs = pay.payments()
    assert [(p["reference"], p["dossierNo"], p["amount"]) for p in mine["payments"]] == \
        [(p["MaThamChieu"], p["MaHoSo"], p["SoTien"]) for p in theirs]
    assert len(theirs) == 31
    assert {s: sum(p["status"] == s for p in theirs) for s in ("paid", "failed", "pending")} == \
        {"paid": 12, "failed": 8, "pending": 11}
    assert mine["counts"]["byStatus"] == {"pending": 31, "paid": 0, "failed": 0, "unmatched": 0}
    assert mine["callbacks"] == [] and mine["counts"]["callbacks"]["received"] == 0
    first = mine["payments"][0]
    assert first == {"reference": FIRST_REF, "dossierNo": FIRST_DOSSIER, "amount": 2000, "currency": "VND",
                     "status": "pending", "createdAt": "2026-11-04T12:38:27+07:00", "paidAt": None,
                     "transactionId": None, "bank": None, "receiptNo": None, "confirmedBy": None,
                     "updatedAt": "2026-11-04T12:38:27+07:00", "callbackCount": 0}


def test_reset_rebuilds_the_requests_and_a_restart_keeps_them(one, tmp_path):
    assert post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF)).status_code == 200
    assert post(one, "/api/v1/payments/confirm", confirm("dvcUNKNOWN", amount=5), key=False).status_code == 200
    assert state(one)["counts"]["byStatus"] == {"pending": 30, "paid": 1, "failed": 0, "unmatched": 1}
    one.stop()
    one.start()
    assert state(one)["counts"]["byStatus"] == {"pending": 30, "paid": 1, "failed": 0, "unmatched": 1}
    assert requests.post(one.url + "/_admin/reset", timeout=TIMEOUT).status_code == 200
    after = state(one)
    assert after["counts"]["byStatus"] == {"pending": 31, "paid": 0, "failed": 0, "unmatched": 0}
    assert after["callbacks"] == [] and after["payments"][0]["reference"] == FIRST_REF


# -- listing ---------------------------------------------------------------------------------
def test_list_filters_and_pages_in_creation_order(one):
    everything = state(one)["payments"]
    refs = [p["reference"] for p in everything]
    page = get(one, "/api/v1/payments", size=10, page=4).json()
    assert (page["page"], page["size"], page["total"]) == (4, 10, 31)
    assert [p["reference"] for p in page["items"]] == refs[30:]
    default = get(one, "/api/v1/payments").json()
    assert (default["page"], default["size"], default["total"]) == (1, 100, 31)
    assert default["items"][0] == {k: v for k, v in everything[0].items() if k != "callbackCount"}
    post(one, f"/api/v1/payments/{refs[2]}/result",
         result(refs[2], amount=everything[2]["amount"], transactionId="GD-A"))
    post(one, f"/api/v1/payments/{refs[5]}/result",
         result(refs[5], result="failed", amount=everything[5]["amount"], transactionId="GD-B"))
    pending = get(one, "/api/v1/payments", status="pending", size=500).json()
    assert pending["total"] == 29 and refs[2] not in [p["reference"] for p in pending["items"]]
    assert [p["reference"] for p in get(one, "/api/v1/payments", status="paid").json()["items"]] == [refs[2]]
    assert [p["reference"] for p in get(one, "/api/v1/payments", status="failed").json()["items"]] == [refs[5]]
    assert get(one, "/api/v1/payments", status="unmatched").json() == {"items": [], "page": 1, "size": 100,
                                                                         "total": 0}
    assert get(one, "/api/v1/payments", status="all").json()["total"] == 31


def test_list_and_get_refuse_bad_input_and_missing_key(one):
    assert get(one, "/api/v1/payments", status="done").status_code == 400
    assert get(one, "/api/v1/payments", size=0).json()["error"] == "bad_request"
    assert get(one, "/api/v1/payments", page="x").status_code == 400
    assert get(one, "/api/v1/payments", key=False).status_code == 401
    assert get(one, f"/api/v1/payments/{FIRST_REF}", key=False).status_code == 401
    missing = get(one, "/api/v1/payments/dvcNOPE")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "message": "payment dvcNOPE not found"}
    assert payment(one, FIRST_REF)["amount"] == 2000


# -- fees ------------------------------------------------------------------------------------
def test_fee_status_follows_the_payment_requests(one):
    fees = get(one, f"/api/v1/dossiers/{FIRST_DOSSIER}/fees").json()
    assert fees == {"dossierNo": FIRST_DOSSIER,
                    "items": [{"feeCode": "CT-01", "feeName": "Phí chứng thực bản sao từ bản chính", "feeKind": "fee",
                               "amount": 2000, "status": "unpaid"}],
                    "amount": 2000, "paymentStatus": "pending", "paidAmount": 0, "payments": [FIRST_REF]}
    assert post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF)).json()["applied"] is True
    fees = get(one, f"/api/v1/dossiers/{FIRST_DOSSIER}/fees").json()
    assert (fees["paymentStatus"], fees["paidAmount"], [i["status"] for i in fees["items"]]) == ("paid", 2000, ["paid"])
    no_fee = next(d["dossierNo"] for d in get(one, "/_state/dossiers", key=False).json()["dossiers"]
                  if not d["fees"])
    assert get(one, f"/api/v1/dossiers/{no_fee}/fees").json() == {
        "dossierNo": no_fee, "items": [], "amount": 0, "paymentStatus": "unpaid", "paidAmount": 0, "payments": []}
    missing = get(one, "/api/v1/dossiers/000.00.01.H49-991231-9999/fees")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert get(one, f"/api/v1/dossiers/{FIRST_DOSSIER}/fees", key=False).status_code == 401


# -- recording a result (the bus repairing a lost callback) ------------------------------------
def test_result_paid_is_applied_once_and_repeats_are_idempotent(one):
    first = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF))
    assert first.status_code == 200
    paid = {"reference": FIRST_REF, "dossierNo": FIRST_DOSSIER, "amount": 2000, "currency": "VND", "status": "paid",
            "createdAt": "2026-11-04T12:38:27+07:00", "paidAt": "2026-11-04T12:50:00+07:00",
            "transactionId": "GD26110499990001", "bank": "BIDV", "receiptNo": "BL2026-000901", "confirmedBy": "api",
            "updatedAt": "2026-11-04T12:50:00+07:00"}
    assert first.json() == {"applied": True, "payment": paid}
    again = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, bank="VCB"))
    assert again.status_code == 200 and again.json() == {"applied": False, "payment": paid}
    other = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, transactionId="GD-OTHER"))
    assert other.status_code == 409
    assert other.json()["error"] == "already_paid" and other.json()["field"] == "transactionId"
    undo = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, result="failed"))
    assert undo.status_code == 409 and undo.json()["error"] == "already_paid" and undo.json()["field"] == "result"
    assert payment(one, FIRST_REF) == paid
    assert state(one)["counts"]["byStatus"]["paid"] == 1


def test_a_paid_request_refuses_another_result_as_already_paid_whatever_its_amount(one):
    """docs/wire/onestop.md's order: a paid request is answered ``already_paid`` before the amount
    is compared (only a repeat of its own transaction is checked for the amount)."""
    assert post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF)).json()["applied"] is True
    other = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, transactionId="GD-OTHER", amount=2001))
    assert (other.status_code, other.json()["error"], other.json()["field"]) == (409, "already_paid", "transactionId")
    undo = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, result="failed", amount=2001))
    assert (undo.status_code, undo.json()["error"], undo.json()["field"]) == (409, "already_paid", "result")
    same = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, amount=2001))
    assert (same.status_code, same.json()["error"], same.json()["field"]) == (422, "amount_mismatch", "amount")


def test_result_refusals_change_nothing(one):
    before = payment(one, FIRST_REF)
    mismatch = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, amount=2001))
    assert mismatch.status_code == 422
    assert mismatch.json() == {"error": "amount_mismatch", "field": "amount",
                               "message": "amount 2001 differs from the request's 2000 VND"}
    unknown = post(one, "/api/v1/payments/dvcNOPE/result", result("dvcNOPE"))
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    cases = [
        (result(FIRST_REF, transactionId=...), "transactionId"),
        (result(FIRST_REF, amount="2000"), "amount"),
        (result(FIRST_REF, amount=True), "amount"),
        (result(FIRST_REF, paidAt="2026-11-04 12:50:00"), "paidAt"),
        (result(FIRST_REF, paidAt="2026-11-04T12:50:00"), "paidAt"),
        (result(FIRST_REF, result="refunded"), "result"),
        (result(FIRST_REF, bank=...), "bank"),
        (result(FIRST_REF, bank=5), "bank"),
        (result(FIRST_REF, receiptNo=7), "receiptNo"),
        ({**result(FIRST_REF), "note": "x"}, "note"),
    ]
    for body, field in cases:
        answer = post(one, f"/api/v1/payments/{FIRST_REF}/result", body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"] == "validation_failed" and answer.json()["field"] == field
    not_json = requests.post(one.url + f"/api/v1/payments/{FIRST_REF}/result", data=b"[", headers=KEY, timeout=TIMEOUT)
    assert not_json.status_code == 400
    assert post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF), key=False).status_code == 401
    assert payment(one, FIRST_REF) == before


def test_result_failed_then_paid_and_unmatched_is_refused(one):
    failed = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, result="failed", receiptNo=None))
    assert failed.json()["applied"] is True
    assert failed.json()["payment"]["status"] == "failed" and failed.json()["payment"]["paidAt"] is None
    repeat = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, result="failed"))
    assert repeat.json()["applied"] is False
    # the platform settled a later attempt under the same reference: money arrived, it counts
    later = post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF, transactionId="GD-LATER"))
    assert later.json()["applied"] is True and later.json()["payment"]["status"] == "paid"
    post(one, "/api/v1/payments/confirm", confirm("dvcSTRAY1", amount=5000), key=False)
    stray = post(one, "/api/v1/payments/dvcSTRAY1/result", result("dvcSTRAY1", amount=5000))
    assert stray.status_code == 409 and stray.json()["error"] == "unmatched" and stray.json()["field"] == "reference"


# -- the confirm callback ---------------------------------------------------------------------
def test_signed_callback_marks_paid_once_and_a_duplicate_has_no_effect(one):
    message = confirm(FIRST_REF, amount=2000)
    answer = post(one, "/api/v1/payments/confirm", message, key=False)
    assert answer.status_code == 200
    body = answer.json()
    assert body["MaLoi"] == "00" and body["MoTaLoi"] == "Thành công"
    assert body["MaXacThuc"] == checksum(body, ("MaLoi", "MaDoiTac", "MaThamChieu", "ThoiGianGD"), DEFAULT_SECRET)
    paid = payment(one, FIRST_REF)
    assert (paid["status"], paid["confirmedBy"], paid["transactionId"], paid["bank"], paid["paidAt"]) == \
        ("paid", "callback", "GD26110412345678", "VCB", "2026-11-04T12:50:00+07:00")
    again = post(one, "/api/v1/payments/confirm", message, key=False)
    assert again.json()["MaLoi"] == "00"
    assert payment(one, FIRST_REF) == paid
    other = post(one, "/api/v1/payments/confirm", confirm(FIRST_REF, amount=2000, txn="GD-SECOND"), key=False)
    assert other.json()["MaLoi"] == "99"
    failed = post(one, "/api/v1/payments/confirm", confirm(FIRST_REF, amount=2000, ma_loi="99"), key=False)
    assert failed.json()["MaLoi"] == "99"
    assert payment(one, FIRST_REF) == paid
    seen = state(one)
    assert [c["outcome"] for c in seen["callbacks"]] == ["paid", "duplicate", "conflict", "conflict"]
    assert seen["counts"]["callbacks"] == {"received": 4, "applied": 1, "duplicates": 1, "badChecksum": 0,
                                           "conflicts": 2, "amountMismatches": 0, "unmatched": 0, "invalid": 0}
    assert seen["payments"][0]["callbackCount"] == 4
    # and the API agrees: same transaction = no change
    assert post(one, f"/api/v1/payments/{FIRST_REF}/result",
                result(FIRST_REF, transactionId="GD26110412345678")).json()["applied"] is False


def test_bad_checksum_and_wrong_amount_are_refused_and_change_nothing(one):
    before = payment(one, FIRST_REF)
    forged = confirm(FIRST_REF, amount=2000, secret="not-the-secret")
    answer = post(one, "/api/v1/payments/confirm", forged, key=False).json()
    assert (answer["MaLoi"], answer["MoTaLoi"]) == ("99", BAD_CHECKSUM)
    tampered = {**confirm(FIRST_REF, amount=2000), "SoTien": 1}
    assert post(one, "/api/v1/payments/confirm", tampered, key=False).json()["MoTaLoi"] == BAD_CHECKSUM
    wrong_amount = post(one, "/api/v1/payments/confirm", confirm(FIRST_REF, amount=1999), key=False).json()
    assert wrong_amount["MaLoi"] == "99"
    partner = post(one, "/api/v1/payments/confirm", confirm(FIRST_REF, amount=2000, partner="DVC_H01"),
                   key=False).json()
    assert partner["MaLoi"] == "99"
    bad_time = post(one, "/api/v1/payments/confirm", confirm(FIRST_REF, amount=2000, when="2026-11-04"),
                    key=False).json()
    assert bad_time["MaLoi"] == "99"
    not_json = requests.post(one.url + "/api/v1/payments/confirm", data=b"{", timeout=TIMEOUT)
    assert not_json.status_code == 400 and not_json.json()["MaLoi"] == "99"
    assert payment(one, FIRST_REF) == before
    seen = state(one)
    assert [(c["outcome"], c["checksumOk"]) for c in seen["callbacks"]] == [
        ("bad_checksum", False), ("bad_checksum", False), ("amount_mismatch", True), ("bad_partner", True),
        ("invalid", True)]
    assert seen["counts"]["callbacks"]["badChecksum"] == 2
    assert seen["counts"]["callbacks"]["amountMismatches"] == 1


def test_failed_callback_and_unknown_reference_is_kept_as_unmatched(one):
    refs = [p["reference"] for p in state(one)["payments"]]
    second = payment(one, refs[1])
    failed = post(one, "/api/v1/payments/confirm", confirm(refs[1], amount=second["amount"], ma_loi="99"), key=False)
    assert failed.json()["MaLoi"] == "00"
    assert payment(one, refs[1])["status"] == "failed"
    stray = confirm("dvc0000001H49261109000720261109101500", amount=15000, txn="GD26110900000042",
                    when="20261109102000", info="THANH TOAN HO SO 000.00.01.H49-261109-0007")
    answer = post(one, "/api/v1/payments/confirm", stray, key=False).json()
    assert answer["MaLoi"] == "99"
    kept = payment(one, "dvc0000001H49261109000720261109101500")
    assert kept == {"reference": "dvc0000001H49261109000720261109101500", "dossierNo": "000.00.01.H49-261109-0007",
                    "amount": 15000, "currency": "VND", "status": "unmatched",
                    "createdAt": "2026-11-09T10:20:00+07:00", "paidAt": "2026-11-09T10:20:00+07:00",
                    "transactionId": "GD26110900000042", "bank": "VCB", "receiptNo": None, "confirmedBy": "callback",
                    "updatedAt": "2026-11-09T10:20:00+07:00"}
    post(one, "/api/v1/payments/confirm", stray, key=False)
    no_info = post(one, "/api/v1/payments/confirm", confirm("dvcX", amount=1, info="tien phi"), key=False)
    assert no_info.json()["MaLoi"] == "99"
    assert payment(one, "dvcX")["dossierNo"] == ""
    unmatched = get(one, "/api/v1/payments", status="unmatched").json()["items"]
    assert [p["reference"] for p in unmatched] == ["dvc0000001H49261109000720261109101500", "dvcX"]
    assert [c["outcome"] for c in state(one)["callbacks"]] == ["failed", "unmatched", "duplicate", "unmatched"]


# -- test doors --------------------------------------------------------------------------------
def test_register_door_takes_requests_as_given(one):
    made = post(one, "/_admin/payments/register",
                {"reference": "dvcT1", "dossierNo": "000.00.01.H49-991231-9999", "amount": 12345,
                 "createdAt": "2026-11-20T09:00:00+07:00"}, key=False)
    assert made.status_code == 200
    assert made.json()["status"] == "pending" and made.json()["createdAt"] == "2026-11-20T09:00:00+07:00"
    assert payment(one, "dvcT1")["amount"] == 12345
    assert post(one, "/_admin/payments/register", {"reference": "dvcT1", "dossierNo": "", "amount": 1},
                key=False).status_code == 409
    assert post(one, "/_admin/payments/register", {"reference": "dvcT2", "amount": "1"}, key=False).status_code == 400
    assert state(one)["counts"]["payments"] == 32


def test_open_door_needs_a_platform(one):
    answer = post(one, "/_admin/payments/open", {"n": 1}, key=False)
    assert answer.status_code == 409 and answer.json()["error"] == "no_platform"


def test_open_door_sends_a_signed_init_the_platform_accepts(one, pay):
    one.payment_platform_url = pay.url
    created = post(one, "/_admin/advance", {"new": 6}, key=False).json()["created"]
    with_fees = [d for d in created if get(one, f"/api/v1/dossiers/{d}/fees").json()["amount"] > 0]
    assert len(with_fees) >= 2
    opened = post(one, "/_admin/payments/open", {"n": 2}, key=False).json()
    assert opened["refused"] == []
    assert [o["dossierNo"] for o in opened["opened"]] == with_fees[:2]
    at_platform = {p["MaThamChieu"]: p for p in pay.payments()}
    for item in opened["opened"]:
        fees = get(one, f"/api/v1/dossiers/{item['dossierNo']}/fees").json()
        assert item["amount"] == fees["amount"] and fees["paymentStatus"] == "pending"
        assert fees["payments"] == [item["reference"]]
        assert item["payUrl"] == f"{pay.url}/pay/{item['reference']}"
        theirs = at_platform[item["reference"]]
        assert (theirs["MaHoSo"], theirs["SoTien"], theirs["origin"], theirs["status"]) == \
            (item["dossierNo"], item["amount"], "init", "pending")
        assert payment(one, item["reference"])["status"] == "pending"
    # nothing left to open among the seeded (all pending) and the two just opened
    again = post(one, "/_admin/payments/open", {"n": 2}, key=False).json()
    assert [o["dossierNo"] for o in again["opened"]] == with_fees[2:4]
    # a platform with another secret refuses the INIT; nothing is registered
    one.payment_secret = "another-secret"
    post(one, "/_admin/advance", {"new": 6}, key=False)
    before = state(one)["counts"]["payments"]
    refused = post(one, "/_admin/payments/open", {"n": 1}, key=False).json()
    assert refused["opened"] == [] and refused["refused"][0]["MoTaLoi"] == BAD_CHECKSUM
    assert state(one)["counts"]["payments"] == before


def test_init_carries_the_contract_fields(one):
    """The INIT the open door sends, seen by a platform stand-in that records it."""
    seen: list[dict[str, Any]] = []
    platform = PaymentPlatformMock(None, port=0).start()
    original = platform._init

    def spy(body: dict[str, Any]) -> Any:
        seen.append(body)
        return original(body)

    platform._init = spy  # type: ignore[method-assign]
    try:
        one.payment_platform_url = platform.url
        post(one, "/_admin/advance", {"new": 8}, key=False)
        [item] = post(one, "/_admin/payments/open", {"n": 1}, key=False).json()["opened"]
    finally:
        platform.close()
    [init] = seen
    assert init["MaXacThuc"] == checksum(init, REQUEST_ORDERS["INIT"], DEFAULT_SECRET)
    assert {k: init[k] for k in ("LoaiBanTin", "PhienBan", "MaDoiTac", "LoaiHinhThanhToan", "MaKenhThanhToan",
                                 "MaThietBi", "NgonNgu", "MaTienTe", "MaNganHang", "Ip")} == {
        "LoaiBanTin": "INIT", "PhienBan": "1.0.6", "MaDoiTac": DEFAULT_PARTNER, "LoaiHinhThanhToan": "PAY",
        "MaKenhThanhToan": "1", "MaThietBi": "1", "NgonNgu": "vi-VN", "MaTienTe": "VND", "MaNganHang": "PAYMENT",
        "Ip": "127.0.0.1"}
    assert init["MaThamChieu"] == item["reference"] and init["SoTien"] == str(item["amount"])
    assert init["ThongTinGiaoDich"] == f"THANH TOAN HO SO {item['dossierNo']}"
    assert init["ThongTinBienLai"]["MaHoSo"] == item["dossierNo"] and init["ThongTinBienLai"]["MaDichVu"] == "2"
    assert sum(f["SoTien"] for f in init["ThongTinBienLai"]["PhiLePhi"]) == item["amount"]
    # §5.8: for MaDichVu "2" MaDonVi, TenDonVi, MaHoSo, MaDVC and MaTTHC are mandatory; MaDVC is the
    # procedure code + ".01" (§6.4), as the portal's LayDVC lists it
    dossier = get(one, f"/api/v1/dossiers/{item['dossierNo']}").json()
    receipt = init["ThongTinBienLai"]
    assert {k: receipt[k] for k in ("MaDonVi", "TenDonVi", "MaDVC", "TenDVC", "MaTTHC", "TenTTHC")} == {
        "MaDonVi": dossier["govAgencyCode"], "TenDonVi": dossier["govAgencyName"],
        "MaDVC": dossier["serviceCode"] + ".01", "TenDVC": dossier["serviceName"],
        "MaTTHC": dossier["serviceCode"], "TenTTHC": dossier["serviceName"]}


def test_a_dossier_without_a_procedure_code_is_not_offered_for_payment(one, pay):
    """The platform refuses an INIT whose receipt block lacks MaTTHC/MaDVC (§5.8), so the open door does
    not choose a dossier without a serviceCode (the empty_service_code defect): it would be refused at every
    call and take the place of one that can be paid."""
    one.payment_platform_url = pay.url
    [number] = post(one, "/_admin/advance", {"new": 1}, key=False).json()["created"]
    template = get(one, f"/api/v1/dossiers/{number}").json()
    fees = template["fees"] or [{"feeCode": "LP01", "feeName": "Lệ phí", "feeKind": "charge", "amount": 50000}]
    raw = {**template, "dossierNo": "000.00.01.H49-261102-9999", "serviceCode": "", "fees": fees}
    assert post(one, "/_admin/dossiers/raw", {"dossier": raw}, key=False).ok
    opened = post(one, "/_admin/payments/open", {"n": 1000}, key=False).json()
    assert opened["refused"] == []
    assert "000.00.01.H49-261102-9999" not in {o["dossierNo"] for o in opened["opened"]}
    assert opened["opened"] and "000.00.01.H49-261102-9999" not in {p["MaHoSo"] for p in pay.payments()}


def test_faults_reach_the_payment_operations_but_not_the_doors(one):
    requests.post(one.url + "/_admin/faults", json={"error_rate": 1.0, "http_status": 503,
                                                     "operations": ["payments", "payment", "fees", "payment_result",
                                                                    "payment_confirm"]}, timeout=TIMEOUT)
    assert get(one, "/api/v1/payments").status_code == 503
    assert get(one, f"/api/v1/payments/{FIRST_REF}").status_code == 503
    assert get(one, f"/api/v1/dossiers/{FIRST_DOSSIER}/fees").status_code == 503
    assert post(one, f"/api/v1/payments/{FIRST_REF}/result", result(FIRST_REF)).status_code == 503
    assert post(one, "/api/v1/payments/confirm", confirm(FIRST_REF, amount=2000), key=False).status_code == 503
    assert get(one, "/api/v1/dossiers").status_code == 200
    assert state(one)["counts"]["byStatus"]["pending"] == 31


# -- end to end: the platform calls the one-stop back, and loses some callbacks -----------------
def test_settled_payments_call_back_and_lost_callbacks_stay_pending(one, tmp_path):
    platform = PaymentPlatformMock(tmp_path / "e2e", port=0, lost_share=0.3,
                                   callback_url=one.url + "/api/v1/payments/confirm").start()
    try:
        settled = requests.post(platform.url + "/_admin/payments/settle", json={"n": 11},
                                timeout=TIMEOUT).json()["settled"]
        assert platform.wait_callbacks(10)
        log = platform.callbacks()
    finally:
        platform.stop()
    delivered = [s for s in settled if s["callback"] == "queued"]
    lost = [s for s in settled if s["callback"] == "lost"]
    assert (len(delivered), len(lost)) == (6, 5)  # seed 49, 30 % share
    assert [(c["outcome"], c["httpStatus"]) for c in log if c["outcome"] == "sent"] == [("sent", 200)] * 6
    for done in delivered:
        mine = payment(one, done["MaThamChieu"])
        assert mine["status"] == done["status"] and mine["confirmedBy"] == "callback"
        assert mine["transactionId"] == done["MaGiaoDich"]
    for done in lost:
        assert payment(one, done["MaThamChieu"])["status"] == "pending"
    seen = state(one)
    assert [s["status"] for s in delivered] == ["paid", "failed", "paid", "failed", "paid", "paid"]
    assert seen["counts"]["byStatus"] == {"pending": 25, "paid": 4, "failed": 2, "unmatched": 0}
    assert seen["counts"]["callbacks"]["received"] == 6 and seen["counts"]["callbacks"]["badChecksum"] == 0
    # the 20 completed at seeding time and the 5 lost ones are what the bus must repair
    open_refs = {p["reference"] for p in get(one, "/api/v1/payments", status="pending").json()["items"]}
    assert len(open_refs) == 25 and {s["MaThamChieu"] for s in lost} <= open_refs


def test_duplicate_callbacks_are_counted_once(one, tmp_path):
    platform = PaymentPlatformMock(tmp_path / "dup", port=0, lost_share=0.0, duplicate_callbacks=True,
                                   callback_url=one.url + "/api/v1/payments/confirm").start()
    try:
        settled = requests.post(platform.url + "/_admin/payments/settle", json={"n": 3, "outcome": "paid"},
                                timeout=TIMEOUT).json()["settled"]
        assert platform.wait_callbacks(10)
    finally:
        platform.stop()
    seen = state(one)
    assert seen["counts"]["byStatus"]["paid"] == 3
    assert seen["counts"]["callbacks"]["received"] == 6 and seen["counts"]["callbacks"]["duplicates"] == 3
    assert [payment(one, s["MaThamChieu"])["transactionId"] for s in settled] == [s["MaGiaoDich"] for s in settled]


# -- python -m mocks up wires the one-stop and the platform together ---------------------------
def test_mocks_up_wires_init_and_callbacks_between_the_one_stop_and_the_platform(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "mocks", "up", "--state-dir", str(tmp_path), "--onestop-port", "0", "--portal-port",
         "0", "--payment-port", "0", "--ledger-port", "0", "--payment-lost-share", "0"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LIENTHONG_MOCK_PAYMENT_SECRET": "wired-secret-1"},
    )
    lines = []
    try:
        for _ in range(40):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        urls = re.findall(r"http://127\.0\.0\.1:\d+(?=\s)", text)
        assert len(urls) == 4, text + process.stderr.read()
        onestop, platform = urls[0], urls[2]
        assert f"callbacks to {onestop}/api/v1/payments/confirm" in text
        requests.post(onestop + "/_admin/advance", json={"new": 6}, timeout=TIMEOUT)
        opened = requests.post(onestop + "/_admin/payments/open", json={"n": 1}, timeout=TIMEOUT).json()
        [item] = opened["opened"]
        # settle the 11 seeded pending ones and the new one; every callback reaches the one-stop
        settled = requests.post(platform + "/_admin/payments/settle", json={"n": 12, "outcome": "paid"},
                                timeout=TIMEOUT).json()["settled"]
        assert settled[-1]["MaThamChieu"] == item["reference"]
        deadline = 50
        while deadline:
            counts = requests.get(onestop + "/_state/payments", timeout=TIMEOUT).json()["counts"]
            if counts["callbacks"]["received"] == 12:
                break
            deadline -= 1
            time.sleep(0.1)
        assert counts["byStatus"] == {"pending": 20, "paid": 12, "failed": 0, "unmatched": 0}
        assert counts["callbacks"]["badChecksum"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "wired-secret-1" not in text + out
