"""Payment receipts against the stand-ins as real servers: the one-stop system (fees, callbacks),
the national payment platform (protocol 1.0.6, checksums) and the ministry receipt ledger (SOAP).

The invariants, checked against the stand-ins' own state: after a run every paid transaction has
exactly one receipt in the ledger with the platform's amount, and a paid fee at the one-stop with
the same transaction; nothing is booked twice, whatever was lost, duplicated, refused or slow on
the way; disagreements are reported, never silently fixed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import func, select, text

from connectors.connection import connection_from_env
from connectors.errors import PeerUnavailable, ProtocolError
from lienthong import tasks
from lienthong.flows import payment_receipts
from lienthong.store import (
    Store,
    dead_letter,
    exchange_blob,
    exchange_key,
    exchange_log,
    payment_txn,
    utcnow,
)
from mocks.payment_platform import (
    ANSWER_ORDERS,
    REQUEST_ORDERS,
    checksum,
    reference_for,
)
from tests.lienthong.flows.proxy import ForwardingProxy

T = 20
ONESTOP_KEY = "test-onestop-key"
PARTNER = "DVC_H49"
PAY_SECRET = "test-payment-secret-Kx7"
LEDGER_USER = "lienthong.h49"
LEDGER_PASSWORD = "test-ledger-secret-Wq3"


class Peers:
    def __init__(self, state_dir: Path, *, lost_share: float = 0.3, duplicates: bool = False):
        from mocks.ministry_ledger import MinistryLedgerMock
        from mocks.one_stop import OneStopMock
        from mocks.payment_platform import PaymentPlatformMock

        self.onestop = OneStopMock(state_dir=state_dir, port=0, api_key=ONESTOP_KEY, seed_dossiers=40,
                                   payment_secret=PAY_SECRET, payment_partner=PARTNER).start()
        self.platform = PaymentPlatformMock(
            state_dir=state_dir, port=0, seed=49, partner_code=PARTNER, secret=PAY_SECRET, seed_dossiers=40,
            callback_url=self.onestop.url + "/api/v1/payments/confirm", lost_share=lost_share,
            duplicate_callbacks=duplicates).start()
        self.onestop.payment_platform_url = self.platform.url
        self.ledger = MinistryLedgerMock(state_dir=state_dir, port=0, username=LEDGER_USER,
                                         password=LEDGER_PASSWORD).start()

    def stop(self) -> None:
        self.platform.wait_callbacks(5)
        for peer in (self.platform, self.onestop, self.ledger):
            peer.stop()

    def connections(self, tmp_path: Path) -> dict[str, dict]:
        def hp(url: str) -> tuple[str, int]:
            host, port = url.removeprefix("http://").split(":")
            return host, int(port)

        o, p, lg = hp(self.onestop.url), hp(self.platform.url), hp(self.ledger.url)
        return {
            "onestop_default": {"conn_type": "http", "host": o[0], "port": o[1], "schema": "http",
                                "password": ONESTOP_KEY, "extra": {"page_size": 25, "read_timeout": 5}},
            "payment_platform_default": {"conn_type": "http", "host": p[0], "port": p[1], "schema": "http",
                                         "login": PARTNER, "password": PAY_SECRET,
                                         "extra": {"read_timeout": 5, "max_attempts": 2}},
            "ministry_ledger_default": {"conn_type": "http", "host": lg[0], "port": lg[1], "schema": "http",
                                        "login": LEDGER_USER, "password": LEDGER_PASSWORD,
                                        "extra": {"operation_timeout": 1.0, "max_attempts": 2, "batch_size": 5}},
            "lienthong_db": {"conn_type": "sqlite", "host": str(tmp_path / "bus.db")},
        }

    # -- the stand-ins' own state ------------------------------------------------------------
    def platform_payments(self) -> dict[str, dict]:
        return {p["MaThamChieu"]: p for p in requests.get(self.platform.url + "/_state/payments", timeout=T)
                .json()["payments"]}

    def onestop_payments(self) -> dict[str, dict]:
        return {p["reference"]: p for p in requests.get(self.onestop.url + "/_state/payments", timeout=T)
                .json()["payments"]}

    def ledger_receipts(self) -> list[dict]:
        return requests.get(self.ledger.url + "/_state/receipts", timeout=T).json()["receipts"]

    def settle(self, n: int, outcome: str | None = None) -> list[dict]:
        settled = requests.post(self.platform.url + "/_admin/payments/settle", json={"n": n, **(
            {"outcome": outcome} if outcome else {})}, timeout=T).json()["settled"]
        self.platform.wait_callbacks(10)
        return settled

    def ledger_faults(self, plan: dict) -> None:
        assert requests.post(self.ledger.url + "/_admin/faults", json=plan, timeout=T).ok

    def init_payment(self, dossier_no: str, amount: int, when: datetime, reference: str | None = None) -> str:
        """What a one-stop does when a citizen clicks "pay": a signed INIT at the platform (under the
        2025 client's reference, naming ``when``, unless another is given)."""
        reference = reference or reference_for(dossier_no, when)
        body = {"LoaiBanTin": "INIT", "PhienBan": "1.0.6", "MaDoiTac": PARTNER, "MaThamChieu": reference,
                "SoTien": str(amount), "LoaiHinhThanhToan": "1", "MaKenhThanhToan": "1", "MaThietBi": "1",
                "NgonNgu": "vi", "MaTienTe": "VND", "MaNganHang": "VCB",
                "ThongTinGiaoDich": f"THANH TOAN HO SO {dossier_no}", "ThoiGianGD": when.strftime("%Y%m%d%H%M%S"),
                "Ip": "127.0.0.1",
                "ThongTinBienLai": {"MaDichVu": "2", "MaHoSo": dossier_no, "MaDVC": "2.000488.000.00.00.H49.01",
                                    "MaTTHC": "2.000488.000.00.00.H49", "MaDonVi": dossier_no.split("-")[0],
                                    "TenDonVi": "Sở Tư pháp tỉnh Quảng Nam", "HoTenNguoiNop": "Trần Thị Bình"}}
        body["MaXacThuc"] = checksum(body, REQUEST_ORDERS["INIT"], PAY_SECRET)
        answer = requests.post(self.platform.url + "/api/payment", json=body, timeout=T).json()
        assert answer["MaLoi"] == "00", answer
        return reference

    def register(self, reference: str, dossier_no: str, amount: int, created_at: datetime | None = None) -> None:
        body = {"reference": reference, "dossierNo": dossier_no, "amount": amount}
        if created_at is not None:
            body["createdAt"] = created_at.isoformat()
        response = requests.post(self.onestop.url + "/_admin/payments/register", json=body, timeout=T)
        assert response.ok, response.text


@pytest.fixture
def peers(tmp_path, monkeypatch):
    peers = Peers(tmp_path / "mocks")
    for conn_id, conn in peers.connections(tmp_path).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    try:
        yield peers
    finally:
        peers.stop()


@contextmanager
def bus_database(database: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The bus database of a test: the peers' SQLite file, or with ``postgresql`` a throw-away
    database on the local server (named from ``prefix``, dropped afterwards)."""
    if database != "postgresql":
        yield
        return
    from tests.conftest import postgres_database

    with postgres_database(prefix) as url:
        parts = urlsplit(url.replace("postgresql+psycopg2", "postgresql"))
        monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB", json.dumps({
            "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
            "schema": parts.path.lstrip("/")}))
        yield


def run(run_id: str, tmp_path: Path) -> dict:
    tasks.collect_payments(connection_from_env, run_id=run_id, task_id="collect")
    tasks.update_onestop_fees(connection_from_env, run_id=run_id, task_id="fees")
    tasks.submit_payment_receipts(connection_from_env, run_id=run_id, task_id="receipts")
    return tasks.reconcile_payments(connection_from_env, run_id=run_id, task_id="reconcile",
                                    report_dir=str(tmp_path / "reports"))


def store():
    return tasks.open_store(connection_from_env)


def assert_three_systems_agree(peers: Peers) -> None:
    """Every paid transaction: one receipt in the ledger with its amount and number, a paid fee at
    the one-stop with its transaction and amount; failed ones recorded failed; nothing else booked."""
    platform = peers.platform_payments()
    onestop = peers.onestop_payments()
    receipts = peers.ledger_receipts()
    paid = {ref: p for ref, p in platform.items() if p["status"] == "paid"}
    per_reference = Counter(r["PaymentReference"] for r in receipts)
    assert set(per_reference) == set(paid), "the ledger holds exactly the paid transactions"
    assert set(per_reference.values()) == {1}, "one receipt per payment"
    for receipt in receipts:
        p = paid[receipt["PaymentReference"]]
        assert int(receipt["AmountVND"]) == p["SoTien"]
        assert receipt["ReceiptNumber"] == p["SoBienLai"]
        assert receipt["DossierCode"] == p["MaHoSo"]
        assert receipt["AgencyCode"] == p["MaHoSo"].split("-")[0]
    for ref, p in paid.items():
        assert onestop[ref]["status"] == "paid", ref
        assert onestop[ref]["transactionId"] == p["MaGiaoDich"]
        assert onestop[ref]["amount"] == p["SoTien"]
    for ref, p in platform.items():
        if p["status"] == "failed" and ref in onestop:
            assert onestop[ref]["status"] == "failed", ref


def test_first_run_repairs_lost_callbacks_and_books_every_receipt_once(peers, tmp_path):
    platform = peers.platform_payments()
    by_status = Counter(p["status"] for p in platform.values())
    assert by_status == {"paid": 12, "pending": 11, "failed": 8}
    # the one-stop has heard nothing of the seeded completions: every callback was "lost"
    assert {p["status"] for p in peers.onestop_payments().values()} == {"pending"}

    summary = run("pay-1", tmp_path)
    counts = summary["counts"]
    assert counts["requests_listed"] == 31
    assert counts["found_paid"] == 12 and counts["found_failed"] == 8 and counts["still_pending"] == 11
    assert counts["bills_fetched"] == 12
    assert counts["fees_updated"] == 20  # 12 paid + 8 failed the one-stop had not heard of
    assert counts["receipts_accepted"] == 12 and counts["receipts_unchanged"] == 0
    assert counts["reconciled_paid"] == 12 and counts["reconciled_agreed"] == 12 and counts["mismatches"] == 0
    assert_three_systems_agree(peers)

    # receipts are kept by hash, and the hash is what the ledger received
    with store().engine.connect() as conn:
        txns = {r.reference: r for r in conn.execute(select(payment_txn))}
        pinned = set(conn.execute(select(exchange_blob.c.sha256).where(exchange_blob.c.pinned.is_(True))).scalars())
        bills = conn.execute(select(exchange_log.c.response_blob_sha256, exchange_log.c.response_body).where(
            exchange_log.c.operation == "GET_BILL")).all()
    assert len(pinned) == 12
    assert {b.response_blob_sha256 for b in bills if b.response_blob_sha256} == pinned, \
        "the log refers to the PDFs by hash"
    # and the 8 failed ones were asked for their receipt too: "failed" is believed without one only
    assert len([b for b in bills if b.response_blob_sha256 is None]) == 8
    assert all(len(b.response_body) < 64 for b in bills if b.response_blob_sha256), "not inlined in the log"
    for receipt in peers.ledger_receipts():
        assert receipt["PdfSha256"] in pinned
        assert payment_receipts.receipt_pdf(store(), receipt["PdfSha256"]).startswith(b"%PDF-")
        assert txns[receipt["PaymentReference"]].receipt_no == receipt["ReceiptNumber"]
    report = Path(summary["report_path"]).read_text(encoding="utf-8")
    assert "all three systems agree on 12" in report and "None: the payment platform" in report

    # a repeated run changes nothing anywhere
    before = peers.ledger_receipts()
    again = run("pay-2", tmp_path)["counts"]
    assert again["receipts_accepted"] == 0 and again["receipts_unchanged"] == 0 and again["fees_updated"] == 0
    # the pending ones are asked again, and the failed ones (for FAILED_ASK_FOR: the platform may
    # still complete them), with no GET_BILL while QUERY says failed
    assert again["queried"] == 11 + 8 and again["found_failed"] == 0 and _get_bills("pay-2") == []
    assert peers.ledger_receipts() == before
    assert_three_systems_agree(peers)


def test_lost_and_duplicate_callbacks_never_double_book(tmp_path, monkeypatch):
    peers = Peers(tmp_path / "mocks", lost_share=0.5, duplicates=True)
    for conn_id, conn in peers.connections(tmp_path).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    try:
        run("dup-1", tmp_path)
        settled = peers.settle(8)
        callbacks = requests.get(peers.platform.url + "/_state/callbacks", timeout=T).json()["callbacks"]
        outcomes = Counter(c["outcome"] for c in callbacks)
        assert outcomes["lost"] >= 1 and outcomes["sent"] >= 2, outcomes
        sent = Counter(c["MaThamChieu"] for c in callbacks if c["outcome"] == "sent")
        assert max(sent.values()) == 2, "every delivered callback arrived twice"

        counts = run("dup-2", tmp_path)["counts"]
        paid_now = [s for s in settled if s["status"] == "paid"]
        assert counts["receipts_accepted"] == len(paid_now)
        delivered = {s["MaThamChieu"] for s in settled if s["callback"] == "queued"}
        # the one-stop already knew the delivered ones; the bus recorded only the lost ones
        assert counts["fees_updated"] == len([s for s in settled if s["MaThamChieu"] not in delivered])
        assert counts["fees_already_recorded"] == len(delivered)
        assert counts["mismatches"] == 0
        assert_three_systems_agree(peers)
        run("dup-3", tmp_path)
        assert_three_systems_agree(peers)
    finally:
        peers.stop()


def test_forged_callback_is_refused_and_changes_nothing(peers, tmp_path):
    run("forge-1", tmp_path)
    pending = next(ref for ref, p in peers.onestop_payments().items() if p["status"] == "pending")
    forged = {"LoaiBanTin": "CONFIRM", "MaLoi": "00", "MaDoiTac": PARTNER, "MaThamChieu": pending, "SoTien": 1,
              "MaTienTe": "VND", "MaGiaoDich": "GD26110299999999", "MaNganHang": "VCB",
              "ThoiGianGD": "20261102100000", "ThongTinGiaoDich": "forged"}
    forged["MaXacThuc"] = checksum(forged, ANSWER_ORDERS["CONFIRM"], "not-the-secret")
    answer = requests.post(peers.onestop.url + "/api/v1/payments/confirm", json=forged, timeout=T).json()
    assert answer.get("MaLoi") == "99" and "Mã xác thực không chính xác" in json.dumps(answer, ensure_ascii=False)
    assert peers.onestop_payments()[pending]["status"] == "pending"
    counts = run("forge-2", tmp_path)["counts"]
    assert counts["fees_updated"] == 0 and counts["receipts_accepted"] == 0 and counts["mismatches"] == 0
    assert_three_systems_agree(peers)


def test_soap_fault_and_a_slow_ledger_lose_nothing_and_book_nothing_twice(peers, tmp_path):
    tasks.collect_payments(connection_from_env, run_id="slow-1", task_id="collect")
    tasks.update_onestop_fees(connection_from_env, run_id="slow-1", task_id="fees")
    # the ledger answers every submission with a fault page: retried, then the task fails retriably
    peers.ledger_faults({"error_rate": 1.0, "http_status": 503, "operations": ["SubmitReceipts"]})
    with pytest.raises(PeerUnavailable):
        tasks.submit_payment_receipts(connection_from_env, run_id="slow-1", task_id="receipts")
    assert peers.ledger_receipts() == []
    # the ledger now books but answers after the client's operation_timeout (1 s): lost answers
    peers.ledger_faults({"latency_ms": 1500, "operations": ["SubmitReceipts"]})
    with pytest.raises(PeerUnavailable):
        tasks.submit_payment_receipts(connection_from_env, run_id="slow-2", task_id="receipts")
    booked = peers.ledger_receipts()
    assert 0 < len(booked) <= 12 and len({r["ReceiptNumber"] for r in booked}) == len(booked)
    peers.ledger_faults({})
    counts = tasks.submit_payment_receipts(connection_from_env, run_id="slow-3", task_id="receipts")
    assert counts["receipts_unchanged"] == len(booked), "what landed unanswered is recognised, not re-booked"
    assert counts["receipts_accepted"] == 12 - len(booked)
    summary = tasks.reconcile_payments(connection_from_env, run_id="slow-3", task_id="reconcile")
    assert summary["counts"]["mismatches"] == 0
    assert_three_systems_agree(peers)


def test_duplicate_receipt_number_with_other_content_is_held_and_reported(peers, tmp_path):
    """A receipt number the ledger already holds with other content (a SOAP DuplicateReceiptFault)
    is not re-booked nor overwritten: it is held and reported, and the rest of the batch lands."""
    from connectors.connection import Secret
    from connectors.ministry_ledger.client import ReceiptLedgerClient

    paid = sorted((p for p in peers.platform_payments().values() if p["status"] == "paid"),
                  key=lambda p: p["MaThamChieu"])
    victim = paid[0]
    client = ReceiptLedgerClient(peers.ledger.url, LEDGER_USER, Secret(LEDGER_PASSWORD))
    try:
        client.submit_receipts([{
            "ReceiptNumber": victim["SoBienLai"], "DossierCode": victim["MaHoSo"],
            "PaymentReference": "someone-else", "AmountVND": 1000,
            "PaidAt": datetime.fromisoformat("2026-11-02T08:00:00+07:00"), "PayerName": "Người khác",
            "AgencyCode": victim["MaHoSo"].split("-")[0], "PdfSha256": "0" * 64}])
    finally:
        client.close()
    summary = run("dupnum-1", tmp_path)
    counts = summary["counts"]
    assert counts["receipts_accepted"] == 11 and counts["receipts_held"] == 1
    kinds = {(m["kind"], m["record_key"]) for m in summary["open_mismatches"]}
    assert ("duplicate_receipt", victim["MaThamChieu"]) in kinds
    assert ("unexpected_receipt", "someone-else") in kinds
    held = [r for r in peers.ledger_receipts() if r["ReceiptNumber"] == victim["SoBienLai"]]
    assert len(held) == 1 and held[0]["PaymentReference"] == "someone-else", "never overwritten"


def test_amount_mismatch_and_unknown_dossier_are_reported_and_kept_not_fixed(peers, tmp_path, capsys):
    run("mis-1", tmp_path)
    dossiers = requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    dossier = next(d for d in dossiers if sum(int(f.get("amount") or 0) for f in d.get("fees") or []) > 0)
    when = datetime.fromisoformat("2026-11-20T09:00:00+07:00")
    # the platform collects 5,000 đồng more than the one-stop asked for
    mismatch = peers.init_payment(dossier["dossierNo"], 125000, when)
    peers.register(mismatch, dossier["dossierNo"], 120000)
    # a payment for a dossier the one-stop does not hold
    ghost = "000.00.01.H49-261120-9999"
    unknown = peers.init_payment(ghost, 50000, when)
    peers.register(unknown, ghost, 50000)
    settled = {s["MaThamChieu"]: s for s in peers.settle(40, outcome="paid")}
    assert settled[mismatch]["status"] == "paid" and settled[unknown]["status"] == "paid"

    summary = run("mis-2", tmp_path)
    found = {(m["kind"], m["record_key"]): m for m in summary["open_mismatches"]}
    assert ("amount_differs", mismatch) in found
    assert found[("amount_differs", mismatch)]["dossier_code"] == dossier["dossierNo"]
    assert ("unknown_dossier", unknown) in found
    assert found[("unknown_dossier", unknown)]["dossier_code"] == ghost
    onestop = peers.onestop_payments()
    assert onestop[mismatch]["status"] != "paid", "a fee is not marked paid with another amount"
    assert all(r["PaymentReference"] != unknown for r in peers.ledger_receipts())
    report = Path(summary["report_path"]).read_text(encoding="utf-8")
    assert mismatch in report and unknown in report and "amount_differs" in report and "unknown_dossier" in report

    # kept for follow-up: a rerun finds them again, does not duplicate them, does not fix them
    again = run("mis-3", tmp_path)
    assert {(m["kind"], m["record_key"]) for m in again["open_mismatches"]} >= set(found)
    items = payment_receipts.open_items(store())
    assert len([i for i in items if i["record_key"] in (mismatch, unknown)]) == 2
    assert all(i["first_seen_run"] == "mis-2" for i in items if i["record_key"] in (mismatch, unknown))
    # what an operator sees
    from lienthong.cli import main

    assert main(["payments", "mismatches", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {(m["kind"], m["record_key"]) for m in shown["mismatches"]} == {("amount_differs", mismatch),
                                                                          ("unknown_dossier", unknown)}
    assert shown["payments"]["platform_paid"] >= 13
    assert main(["payments", "mismatches"]) == 0
    assert f"amount_differs         {mismatch} dossier={dossier['dossierNo']}" in capsys.readouterr().out
    # every other paid transaction still agrees
    others = {ref: p for ref, p in peers.platform_payments().items() if ref not in (mismatch, unknown)}
    receipts = Counter(r["PaymentReference"] for r in peers.ledger_receipts())
    assert {ref for ref, p in others.items() if p["status"] == "paid"} <= set(receipts)
    assert set(receipts.values()) == {1}


def test_wrong_platform_secret_fails_the_task_without_marking_anything(peers, tmp_path, monkeypatch):
    from connectors.errors import AuthenticationFailed

    conn = peers.connections(tmp_path)["payment_platform_default"]
    conn["password"] = "a-wrong-secret"
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_PLATFORM_DEFAULT", json.dumps(conn))
    with pytest.raises(AuthenticationFailed) as caught:
        tasks.collect_payments(connection_from_env, run_id="auth-1", task_id="collect")
    assert "a-wrong-secret" not in str(caught.value)
    with store().engine.connect() as conn_:
        assert conn_.execute(select(payment_txn).where(payment_txn.c.platform_status != "pending")).all() == []
        assert conn_.execute(select(dead_letter)).all() == []


def test_the_ledger_step_holds_an_unknown_dossier_even_when_it_runs_before_the_fee_step(peers, tmp_path):
    """The DAG runs submit_receipts whatever update_onestop_fees did (all_done): it may run when the
    fee step failed, and then reads and judges the dossier itself."""
    ghost = "000.00.01.H49-261121-9998"
    unknown = peers.init_payment(ghost, 70000, datetime.fromisoformat("2026-11-21T09:00:00+07:00"))
    peers.register(unknown, ghost, 70000)
    peers.settle(40, outcome="paid")
    tasks.collect_payments(connection_from_env, run_id="order-1", task_id="collect")
    receipts = tasks.submit_payment_receipts(connection_from_env, run_id="order-1", task_id="receipts")
    tasks.update_onestop_fees(connection_from_env, run_id="order-1", task_id="fees")
    assert receipts["receipts_held_by_reason"] == {"unknown_dossier": 1}
    assert all(r["PaymentReference"] != unknown for r in peers.ledger_receipts())
    summary = tasks.reconcile_payments(connection_from_env, run_id="order-1", task_id="reconcile")
    assert [(m["kind"], m["record_key"]) for m in summary["open_mismatches"]] == [("unknown_dossier", unknown)]


def _bill_times(bus) -> dict[str, str]:
    """MaThamChieu → the ThoiGianGD each GET_BILL the bus sent named (from the exchange log)."""
    import zlib

    with bus.engine.connect() as conn:
        bodies = conn.execute(select(exchange_log.c.request_body).where(
            exchange_log.c.operation == "GET_BILL")).scalars().all()
    sent = [json.loads(zlib.decompress(b)) for b in bodies]
    return {m["MaThamChieu"]: m["ThoiGianGD"] for m in sent}


def test_get_bill_names_the_original_transactions_time_from_the_reference_or_the_request(peers, tmp_path):
    """§4.9: GET_BILL carries the ThoiGianGD of the original transaction, and the platform refuses
    another (the bus used to send the current time). The time is the one a reference of the
    documented form ends with, else the one-stop's createdAt of the request (an OpenCPS-style
    reference, "<paymentFileId>_<uuid>" cut to 20 characters, names none)."""
    dossiers = requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    dossier = next(d for d in dossiers if sum(int(f.get("amount") or 0) for f in d.get("fees") or []) > 0)
    when = datetime.fromisoformat("2026-11-20T14:35:07+07:00")
    opencps = peers.init_payment(dossier["dossierNo"], 90000, when, reference="PF0000123_7f3c9a2b1e")
    peers.register(opencps, dossier["dossierNo"], 90000, created_at=when)
    # the one-stop registered this one later than its INIT: the reference's own time is the INIT's
    timed = peers.init_payment(dossier["dossierNo"], 80000, when + timedelta(minutes=3))
    peers.register(timed, dossier["dossierNo"], 80000, created_at=when + timedelta(hours=2))
    requests.post(peers.platform.url + "/_admin/payments/settle",
                  json={"n": 0, "outcome": "paid", "references": [opencps, timed]}, timeout=T).raise_for_status()

    counts = run("time-1", tmp_path)["counts"]
    assert counts["bills_fetched"] == 14 and counts["platform_rejected"] == 0 and counts["mismatches"] == 0
    platform = peers.platform_payments()
    sent = _bill_times(store())
    assert sent[opencps] == "20261120143507" and sent[timed] == "20261120143807"
    assert {ref: platform[ref]["ThoiGianKhoiTao"] for ref in sent} == sent, "every GET_BILL named its INIT's time"
    with store().engine.connect() as conn:
        kept = dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.requested_at)).all())
        receipts = dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.receipt_no)).all())
    assert kept[opencps] == "2026-11-20T14:35:07+07:00"
    assert receipts[opencps] == platform[opencps]["SoBienLai"] and receipts[timed] == platform[timed]["SoBienLai"]
    assert_three_systems_agree(peers)


class _PaidPlatform:
    """Says every payment is paid and hands out a receipt, noting the time each GET_BILL names."""

    def __init__(self) -> None:
        self.bills: dict[str, datetime] = {}

    def query(self, reference, *, record_keys=()):
        return SimpleNamespace(status="paid", amount=1000, transaction_id="GD1", bank="VCB",
                               paid_at=datetime(2026, 12, 1, 9, tzinfo=UTC), raw={"MaThamChieu": reference})

    def get_bill(self, reference, *, transaction_time, record_keys=()):
        import hashlib

        self.bills[reference] = transaction_time
        pdf = b"%PDF-1.4 " + reference.encode()
        return SimpleNamespace(pdf=pdf, sha256=hashlib.sha256(pdf).hexdigest(), receipt_no="BL2026-000001",
                               content_type="application/pdf")


def test_a_payment_whose_transaction_time_is_unknown_is_dead_lettered_not_asked_with_another(tmp_path):
    """A reference that names no time and a request without a usable createdAt: GET_BILL cannot name
    the original transaction's time, so it is not sent (it would be refused); the payment waits in
    dead letters naming ThoiGianGD (after asking the one-stop for that request once more). A row
    listed before the bus kept createdAt gets it at the next full listing."""
    bus = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_schema()
    requests_ = _ThreeRequests()
    requests_.rows[0]["reference"] = "dvc0000001H49261101000120261201080000"  # its time: 08:00:00
    del requests_.rows[0]["createdAt"]
    requests_.rows[1]["createdAt"] = "yesterday"  # R2: no time at all
    requests_.rows[2]["createdAt"] = "2026-12-01T01:15:00Z"  # R3: the request's time, as an instant
    platform = _PaidPlatform()
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    report = payment_receipts.collect_payments(bus, requests_, platform, run_id="r0", clock=lambda: t0)
    assert platform.bills == {
        "dvc0000001H49261101000120261201080000": datetime.fromisoformat("2026-12-01T08:00:00+07:00"),
        "R3": datetime.fromisoformat("2026-12-01T08:15:00+07:00")}
    assert report.bills == 2 and [r["record_key"] for r in report.rejected] == ["R2"]
    [letter] = bus.dead_letters(payment_receipts.FLOW)
    assert (letter["record_key"], letter["stage"]) == ("R2", "platform")
    assert [(e["field"], e["rule"]) for e in letter["errors"]] == [("ThoiGianGD", "required")]
    with bus.engine.begin() as conn:
        assert conn.execute(select(payment_txn.c.requested_at).where(payment_txn.c.reference == "R3")
                            ).scalar_one() == "2026-12-01T01:15:00+00:00"
        conn.execute(payment_txn.update().where(payment_txn.c.reference == "R3").values(requested_at=None))
    payment_receipts.collect_payments(bus, requests_, platform, run_id="r1", clock=lambda: t0 + timedelta(hours=1),
                                      full_listing=True)
    with bus.engine.connect() as conn:
        assert conn.execute(select(payment_txn.c.requested_at).where(payment_txn.c.reference == "R3")
                            ).scalar_one() == "2026-12-01T01:15:00+00:00"


class _TamperingProxy(ForwardingProxy):
    """Sits between the bus and the payment platform and changes SoTien in QUERY answers about one
    payment — what a man in the middle would do. The answer's checksum then no longer verifies."""

    def __init__(self, target: str, victim: str, tamper=None):
        self.victim, self.tamper, self.tampered = victim, tamper, 0
        super().__init__(target, T)

    def answer(self, body, forward):
        upstream = forward()
        content = upstream.content
        if upstream.headers.get("Content-Type", "").startswith("application/json"):
            answer = upstream.json()
            if answer.get("LoaiBanTin") == "QUERY" and answer.get("MaThamChieu") == self.victim:
                if self.tamper is None:
                    answer["SoTien"] = int(answer.get("SoTien") or 0) + 1
                else:
                    self.tamper(answer)
                self.tampered += 1
                content = json.dumps(answer, ensure_ascii=False).encode()
        return upstream.status_code, content, upstream.headers.get("Content-Type", "application/json")


def _run_through_tampering_proxy(peers, tmp_path, monkeypatch, run_id: str, tamper=None):
    """A run whose payment platform connection goes through a :class:`_TamperingProxy` changing
    the QUERY answers about the first paid payment; returns (that payment, the proxy, the counts).
    The connection stays on the proxy until the caller sets it back."""
    victim = min(ref for ref, p in peers.platform_payments().items() if p["status"] == "paid")
    proxy = _TamperingProxy(peers.platform.url, victim, tamper=tamper)
    try:
        conn = peers.connections(tmp_path)["payment_platform_default"]
        conn["port"] = int(proxy.url.rsplit(":", 1)[1])
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_PLATFORM_DEFAULT", json.dumps(conn))
        counts = run(run_id, tmp_path)["counts"]
    finally:
        proxy.close()
    return victim, proxy, counts


def test_an_answer_whose_checksum_fails_is_dead_lettered_then_replayed_once(peers, tmp_path, monkeypatch):
    victim, proxy, counts = _run_through_tampering_proxy(peers, tmp_path, monkeypatch, "tamper-1")
    assert proxy.tampered == 1
    assert counts["platform_rejected"] == 1 and counts["found_paid"] == 11 and counts["receipts_accepted"] == 11
    letters = [d for d in store().dead_letters(payment_receipts.FLOW)]
    assert [(d["record_key"], d["stage"], d["error_class"]) for d in letters] == [(victim, "platform", "ChecksumMismatch")]
    assert letters[0]["errors"][0]["field"] == "MaXacThuc" and letters[0]["errors"][0]["rule"] == "checksum"
    assert all(r["PaymentReference"] != victim for r in peers.ledger_receipts())
    # the next run leaves it alone (it waits in dead letters), ...
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_PLATFORM_DEFAULT",
                       json.dumps(peers.connections(tmp_path)["payment_platform_default"]))
    assert run("tamper-2", tmp_path)["counts"]["queried"] == 11 + 8  # the pending and the failed ones
    # ... until an operator replays it: then it is delivered once, and everything agrees
    ids, references = payment_receipts.replay(store(), record_key=victim, by="test")
    assert references == [victim] and len(ids) == 1
    counts = run("tamper-3", tmp_path)["counts"]
    assert counts["found_paid"] == 1 and counts["receipts_accepted"] == 1
    assert_three_systems_agree(peers)


