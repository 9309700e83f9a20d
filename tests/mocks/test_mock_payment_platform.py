"""The national payment platform stand-in (protocol 1.0.6): checksums, INIT/QUERY/GET_BILL, callbacks."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from mocks.payment_platform import (
    ANSWER_ORDERS,
    BAD_CHECKSUM,
    DEFAULT_PARTNER,
    DEFAULT_SECRET,
    REQUEST_ORDERS,
    PaymentPlatformMock,
    checksum,
    reference_for,
)

TIMEOUT = 5
SECRET = DEFAULT_SECRET


class Receiver:
    """A tiny local one-stop that records confirm callbacks and answers like the 2025 client."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.append(body)
                ok = body["MaXacThuc"] == checksum(body, ANSWER_ORDERS["CONFIRM"], SECRET)
                answer = json.dumps({"MaLoi": "00" if ok else "99",
                                     "MoTaLoi": "Thành công" if ok else BAD_CHECKSUM}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/payment/confirm"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def pay(tmp_path: Path) -> Iterator[PaymentPlatformMock]:
    mock = PaymentPlatformMock(tmp_path / "pay", port=0, seed=49).start()
    yield mock
    mock.stop()


def signed(kind: str, **fields: Any) -> dict[str, Any]:
    body = {"LoaiBanTin": kind, "PhienBan": "1.0.6", "MaDoiTac": DEFAULT_PARTNER, **fields}
    body["MaXacThuc"] = checksum(body, REQUEST_ORDERS[kind], SECRET)
    return body


#: A complete receipt block for dossier fees (§4.8 names, MaDichVu "2": §5.8's mandatory fields).
RECEIPT = {"MaDichVu": "2", "MaHoSo": "000.00.01.H49-261102-0001", "MaDVC": "2.000488.000.00.00.H49.01",
           "MaTTHC": "2.000488.000.00.00.H49", "MaDonVi": "000.00.01.H49", "TenDonVi": "Sở Tư pháp tỉnh Quảng Nam",
           "HoTenNguoiNop": "Nguyễn Thị Thu Hương"}


def init_body(ref: str = "dvc0000001H49261102000120261110093000", amount: str = "200000",
              receipt: dict[str, Any] | None = RECEIPT) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        MaThamChieu=ref, SoTien=amount, LoaiHinhThanhToan="PAY", MaKenhThanhToan="1", MaThietBi="1",
        NgonNgu="vi-VN", MaTienTe="VND", MaNganHang="PAYMENT",
        ThongTinGiaoDich="THANH TOAN HO SO 000.00.01.H49-261102-0001", ThoiGianGD="20261110093000", Ip="127.0.0.1")
    if receipt is not None:
        fields["ThongTinBienLai"] = dict(receipt)
    return signed("INIT", **fields)


def post(mock: PaymentPlatformMock, body: Any) -> requests.Response:
    return requests.post(mock.url + "/api/payment", json=body, timeout=TIMEOUT)


def payments(mock: PaymentPlatformMock) -> list[dict[str, Any]]:
    return requests.get(mock.url + "/_state/payments", timeout=TIMEOUT).json()["payments"]


def test_checksum_is_sha256_of_pipe_joined_fields_with_the_secret_last():
    body = {"LoaiBanTin": "QUERY", "PhienBan": "1.0.6", "MaDoiTac": "DVC_H49", "MaThamChieu": "dvcX",
            "ThoiGianGD": "20261110093000"}
    expected = hashlib.sha256(b"QUERY|1.0.6|DVC_H49|dvcX|20261110093000|s3cret").hexdigest()
    assert checksum(body, REQUEST_ORDERS["QUERY"], "s3cret") == expected
    assert REQUEST_ORDERS["INIT"][-2:] == ("ThoiGianGD", "Ip")
    assert ANSWER_ORDERS["CONFIRM"] == ("LoaiBanTin", "MaLoi", "MaDoiTac", "MaThamChieu", "SoTien", "MaTienTe",
                                        "MaGiaoDich", "MaNganHang", "ThoiGianGD", "ThongTinGiaoDich")
    assert reference_for("000.00.01.H49-261102-0001", __import__("datetime").datetime(2026, 11, 10, 9, 30)) == \
        "dvc0000001H49261102000120261110093000"


