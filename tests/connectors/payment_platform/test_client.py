"""The payment platform client against the stand-in platform as a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from connectors.connection import ConnectionSpec, Secret
from connectors.errors import (
    AuthenticationFailed,
    BillNotAvailable,
    ChecksumMismatch,
    FatalConnectorError,
    PeerRejected,
    PeerUnavailable,
    ProtocolError,
    RecordRejected,
    RetriableConnectorError,
    TransactionUnknown,
    UnreadableAnswer,
)
from connectors.payment_platform import PEER, PaymentPlatformClient
from connectors.payment_platform.client import ANSWER_ORDERS, REQUEST_ORDERS, VN_TZ, checksum
from connectors.transport import MemoryRecorder, RetryPolicy
from mocks.payment_platform import PaymentPlatformMock
from tests.connectors.local_peer import trickle

T = 5
PARTNER = "DVC_H49"
SECRET = "test-payment-secret-Kx7"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaymentPlatformMock]:
    mock = PaymentPlatformMock(tmp_path_factory.mktemp("pay"), port=0, partner_code=PARTNER, secret=SECRET)
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture(autouse=True)
def _no_faults(platform: PaymentPlatformMock) -> Iterator[None]:
    yield
    requests.post(platform.url + "/_admin/faults", json={}, timeout=T)


@pytest.fixture
def recorder() -> MemoryRecorder:
    return MemoryRecorder()


def client(platform, recorder=None, secret=SECRET, partner=PARTNER, **kw) -> PaymentPlatformClient:
    kw.setdefault("retry", FAST)
    return PaymentPlatformClient(platform.url, partner, Secret(secret), recorder=recorder, **kw)


def payments(platform) -> list[dict]:
    return requests.get(platform.url + "/_state/payments", timeout=T).json()["payments"]


def first(platform, status: str) -> dict:
    return next(p for p in payments(platform) if p["status"] == status)


def vn(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=VN_TZ)


def recorded_bytes(recorder: MemoryRecorder) -> bytes:
    out = b""
    for e in recorder.exchanges:
        out += e.request_body + e.response_body + e.url.encode()
        out += json.dumps([e.request_headers, e.response_headers, e.error, e.record_keys]).encode()
    return out


# -- QUERY ---------------------------------------------------------------------------------------
def test_query_paid_failed_and_pending_with_exact_values(platform, recorder):
    c = client(platform, recorder)
    paid, failed, pending = first(platform, "paid"), first(platform, "failed"), first(platform, "pending")

    t = c.query(paid["MaThamChieu"], record_keys=["dossier-key"])
    assert (t.reference, t.status, t.amount, t.currency) == (paid["MaThamChieu"], "paid", paid["SoTien"], "VND")
    assert (t.transaction_id, t.bank) == (paid["MaGiaoDich"], paid["MaNganHang"])
    assert t.paid_at == vn(paid["ThoiGianGD"]) and t.paid_at.utcoffset().total_seconds() == 7 * 3600
    assert t.transaction_time == t.paid_at
    assert t.info == f"THANH TOAN HO SO {paid['MaHoSo']}" and t.dossier_code == paid["MaHoSo"]
    assert t.raw["TrangThaiGD"] == "1" and t.raw["MaLoi"] == "00"

    t = c.query(failed["MaThamChieu"])
    assert (t.status, t.amount, t.transaction_id, t.bank) == ("failed", failed["SoTien"], failed["MaGiaoDich"],
                                                             failed["MaNganHang"])
    assert t.paid_at is None and t.transaction_time == vn(failed["ThoiGianGD"])
    assert t.dossier_code == failed["MaHoSo"]

    t = c.query(pending["MaThamChieu"])
    assert (t.status, t.amount, t.transaction_id, t.bank, t.paid_at) == ("pending", pending["SoTien"], "", "", None)
    assert t.transaction_time == vn(pending["ThoiGianKhoiTao"]) and t.dossier_code == pending["MaHoSo"]

    first_exchange = recorder.exchanges[0]
    assert (first_exchange.peer, first_exchange.operation, first_exchange.outcome) == (PEER, "QUERY", "ok")
    assert first_exchange.record_keys == (paid["MaThamChieu"], "dossier-key")
    assert first_exchange.peer_code == "00" and len(recorder.exchanges) == 3


def test_requests_are_signed_in_the_documented_order_with_the_clock(platform, recorder):
    when = datetime(2026, 11, 5, 1, 2, 3, tzinfo=VN_TZ)
    c = client(platform, recorder, clock=lambda: when)
    ref = first(platform, "paid")["MaThamChieu"]
    c.query(ref)
    sent = json.loads(recorder.exchanges[0].request_body)
    assert sent["ThoiGianGD"] == "20261105010203" and sent["PhienBan"] == "1.0.6" and sent["MaDoiTac"] == PARTNER
    expected = hashlib.sha256("|".join(["QUERY", "1.0.6", PARTNER, ref, "20261105010203", SECRET])
                              .encode()).hexdigest()
    assert sent["MaXacThuc"] == expected == checksum(sent, REQUEST_ORDERS["QUERY"], Secret(SECRET))


def test_unknown_reference_is_a_transaction_unknown_rejection(platform):
    with pytest.raises(TransactionUnknown) as info:
        client(platform).query("dvcNOSUCH20261102080000")
    exc = info.value
    assert isinstance(exc, PeerRejected) and isinstance(exc, RecordRejected)
    assert exc.record_key == "dvcNOSUCH20261102080000" and exc.peer_code == "99"
    assert exc.errors[0].field == "MaThamChieu" and exc.errors[0].rule == "known_transaction"
    assert exc.errors[0].message == "Không tìm thấy giao dịch dvcNOSUCH20261102080000" == exc.peer_message


def test_wrong_secret_or_partner_is_authentication_failed(platform, recorder):
    with pytest.raises(AuthenticationFailed) as info:
        client(platform, recorder, secret="not-the-secret-Qw3").query(first(platform, "paid")["MaThamChieu"])
    assert "Mã xác thực không chính xác" in str(info.value) and isinstance(info.value, FatalConnectorError)
    assert recorder.exchanges[-1].outcome == "peer_error" and recorder.exchanges[-1].peer_code == "99"
    assert b"not-the-secret-Qw3" not in recorded_bytes(recorder) and "not-the-secret" not in str(info.value)
    with pytest.raises(AuthenticationFailed):
        client(platform, partner="DVC_H99").query(first(platform, "paid")["MaThamChieu"])


def test_a_refused_protocol_version_fails_the_call_not_the_payment(platform, recorder, monkeypatch):
    """The platform refusing our PhienBan refuses every message alike: it is the bus's setting, not
    this payment, so it is a FatalConnectorError (the run stops), never a per-payment PeerRejected
    that would dead-letter each payment in turn."""
    import connectors.payment_platform.client as module

    monkeypatch.setattr(module, "PROTOCOL", "1.0.7")
    paid = first(platform, "paid")
    c = client(platform, recorder)
    for call in (lambda: c.query(paid["MaThamChieu"]),
                 lambda: c.get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"]))):
        with pytest.raises(FatalConnectorError) as info:
            call()
        assert not isinstance(info.value, (RecordRejected, ProtocolError))
        assert "PhienBan" in str(info.value) and "1.0.7" in str(info.value)
        assert "Phiên bản 1.0.7 không được hỗ trợ" in str(info.value)
    assert [e.outcome for e in recorder.exchanges] == ["peer_error", "peer_error"]


# -- answer checksums ------------------------------------------------------------------------------
class _Tamper:
    """A local man in the middle: forwards to the platform and rewrites the answer."""

    def __init__(self, upstream: str, rewrite):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = requests.post(upstream + self.path, data=body, timeout=T,
                                       headers={"Content-Type": "application/json"})
                data = rewrite(answer.json())
                out = json.dumps(data, ensure_ascii=False).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("rewrite", "errors_too"), [
    pytest.param(lambda d: {**d, "SoTien": d.get("SoTien", 0) + 1000}, False, id="amount-changed"),
    pytest.param(lambda d: {**d, "MaGiaoDich": "GD26110399999999"}, False, id="transaction-id-changed"),
    pytest.param(lambda d: {**d, "MaLoi": "00", "MoTaLoi": "Thành công", "TrangThaiGD": "1"} if d["MaLoi"] == "99"
                 else {**d, "MaLoi": "99"}, True, id="result-code-flipped"),
    pytest.param(lambda d: {k: v for k, v in d.items() if k != "MaXacThuc"}, True, id="checksum-missing"),
    pytest.param(lambda d: {**d, "MaXacThuc": d["MaXacThuc"].upper()}, True, id="checksum-uppercase"),
])
def test_a_tampered_answer_is_a_checksum_mismatch_and_never_trusted(platform, recorder, rewrite, errors_too):
    proxy = _Tamper(platform.url, rewrite)
    try:
        c = PaymentPlatformClient(proxy.url, PARTNER, Secret(SECRET), recorder=recorder, retry=FAST)
        ref = first(platform, "paid")["MaThamChieu"]
        with pytest.raises(ChecksumMismatch) as info:
            c.query(ref)
        assert isinstance(info.value, ProtocolError) and ref in str(info.value)
        if errors_too:  # an error answer is verified too (ERROR order)
            with pytest.raises(ChecksumMismatch):
                c.query("dvcNOSUCH20261102080000")
    finally:
        proxy.close()


def test_trangthaigd_is_not_signed_so_a_paid_status_must_be_consistent(platform):
    """TrangThaiGD is outside the QUERY answer's checksum order (I): a pending answer forged to
    "paid" still verifies, and is caught because a paid transaction has a MaGiaoDich and a bank."""
    proxy = _Tamper(platform.url, lambda d: {**d, "TrangThaiGD": "1"})
    try:
        c = PaymentPlatformClient(proxy.url, PARTNER, Secret(SECRET), retry=FAST)
        with pytest.raises(ProtocolError, match="inconsistent"):
            c.query(first(platform, "pending")["MaThamChieu"])
    finally:
        proxy.close()


def _resigned(change):
    """A rewrite that the platform itself could have sent: changed, then signed with the secret."""
    def rewrite(d):
        d = change(d)
        d["MaXacThuc"] = checksum(d, ANSWER_ORDERS["QUERY"], Secret(SECRET))
        return d
    return rewrite


@pytest.mark.parametrize(("change", "field", "rule"), [
    pytest.param(lambda d: {**d, "MaTienTe": "USD"}, "MaTienTe", "not VND", id="currency-usd"),
    pytest.param(lambda d: {**d, "MaTienTe": None}, "MaTienTe", "not VND", id="currency-missing"),
    pytest.param(lambda d: {**d, "MaGiaoDich": 2611030001}, "MaGiaoDich", "not text", id="txn-id-number"),
    pytest.param(lambda d: {**d, "MaNganHang": ["VCB"]}, "MaNganHang", "not text", id="bank-list"),
    pytest.param(lambda d: {**d, "ThongTinGiaoDich": {"HO SO": 1}}, "ThongTinGiaoDich", "not text", id="info-object"),
    pytest.param(lambda d: {**d, "SoTien": 10 ** 20}, "SoTien", "whole number of VND", id="amount-huge-integer"),
    pytest.param(lambda d: {**d, "MaDoiTac": "DVC_H01"}, "MaDoiTac", "not our partner code", id="other-partner"),
])
def test_a_signed_answer_with_a_field_out_of_contract_is_refused_naming_it(platform, recorder, change, field, rule):
    """Fields of a verified QUERY answer are checked too: the amount is VND only when MaTienTe says
    so, and a number, list or object where the contract has text is not turned into text."""
    proxy = _Tamper(platform.url, _resigned(change))
    try:
        c = PaymentPlatformClient(proxy.url, PARTNER, Secret(SECRET), recorder=recorder, retry=FAST)
        ref = first(platform, "paid")["MaThamChieu"]
        with pytest.raises(ProtocolError) as info:
            c.query(ref)
        assert not isinstance(info.value, ChecksumMismatch)
        assert ref in str(info.value) and field in str(info.value) and rule in str(info.value)
        assert SECRET not in str(info.value)
    finally:
        proxy.close()


def test_an_honest_proxy_passes(platform):
    proxy = _Tamper(platform.url, lambda d: d)
    try:
        c = PaymentPlatformClient(proxy.url, PARTNER, Secret(SECRET), retry=FAST)
        assert c.query(first(platform, "paid")["MaThamChieu"]).status == "paid"
    finally:
        proxy.close()


# -- GET_BILL --------------------------------------------------------------------------------------
def test_get_bill_returns_the_pdf_with_its_hash_and_receipt_number(platform, recorder):
    paid = first(platform, "paid")
    bill = client(platform, recorder).get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"]),
                                               record_keys=[paid["MaHoSo"]])
    assert bill.pdf.startswith(b"%PDF-1.4") and bill.pdf.rstrip().endswith(b"%%EOF")
    assert bill.sha256 == hashlib.sha256(bill.pdf).hexdigest()
    assert bill.receipt_no == paid["SoBienLai"] and bill.receipt_no.startswith("BL2026-")
    assert bill.content_type.startswith("application/pdf") and bill.reference == paid["MaThamChieu"]
    exchange = recorder.exchanges[-1]
    assert (exchange.operation, exchange.outcome, exchange.response_status) == ("GET_BILL", "ok", 200)
    assert exchange.response_body == bill.pdf  # the receipt itself is in the exchange log, byte for byte
    assert exchange.record_keys == (paid["MaThamChieu"], paid["MaHoSo"])
    assert "PDF" not in repr(bill)  # the bytes stay out of reprs


def test_a_receipt_cut_short_or_replaced_is_never_taken_as_the_receipt(platform):
    """Found by the reliability harness (#7): a PDF cut short still starts with %PDF- and was kept
    as the receipt (without its number). Every broken body the stand-in serves is refused as
    unreadable, fetched again by the transport (each attempt logged as a protocol error), and the
    receipt is taken only whole."""
    paid = first(platform, "paid")
    platform.faults.configure({"malformed_rate": 1.0, "operations": ["GET_BILL"], "seed": 5})
    try:
        messages = set()
        for _ in range(12):
            recorder = MemoryRecorder()
            with pytest.raises(UnreadableAnswer) as info:
                client(platform, recorder).get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"]))
            messages.add("cut short" if "cut short" in str(info.value) else "not a PDF")
            assert [(e.attempt, e.outcome) for e in recorder.exchanges] == \
                [(1, "protocol_error"), (2, "protocol_error"), (3, "protocol_error")]
        assert messages == {"cut short", "not a PDF"}
    finally:
        platform.faults.clear()
    assert client(platform).get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"])).receipt_no == \
        paid["SoBienLai"]


def test_get_bill_of_unpaid_or_unknown_transactions(platform):
    c = client(platform)
    for status in ("pending", "failed"):
        txn = first(platform, status)
        ref = txn["MaThamChieu"]
        with pytest.raises(BillNotAvailable) as info:
            c.get_bill(ref, transaction_time=vn(txn["ThoiGianKhoiTao"]))
        assert info.value.record_key == ref and info.value.errors[0].rule == "paid_transaction"
        assert "chưa thanh toán" in info.value.peer_message
    with pytest.raises(TransactionUnknown):
        c.get_bill("dvcNOSUCH20261102080000", transaction_time=vn("20261102080000"))


def test_get_bill_names_the_original_transactions_time(platform, recorder):
    """§4.9: GET_BILL carries the ThoiGianGD of the original transaction (its INIT), which the client
    sends as given; the platform refuses another time, a refusal the connector does not mistake for
    an unknown or unpaid transaction."""
    paid = first(platform, "paid")
    c = client(platform, recorder, clock=lambda: vn("20301231235959"))
    c.get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"]))
    assert json.loads(recorder.exchanges[-1].request_body)["ThoiGianGD"] == paid["ThoiGianKhoiTao"]
    with pytest.raises(PeerRejected) as info:
        c.get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"]) + timedelta(seconds=1))
    assert not isinstance(info.value, (TransactionUnknown, BillNotAvailable))
    assert info.value.peer_message == "ThoiGianGD không khớp với giao dịch"


# -- faults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["QUERY", "GET_BILL"])
def test_platform_503_is_retried_then_peer_unavailable(platform, recorder, operation):
    requests.post(platform.url + "/_admin/faults", json={"error_rate": 1.0, "operations": [operation]}, timeout=T)
    c = client(platform, recorder)
    paid = first(platform, "paid")
    ref = paid["MaThamChieu"]
    with pytest.raises(PeerUnavailable) as info:
        c.query(ref) if operation == "QUERY" else c.get_bill(ref, transaction_time=vn(paid["ThoiGianKhoiTao"]))
    assert isinstance(info.value, RetriableConnectorError) and info.value.status == 503
    assert [(e.attempt, e.outcome, e.response_status) for e in recorder.exchanges] == \
        [(1, "http_error", 503), (2, "http_error", 503), (3, "http_error", 503)]


def test_a_dropped_connection_is_peer_unavailable(platform, recorder):
    requests.post(platform.url + "/_admin/faults", json={"drop_rate": 1.0}, timeout=T)
    with pytest.raises(PeerUnavailable):
        client(platform, recorder).query(first(platform, "paid")["MaThamChieu"])
    assert [e.outcome for e in recorder.exchanges] == ["transport_error"] * 3


def test_a_fault_once_then_success(platform, recorder):
    """The transport retries; the answer of the second attempt is used."""
    plan = {"error_rate": 0.5, "seed": 0, "operations": ["QUERY"]}
    # find a fault seed whose first draw fails and second passes (draws: drop, error, ambiguous)
    import random

    for seed in range(200):
        rng = random.Random(seed)
        draws = [[rng.random() for _ in range(3)] for _ in range(2)]
        if draws[0][1] < 0.5 <= draws[1][1]:
            plan["seed"] = seed
            break
    requests.post(platform.url + "/_admin/faults", json=plan, timeout=T)
    t = client(platform, recorder).query(first(platform, "paid")["MaThamChieu"])
    assert t.status == "paid"
    assert [e.outcome for e in recorder.exchanges] == ["http_error", "ok"]


# -- INIT and callbacks ----------------------------------------------------------------------------
def test_init_then_query_then_settle_and_verify_the_callback(platform, recorder):
    c = client(platform, recorder)
    ref = "dvcTEST" + datetime.now().strftime("%H%M%S%f")
    receipt = {"MaDichVu": "2", "MaHoSo": "000.00.01.H49-261102-0007", "MaDVC": "2.000488.000.00.00.H49.01",
               "MaTTHC": "2.000488.000.00.00.H49", "MaDonVi": "000.00.01.H49",
               "TenDonVi": "Sở Tư pháp tỉnh Quảng Nam", "HoTenNguoiNop": "Nguyễn Văn An"}
    answer = c.init(reference=ref, amount=150000, info="THANH TOAN HO SO 000.00.01.H49-261102-0007",
                    receipt=receipt)
    assert answer["MaLoi"] == "00" and answer["UrlThanhToan"] == f"{platform.url}/pay/{ref}"
    sent = json.loads(recorder.exchanges[-1].request_body)
    assert list(sent)[:14] == list(REQUEST_ORDERS["INIT"]) and sent["SoTien"] == "150000"
    t = c.query(ref)
    assert (t.status, t.amount, t.dossier_code) == ("pending", 150000, "000.00.01.H49-261102-0007")
    with pytest.raises(PeerRejected) as info:  # a reference is unique per transaction
        c.init(reference=ref, amount=150000, info="THANH TOAN HO SO 000.00.01.H49-261102-0007", receipt=receipt)
    assert info.value.errors[0].rule == "unique" and not isinstance(info.value, TransactionUnknown)

    # the platform's confirm callback message is verified with the same secret
    while c.query(ref).status == "pending":
        platform.settle(1, "paid")
    message = platform.callback_message(ref)
    assert c.verify_confirm(message)
    assert not c.verify_confirm({**message, "SoTien": message["SoTien"] + 1})
    assert not c.verify_confirm({k: v for k, v in message.items() if k != "MaXacThuc"})
    assert not client(platform, secret="other-secret").verify_confirm(message)
    # a forged callback's checksum outside ASCII is refused like any other (it raised TypeError)
    assert not c.verify_confirm({**message, "MaXacThuc": "Mã xác thực không chính xác"})
    assert not c.verify_confirm({**message, "MaXacThuc": message["MaXacThuc"][:-1] + "é"})
    assert not c.verify_confirm({**message, "MaXacThuc": json.loads('"\\ud800"')})  # a lone surrogate
    assert c.verify_confirm(message) == (message["MaXacThuc"] == checksum(message, ANSWER_ORDERS["CONFIRM"],
                                                                          Secret(SECRET)))
    held = next(p for p in payments(platform) if p["MaThamChieu"] == ref)
    assert c.get_bill(ref, transaction_time=vn(held["ThoiGianKhoiTao"])).receipt_no == held["SoBienLai"]


def test_init_is_not_repeated_after_a_failure_without_answer(platform, recorder):
    requests.post(platform.url + "/_admin/faults", json={"error_rate": 1.0, "operations": ["INIT"]}, timeout=T)
    with pytest.raises(PeerUnavailable):
        client(platform, recorder).init(reference="dvcONCE1", amount=1000, info="THANH TOAN HO SO X")
    assert len(recorder.exchanges) == 1


# -- secrets and construction ----------------------------------------------------------------------
def test_the_secret_never_reaches_the_exchange_log_exceptions_or_logs(platform, recorder, caplog):
    caplog.set_level(logging.DEBUG)
    c = client(platform, recorder)
    paid = first(platform, "paid")
    c.query(paid["MaThamChieu"])
    c.get_bill(paid["MaThamChieu"], transaction_time=vn(paid["ThoiGianKhoiTao"]))
    errors = []
    failed = first(platform, "failed")  # no receipt: refused
    for call in (lambda: c.query("dvcNOSUCH1"),
                 lambda: c.get_bill(failed["MaThamChieu"], transaction_time=vn(failed["ThoiGianKhoiTao"])),
                 lambda: client(platform, recorder, secret=SECRET + "x").query("dvcNOSUCH1")):
        with pytest.raises(Exception) as info:  # noqa: PT011 - any class; only the text matters here
            call()
        errors.append(f"{info.value!r} {info.value}")
    requests.post(platform.url + "/_admin/faults", json={"error_rate": 1.0}, timeout=T)
    with pytest.raises(PeerUnavailable) as info:
        c.query(paid["MaThamChieu"])
    errors.append(str(info.value))
    assert len(recorder.exchanges) >= 7
    blob = recorded_bytes(recorder)
    assert b"MaXacThuc" in blob  # the keyed hash is fine to keep
    assert SECRET.encode() not in blob
    assert SECRET not in " ".join(errors) + caplog.text + repr(c) + repr(vars(c))


def test_from_connection_and_configuration():
    spec = ConnectionSpec(conn_id="payment_platform_default", conn_type="http", host="127.0.0.1", port=18083,
                          schema="http", login=PARTNER, password=Secret(SECRET),
                          extra={"read_timeout": 4, "max_attempts": 2, "path": "/api/payment"})
    c = PaymentPlatformClient.from_connection(spec)
    assert c.partner_code == PARTNER and c.transport.base_url == "http://127.0.0.1:18083"
    assert c.transport.timeout == (3.05, 4.0) and c.transport.retry.max_attempts == 2 and c.path == "/api/payment"
    assert SECRET not in repr(spec)
    from connectors.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="password"):
        PaymentPlatformClient.from_connection(ConnectionSpec(conn_id="p", conn_type="http", host="h", login="x"))
    with pytest.raises(ValueError, match="aware"):
        client_ = PaymentPlatformClient("http://127.0.0.1:9", PARTNER, Secret(SECRET), clock=datetime.now)
        client_.query("x")



def test_a_trickling_receipt_pdf_does_not_hold_get_bill_past_its_deadline(peers, recorder):
    """GET_BILL's PDF is read by the transport: a platform sending it a byte now and then never
    tripped the per-read timeout. The attempt now ends at total_timeout and is retried."""
    pdf = b"%PDF-1.4\n" + b"0" * 2000 + b"\n%%EOF\n"
    peer = peers(trickle(pdf, tail=20, every=0.25, content_type="application/pdf"))
    c = PaymentPlatformClient(peer.url, PARTNER, Secret(SECRET), recorder=recorder, read_timeout=1.0,
                              total_timeout=1.0, retry=RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0))
    t0 = time.monotonic()
    with pytest.raises(PeerUnavailable, match="answer not complete within 1s"):
        c.get_bill("dvc0001H4920261102080000", transaction_time=datetime(2026, 11, 2, 1, 0, tzinfo=UTC))
    assert time.monotonic() - t0 < 8  # two attempts cut at 1 s each, not two 5 s trickles (room for a busy machine)
    assert [(e.operation, e.outcome) for e in recorder.exchanges] == [("GET_BILL", "transport_error")] * 2