def test_no_secret_reaches_the_exchange_log_dead_letters_or_reports(peers, tmp_path, caplog):
    """The checksum secret, the ledger password and the one-stop API key never appear in any logged
    body or header, dead letter, report or log line — only MaXacThuc, a keyed hash, does."""
    import zlib

    from sqlalchemy import text

    caplog.set_level("DEBUG")
    settled = peers.settle(5)
    assert settled
    summary = run("secret-1", tmp_path)
    secrets = [PAY_SECRET, LEDGER_PASSWORD, ONESTOP_KEY]
    with store().engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM exchange_log")).mappings().all()
        letters = conn.execute(text("SELECT * FROM dead_letter")).mappings().all()
        blobs = conn.execute(text("SELECT data FROM exchange_blob")).scalars().all()
    assert {r["peer"] for r in rows} >= {"onestop", "payment_platform", "ministry_ledger"}
    haystack = []
    for r in rows:
        for column, value in r.items():
            if column in ("request_body", "response_body") and value:
                haystack.append(zlib.decompress(value).decode("utf-8", "replace"))
            else:
                haystack.append(str(value))
    haystack += [zlib.decompress(b).decode("utf-8", "replace") for b in blobs]
    haystack += [str(dict(letter)) for letter in letters]
    haystack += [Path(summary["report_path"]).read_text(encoding="utf-8"), json.dumps(summary, default=str)]
    haystack += [record.getMessage() for record in caplog.records]
    text_all = "\n".join(haystack)
    assert "MaXacThuc" in text_all, "the keyed checksums are logged, as evidence"
    for secret in secrets:
        assert secret not in text_all