def test_a_wrong_checksum_is_refused_with_maloi_99_and_the_documented_text(pay):
    body = init_body()
    body["MaXacThuc"] = "0" * 64
    answer = post(pay, body).json()
    assert answer["MaLoi"] == "99" and answer["MoTaLoi"] == "Mã xác thực không chính xác"
    assert answer["MaXacThuc"] == checksum(answer, ANSWER_ORDERS["ERROR"], SECRET)
    tampered = init_body()
    tampered["SoTien"] = "1"  # signed for 200000
    assert post(pay, tampered).json()["MoTaLoi"] == BAD_CHECKSUM
    assert not [p for p in payments(pay) if p["origin"] == "init"]


@pytest.mark.parametrize("kind", [[], {}, ["INIT"], {"x": 1}], ids=["list", "object", "list-init", "object-x"])
def test_a_non_text_loaibantin_is_refused_with_maloi_99_not_a_500(pay, kind):
    """README: 'LoaiBanTin known (Loại bản tin X không được hỗ trợ)'; every error is MaLoi 99 (§5.9). A list
    or an object used to raise TypeError (unhashable) and the platform answered 500."""
    response = post(pay, {"LoaiBanTin": kind, "MaThamChieu": "dvcX"})
    assert response.status_code == 200, (response.status_code, response.text)
    answer = response.json()
    assert answer["MaLoi"] == "99" and answer["LoaiBanTin"] == ""
    assert answer["MoTaLoi"] == f"Loại bản tin {json.dumps(kind, ensure_ascii=False)} không được hỗ trợ"
    assert answer["MaXacThuc"] == checksum(answer, ANSWER_ORDERS["ERROR"], SECRET)


def test_init_opens_a_pending_transaction_and_answers_a_signed_url(pay):
    response = post(pay, init_body())
    assert response.status_code == 200
    answer = response.json()
    ref = "dvc0000001H49261102000120261110093000"
    assert answer["MaLoi"] == "00" and answer["MoTaLoi"] == "Thành công" and answer["MaThamChieu"] == ref
    assert answer["UrlThanhToan"] == f"{pay.url}/pay/{ref}"
    assert answer["MaXacThuc"] == checksum(answer, ANSWER_ORDERS["INIT"], SECRET)
    assert requests.get(answer["UrlThanhToan"], timeout=TIMEOUT).status_code == 200
    row = next(p for p in payments(pay) if p["MaThamChieu"] == ref)
    assert (row["status"], row["SoTien"], row["MaHoSo"], row["TrangThaiGD"]) == \
        ("pending", 200000, "000.00.01.H49-261102-0001", "0")
    again = post(pay, init_body()).json()
    assert again["MaLoi"] == "99" and again["MoTaLoi"] == f"Mã tham chiếu {ref} đã tồn tại"


@pytest.mark.parametrize(("field", "value", "text"), [
    ("SoTien", "2٠٠٠٠٠", "SoTien phải là số nguyên dương (VND)"),  # Arabic-Indic digits: int() reads them
    ("SoTien", "２００000", "SoTien phải là số nguyên dương (VND)"),  # fullwidth
    ("ThoiGianGD", "٢٠٢٦١١١٠٠٩٣٠٠٠", "ThoiGianGD phải có dạng yyyyMMddHHmmss"),
    ("ThoiGianGD", "20261310093000", "ThoiGianGD phải có dạng yyyyMMddHHmmss"),  # month 13: no real time
])
def test_init_amounts_and_times_are_ascii_digits(pay, field, value, text):
    """\\d takes any script's digits: such a SoTien was stored as its int() value, and such a ThoiGianGD
    was stored as given and broke the settle door (strptime reads ASCII digits only)."""
    body = init_body("dvcDIGITS")
    body[field] = value
    body["MaXacThuc"] = checksum(body, REQUEST_ORDERS["INIT"], SECRET)
    answer = post(pay, body).json()
    assert (answer["MaLoi"], answer["MoTaLoi"]) == ("99", text)
    assert not [p for p in payments(pay) if p["MaThamChieu"] == "dvcDIGITS"]


