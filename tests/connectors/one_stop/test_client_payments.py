"""OneStopClient's payment methods against the one-stop stand-in (a real server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from connectors.connection import Secret
from connectors.errors import (
    AmountMismatch,
    AuthenticationFailed,
    PaymentConflict,
    PeerRejected,
    PeerUnavailable,
    RecordRejected,
)
from connectors.one_stop.client import OneStopClient
from connectors.transport import MemoryRecorder, RetryPolicy
from mocks.one_stop import OneStopMock
from mocks.payment_platform import ANSWER_ORDERS, DEFAULT_PARTNER, DEFAULT_SECRET, checksum

KEY = "client-payments-key"
REF = "dvc0000006H49261102000120261104123827"
DOSSIER = "000.00.06.H49-261102-0001"
VN = timezone(timedelta(hours=7))


@pytest.fixture
def onestop(tmp_path: Path) -> Iterator[OneStopMock]:
    mock = OneStopMock(tmp_path / "onestop", port=0, api_key=KEY).start()
    yield mock
    mock.stop()


@pytest.fixture
def recorder() -> MemoryRecorder:
    return MemoryRecorder()


@pytest.fixture
def client(onestop: OneStopMock, recorder: MemoryRecorder) -> Iterator[OneStopClient]:
    c = OneStopClient(onestop.url, Secret(KEY), recorder=recorder, page_size=10, read_timeout=5,
                      retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))
    yield c
    c.close()


def record(client: OneStopClient, **overrides):
    kwargs = {"result": "paid", "transaction_id": "GD26110400000001", "amount": 2000,
              "paid_at": datetime(2026, 11, 4, 12, 50, tzinfo=VN), "bank": "VCB", "receipt_no": "BL2026-000001",
              "dossier_no": DOSSIER}
    kwargs.update(overrides)
    return client.record_payment_result(REF, **kwargs)


def test_iter_payments_pages_through_the_pending_requests(client, recorder):
    pages = list(client.iter_payments())
    assert [len(p) for p in pages] == [10, 10, 10, 1]
    refs = [p["reference"] for page in pages for p in page]
    assert len(set(refs)) == 31 and refs[0] == REF
    assert all(p["status"] == "pending" and p["currency"] == "VND" for page in pages for p in page)
    assert [e.operation for e in recorder.exchanges] == ["payments"] * 4
    assert "status=pending" in recorder.exchanges[0].url and "size=10" in recorder.exchanges[0].url
    record(client)
    assert sum(len(p) for p in client.iter_payments(size=500)) == 30
    assert [p["reference"] for page in client.iter_payments("paid") for p in page] == [REF]
    assert sum(len(p) for p in client.iter_payments(None)) == 31
    assert list(client.iter_payments("unmatched")) == []


def test_get_payment_and_fees(client, recorder):
    payment = client.get_payment(REF)
    assert (payment["dossierNo"], payment["amount"], payment["status"]) == (DOSSIER, 2000, "pending")
    assert client.get_payment("dvcNOPE") is None
    fees = client.get_fees(DOSSIER)
    assert (fees["amount"], fees["paymentStatus"], fees["paidAmount"], fees["payments"]) == (2000, "pending", 0, [REF])
    assert client.get_fees("000.00.01.H49-991231-9999") is None
    assert [(e.operation, e.record_keys) for e in recorder.exchanges] == [
        ("payment", (REF,)), ("payment", ("dvcNOPE",)), ("fees", (DOSSIER,)), ("fees", ("000.00.01.H49-991231-9999",))]


def test_record_payment_result_applies_once_and_logs_its_keys(client, recorder):
    first = record(client)
    assert first["applied"] is True
    assert first["payment"] == {
        "reference": REF, "dossierNo": DOSSIER, "amount": 2000, "currency": "VND", "status": "paid",
        "createdAt": "2026-11-04T12:38:27+07:00", "paidAt": "2026-11-04T12:50:00+07:00",
        "transactionId": "GD26110400000001", "bank": "VCB", "receiptNo": "BL2026-000001", "confirmedBy": "api",
        "updatedAt": "2026-11-04T12:50:00+07:00"}
    again = record(client, paid_at="2026-11-04T05:50:00Z", receipt_no=None)
    assert again == {"applied": False, "payment": first["payment"]}
    fees = client.get_fees(DOSSIER)
    assert (fees["paymentStatus"], fees["paidAmount"], fees["items"][0]["status"]) == ("paid", 2000, "paid")
    sent = [e for e in recorder.exchanges if e.operation == "payment_result"]
    assert [e.record_keys for e in sent] == [(REF, DOSSIER), (REF, DOSSIER)]
    assert b'"paidAt":"2026-11-04T12:50:00+07:00"' in sent[0].request_body
    assert b'"receiptNo"' not in sent[1].request_body
    assert client.record_payment_result(REF, result="paid", transaction_id="GD26110400000001", amount=2000,
                                        paid_at="2026-11-04T12:50:00+07:00", bank="VCB")["applied"] is False
    assert recorder.exchanges[-1].record_keys == (REF,)


def test_a_second_transaction_is_a_payment_conflict(client, onestop):
    record(client)
    with pytest.raises(PaymentConflict) as caught:
        record(client, transaction_id="GD26110400000002")
    error = caught.value
    assert isinstance(error, PeerRejected) and isinstance(error, RecordRejected)
    assert error.record_key == REF and error.peer_code == "already_paid"
    assert [(e.field, e.rule) for e in error.errors] == [("transactionId", "paid_once")]
    with pytest.raises(PaymentConflict) as undo:
        record(client, result="failed")
    assert [(e.field, e.rule) for e in undo.value.errors] == [("result", "paid_once")]
    assert client.get_payment(REF)["transactionId"] == "GD26110400000001"


def test_a_different_amount_is_an_amount_mismatch(client):
    with pytest.raises(AmountMismatch) as caught:
        record(client, amount=20000)
    assert [(e.field, e.rule) for e in caught.value.errors] == [("amount", "amount_equals_fee")]
    assert caught.value.peer_message == "amount 20000 differs from the request's 2000 VND"
    assert client.get_payment(REF)["status"] == "pending"


def test_unknown_reference_and_invalid_fields_are_peer_rejections(client):
    with pytest.raises(PeerRejected) as unknown:
        client.record_payment_result("dvcNOPE", result="paid", transaction_id="GD1", amount=1,
                                     paid_at="2026-11-04T12:50:00+07:00", bank="VCB")
    assert type(unknown.value) is PeerRejected and unknown.value.record_key == "dvcNOPE"
    assert [(e.field, e.rule) for e in unknown.value.errors] == [("reference", "known_payment")]
    with pytest.raises(PeerRejected) as invalid:
        record(client, result="refunded")
    assert type(invalid.value) is PeerRejected
    assert [(e.field, e.rule) for e in invalid.value.errors] == [("result", "validation")]
    with pytest.raises(PeerRejected) as bad_time:
        record(client, paid_at="2026-11-04 12:50")
    assert [(e.field, e.rule) for e in bad_time.value.errors] == [("paidAt", "validation")]
    with pytest.raises(ValueError):
        record(client, paid_at=datetime(2026, 11, 4, 12, 50))


def test_an_unmatched_reference_is_rejected_for_a_person(client, onestop):
    """A signed callback for a reference the one-stop never opened is kept as ``unmatched``."""
    body = {"LoaiBanTin": "CONFIRM", "MaLoi": "00", "MaDoiTac": DEFAULT_PARTNER, "MaThamChieu": "dvcSTRAY",
            "SoTien": 10, "MaTienTe": "VND", "MaGiaoDich": "GD9", "MaNganHang": "VCB", "ThoiGianGD": "20261104130000",
            "ThongTinGiaoDich": "THANH TOAN HO SO X"}
    body["MaXacThuc"] = checksum(body, ANSWER_ORDERS["CONFIRM"], DEFAULT_SECRET)
    requests.post(onestop.url + "/api/v1/payments/confirm", json=body, timeout=5)
    assert [p["reference"] for page in client.iter_payments("unmatched") for p in page] == ["dvcSTRAY"]
    with pytest.raises(PeerRejected) as caught:
        client.record_payment_result("dvcSTRAY", result="paid", transaction_id="GD9", amount=10,
                                     paid_at="2026-11-04T13:00:00+07:00", bank="VCB")
    assert type(caught.value) is PeerRejected and caught.value.peer_code == "unmatched"
    assert [(e.field, e.rule) for e in caught.value.errors] == [("reference", "matched_request")]


def test_a_wrong_key_is_authentication_failed_and_never_logged(onestop):
    recorder = MemoryRecorder()
    client = OneStopClient(onestop.url, Secret("wrong-key-Q7"), recorder=recorder)
    try:
        with pytest.raises(AuthenticationFailed):
            client.record_payment_result(REF, result="paid", transaction_id="GD1", amount=2000,
                                         paid_at="2026-11-04T12:50:00+07:00", bank="VCB")
        with pytest.raises(AuthenticationFailed):
            list(client.iter_payments())
        with pytest.raises(AuthenticationFailed):
            client.get_payment(REF)
        with pytest.raises(AuthenticationFailed):
            client.get_fees(DOSSIER)
    finally:
        client.close()
    assert all(e.request_headers["X-Api-Key"] == "***" for e in recorder.exchanges)
    assert not any(b"wrong-key-Q7" in e.request_body + e.response_body for e in recorder.exchanges)


def test_a_transient_failure_is_retried_and_the_result_applied_once(client, onestop, recorder):
    requests.post(onestop.url + "/_admin/faults", json={"error_rate": 1.0, "http_status": 503,
                                                         "operations": ["payment_result"]}, timeout=5)
    with pytest.raises(PeerUnavailable):
        record(client)
    assert [e.attempt for e in recorder.exchanges] == [1, 2]
    requests.post(onestop.url + "/_admin/faults", json={}, timeout=5)
    assert record(client)["applied"] is True
    assert record(client)["applied"] is False