def test_what_an_answer_causes_commits_with_its_exchange_record_and_nothing_waits_long(peers, tmp_path,
                                                                                         monkeypatch):
    """Steps 1–3 write a call's exchange-log record in the transaction that acts on its answer (one
    commit, as the dossier flow does): 31 requests listed in 2 pages, 31 QUERYs, 12 GET_BILLs make
    2 + 31 commits, not 45 more for the log. A record waits for at most its own payment's change
    (an answer that changes nothing is written at once), and a run that fails half-way still logs
    every call it made."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from lienthong.exchange_log import BusRecorder

    commits: list[int] = []

    def on_commit(conn) -> None:
        commits.append(1)

    held: list[int] = []
    record = BusRecorder.record

    def counting(self, exchange):
        record(self, exchange)
        held.append(len(self._held or ()))

    monkeypatch.setattr(BusRecorder, "record", counting)
    bus = store()
    clients = tasks._payment_clients(connection_from_env, bus, "commit-1", "collect", "onestop", "platform")
    event.listen(Engine, "commit", on_commit)
    try:
        report = payment_receipts.collect_payments(bus, clients["onestop"], clients["platform"], run_id="commit-1")
    finally:
        event.remove(Engine, "commit", on_commit)
        tasks._close_all(clients)
    assert (report.listed, report.queried, report.bills, report.pending) == (31, 31, 12, 11)
    assert len(commits) == 2 + 1 + 31, "a page, the full listing's note, a pending answer, a failed one, a paid one with its receipt: one each"
    assert max(held) <= 2, "at most a payment's QUERY and GET_BILL wait for its commit"
    with bus.engine.connect() as conn:
        logged = conn.execute(select(exchange_log.c.operation)).scalars().all()
        states = dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.platform_status)).all())
    assert Counter(logged) == {"payments": 2, "QUERY": 31, "GET_BILL": 12 + 8}  # a failed one's: no receipt
    assert Counter(states.values()) == {"paid": 12, "failed": 8, "pending": 11}

    # the ledger step looks up each dossier before its batch (5 here): the look-ups wait one batch at most
    tasks.update_onestop_fees(connection_from_env, run_id="commit-1", task_id="fees")
    held.clear()
    counts = tasks.submit_payment_receipts(connection_from_env, run_id="commit-1", task_id="receipts")
    assert counts["receipts_accepted"] == 12
    assert max(held) <= 5 + 1, "a batch's dossier look-ups and its SubmitReceipts"

    # a run that fails half-way (the ledger refuses every call after retries) still logs every call
    assert peers.settle(6, "paid")
    tasks.collect_payments(connection_from_env, run_id="commit-2", task_id="collect")
    peers.ledger_faults({"error_rate": 1.0, "http_status": 503, "operations": ["SubmitReceipts"]})
    with store().engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(exchange_log)).scalar_one()
    with pytest.raises(PeerUnavailable):
        tasks.submit_payment_receipts(connection_from_env, run_id="commit-2", task_id="receipts")
    with store().engine.connect() as conn:
        made = Counter(conn.execute(select(exchange_log.c.operation).where(exchange_log.c.run_id == "commit-2",
                                                                           exchange_log.c.task_id == "receipts"))
                       .scalars())
        total = conn.execute(select(func.count()).select_from(exchange_log)).scalar_one()
    assert made["dossier"] >= 1 and made["SubmitReceipts"] >= 1, made
    assert total == before + sum(made.values()), "every call of the failed run is in the log"


def test_a_rerun_refreshes_the_one_stops_view_of_exactly_the_requests_that_changed(peers, tmp_path):
    """Each listed page is read back in one query; only a request whose status, amount or dossier
    changed at the one-stop is written again."""
    tasks.collect_payments(connection_from_env, run_id="view-1", task_id="collect")
    with store().engine.connect() as conn:
        first = {r.reference: r for r in conn.execute(select(payment_txn))}
    settled = peers.settle(6, "paid")  # callbacks reach the one-stop for some of them (30 % are lost)
    onestop = peers.onestop_payments()
    changed = {ref for ref, p in onestop.items() if p["status"] != first[ref].onestop_status}
    assert changed and changed <= {s["MaThamChieu"] for s in settled}
    tasks.collect_payments(connection_from_env, run_id="view-2", task_id="collect", full_listing=True)
    with store().engine.connect() as conn:
        again = {r.reference: r for r in conn.execute(select(payment_txn))}
    assert {ref: r.onestop_status for ref, r in again.items()} == {ref: p["status"] for ref, p in onestop.items()}
    untouched = {ref for ref in again
                 if ref not in changed and again[ref].platform_status == first[ref].platform_status}
    assert untouched and all(again[ref].updated_at == first[ref].updated_at for ref in untouched)


def test_steps_read_the_backlog_a_page_at_a_time_and_miss_nothing(peers, tmp_path, monkeypatch):
    """With pages of 4 payments and 3 remembered dossiers, a first run (31 requests, 12 paid, 8
    failed) does exactly what it does in one page: every payment asked once, every result and
    receipt recorded once, the three systems agreeing."""
    monkeypatch.setattr(payment_receipts, "PAGE", 4)
    monkeypatch.setattr(payment_receipts, "LOOKUPS", 3)
    counts = run("paged-1", tmp_path)["counts"]
    assert (counts["queried"], counts["found_paid"], counts["found_failed"], counts["still_pending"]) == (31, 12, 8, 11)
    assert counts["fees_updated"] == 20 and counts["receipts_accepted"] == 12 and counts["mismatches"] == 0
    with store().engine.connect() as conn:
        asked = Counter(conn.execute(select(exchange_log.c.operation).where(exchange_log.c.run_id == "paged-1"))
                        .scalars())
    assert asked["QUERY"] == 31 and asked["GET_BILL"] == 12 + 8 and asked["payment_result"] == 20  # 8: failed
    assert asked["dossier"] == 20 and asked["fees"] == 0, "one look-up per dossier, as in one page"
    assert_three_systems_agree(peers)


def test_the_fee_and_ledger_steps_find_their_work_through_an_index_not_every_finished_payment(tmp_path):
    """Each step's page query (the first and a keyset one) is answered through the index that starts
    with its state, on a migrated SQLite bus database (the planner has no statistics there): a
    run's cost follows its work, not the years of finished payments before it."""
    from lienthong.store import Store

    bus = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_schema()
    try:
        for work, index in ((payment_receipts.FEES_WORK, "ix_payment_txn_fees_work"),
                            (payment_receipts.LEDGER_WORK, "ix_payment_txn_ledger_work")):
            pages: list[str] = []

            def read(page, pages=pages):  # a full first page, then none: the pager asks for a keyset page
                pages.append(str(page.compile(bus.engine, compile_kwargs={"literal_binds": True})))
                return [SimpleNamespace(reference="R1")] * payment_receipts.PAGE if len(pages) == 1 else []

            list(payment_receipts._pages(work, read))  # noqa: SLF001 - the steps' own pager
            assert len(pages) == 2 and "payment_txn.reference) > ('R1')" in pages[1], pages
            with bus.engine.connect() as conn:
                for sql in pages:
                    plan = " | ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                    assert f"USING INDEX {index}" in plan, (sql, plan)
    finally:
        bus.dispose()