@pytest.mark.parametrize("missing", [None, "MaDichVu", "MaDVC", "MaTTHC", "MaDonVi", "TenDonVi", "MaHoSo"])
def test_init_for_dossier_fees_without_the_mandatory_receipt_fields_is_refused(pay, missing):
    """§5.8 (C): 'MaDichVu "2" = fees and charges for dossiers: MaDonVi, TenDonVi, MaHoSo, MaDVC and MaTTHC
    are mandatory'; §4.9 INIT carries ThongTinBienLai 'with MaDichVu "2"'. The stand-in used to open the
    transaction with no receipt block at all, or with a mandatory field missing."""
    ref = f"dvcNO{missing or 'BIENLAI'}"
    if missing is None:
        body, field = init_body(ref, receipt=None), "ThongTinBienLai"
    else:
        body, field = init_body(ref, receipt={k: v for k, v in RECEIPT.items() if k != missing}), \
            f"ThongTinBienLai.{missing}"
    answer = post(pay, body).json()
    assert (answer["MaLoi"], answer["MoTaLoi"]) == ("99", f"Thiếu trường {field}")
    assert not [p for p in payments(pay) if p["MaThamChieu"] == ref]


@pytest.mark.parametrize("change", [{"MaDVC": "  "}, {"MaTTHC": 2000488}, {"MaDichVu": "1"}],
                         ids=["blank", "number", "fines"])
def test_init_with_a_blank_wrong_typed_or_other_service_receipt_is_refused(pay, change):
    answer = post(pay, init_body("dvcODD", receipt={**RECEIPT, **change})).json()
    assert answer["MaLoi"] == "99" and "ThongTinBienLai." in answer["MoTaLoi"]
    assert not [p for p in payments(pay) if p["MaThamChieu"] == "dvcODD"]
    assert post(pay, init_body("dvcODD")).json()["MaLoi"] == "00"  # the reference was not taken


def test_query_answers_confirm_fields_and_trangthaigd_for_paid_failed_pending(pay):
    seeded = payments(pay)
    assert len(seeded) == 31
    assert {s: sum(p["status"] == s for p in seeded) for s in ("paid", "failed", "pending")} == \
        {"paid": 12, "failed": 8, "pending": 11}
    assert len({p["MaThamChieu"] for p in seeded}) == 31
    for p in seeded:
        assert p["MaThamChieu"] == "dvc" + p["MaHoSo"].replace(".", "").replace("-", "") + p["ThoiGianKhoiTao"]
    for status, code in (("paid", "1"), ("failed", "4"), ("pending", "0")):
        p = next(x for x in seeded if x["status"] == status)
        answer = post(pay, signed("QUERY", MaThamChieu=p["MaThamChieu"], ThoiGianGD=p["ThoiGianKhoiTao"])).json()
        assert answer["MaLoi"] == "00" and answer["TrangThaiGD"] == code
        assert answer["SoTien"] == p["SoTien"] and answer["MaGiaoDich"] == p["MaGiaoDich"]
        assert set(ANSWER_ORDERS["QUERY"]) <= set(answer)
        assert answer["MaXacThuc"] == checksum(answer, ANSWER_ORDERS["QUERY"], SECRET)
    unknown = post(pay, signed("QUERY", MaThamChieu="dvcNONE", ThoiGianGD="20261110093000")).json()
    assert unknown["MaLoi"] == "99" and unknown["MoTaLoi"] == "Không tìm thấy giao dịch dvcNONE"


@pytest.mark.parametrize("kind", ["QUERY", "GET_BILL"])
@pytest.mark.parametrize("reference", [None, "", "   ", 123, ["dvcX"]], ids=["absent", "empty", "blank", "number", "list"])
def test_query_and_get_bill_without_a_text_reference_say_which_field_is_missing(pay, kind, reference):
    """§4.9: QUERY and GET_BILL carry MaThamChieu. Without one the platform answered
    'Không tìm thấy giao dịch None' (Python's None in a Vietnamese message, and the 'unknown transaction'
    refusal for what is a malformed request); it now names the field, as INIT does."""
    fields: dict[str, Any] = {"ThoiGianGD": "20261110093000"}
    if reference is not None:
        fields["MaThamChieu"] = reference
    answer = post(pay, signed(kind, **fields)).json()
    assert (answer["MaLoi"], answer["MoTaLoi"]) == ("99", "Thiếu trường MaThamChieu")
    assert answer["MaXacThuc"] == checksum(answer, ANSWER_ORDERS["ERROR"], SECRET)