def test_one_read_of_a_paid_payments_dossier_serves_both_steps_and_the_name_is_erased_once_booked(peers, tmp_path):
    """The fee step reads each finished payment's dossier once; a paid one keeps its applicant's
    name for the ledger step, which reads no dossier again, books that name, then erases it."""
    tasks.collect_payments(connection_from_env, run_id="payer-1", task_id="collect")
    tasks.update_onestop_fees(connection_from_env, run_id="payer-1", task_id="fees")
    applicants = {d["dossierNo"]: d["applicantName"]
                  for d in requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]}
    requested = {ref: p["dossierNo"] for ref, p in peers.onestop_payments().items()}
    with store().engine.connect() as conn:
        kept = dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.payer_name)
                                 .where(payment_txn.c.platform_status == "paid")).all())
        failed = conn.execute(select(payment_txn.c.payer_name)
                              .where(payment_txn.c.platform_status == "failed")).scalars().all()
    assert len(kept) == 12 and kept == {ref: applicants[requested[ref]] for ref in kept}
    assert all(kept.values()) and failed == [None] * 8, "a name only where a receipt is still to be booked"

    receipts = tasks.submit_payment_receipts(connection_from_env, run_id="payer-1", task_id="receipts")
    assert receipts["receipts_accepted"] == 12
    with store().engine.connect() as conn:
        asked = Counter(conn.execute(select(exchange_log.c.operation).where(exchange_log.c.run_id == "payer-1"))
                        .scalars())
        left = conn.execute(select(payment_txn.c.payer_name).where(payment_txn.c.payer_name.is_not(None))).all()
    assert asked["dossier"] == 20 and asked["fees"] == 0, "the ledger step read no dossier again"
    booked = {r["PaymentReference"]: r["PayerName"] for r in peers.ledger_receipts()}
    assert booked == kept
    assert left == [], "booked: the bus keeps the payer's name no longer"


def test_a_held_or_rejected_receipt_keeps_no_payer_name_and_a_replay_reads_it_again(peers, tmp_path, monkeypatch):
    """The applicant's name is kept only for the ledger step of the same run: a receipt it holds
    (the ledger has other content under its number) or rejects (dead-lettered) keeps it no longer
    (it stayed in payment_txn for good); a held one is asked with the name read again, a replayed
    one is booked with the name read again from the one-stop."""
    from connectors.connection import Secret
    from connectors.ministry_ledger.client import ReceiptLedgerClient

    paid = sorted((p for p in peers.platform_payments().values() if p["status"] == "paid"),
                  key=lambda p: p["MaThamChieu"])
    held, refused = paid[0], paid[1]
    client = ReceiptLedgerClient(peers.ledger.url, LEDGER_USER, Secret(LEDGER_PASSWORD))
    try:
        client.submit_receipts([{
            "ReceiptNumber": held["SoBienLai"], "DossierCode": held["MaHoSo"],
            "PaymentReference": "someone-else", "AmountVND": 1000,
            "PaidAt": datetime.fromisoformat("2026-11-02T08:00:00+07:00"), "PayerName": "Người khác",
            "AgencyCode": held["MaHoSo"].split("-")[0], "PdfSha256": "0" * 64}])
    finally:
        client.close()
    read = payment_receipts._payer  # noqa: SLF001 - the one-stop look-up both steps make
    monkeypatch.setattr(payment_receipts, "_payer", lambda onestop, code: "X" * 300 if code == refused["MaHoSo"]
                        else read(onestop, code))  # over the ledger's 200 characters: the mapping refuses it
    counts = run("names-1", tmp_path)["counts"]
    assert (counts["receipts_accepted"], counts["receipts_held"], counts["receipts_rejected"]) == (10, 1, 1)

    def names() -> dict[str, tuple[str, str | None]]:
        with store().engine.connect() as conn:
            return {r.reference: (r.ledger_state, r.payer_name) for r in conn.execute(
                select(payment_txn.c.reference, payment_txn.c.ledger_state, payment_txn.c.payer_name)
                .where(payment_txn.c.platform_status == "paid"))}

    after = names()
    assert after[held["MaThamChieu"]] == ("held", None) and after[refused["MaThamChieu"]] == ("rejected", None)
    assert [ref for ref, (_, name) in after.items() if name is not None] == []

    monkeypatch.setattr(payment_receipts, "_payer", read)
    assert payment_receipts.replay(store(), record_key=refused["MaThamChieu"], by="test")[1] == [refused["MaThamChieu"]]
    counts = run("names-2", tmp_path)["counts"]
    assert (counts["receipts_accepted"], counts["receipts_held"], counts["receipts_rejected"]) == (1, 1, 0)
    applicants = {d["dossierNo"]: d["applicantName"]
                  for d in requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]}
    booked = [r for r in peers.ledger_receipts() if r["PaymentReference"] == refused["MaThamChieu"]]
    assert [r["PayerName"] for r in booked] == [applicants[refused["MaHoSo"]]]
    after = names()
    assert after[held["MaThamChieu"]] == ("held", None) and after[refused["MaThamChieu"]] == ("accepted", None)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_reconciliation_reads_a_window_and_a_page_at_a_time_and_finds_the_same(peers, tmp_path, monkeypatch,
                                                                                database):
    """Windows of 2 paid transactions and pages of 3 find exactly what one window and one page
    find, mismatches of every kind included: a paid transaction's receipt number held since years
    under another payment (no window shows it: asked by number), a second receipt for a payment
    booked days from the first (another window), a receipt for an unknown payment, an amount that
    differs, an unknown dossier; and a one-stop request whose reference no transaction can hold
    (70 characters: refused by collect, left out of the view). The windows tile the paid period
    with no gap and no overlap."""
    # temporary tables and keyset pages on the scale-out database too
    with bus_database(database, "lienthong_pay", monkeypatch):
        _reconcile_by_windows(peers, tmp_path, monkeypatch, database)


def _reconcile_by_windows(peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str) -> None:
    from connectors.connection import Secret
    from connectors.ministry_ledger.client import ReceiptLedgerClient

    paid = sorted((p for p in peers.platform_payments().values() if p["status"] == "paid"),
                  key=lambda p: p["MaThamChieu"])
    client = ReceiptLedgerClient(peers.ledger.url, LEDGER_USER, Secret(LEDGER_PASSWORD))
    stray = {"DossierCode": paid[1]["MaHoSo"], "AmountVND": paid[1]["SoTien"], "PayerName": "Trần Thị Bình",
             "AgencyCode": paid[1]["MaHoSo"].split("-")[0], "PdfSha256": "0" * 64}
    try:  # a paid transaction's number taken years before: no window shows it, asked by number
        client.submit_receipts([{**stray, "ReceiptNumber": paid[0]["SoBienLai"], "PaymentReference": "years-ago",
                                 "PaidAt": datetime.fromisoformat("2020-01-02T08:00:00+07:00")}])
        run("win-1", tmp_path)
        with store().engine.connect() as conn:
            times = sorted(datetime.fromisoformat(t) for t in conn.execute(
                select(payment_txn.c.paid_at).where(payment_txn.c.platform_status == "paid")).scalars())
        assert len(times) == 12 and times[-1] - times[0] > timedelta(days=1), "the paid period spans windows"
        client.submit_receipts([
            {**stray, "ReceiptNumber": "BL-STRAY-1", "PaymentReference": paid[1]["MaThamChieu"], "PaidAt": times[-1]},
            {**stray, "ReceiptNumber": "BL-STRAY-2", "PaymentReference": "nobody-asked", "PaidAt": times[0]}])
    finally:
        client.close()
    dossiers = requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    dossier = next(d for d in dossiers if sum(int(f.get("amount") or 0) for f in d.get("fees") or []) > 0)
    when = datetime.fromisoformat("2026-11-20T09:00:00+07:00")
    mismatch = peers.init_payment(dossier["dossierNo"], 125000, when)
    peers.register(mismatch, dossier["dossierNo"], 120000)
    unknown = peers.init_payment("000.00.01.H49-261120-9999", 50000, when)
    peers.register(unknown, "000.00.01.H49-261120-9999", 50000)
    peers.register("R" * 70, dossier["dossierNo"], 1000)  # no transaction can have it: collect dead-letters it
    peers.settle(40, outcome="paid")
    run("win-2", tmp_path)

    def reconciled(run_id: str) -> tuple[dict, list]:  # full passes: every window of the paid period
        summary = tasks.reconcile_payments(connection_from_env, run_id=run_id, task_id="reconcile", full=True)
        counts = {k: v for k, v in summary["counts"].items() if k.startswith(("reconciled_", "mismatches"))}
        assert {(m["kind"], m["record_key"]) for m in summary["open_mismatches"]} == {
            (i["kind"], i["record_key"]) for i in payment_receipts.open_items(store())}
        return counts, sorted((i["kind"], i["record_key"], i["dossier_code"], i["receipt_no"],
                               json.dumps(i["details"], sort_keys=True)) for i in payment_receipts.open_items(store()))

    whole = reconciled("win-3")
    kinds = {item[0] for item in whole[1]}
    assert kinds >= {"duplicate_receipt", "unexpected_receipt", "amount_differs", "unknown_dossier"}, kinds
    assert {("duplicate_receipt", paid[0]["MaThamChieu"]), ("duplicate_receipt", paid[1]["MaThamChieu"]),
            ("unexpected_receipt", "years-ago"), ("unexpected_receipt", "nobody-asked")} <= {i[:2] for i in whole[1]}
    assert whole[0]["mismatches_opened"] == 0
    assert whole[0]["reconciled_paid"] == sum(p["status"] == "paid" for p in peers.platform_payments().values())

    windows: list[tuple[datetime, datetime, int]] = []
    waiting: list[int] = []  # bus-database sessions left inside a transaction while the ledger is asked
    listed, by_number = ReceiptLedgerClient.list_receipts, ReceiptLedgerClient.get_receipt

    def idle_in_transaction() -> int:
        if database != "postgresql":
            return 0
        with store().engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND state LIKE 'idle in transaction%'")).scalar_one()

    def list_receipts(self, start, end):
        waiting.append(idle_in_transaction())
        receipts = listed(self, start, end)
        windows.append((start, end, len(receipts)))
        return receipts

    def get_receipt(self, number):
        waiting.append(idle_in_transaction())
        return by_number(self, number)

    monkeypatch.setattr(ReceiptLedgerClient, "list_receipts", list_receipts)
    monkeypatch.setattr(ReceiptLedgerClient, "get_receipt", get_receipt)
    monkeypatch.setattr(payment_receipts, "RECEIPT_WINDOW", 2)
    monkeypatch.setattr(payment_receipts, "PAGE", 3)
    assert reconciled("win-4") == whole
    with store().engine.connect() as conn:
        paid_at = sorted(datetime.fromisoformat(t) for t in conn.execute(
            select(payment_txn.c.paid_at).where(payment_txn.c.platform_status == "paid")).scalars())
    assert len(windows) >= 10
    assert windows[0][0] == paid_at[0] - timedelta(days=1) and windows[-1][1] == paid_at[-1] + timedelta(days=1)
    assert all(a[1] == b[0] for a, b in pairwise(windows)), "no gap, no overlap"
    assert sum(n for _, _, n in windows) == len(peers.ledger_receipts()) - 1  # all but the one years before
    assert max(n for _, _, n in windows) <= 4
    assert len(waiting) > len(windows) and set(waiting) == {0}, "no transaction is held while the ledger is asked"
    with store().engine.connect() as conn:  # the temporary tables went with the run
        assert conn.dialect.name == database
        assert not any(conn.dialect.has_table(conn, name) for name in ("reconcile_onestop", "reconcile_ledger"))


def test_the_ask_schedule_asks_young_payments_every_run_then_less_often_and_stops_after_30_days():
    """:func:`next_ask`: a tenth of the time since the first ask, at most a day, none from 30 days
    on, and always after the run's start (one run asks about a payment once)."""
    from lienthong.flows.payment_receipts import ASK_FOR, FAILED_ASK_FOR, next_ask

    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    µs = timedelta(microseconds=1)
    assert next_ask(t0, t0, t0) == t0 + µs  # first asked now: due at the next run
    for age, wait in ((timedelta(seconds=30), timedelta(seconds=3)), (timedelta(hours=1), timedelta(minutes=6)),
                      (timedelta(days=1), timedelta(hours=2.4)), (timedelta(days=10), timedelta(days=1)),
                      (timedelta(days=29, hours=23), timedelta(days=1))):
        assert next_ask(t0, t0 + age, t0 + age) == t0 + age + wait, age
    assert next_ask(t0, t0 + ASK_FOR, t0 + ASK_FOR) is None
    assert next_ask(t0, t0 + ASK_FOR + timedelta(days=400), t0) is None
    assert next_ask(t0, t0 + FAILED_ASK_FOR, t0 + FAILED_ASK_FOR, FAILED_ASK_FOR) is None  # a failed one: 7 days
    assert next_ask(t0, t0 + timedelta(days=6), t0 + timedelta(days=6), FAILED_ASK_FOR) == t0 + timedelta(days=6.6)
    late = t0 + timedelta(hours=1)  # a run that began before the payment was last asked: still after its start
    assert next_ask(t0, t0 + timedelta(seconds=1), late) == late + µs


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_unfinished_payments_are_asked_when_due_given_up_after_30_days_and_asked_again_when_the_one_stop_changes(
        peers, tmp_path, monkeypatch, database):
    """A clock moved by hand over 32 days, pages of 4: the 11 payments the platform leaves pending
    are asked at every run while young, then only when due (the exchange log shows no QUERY of a
    payment not due), given up at 30 days and counted so by the reconciliation (not a mismatch);
    settled afterwards, those whose callback reached the one-stop (its view changed) are asked at
    the next full listing (daily) and end paid; those whose callback was lost stay given up.
    Collect lists every request once a day, the newest page otherwise."""
    monkeypatch.setattr(payment_receipts, "PAGE", 4)
    # the (next_ask_at, reference) keyset on the scale-out database too
    with bus_database(database, "lienthong_ask", monkeypatch):
        _ask_on_schedule(peers, tmp_path)


def _ask_on_schedule(peers: Peers, tmp_path: Path) -> None:
    t0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    bus = store()

    def collect(run_id: str, at: timedelta) -> dict:
        clients = tasks._payment_clients(connection_from_env, bus, run_id, "collect", "onestop", "platform")
        try:
            report = payment_receipts.collect_payments(bus, clients["onestop"], clients["platform"], run_id=run_id,
                                                       clock=lambda: t0 + at)
        finally:
            tasks._close_all(clients)
        with bus.engine.connect() as conn:  # the payments the exchange log shows asked (not the dossier keys)
            references = set(conn.execute(select(payment_txn.c.reference)).scalars())
            asked = sorted(k for k in conn.execute(select(exchange_key.c.record_key).join(
                exchange_log, exchange_log.c.id == exchange_key.c.exchange_id).where(
                exchange_log.c.run_id == run_id, exchange_log.c.operation == "QUERY")).scalars() if k in references)
        assert len(asked) == report.queried and len(set(asked)) == len(asked), "each payment asked once a run"
        return {"asked": asked, **report.counts()}

    first = collect("ask-0", timedelta(0))
    assert (first["queried"], first["found_paid"], first["found_failed"], first["still_pending"]) == (31, 12, 8, 11)
    with bus.engine.connect() as conn:
        pending = sorted(conn.execute(select(payment_txn.c.reference).where(
            payment_txn.c.platform_status == "pending")).scalars())
        failed = sorted(conn.execute(select(payment_txn.c.reference).where(
            payment_txn.c.platform_status == "failed", payment_txn.c.next_ask_at.is_not(None))).scalars())
        paid = conn.execute(select(func.count()).select_from(payment_txn).where(
            payment_txn.c.platform_status == "paid", payment_txn.c.next_ask_at.is_not(None))).scalar_one()
    assert len(pending) == 11 and paid == 0, "a paid payment is never due"
    assert len(failed) == 8, "a failed one is asked again for FAILED_ASK_FOR (7 days), on the same schedule"
    timeline = [  # (run, time since the first ask, asked?, every request listed?) — due a tenth of its
        # age after each ask; every request listed a day after the last full listing, else the newest
        ("ask-1", timedelta(0), False, False),  # the same instant: not due before the next run
        ("ask-2", timedelta(seconds=1), True, False),
        ("ask-3", timedelta(hours=1), True, False),  # due again 6 minutes later
        ("ask-4", timedelta(hours=1, minutes=5), False, False),
        ("ask-5", timedelta(hours=1, minutes=6, seconds=1), True, False),
        ("ask-6", timedelta(days=10), True, True),  # due a day later
        ("ask-7", timedelta(days=10, hours=23), False, False),
        ("ask-8", timedelta(days=11, seconds=1), True, True),
        ("ask-9", timedelta(days=30), True, True),  # asked a last time: given up
        ("ask-10", timedelta(days=31), False, True),
    ]
    for run_id, at, due, full in timeline:
        got = collect(run_id, at)
        young = at <= timedelta(days=10)  # the failed ones: asked a last time at 10 days (due since 1 h 12 min)
        assert got["asked"] == (sorted(pending + failed) if due and young else pending if due else []), run_id
        assert got["found_failed"] == 0, run_id
        assert got["still_pending"] == (11 if due else 0), run_id
        # the newest: the last page of 25 (6 requests), nothing new on it, so no page before it
        assert (got["requests_listing"], got["requests_listed"]) == (("full", 31) if full else ("newest", 6)), run_id
        assert got["asks_given_up"] == (11 if run_id == "ask-9" else 0), run_id
    report = tasks.reconcile_payments(connection_from_env, run_id="ask-10", task_id="reconcile",
                                      report_dir=str(tmp_path / "reports"))
    assert report["counts"]["payments_given_up"] == 11
    assert not {i["record_key"] for i in payment_receipts.open_items(bus)} & set(pending), "given up: no mismatch"
    assert "Payments no longer asked about (the platform still said pending, or did not know them, after 30 " \
           "days of asking; asked again if the one-stop's view of them changes): 11." in Path(
               report["report_path"]).read_text(encoding="utf-8")
    with bus.engine.connect() as conn:
        asked_since = set(conn.execute(select(payment_txn.c.first_asked_at).where(
            payment_txn.c.reference.in_(pending))).scalars())
    assert asked_since == {t0}

    settled = peers.settle(11, outcome="paid")
    onestop = peers.onestop_payments()
    seen = sorted(s["MaThamChieu"] for s in settled if onestop[s["MaThamChieu"]]["status"] == "paid")
    lost = sorted(set(pending) - set(seen))
    assert seen and lost, "some callbacks reach the one-stop, some are lost"
    # the one-stop's view of older requests is read by the daily full listing; the next hour's run
    # reads only the newest page, and asks those of them that are on it
    early = collect("ask-11", timedelta(days=31, hours=1))
    assert set(early["asked"]) < set(seen) and early["found_paid"] == len(early["asked"])
    again = collect("ask-11b", timedelta(days=32, seconds=1))
    assert again["requests_listing"] == "full" and again["asked"] == sorted(set(seen) - set(early["asked"]))
    assert again["found_paid"] == again["bills_fetched"] == len(again["asked"])
    assert collect("ask-12", timedelta(days=32, hours=2))["asked"] == []
    report = tasks.reconcile_payments(connection_from_env, run_id="ask-12", task_id="reconcile",
                                      report_dir=str(tmp_path / "reports"))
    assert report["counts"]["payments_given_up"] == len(lost), "a payment that ended unseen stays given up"
    with bus.engine.connect() as conn:
        states = dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.platform_status).where(
            payment_txn.c.reference.in_(pending))).all())
    assert states == {ref: "paid" if ref in seen else "pending" for ref in pending}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_reconciliation_between_full_ones_checks_what_changed_and_the_open_mismatches(peers, tmp_path,
                                                                                         monkeypatch, database):
    """The first reconciliation is full; the next ones, within a day, check the transactions that
    changed since the last and those with open mismatches: the one-stop asked for each of them
    (no listing), the ledger for the minutes around their payments only. A receipt added at the
    ledger for an old, unchanged payment is not seen by such a pass; the next full one (a day
    later, or asked for) finds it, and from then on it is checked at every pass until resolved."""
    # the scope's temporary table and joins on the scale-out database too
    with bus_database(database, "lienthong_scope", monkeypatch):
        _reconcile_between_full_ones(peers, tmp_path, monkeypatch)


def _reconcile_between_full_ones(peers: Peers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.connection import Secret
    from connectors.ministry_ledger.client import ReceiptLedgerClient

    # changes stamped up to 2 seconds before the latest a pass saw are checked again by the next:
    # this test's runs follow each other within a second, so none would be left out
    monkeypatch.setattr(payment_receipts, "RECHECK_OVERLAP", timedelta(0))
    # and a payment asked about twice is next due a tenth of its age later (0.1-0.2 s here): the
    # third run, a fraction of a second after the second, must ask the four settled ones again
    monkeypatch.setattr(payment_receipts, "ASK_BACKOFF", 0.0)
    bus = store()

    def reconciled(run_id: str, **kwargs) -> dict:
        clients = tasks._payment_clients(connection_from_env, bus, run_id, "reconcile", "onestop", "ledger")
        try:
            return payment_receipts.reconcile(bus, clients["onestop"], clients["ledger"], run_id=run_id,
                                              **kwargs).counts()
        finally:
            tasks._close_all(clients)

    def calls(run_id: str) -> Counter:
        with bus.engine.connect() as conn:
            return Counter(conn.execute(select(exchange_log.c.operation).where(
                exchange_log.c.run_id == run_id, exchange_log.c.task_id == "reconcile")).scalars())

    run("inc-1", tmp_path)  # collect, fees, ledger, and the first reconciliation: a full one
    assert payment_receipts.open_items(bus) == [] and calls("inc-1")["payments"] == 2  # listed: 31, pages of 25
    # the bus keeps the one-stop's view of the 20 results it recorded there, as the one-stop
    # answered: the next run's listing finds no change, and its pass checks nothing
    assert run("inc-1b", tmp_path)["counts"]["reconciled_paid"] == 0
    with bus.engine.connect() as conn:
        old = conn.execute(select(payment_txn.c.reference, payment_txn.c.dossier_code, payment_txn.c.platform_amount,
                                  payment_txn.c.paid_at).where(payment_txn.c.platform_status == "paid")
                           .order_by(payment_txn.c.paid_at)).first()
    settled = peers.settle(4, outcome="paid")  # four payments finish: the only changes of the next run
    for step in (tasks.collect_payments, tasks.update_onestop_fees, tasks.submit_payment_receipts):
        step(connection_from_env, run_id="inc-2", task_id=step.__name__)
    counts = reconciled("inc-2")
    assert counts["reconciled_scope"] == "changed" and counts["mismatches"] == 0
    assert counts["reconciled_paid"] == 4 and counts["reconciled_agreed"] == 4
    asked = calls("inc-2")
    assert asked["payments"] == 0 and asked["payment"] == 4, "each changed payment asked by reference, no listing"
    assert 1 <= asked["ListReceipts"] <= 4, "the minutes around the four payments, a window per group"

    # a second receipt booked at the ledger for an old payment nothing changed since, at its time
    client = ReceiptLedgerClient(peers.ledger.url, LEDGER_USER, Secret(LEDGER_PASSWORD))
    try:
        client.submit_receipts([{"ReceiptNumber": "BL-LATE-1", "PaymentReference": old.reference,
                                 "DossierCode": old.dossier_code, "AmountVND": old.platform_amount,
                                 "PayerName": "Trần Thị Bình", "AgencyCode": old.dossier_code.split("-")[0],
                                 "PdfSha256": "0" * 64, "PaidAt": datetime.fromisoformat(old.paid_at)}])
    finally:
        client.close()
    quiet = reconciled("inc-3")
    assert (quiet["reconciled_scope"], quiet["reconciled_paid"], quiet["mismatches"]) == ("changed", 0, 0)
    assert calls("inc-3") == Counter(), "nothing changed: nothing asked"
    later = reconciled("inc-4", clock=lambda: utcnow() + timedelta(days=1))  # a day on: a full pass
    assert later["reconciled_scope"] == "full" and later["reconciled_since"] is None
    assert later["reconciled_paid"] == 12 + 4 and later["mismatches_by_kind"] == {"duplicate_receipt": 1}
    assert [(i["kind"], i["record_key"]) for i in payment_receipts.open_items(bus)] == [
        ("duplicate_receipt", old.reference)]
    windows: list[tuple[datetime, datetime]] = []
    listed = ReceiptLedgerClient.list_receipts

    def list_receipts(self, start, end):
        windows.append((start, end))
        return listed(self, start, end)

    monkeypatch.setattr(ReceiptLedgerClient, "list_receipts", list_receipts)
    again = reconciled("inc-5", full=False)  # its open mismatch is checked at every pass
    assert (again["reconciled_paid"], again["mismatches_by_kind"], again["mismatches_resolved"]) == (
        1, {"duplicate_receipt": 1}, 0)
    assert again["reconciled_since"] is not None and len(settled) == 4
    paid_at = datetime.fromisoformat(old.paid_at)  # the ledger asked for the minutes around it only
    assert windows == [(paid_at - timedelta(minutes=1), paid_at + timedelta(minutes=1))]


def test_a_pass_between_full_ones_reads_the_ledger_only_minutes_around_the_payments_it_checks(tmp_path):
    """Scope payments amid a dense paid period: windows of a minute around each group of them (so
    the ledger's answer holds the receipts booked then, not the days around), a chain of payments
    minutes apart cut into windows of at most an hour of payments, tiling it with no gap and no
    overlap (an overlap would list a receipt twice: a false duplicate)."""
    from sqlalchemy import insert

    from lienthong.flows.payment_receipts import (
        RECEIPT_WINDOW,
        _receipt_windows,
        _scope,
        _views,
    )
    from lienthong.store import Store

    bus = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_schema()
    t0 = datetime.fromisoformat("2026-11-02T08:00:00+07:00")
    every_minute = [t0 + timedelta(minutes=i) for i in range(3_000)]  # two busy days
    chain = [t0 + timedelta(days=5, seconds=90 * i) for i in range(200)]  # 90 s apart: one run of 5 hours
    rows = [{"reference": f"P{i:05d}", "platform_status": "paid", "paid_at": when.isoformat(),
             "onestop_state": "updated", "ledger_state": "accepted", "updated_at": utcnow()}
            for i, when in enumerate(every_minute + chain)]
    with bus.begin() as conn:
        conn.execute(insert(payment_txn), rows)
    m = timedelta(minutes=1)
    with bus.engine.connect() as conn:
        _views.create_all(conn)
        conn.execute(insert(_scope), [{"reference": r} for r in ("P00100", "P00101", "P02000")])
        conn.commit()  # as _fill_scope does: each read ends before the ledger is asked
        assert _receipt_windows(conn, RECEIPT_WINDOW, scoped=True) == [
            (every_minute[100] - m, every_minute[101] + m), (every_minute[2000] - m, every_minute[2000] + m)]
        conn.execute(insert(_scope), [{"reference": f"P{3_000 + i:05d}"} for i in range(200)])
        conn.commit()
        windows = _receipt_windows(conn, RECEIPT_WINDOW, scoped=True)
    chained = windows[2:]
    assert chained[0][0] == chain[0] - m and chained[-1][1] == chain[-1] + m
    assert all(a[1] == b[0] for a, b in pairwise(chained)), "no gap, no overlap"
    assert len(chained) == 5 and all(end - start <= timedelta(hours=1, minutes=4) for start, end in chained)


def test_between_full_listings_collect_reads_only_the_newest_pages(peers, tmp_path, monkeypatch):
    """Pages of 5 over 31 requests: the first run lists all 7 pages; after 7 new requests (38, in
    creation order) the next run reads from the page holding the 32nd to the end (7 and 8: a probe
    and two pages), registers exactly the 7 and asks about them; a run that fails after its first
    page reads them again; a forced full listing reads all 8 pages."""
    onestop = peers.connections(tmp_path)["onestop_default"]
    monkeypatch.setenv("AIRFLOW_CONN_ONESTOP_DEFAULT", json.dumps({**onestop, "extra": {**onestop["extra"],
                                                                                        "page_size": 5}}))
    bus = store()

    def listing_calls(run_id: str) -> int:
        with bus.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(exchange_log).where(
                exchange_log.c.run_id == run_id, exchange_log.c.operation == "payments")).scalar_one()

    with pytest.raises(ValueError, match="the first listing is a full one"):  # nothing to read on from
        tasks.collect_payments(connection_from_env, run_id="tail-0", task_id="collect", full_listing=False)
    first = tasks.collect_payments(connection_from_env, run_id="tail-1", task_id="collect")
    assert (first["requests_listing"], first["requests_listed"], listing_calls("tail-1")) == ("full", 31, 7)
    dossiers = requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
    when = datetime.fromisoformat("2026-11-21T09:00:00+07:00")
    new = []
    for n, dossier in enumerate(dossiers[:7]):
        reference = peers.init_payment(dossier["dossierNo"], 10_000 + n, when + timedelta(minutes=n))
        peers.register(reference, dossier["dossierNo"], 10_000 + n)
        new.append(reference)
    from connectors.one_stop.client import OneStopClient

    pages = OneStopClient.payments_page

    def fails_after_one(self, page, size=None, status="all"):
        if page == 8:
            raise PeerUnavailable("one_stop payments: connection reset (test)", peer="one_stop", operation="payments")
        return pages(self, page, size, status)

    monkeypatch.setattr(OneStopClient, "payments_page", fails_after_one)
    with pytest.raises(PeerUnavailable):
        tasks.collect_payments(connection_from_env, run_id="tail-2a", task_id="collect")
    monkeypatch.setattr(OneStopClient, "payments_page", pages)
    second = tasks.collect_payments(connection_from_env, run_id="tail-2", task_id="collect")
    assert (second["requests_listing"], second["requests_listed"], second["requests_new"]) == ("newest", 8, 3)
    assert listing_calls("tail-2") == 1 + 2
    with bus.engine.connect() as conn:
        assert set(new) <= set(conn.execute(select(payment_txn.c.reference)).scalars())
    third = tasks.collect_payments(connection_from_env, run_id="tail-3", task_id="collect", full_listing=True)
    assert (third["requests_listing"], third["requests_listed"], third["requests_new"]) == ("full", 38, 0)