def test_get_bill_returns_a_real_pdf_holding_the_receipt_number(pay):
    paid = next(p for p in payments(pay) if p["status"] == "paid")
    response = post(pay, signed("GET_BILL", MaThamChieu=paid["MaThamChieu"], ThoiGianGD=paid["ThoiGianKhoiTao"]))
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/pdf"
    pdf = response.content
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    assert paid["SoBienLai"].startswith("BL2026-") and paid["SoBienLai"].encode() in pdf
    assert paid["MaThamChieu"].encode() in pdf and f"{paid['SoTien']} VND".encode() in pdf
    startxref = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    assert pdf[startxref:startxref + 4] == b"xref"
    # the test door names the PDF GET_BILL serves by its SHA-256 (what the ledger's PdfSha256 must be)
    assert paid["PdfSha256"] == hashlib.sha256(pdf).hexdigest()
    failed = next(p for p in payments(pay) if p["status"] == "failed")
    assert failed["PdfSha256"] is None
    refused = post(pay, signed("GET_BILL", MaThamChieu=failed["MaThamChieu"], ThoiGianGD=failed["ThoiGianKhoiTao"]))
    assert refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["MoTaLoi"] == "Giao dịch chưa thanh toán thành công, không có biên lai"


def test_get_bill_with_a_thoigiangd_that_is_not_the_transactions_is_refused(pay):
    """§4.9 GET_BILL (C): 'Request: LoaiBanTin "GET_BILL", PhienBan, MaDoiTac, MaThamChieu, ThoiGianGD (of the
    original transaction), MaXacThuc.' The stand-in never compared ThoiGianGD with the transaction, so a client
    that sent the current time got the PDF here and would not at the real platform."""
    paid = next(p for p in payments(pay) if p["status"] == "paid")
    assert paid["ThoiGianKhoiTao"] != paid["ThoiGianGD"], "the INIT's time, not the completion's"
    for when in ("20301231235959", paid["ThoiGianGD"], ""):
        response = post(pay, signed("GET_BILL", MaThamChieu=paid["MaThamChieu"], ThoiGianGD=when))
        assert response.headers["Content-Type"].startswith("application/json"), "a PDF for the wrong ThoiGianGD"
        answer = response.json()
        assert (answer["MaLoi"], answer["MoTaLoi"]) == ("99", "ThoiGianGD không khớp với giao dịch")
    right = post(pay, signed("GET_BILL", MaThamChieu=paid["MaThamChieu"], ThoiGianGD=paid["ThoiGianKhoiTao"]))
    assert right.headers["Content-Type"] == "application/pdf"