class _RefusingPlatform:
    """A platform that refuses one payment's QUERY and another's GET_BILL with signed, verified
    answers the flow has no rule for (found in review: either stopped collect at every run)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def query(self, reference, *, record_keys=()):
        from connectors.errors import FieldError, PeerRejected

        self.asked.append(("QUERY", reference))
        if reference == "R1":
            raise PeerRejected(reference, [FieldError("MaThamChieu", "platform_99", "Các lỗi khác")],
                               peer_code="99", peer_message="Các lỗi khác")
        return SimpleNamespace(status="paid" if reference == "R2" else "pending", amount=1000,
                               transaction_id="T-" + reference, bank="NCB", paid_at=None, raw={"MaLoi": "00"})

    def get_bill(self, reference, *, transaction_time, record_keys=()):
        from connectors.errors import FieldError, TransactionUnknown

        self.asked.append(("GET_BILL", reference))
        raise TransactionUnknown(reference, [FieldError("MaThamChieu", "known_transaction", "không tồn tại")],
                                 peer_code="04", peer_message="không tồn tại")


class _ThreeRequests:
    page_size = 25

    def __init__(self) -> None:
        self.rows = [{"reference": r, "dossierNo": "000.00.01.H49-261101-0001", "amount": 1000, "status": "pending",
                      "createdAt": "2026-12-01T08:00:00+07:00"} for r in ("R1", "R2", "R3")]

    def iter_payments(self, status="all"):
        yield self.rows

    def payments_page(self, page, size=None, status="all"):
        return (self.rows if page == 1 else []), len(self.rows)

    def get_payment(self, reference):
        return next((dict(row) for row in self.rows if row["reference"] == reference), None)


def test_a_refused_query_or_bill_is_dead_lettered_and_stops_neither_the_run_nor_the_next_ones(tmp_path):
    bus = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_schema()
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    platform = _RefusingPlatform()
    report = payment_receipts.collect_payments(bus, _ThreeRequests(), platform, run_id="r0", clock=lambda: t0)
    assert platform.asked == [("QUERY", "R1"), ("QUERY", "R2"), ("GET_BILL", "R2"), ("QUERY", "R3")]
    assert report.pending == 1 and [r["record_key"] for r in report.rejected] == ["R1", "R2"]
    letters = bus.dead_letters(payment_receipts.FLOW)
    assert [(d["record_key"], d["stage"], d["error_class"], d["peer_code"]) for d in letters] == [
        ("R1", "platform", "PeerRejected", "99"), ("R2", "platform", "TransactionUnknown", "04")]
    assert [(e["field"], e["rule"]) for e in letters[0]["errors"]] == [("MaThamChieu", "platform_99")]
    # the next run asks only R3 (the refused two wait in dead letters, nothing is marked paid) ...
    platform = _RefusingPlatform()
    payment_receipts.collect_payments(bus, _ThreeRequests(), platform, run_id="r1",
                                      clock=lambda: t0 + timedelta(hours=1))
    assert platform.asked == [("QUERY", "R3")]
    with bus.engine.connect() as conn:
        assert dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.platform_status)).all()) == {
            "R1": "pending", "R2": "pending", "R3": "pending"}
    # ... until an operator replays them
    assert payment_receipts.replay(bus, record_key="R1", by="test")[1] == ["R1"]
    platform = _RefusingPlatform()
    payment_receipts.collect_payments(bus, _ThreeRequests(), platform, run_id="r2",
                                      clock=lambda: t0 + timedelta(hours=2))
    assert ("QUERY", "R1") in platform.asked and ("QUERY", "R2") not in platform.asked


def test_a_ledger_step_booking_beside_the_fee_step_leaves_no_name_behind(peers, tmp_path, monkeypatch):
    """A ledger step run by hand while the DAG's fee step is between its page read and its write
    books the receipts and erases the names; the fee step's write must not put them back (it did,
    for good: found in review)."""
    from connectors.one_stop.client import OneStopClient

    tasks.collect_payments(connection_from_env, run_id="race-1", task_id="collect")
    record = OneStopClient.record_payment_result
    beside: list[dict] = []

    def record_then(self, *args, **kwargs):
        if not beside:  # the other process's ledger step runs now (it reads each dossier itself)
            beside.append(tasks.submit_payment_receipts(connection_from_env, run_id="race-hand", task_id="receipts"))
        return record(self, *args, **kwargs)

    monkeypatch.setattr(OneStopClient, "record_payment_result", record_then)
    fees = tasks.update_onestop_fees(connection_from_env, run_id="race-1", task_id="fees")
    assert beside[0]["receipts_accepted"] == 12 and fees["fees_updated"] > 0
    with store().engine.connect() as conn:
        rows = conn.execute(select(payment_txn.c.ledger_state, payment_txn.c.payer_name)
                            .where(payment_txn.c.platform_status == "paid")).all()
    assert len(rows) == 12 and {state for state, _ in rows} == {"accepted"}
    assert [name for _, name in rows if name is not None] == []


def test_a_pass_between_full_ones_keeps_open_a_duplicate_receipt_it_cannot_see(peers, tmp_path):
    """A second receipt for a payment, booked ten minutes from any payment's time, is outside the
    minutes a pass between full ones reads: that pass must keep the mismatch open, not resolve it
    until the next full pass opens it anew (it flapped so: found in review)."""
    from connectors.connection import Secret
    from connectors.ministry_ledger.client import ReceiptLedgerClient

    run("dup-1", tmp_path)  # a first run: a full reconciliation, no mismatch
    bus = store()
    with bus.engine.connect() as conn:
        rows = conn.execute(select(payment_txn.c.reference, payment_txn.c.dossier_code, payment_txn.c.platform_amount,
                                   payment_txn.c.paid_at).where(payment_txn.c.platform_status == "paid")
                            .order_by(payment_txn.c.paid_at)).all()
    times = [datetime.fromisoformat(r.paid_at) for r in rows]
    old, late = rows[0], times[0] + timedelta(minutes=10)
    while any(abs(late - t) <= timedelta(minutes=2) for t in times):
        late += timedelta(minutes=5)
    ledger = ReceiptLedgerClient(peers.ledger.url, LEDGER_USER, Secret(LEDGER_PASSWORD))
    try:
        ledger.submit_receipts([{"ReceiptNumber": "BL2026-999999", "PaymentReference": old.reference,
                                 "DossierCode": old.dossier_code, "AmountVND": old.platform_amount,
                                 "PayerName": "Nguyễn Văn Bảy", "AgencyCode": old.dossier_code.split("-")[0],
                                 "PdfSha256": "0" * 64, "PaidAt": late}])
    finally:
        ledger.close()

    def reconciled(run_id: str, **kw) -> dict:
        return tasks.reconcile_payments(connection_from_env, run_id=run_id, task_id="reconcile", **kw)["counts"]

    assert reconciled("dup-2", full=True)["mismatches_by_kind"] == {"duplicate_receipt": 1}
    opened = payment_receipts.open_items(bus)
    between = reconciled("dup-3")  # the next hourly pass checks `old` (it has an open mismatch)
    assert between["reconciled_scope"] == "changed" and between["mismatches_resolved"] == 0
    assert payment_receipts.open_items(bus) == opened  # still open, first seen when the full pass saw it
    again = reconciled("dup-4", full=True)
    assert (again["mismatches_opened"], again["mismatches_resolved"]) == (0, 0)
    assert [(i["kind"], i["record_key"], i["first_seen_at"]) for i in payment_receipts.open_items(bus)] == [
        ("duplicate_receipt", old.reference, opened[0]["first_seen_at"])]


# --- payments followed before migration 0008 (no requested_at yet) --------------------------------
class _OpenCpsRequests:
    """A one-stop with 30 payment requests under OpenCPS-style references (no time in them), each
    with its createdAt, listed 25 a page."""

    page_size = 25

    def __init__(self) -> None:
        self.rows = [{"reference": f"PF{n:07d}_7f3c9a2b1e", "dossierNo": "000.00.01.H49-261101-0001",
                      "amount": 1000, "status": "pending", "createdAt": "2026-11-20T14:35:07+07:00"}
                     for n in range(1, 31)]

    def iter_payments(self, status="all"):
        for start in range(0, len(self.rows), self.page_size):
            yield self.rows[start:start + self.page_size]

    def payments_page(self, page, size=None, status="all"):
        size = size or self.page_size
        return self.rows[(page - 1) * size:page * size], len(self.rows)

    def get_payment(self, reference):
        return next((dict(row) for row in self.rows if row["reference"] == reference), None)


class _PaysOne:
    """The platform: PF0000001 has now been paid; it hands out its receipt for its INIT's time."""

    def __init__(self) -> None:
        self.bills: dict[str, datetime] = {}

    def query(self, reference, *, record_keys=()):
        status = "paid" if reference == "PF0000001_7f3c9a2b1e" else "pending"
        return SimpleNamespace(status=status, amount=1000, transaction_id="GD1", bank="VCB",
                               paid_at=datetime(2026, 12, 1, 2, tzinfo=UTC), raw={"MaThamChieu": reference})

    def get_bill(self, reference, *, transaction_time, record_keys=()):
        self.bills[reference] = transaction_time
        pdf = b"%PDF-1.4 " + reference.encode()
        return SimpleNamespace(pdf=pdf, sha256=hashlib.sha256(pdf).hexdigest(), receipt_no="BL2026-000001",
                               content_type="application/pdf")


def test_a_payment_followed_before_0008_is_not_dead_lettered_before_the_listing_that_fills_its_time(tmp_path):
    """c55e25d: requested_at is 'filled for older rows at the next full listing', yet the first
    collect after the upgrade is a full listing only if the last one is a day old. A payment
    listed before 0008 (requested_at NULL, as the migration leaves it) under an OpenCPS-style
    reference, on a page the newest-only listing does not re-read, that the platform now says is
    paid is dead-lettered naming ThoiGianGD ('required') although the one-stop holds its
    createdAt; an operator must replay it."""
    from lienthong.flows import payment_receipts
    from lienthong.store import Store as BusStore

    bus = BusStore(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_schema()
    onestop, platform = _OpenCpsRequests(), _PaysOne()
    now = datetime(2026, 12, 1, 8, tzinfo=UTC)
    with bus.begin() as conn:  # what the previous version followed: all 30, listed an hour ago
        for row in onestop.rows:
            conn.execute(payment_txn.insert().values(
                reference=row["reference"], dossier_code=row["dossierNo"], request_amount=1000,
                onestop_status="pending", platform_status="pending", onestop_state="todo", ledger_state="todo",
                first_seen_run="old", updated_run="old", updated_at=now - timedelta(days=10),
                first_asked_at=now - timedelta(days=10), next_ask_at=now - timedelta(minutes=5)))
        BusStore.set_cursor(conn, payment_receipts.LISTED,
                            json.dumps({"full_at": (now - timedelta(hours=1)).isoformat(), "through": 30}), "old")
    report = payment_receipts.collect_payments(bus, onestop, platform, run_id="first-after-upgrade",
                                               clock=lambda: now)
    assert report.listing == "newest"
    letters = [(d["record_key"], [(e["field"], e["rule"]) for e in d["errors"]])
               for d in bus.dead_letters(payment_receipts.FLOW)]
    assert letters == [], letters
    # asked for that request's createdAt, kept, and GET_BILL named it
    assert platform.bills == {"PF0000001_7f3c9a2b1e": datetime.fromisoformat("2026-11-20T14:35:07+07:00")}
    with bus.engine.connect() as conn:
        assert conn.execute(select(payment_txn.c.requested_at).where(
            payment_txn.c.reference == "PF0000001_7f3c9a2b1e")).scalar_one() is not None


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_fee_over_two_to_the_31_dong_is_followed_booked_and_reconciled_like_any_other(peers, tmp_path, monkeypatch,
                                                                                       database):
    """A land-use fee of 3 tỷ đồng (more than a 32-bit integer holds; the platform takes up to 12
    digits, the ledger up to 10^12) is collected, recorded and booked with its exact amount, on
    the scale-out database too: a column that cannot hold it would fail every run at its page."""
    with bus_database(database, "lienthong_pay_big", monkeypatch):
        dossiers = requests.get(peers.onestop.url + "/_state/dossiers", timeout=T).json()["dossiers"]
        dossier = next(d for d in dossiers if sum(int(f.get("amount") or 0) for f in d.get("fees") or []) > 0)
        big = 3_000_000_000
        when = datetime.fromisoformat("2026-11-20T10:00:00+07:00")
        reference = peers.init_payment(dossier["dossierNo"], big, when)
        peers.register(reference, dossier["dossierNo"], big, created_at=when)
        requests.post(
            peers.platform.url + "/_admin/payments/settle",
            json={"n": 0, "outcome": "paid", "references": [reference]}, timeout=T).raise_for_status()
        peers.platform.wait_callbacks(10)

        counts = run("big-1", tmp_path)["counts"]
        assert counts["found_paid"] == 13 and counts["receipts_accepted"] == 13 and counts["mismatches"] == 0
        with store().engine.connect() as conn:
            row = conn.execute(select(payment_txn).where(payment_txn.c.reference == reference)).one()
        assert (row.request_amount, row.platform_amount, row.ledger_state) == (big, big, "accepted")
        assert [int(r["AmountVND"]) for r in peers.ledger_receipts() if r["PaymentReference"] == reference] == [big]
        assert_three_systems_agree(peers)


def test_an_answer_whose_checksum_is_not_hex_is_dead_lettered_like_any_wrong_checksum(peers, tmp_path, monkeypatch):
    """A QUERY answer whose MaXacThuc holds characters outside ASCII (a proxy's rewrite, a forged
    answer) does not verify: it is dead-lettered as a checksum mismatch, and the run goes on with
    the other payments (comparing it as text raised TypeError, which failed every run there)."""
    victim, proxy, counts = _run_through_tampering_proxy(
        peers, tmp_path, monkeypatch, "nonhex-1", tamper=lambda a: a.update(MaXacThuc="Mã xác thực"))
    assert proxy.tampered == 1
    assert counts["platform_rejected"] == 1 and counts["found_paid"] == 11 and counts["receipts_accepted"] == 11
    letters = store().dead_letters(payment_receipts.FLOW)
    assert [(d["record_key"], d["stage"], d["error_class"]) for d in letters] == [(victim, "platform",
                                                                                  "ChecksumMismatch")]
    assert all(r["PaymentReference"] != victim for r in peers.ledger_receipts())


def test_a_paid_payment_answered_failed_outside_the_checksum_is_not_recorded_failed(peers, tmp_path, monkeypatch):
    """TrangThaiGD is outside the QUERY answer's checksum (contract §6.6), so "failed" is no more
    proven than "paid": a paid payment whose answer a man in the middle turned to "4" was recorded
    failed at the one-stop and never asked again, its receipt never booked. A failed status is
    believed only when the platform has no receipt for it (GET_BILL); a receipt for a "failed"
    payment is dead-lettered for a person, and once replayed the payment is booked once."""
    victim, proxy, counts = _run_through_tampering_proxy(
        peers, tmp_path, monkeypatch, "flip-1", tamper=lambda a: a.update(TrangThaiGD="4"))
    assert proxy.tampered == 1
    assert (counts["found_paid"], counts["found_failed"], counts["platform_rejected"]) == (11, 8, 1)
    assert counts["fees_updated"] == 19 and counts["receipts_accepted"] == 11
    letters = store().dead_letters(payment_receipts.FLOW)
    assert [(d["record_key"], d["stage"]) for d in letters] == [(victim, "platform")]
    assert [(e["field"], e["rule"]) for e in letters[0]["errors"]] == [("TrangThaiGD", "no_receipt_if_failed")]
    assert peers.onestop_payments()[victim]["status"] == "pending", "not recorded failed"
    with store().engine.connect() as conn_:
        assert conn_.execute(select(payment_txn.c.platform_status).where(payment_txn.c.reference == victim)
                             ).scalar_one() == "pending"

    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_PLATFORM_DEFAULT",
                       json.dumps(peers.connections(tmp_path)["payment_platform_default"]))
    ids, references = payment_receipts.replay(store(), record_key=victim, by="test")
    assert references == [victim]
    counts = run("flip-2", tmp_path)["counts"]
    assert counts["found_paid"] == 1 and counts["receipts_accepted"] == 1 and counts["mismatches"] == 0
    assert_three_systems_agree(peers)


def _resigned(change):
    """A tamper that changes a QUERY answer and signs it again with the partner's secret: what the
    platform itself would send."""
    def tamper(answer: dict) -> None:
        change(answer)
        answer["MaXacThuc"] = checksum(answer, ANSWER_ORDERS["QUERY"], PAY_SECRET)
    return tamper


@pytest.mark.parametrize("field,value", [("ThoiGianGD", lambda t: t[:12]), ("SoTien", lambda a: f"{a:_}"),
                                         ("SoTien", lambda a: str(a).translate({ord(d): 0xFF10 + int(d)
                                                                                for d in "0123456789"}))])
def test_a_signed_answer_with_a_time_or_amount_not_as_the_contract_writes_it_is_not_believed(
        peers, tmp_path, monkeypatch, field, value):
    """ThoiGianGD is yyyyMMddHHmmss, 14 digits (contract §6.1), SoTien whole VND in digits (§4.9).
    A paid answer whose time lacks its seconds ("202611021030") was read as 10:03:00 and told to
    the one-stop as the payment's time; an amount written "150_000" or in full-width digits was
    read as a number the ledger mapping then refused. Such an answer is not the documented one:
    nothing of it is recorded, and the payment is asked again."""
    victim, proxy, counts = _run_through_tampering_proxy(
        peers, tmp_path, monkeypatch, "format-1", tamper=_resigned(lambda a: a.update({field: value(a[field])})))
    assert proxy.tampered == 1
    assert (counts["found_paid"], counts["answers_unreadable"], counts["receipts_accepted"]) == (11, 1, 11)
    assert peers.onestop_payments()[victim]["status"] == "pending"
    with store().engine.connect() as conn_:
        row = conn_.execute(select(payment_txn).where(payment_txn.c.reference == victim)).one()
    assert (row.platform_status, row.paid_at, row.platform_amount) == ("pending", None, None)
    assert store().dead_letters(payment_receipts.FLOW) == []
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_PLATFORM_DEFAULT",
                       json.dumps(peers.connections(tmp_path)["payment_platform_default"]))
    counts = run("format-2", tmp_path)["counts"]
    assert counts["found_paid"] == 1 and counts["receipts_accepted"] == 1 and counts["mismatches"] == 0
    assert_three_systems_agree(peers)


def test_a_batch_larger_than_the_ledger_takes_is_split_not_blamed_on_a_receipt(peers, tmp_path, monkeypatch):
    """The ledger refuses a batch of more receipts than it takes with a ValidationFault about the
    batch (Field "Receipt", rule maxOccurs, Index the first one too many). That is no fault of the
    receipt at that index: it was dead-lettered, and each resubmission one receipt smaller
    dead-lettered the next, until the batch fitted. The batch is split instead, and every receipt
    booked once."""
    import mocks.ministry_ledger.app as ledger_app

    monkeypatch.setattr(ledger_app, "MAX_BATCH", 2)  # the connection's batch_size is 5
    counts = run("split-1", tmp_path)["counts"]
    assert counts["receipts_accepted"] == 12 and counts["receipts_rejected"] == 0 and counts["mismatches"] == 0
    assert store().dead_letters(payment_receipts.FLOW) == []
    assert_three_systems_agree(peers)


class _LedgerProxy(ForwardingProxy):
    """Sits between the bus and the ministry ledger and rewrites the answer of its first
    ``SubmitReceipts`` call with ``tamper(status, body) -> (status, body)``; forwards the rest."""

    forwarded = ("content-type", "soapaction")

    def __init__(self, target: str, tamper):
        self.tamper, self.tampered = tamper, 0
        super().__init__(target, T)

    def answer(self, body, forward):
        upstream = forward()
        status, content = upstream.status_code, upstream.content
        if b"SubmitReceiptsRequest" in body and not self.tampered:
            status, content = self.tamper(status, content)
            self.tampered += 1
        return status, content, upstream.headers.get("Content-Type", "text/xml; charset=utf-8")


@contextmanager
def _through_ledger_proxy(peers, tmp_path, monkeypatch, tamper) -> Iterator[_LedgerProxy]:
    proxy = _LedgerProxy(peers.ledger.url, tamper)
    conn = peers.connections(tmp_path)["ministry_ledger_default"]
    conn["port"] = int(proxy.url.rsplit(":", 1)[1])
    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_LEDGER_DEFAULT", json.dumps(conn))
    try:
        yield proxy
    finally:
        proxy.close()
        monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_LEDGER_DEFAULT",
                           json.dumps(peers.connections(tmp_path)["ministry_ledger_default"]))


def _ledger_states() -> Counter:
    with store().engine.connect() as conn:
        return Counter(conn.execute(select(payment_txn.c.ledger_state).where(
            payment_txn.c.platform_status == "paid")).scalars())


def test_a_receipt_missing_from_the_ledgers_answer_is_not_taken_as_booked_but_sent_again(
        peers, tmp_path, monkeypatch):
    """The ledger answers a batch with a Result per receipt. A receipt the answer leaves out was
    taken as accepted, so a receipt the ledger never confirmed was counted booked and never sent
    again. It is unknown now: left to be submitted again (the ledger answers the same content
    "unchanged", so nothing is booked twice), and counted as unconfirmed."""
    from lxml import etree

    dropped = []

    def drop_first_result(status, body):
        root = etree.fromstring(body)
        result = next(e for e in root.iter() if isinstance(e.tag, str) and etree.QName(e).localname == "Result")
        dropped.append(next(c.text for c in result if etree.QName(c).localname == "ReceiptNumber"))
        result.getparent().remove(result)
        return status, etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    tasks.collect_payments(connection_from_env, run_id="gap-1", task_id="collect")
    tasks.update_onestop_fees(connection_from_env, run_id="gap-1", task_id="fees")
    with _through_ledger_proxy(peers, tmp_path, monkeypatch, drop_first_result) as proxy:
        counts = tasks.submit_payment_receipts(connection_from_env, run_id="gap-1", task_id="receipts")
    assert proxy.tampered == 1 and len(dropped) == 1
    assert (counts["receipts_accepted"], counts["receipts_unchanged"], counts.get("receipts_unconfirmed")) == (11, 0, 1)
    assert len(peers.ledger_receipts()) == 12, "the ledger did book it"
    assert _ledger_states() == {"accepted": 11, "todo": 1}
    with store().engine.connect() as conn:
        assert conn.execute(select(payment_txn.c.ledger_state).where(payment_txn.c.receipt_no == dropped[0])
                            ).scalar_one() == "todo"

    counts = run("gap-2", tmp_path)["counts"]
    assert (counts["receipts_accepted"], counts["receipts_unchanged"], counts["receipts_unconfirmed"]) == (0, 1, 0)
    assert counts["mismatches"] == 0 and _ledger_states() == {"accepted": 11, "unchanged": 1}
    assert len(peers.ledger_receipts()) == 12
    assert_three_systems_agree(peers)