def _settle(mock: PaymentPlatformMock, n: int, **extra: Any) -> list[dict[str, Any]]:
    response = requests.post(mock.url + "/_admin/payments/settle", json={"n": n, **extra}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    mock.wait_callbacks()
    return response.json()["settled"]


def test_settle_sends_signed_callbacks_and_loses_a_seeded_share(tmp_path, receiver):
    mock = PaymentPlatformMock(tmp_path / "cb", port=0, callback_url=receiver.url, lost_share=0.3).start()
    try:
        settled = _settle(mock, 11)
        assert len(settled) == 11
        assert [s["callback"] for s in settled] == ["lost", "lost", "lost", "queued", "queued", "queued", "lost",
                                                    "queued", "queued", "queued", "lost"]  # seed 49, 30 % share
        assert [s["status"] for s in settled].count("failed") == 2
        lost = [s["MaThamChieu"] for s in settled if s["callback"] == "lost"]
        sent = [s["MaThamChieu"] for s in settled if s["callback"] == "queued"]
        assert [m["MaThamChieu"] for m in receiver.received] == sent
        for message in receiver.received:
            assert message["MaXacThuc"] == checksum(message, ANSWER_ORDERS["CONFIRM"], SECRET)
            assert message["MaLoi"] in ("00", "99") and isinstance(message["SoTien"], int)
        log = requests.get(mock.url + "/_state/callbacks", timeout=TIMEOUT).json()["callbacks"]
        assert sorted(c["MaThamChieu"] for c in log if c["outcome"] == "lost") == sorted(lost)
        assert all(c["httpStatus"] == 200 and json.loads(c["answer"])["MaLoi"] == "00"
                   for c in log if c["outcome"] == "sent")
        assert not [p for p in payments(mock) if p["status"] == "pending"]
        assert _settle(mock, 3) == []
    finally:
        mock.stop()
    # the same seed gives the same losses
    again = PaymentPlatformMock(tmp_path / "cb2", port=0, callback_url=None, lost_share=0.3).start()
    try:
        requests.post(again.url + "/_admin/callbacks", json={"url": receiver.url}, timeout=TIMEOUT)
        assert [s["MaThamChieu"] for s in _settle(again, 11) if s["callback"] == "lost"] == lost
    finally:
        again.stop()


def test_duplicate_switch_sends_each_callback_twice_and_settle_outcome_is_forced(pay, receiver):
    config = requests.post(pay.url + "/_admin/callbacks",
                           json={"url": receiver.url, "lost_share": 0, "duplicates": True}, timeout=TIMEOUT).json()
    assert config == {"url": receiver.url, "lost_share": 0.0, "duplicates": True}
    settled = _settle(pay, 2, outcome="failed")
    assert [s["status"] for s in settled] == ["failed", "failed"]
    refs = [m["MaThamChieu"] for m in receiver.received]
    assert refs == [settled[0]["MaThamChieu"]] * 2 + [settled[1]["MaThamChieu"]] * 2
    assert receiver.received[0] == receiver.received[1] and receiver.received[0]["MaLoi"] == "99"
    q = post(pay, signed("QUERY", MaThamChieu=refs[0], ThoiGianGD="20261110093000")).json()
    assert q["TrangThaiGD"] == "4"


def test_settle_by_reference_completes_exactly_the_pending_ones_named(pay):
    pending = sorted(p["MaThamChieu"] for p in payments(pay) if p["status"] == "pending")
    paid = next(p["MaThamChieu"] for p in payments(pay) if p["status"] == "paid")
    chosen = [pending[-1], pending[0]]
    settled = _settle(pay, 0, outcome="paid", references=[*chosen, pending[0], paid, "no-such-payment"])
    assert [s["MaThamChieu"] for s in settled] == chosen and {s["status"] for s in settled} == {"paid"}
    after = {p["MaThamChieu"]: p["status"] for p in payments(pay)}
    assert [ref for ref in pending if after[ref] != "pending"] == sorted(chosen)
    for bad in ({"references": "x"}, {"references": [""]}, {"references": [7]}, {"references": ["r" * 65]}):
        response = requests.post(pay.url + "/_admin/payments/settle", json=bad, timeout=TIMEOUT)
        assert response.status_code == 400 and "references must be" in response.json()["message"]


def test_a_late_settle_turns_a_failed_payment_paid_with_a_new_transaction_and_its_bill(pay, receiver):
    """The bus re-asks failed payments because the platform may complete one later; the stand-in
    can do that: ``late`` turns a named failed payment paid (a pending one too), later than its
    failure, with a receipt, a signed callback, and QUERY/GET_BILL as for any paid payment."""
    requests.post(pay.url + "/_admin/callbacks", json={"url": receiver.url, "lost_share": 0}, timeout=TIMEOUT)
    before = {p["MaThamChieu"]: p for p in payments(pay)}
    failed = sorted(ref for ref, p in before.items() if p["status"] == "failed")[0]
    paid = next(ref for ref, p in before.items() if p["status"] == "paid")
    assert _settle(pay, 0, outcome="paid", references=[failed]) == [], "not without late"
    [done] = _settle(pay, 0, outcome="paid", references=[failed, paid], late=True)
    after = {p["MaThamChieu"]: p for p in payments(pay)}[failed]
    assert done["MaThamChieu"] == failed and after["status"] == "paid" and after["SoBienLai"].startswith("BL")
    assert after["ThoiGianGD"] > before[failed]["ThoiGianGD"] and after["MaGiaoDich"] != before[failed]["MaGiaoDich"]
    assert [(m["MaThamChieu"], m["MaLoi"], m["MaGiaoDich"]) for m in receiver.received] == [
        (failed, "00", after["MaGiaoDich"])]
    q = post(pay, signed("QUERY", MaThamChieu=failed, ThoiGianGD=after["ThoiGianKhoiTao"])).json()
    assert (q["TrangThaiGD"], q["MaGiaoDich"]) == ("1", after["MaGiaoDich"])
    bill = post(pay, signed("GET_BILL", MaThamChieu=failed, ThoiGianGD=after["ThoiGianKhoiTao"]))
    assert bill.headers["Content-Type"] == "application/pdf" and after["SoBienLai"].encode() in bill.content
    assert before[failed]["PdfSha256"] is None and after["PdfSha256"] == hashlib.sha256(bill.content).hexdigest()
    for bad in ({"references": [failed], "late": True}, {"references": [failed], "outcome": "paid", "late": 1},
                {"n": 1, "outcome": "paid", "late": True}, {"references": [failed], "outcome": "failed", "late": True}):
        response = requests.post(pay.url + "/_admin/payments/settle", json=bad, timeout=TIMEOUT)
        assert response.status_code == 400 and "late" in response.json()["message"], bad


def test_an_unreachable_one_stop_is_logged_as_error(pay):
    free = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{free.server_address[1]}/cb"
    free.server_close()  # nobody listens there now
    requests.post(pay.url + "/_admin/callbacks", json={"url": url, "lost_share": 0}, timeout=TIMEOUT)
    [done] = _settle(pay, 1)
    log = requests.get(pay.url + "/_state/callbacks", timeout=TIMEOUT).json()["callbacks"]
    assert [(c["MaThamChieu"], c["outcome"], c["httpStatus"]) for c in log] == [(done["MaThamChieu"], "error", None)]


def test_callbacks_go_to_127_0_0_1_only(tmp_path, pay):
    for url in ("http://10.0.0.5/cb", "https://127.0.0.1/cb", "http://localhost:8080/cb", "http://example.org/"):
        with pytest.raises(ValueError):
            PaymentPlatformMock(tmp_path / "x", callback_url=url)
        response = requests.post(pay.url + "/_admin/callbacks", json={"url": url}, timeout=TIMEOUT)
        assert response.status_code == 400


def test_init_then_settle_then_query_and_bill(pay, receiver):
    requests.post(pay.url + "/_admin/callbacks", json={"url": receiver.url, "lost_share": 0}, timeout=TIMEOUT)
    _settle(pay, 100)  # finish the seeded ones first
    receiver.received.clear()
    assert post(pay, init_body()).json()["MaLoi"] == "00"
    [done] = _settle(pay, 5, outcome="paid")
    assert done["MaThamChieu"] == "dvc0000001H49261102000120261110093000" and done["callback"] == "queued"
    assert [m["MaLoi"] for m in receiver.received] == ["00"]
    q = post(pay, signed("QUERY", MaThamChieu=done["MaThamChieu"], ThoiGianGD="20261110093000")).json()
    assert (q["TrangThaiGD"], q["MaGiaoDich"], q["SoTien"]) == ("1", done["MaGiaoDich"], 200000)
    bill = post(pay, signed("GET_BILL", MaThamChieu=done["MaThamChieu"], ThoiGianGD="20261110093000"))
    assert bill.content.startswith(b"%PDF-") and done["receiptNo"].encode() in bill.content
    assert b"Nguyen Thi Thu Huong" in bill.content


def test_faults_and_bad_json(pay):
    assert requests.post(pay.url + "/api/payment", data=b"not json", timeout=TIMEOUT).status_code == 400
    requests.post(pay.url + "/_admin/faults", json={"error_rate": 1.0, "operations": ["QUERY"]}, timeout=TIMEOUT)
    assert post(pay, signed("QUERY", MaThamChieu="x", ThoiGianGD="20261110093000")).status_code == 503
    assert post(pay, init_body()).json()["MaLoi"] == "00"
    assert requests.get(pay.url + "/_state/payments", timeout=TIMEOUT).status_code == 200