def test_a_ledger_refusal_naming_no_receipt_of_the_batch_fails_the_batch_and_blames_none(
        peers, tmp_path, monkeypatch):
    """A ValidationFault names the receipt it refuses (ReceiptNumber, Index). One that names none
    (or a receipt not in the batch) was blamed on the batch's first receipt, which was
    dead-lettered for nothing it did. It is a protocol error now: the batch fails, nothing of it is
    dead-lettered or marked booked, and the next run books every receipt once."""
    fault = ('<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
             'envelope/" xmlns:tns="urn:vn:gov:mof:receiptledger:v1"><soap:Body><soap:Fault><faultcode>soap:Client'
             '</faultcode><faultstring>PaidAt dateTime</faultstring><detail><tns:ValidationFault><tns:Code>'
             'VALIDATION_FAILED</tns:Code><tns:ReceiptNumber>{number}</tns:ReceiptNumber><tns:Field>PaidAt'
             '</tns:Field><tns:Rule>dateTime</tns:Rule><tns:Message>not a dateTime</tns:Message>'
             '</tns:ValidationFault></detail></soap:Fault></soap:Body></soap:Envelope>')
    tasks.collect_payments(connection_from_env, run_id="blame-1", task_id="collect")
    tasks.update_onestop_fees(connection_from_env, run_id="blame-1", task_id="fees")
    for number in ("", "BL1999-999999"):
        with _through_ledger_proxy(peers, tmp_path, monkeypatch,
                                   lambda status, body: (500, fault.format(number=number).encode())) as proxy:
            with pytest.raises(ProtocolError, match="names no receipt"):
                tasks.submit_payment_receipts(connection_from_env, run_id="blame-1", task_id="receipts")
        assert proxy.tampered == 1
        assert store().dead_letters(payment_receipts.FLOW) == []
        assert _ledger_states() == {"todo": 12}, "nothing of the batch is taken as booked or refused"
    held = len(peers.ledger_receipts())  # the proxy let the batch reach the ledger each time
    assert held == 5
    counts = run("blame-2", tmp_path)["counts"]
    assert (counts["receipts_accepted"], counts["receipts_unchanged"], counts["receipts_rejected"]) == (7, 5, 0)
    assert counts["mismatches"] == 0 and store().dead_letters(payment_receipts.FLOW) == []
    assert_three_systems_agree(peers)


def _late_settle(peers: Peers, reference: str) -> dict:
    [done] = requests.post(peers.platform.url + "/_admin/payments/settle", json={
        "references": [reference], "outcome": "paid", "late": True}, timeout=T).json()["settled"]
    peers.platform.wait_callbacks(10)
    return done


def _get_bills(run_id: str) -> list[str]:
    with store().engine.connect() as conn:
        return sorted(k for k in conn.execute(select(exchange_key.c.record_key).join(
            exchange_log, exchange_log.c.id == exchange_key.c.exchange_id).where(
            exchange_log.c.run_id == run_id, exchange_log.c.operation == "GET_BILL")).scalars()
            if k.startswith("dvc"))


@pytest.mark.parametrize("callback", ["lost", "delivered"])
def test_a_failed_payment_the_platform_later_reports_paid_is_booked_once(peers, tmp_path, callback):
    """The QUERY backs up lost callbacks (contract §7.11), and the one-stop takes a paid result for
    a failed request (docs/wire/onestop.md). A payment the bus once recorded failed was never asked
    again, so when the platform completed it later (its callback lost) it was never booked: the
    one-stop kept "failed", the ledger had no receipt, and the reconciliation said
    failed_not_recorded for ever. A failed payment is asked again for FAILED_ASK_FOR (without
    a GET_BILL while QUERY still says failed); once paid, its receipt is fetched, the one-stop
    told and the ledger booked, each once."""
    if callback == "lost":
        assert requests.post(peers.platform.url + "/_admin/callbacks", json={"lost_share": 1.0}, timeout=T).ok
    first = run("late-1", tmp_path)["counts"]
    assert (first["found_paid"], first["found_failed"], first["receipts_accepted"]) == (12, 8, 12)
    failed = sorted(ref for ref, p in peers.platform_payments().items() if p["status"] == "failed")
    assert len(failed) == 8 and all(peers.onestop_payments()[ref]["status"] == "failed" for ref in failed)
    victim = failed[0]

    done = _late_settle(peers, victim)
    assert (done["status"], done["callback"]) == ("paid", "lost" if callback == "lost" else "queued")
    assert peers.onestop_payments()[victim]["status"] == ("failed" if callback == "lost" else "paid")

    counts = run("late-2", tmp_path)["counts"]
    assert counts["queried"] == 11 + 8, "the pending and the failed ones are asked"
    assert (counts["found_paid"], counts["found_failed"], counts["bills_fetched"]) == (1, 0, 1)
    assert _get_bills("late-2") == [victim], "no GET_BILL for the payments still failed"
    assert (counts["fees_updated"], counts["fees_already_recorded"]) == ((1, 0) if callback == "lost" else (0, 1))
    assert (counts["receipts_accepted"], counts["receipts_unchanged"]) == (1, 0)
    assert counts["mismatches"] == 0
    onestop = peers.onestop_payments()[victim]
    platform = peers.platform_payments()[victim]
    assert (onestop["status"], onestop["transactionId"], onestop["amount"]) == (
        "paid", platform["MaGiaoDich"], platform["SoTien"])
    assert [r["ReceiptNumber"] for r in peers.ledger_receipts() if r["PaymentReference"] == victim] == [
        platform["SoBienLai"]]
    assert_three_systems_agree(peers)

    again = run("late-3", tmp_path)["counts"]
    assert again["queried"] == 11 + 7 and again["found_paid"] == 0 and again["bills_fetched"] == 0
    assert (again["fees_updated"], again["receipts_accepted"], again["mismatches"]) == (0, 0, 0)
    assert Counter(r["PaymentReference"] for r in peers.ledger_receipts())[victim] == 1
    assert_three_systems_agree(peers)


def _operations_for(run_id: str, reference: str) -> list[str]:
    """The operations the steps of ``run_id`` that act on a payment (not the reconciliation, which
    only reads) made naming the payment ``reference``, by the exchange log."""
    with store().engine.connect() as conn:
        return sorted(conn.execute(select(exchange_log.c.operation).join(
            exchange_key, exchange_log.c.id == exchange_key.c.exchange_id).where(
            exchange_log.c.run_id == run_id, exchange_log.c.task_id != "reconcile",
            exchange_key.c.record_key == reference)).scalars())


def _states(reference: str) -> tuple:
    with store().engine.connect() as conn:
        return tuple(conn.execute(select(payment_txn.c.platform_status, payment_txn.c.onestop_state,
                                         payment_txn.c.ledger_state).where(payment_txn.c.reference == reference)).one())


def test_a_discarded_ledger_dead_letter_is_never_submitted_again_and_reported_discarded_not_missing(
        peers, tmp_path, monkeypatch):
    """A receipt the mapping refused, booked at the ministry by other means: discarding its dead
    letter resolves it ("discarded by <who>: <why>"), the receipt is never mapped or submitted
    again, and the reconciliation lists the payment as discarded instead of a missing receipt for
    ever (found in review: discard handled dossier letters only, so the letter could only be
    replayed, or left to block the payment and be reported missing at every run)."""
    victim = min((p for p in peers.platform_payments().values() if p["status"] == "paid"),
                 key=lambda p: p["MaThamChieu"])
    ref = victim["MaThamChieu"]
    read = payment_receipts._payer  # noqa: SLF001 - over the ledger's 200 characters: the mapping refuses it
    monkeypatch.setattr(payment_receipts, "_payer", lambda onestop, code: "X" * 300 if code == victim["MaHoSo"]
                        else read(onestop, code))
    counts = run("disc-1", tmp_path)["counts"]
    assert (counts["receipts_accepted"], counts["receipts_rejected"]) == (11, 1)
    assert counts["mismatches_by_kind"] == {"missing_receipt": 1}
    monkeypatch.setattr(payment_receipts, "_payer", read)
    [letter] = store().dead_letters(payment_receipts.FLOW)
    assert (letter["record_key"], letter["stage"]) == (ref, "mapping")

    result = payment_receipts.discard(store(), record_key=ref, by="nguyen.van.a", reason="ghi sổ tay tại Bộ")
    assert (result.dead_letters, result.references, result.refused) == ([letter["id"]], [ref], {})
    [done] = store().dead_letters(payment_receipts.FLOW, unresolved_only=False)
    assert done["resolution"] == "discarded by nguyen.van.a: ghi sổ tay tại Bộ"
    assert _states(ref) == ("paid", "updated", "discarded")

    for run_id in ("disc-2", "disc-3"):
        summary = run(run_id, tmp_path)
        counts = summary["counts"]
        assert _operations_for(run_id, ref) == [], "nothing is sent for the discarded payment"
        assert (counts["receipts_accepted"], counts["receipts_unchanged"], counts["receipts_rejected"]) == (0, 0, 0)
        assert (counts["reconciled_paid"], counts["reconciled_agreed"], counts["reconciled_discarded"]) == (12, 11, 1)
        assert counts["mismatches"] == 0 and summary["open_mismatches"] == []
        report = Path(summary["report_path"]).read_text(encoding="utf-8")
        assert "## Discarded by an operator (1)" in report
        assert (f"| {ref} | {victim['MaHoSo']} | book the receipt in the ministry ledger | "
                f"discarded by nguyen.van.a: ghi sổ tay tại Bộ |") in report
    assert [r for r in peers.ledger_receipts() if r["PaymentReference"] == ref] == []
    assert store().dead_letters(payment_receipts.FLOW) == []
    assert _states(ref) == ("paid", "updated", "discarded")


def test_a_discarded_onestop_dead_letter_is_not_recorded_again_while_its_receipt_is_booked(peers, tmp_path):
    """The one-stop refused a paid payment's result (no bank named: 422): discarded (the fee was
    recorded by hand), the result is never sent again, the receipt the letter held back is booked
    once, and the one-stop's disagreement is the discard's, not a mismatch."""
    victim = min((p for p in peers.platform_payments().values() if p["status"] == "paid"),
                 key=lambda p: p["MaThamChieu"])
    ref = victim["MaThamChieu"]
    tasks.collect_payments(connection_from_env, run_id="od-1", task_id="collect")
    with store().begin() as conn:
        conn.execute(payment_txn.update().where(payment_txn.c.reference == ref).values(bank=None))
    tasks.update_onestop_fees(connection_from_env, run_id="od-1", task_id="fees")
    tasks.submit_payment_receipts(connection_from_env, run_id="od-1", task_id="receipts")
    counts = tasks.reconcile_payments(connection_from_env, run_id="od-1", task_id="reconcile",
                                      report_dir=str(tmp_path / "reports"))["counts"]
    assert counts["mismatches_by_kind"] == {"fee_not_paid": 1, "missing_receipt": 1}
    [letter] = store().dead_letters(payment_receipts.FLOW)
    assert (letter["record_key"], letter["stage"], [e["field"] for e in letter["errors"]]) == (ref, "onestop", ["bank"])

    assert payment_receipts.discard(store(), dead_letter_ids=[letter["id"]], by="qa", reason="ghi tay").references \
        == [ref]
    summary = run("od-2", tmp_path)
    counts = summary["counts"]
    assert _operations_for("od-2", ref) == ["SubmitReceipts"], "its receipt only: no payment_result"
    assert (counts["fees_updated"], counts["fees_already_recorded"], counts["receipts_accepted"]) == (0, 0, 1)
    assert (counts["reconciled_agreed"], counts["reconciled_discarded"], counts["mismatches"]) == (11, 1, 0)
    assert peers.onestop_payments()[ref]["status"] == "pending"
    assert [r["ReceiptNumber"] for r in peers.ledger_receipts() if r["PaymentReference"] == ref] == [victim["SoBienLai"]]
    assert "| record the fee's result at the one-stop | discarded by qa: ghi tay |" in \
        Path(summary["report_path"]).read_text(encoding="utf-8")
    run("od-3", tmp_path)
    assert _operations_for("od-3", ref) == []


class _NoReceipts:
    def list_receipts(self, start, end):
        return []

    def get_receipt(self, number):
        return None


def test_a_discarded_platform_dead_letter_is_never_asked_again_and_a_source_one_is_refused(tmp_path):
    """A payment the platform refused to answer for, discarded: never asked again (not even when
    the one-stop's view of it changes), no fee or receipt step, listed as discarded by the
    reconciliation; a malformed one-stop request (stage ``source``) is refused by name."""
    bus = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_schema()
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    onestop = _ThreeRequests()
    onestop.rows.append({"reference": "R4", "dossierNo": "000.00.01.H49-261101-0001", "amount": -5})
    payment_receipts.collect_payments(bus, onestop, _RefusingPlatform(), run_id="r0", clock=lambda: t0)
    letters = {d["record_key"]: d for d in bus.dead_letters(payment_receipts.FLOW)}
    assert {k: d["stage"] for k, d in letters.items()} == {"R1": "platform", "R2": "platform", "R4": "source"}

    result = payment_receipts.discard(bus, dead_letter_ids=[letters["R1"]["id"], letters["R4"]["id"]], by="qa",
                                      reason="nền tảng không trả lời")
    assert (result.dead_letters, result.references) == ([letters["R1"]["id"]], ["R1"])
    assert list(result.refused) == [letters["R4"]["id"]] and "stage source" in result.refused[letters["R4"]["id"]]
    assert sorted(d["record_key"] for d in bus.dead_letters(payment_receipts.FLOW)) == ["R2", "R4"]

    onestop.rows[0]["status"] = "paid"  # the one-stop's view changes: a discarded one is not asked again
    platform = _RefusingPlatform()
    payment_receipts.collect_payments(bus, onestop, platform, run_id="r1", clock=lambda: t0 + timedelta(hours=1),
                                      full_listing=True)
    assert platform.asked == [("QUERY", "R3")]
    with bus.engine.connect() as conn:
        assert conn.execute(select(payment_txn.c.platform_status, payment_txn.c.next_ask_at).where(
            payment_txn.c.reference == "R1")).one() == ("discarded", None)
    report = payment_receipts.reconcile(bus, onestop, _NoReceipts(), run_id="r1")
    assert (report.discarded, report.paid, report.agreed, report.items) == (1, 0, 0, [])
    assert payment_receipts.discarded_payments(bus) == [{
        "reference": "R1", "dossier_code": "000.00.01.H49-261101-0001",
        "resolution": "discarded by qa: nền tảng không trả lời",
        "not_done": ["ask the payment platform (QUERY, GET_BILL)"]}]
