"""Paid fees: the payment platform, the one-stop and the ministry ledger agree — until a receipt
goes missing from the ledger, which the agreement report then names with its dossier and age."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo
from pathlib import Path

import pytest
import requests

from connectors.connection import connection_from_env
from lienthong import tasks
from lienthong.reports import agreement as agreement_mod
from lienthong.reports import tasks as report_tasks
from lienthong.store import Store

T = 20
ONESTOP_KEY = "test-onestop-key"
PARTNER = "DVC_H49"
PAY_SECRET = "test-payment-secret-Kx7"
LEDGER_USER = "lienthong.h49"
LEDGER_PASSWORD = "test-ledger-secret-Wq3"
AS_OF = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
VN = ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
def payment_peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mocks.ministry_ledger import MinistryLedgerMock
    from mocks.one_stop import OneStopMock
    from mocks.payment_platform import PaymentPlatformMock

    state = tmp_path / "mocks"
    onestop = OneStopMock(state_dir=state, port=0, api_key=ONESTOP_KEY, seed_dossiers=40,
                          payment_secret=PAY_SECRET, payment_partner=PARTNER).start()
    platform = PaymentPlatformMock(state_dir=state, port=0, seed=49, partner_code=PARTNER, secret=PAY_SECRET,
                                   seed_dossiers=40, callback_url=onestop.url + "/api/v1/payments/confirm",
                                   lost_share=0.3).start()
    onestop.payment_platform_url = platform.url
    ledger = MinistryLedgerMock(state_dir=state, port=0, username=LEDGER_USER, password=LEDGER_PASSWORD).start()

    def hp(url: str) -> tuple[str, int]:
        host, port = url.removeprefix("http://").split(":")
        return host, int(port)

    o, p, lg = hp(onestop.url), hp(platform.url), hp(ledger.url)
    conns = {
        "onestop_default": {"conn_type": "http", "host": o[0], "port": o[1], "schema": "http",
                            "password": ONESTOP_KEY, "extra": {"page_size": 25, "read_timeout": 5}},
        "payment_platform_default": {"conn_type": "http", "host": p[0], "port": p[1], "schema": "http",
                                     "login": PARTNER, "password": PAY_SECRET,
                                     "extra": {"read_timeout": 5, "max_attempts": 2}},
        "ministry_ledger_default": {"conn_type": "http", "host": lg[0], "port": lg[1], "schema": "http",
                                    "login": LEDGER_USER, "password": LEDGER_PASSWORD,
                                    "extra": {"operation_timeout": 1.0, "max_attempts": 2, "batch_size": 5}},
        "lienthong_db": {"conn_type": "sqlite", "host": str(tmp_path / "bus.db")},
        "ministry_db_default": {"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")},
    }
    for conn_id, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    try:
        yield {"onestop": onestop, "platform": platform, "ledger": ledger, "state": state}
    finally:
        platform.wait_callbacks(5)
        for peer in (platform, onestop, ledger):
            peer.stop()


def test_a_receipt_missing_from_the_ledger_is_reported(payment_peers, tmp_path):
    platform = payment_peers["platform"]
    requests.post(platform.url + "/_admin/payments/settle", json={"n": 8}, timeout=T).raise_for_status()
    platform.wait_callbacks(10)
    for step in (tasks.collect_payments, tasks.update_onestop_fees, tasks.submit_payment_receipts):
        step(connection_from_env, run_id="pay-1", task_id="test")

    report_tasks.check_agreement(connection_from_env, run_id="fees-1", check="fee_payment", as_of=AS_OF)
    store = Store(connection_from_env("lienthong_db").sqlalchemy_url())
    clean = agreement_mod.load_agreement(store, "fees-1").results[0]
    assert clean.note is None and clean.checked > 0
    assert clean.differences == [], [(d.record_key, d.aspect, d.value_a, d.value_b) for d in clean.differences]

    # the ministry ledger loses one receipt
    receipts = requests.get(payment_peers["ledger"].url + "/_state/receipts", timeout=T).json()["receipts"]
    assert receipts
    lost = receipts[0]
    number = lost.get("ReceiptNumber") or lost.get("receipt_number")
    with sqlite3.connect(payment_peers["state"] / "ministry_ledger.db") as db:
        assert db.execute("DELETE FROM receipts WHERE receipt_number = ?", (number,)).rowcount == 1
    payments = {p["MaThamChieu"]: p for p in requests.get(platform.url + "/_state/payments", timeout=T)
                .json()["payments"]}
    onestop = {p["reference"]: p for p in requests.get(payment_peers["onestop"].url + "/_state/payments",
                                                       timeout=T).json()["payments"]}
    reference = next(ref for ref, p in onestop.items() if p.get("receiptNo") == number)

    summary = report_tasks.run_agreement(connection_from_env, run_id="fees-2", checks=("fee_payment",),
                                         out_dir=tmp_path, as_of=AS_OF)
    result = agreement_mod.load_agreement(store, "fees-2").results[0]
    assert [(d.record_key, d.aspect) for d in result.differences] == [(reference, "ledger_missing")]
    d = result.differences[0]
    assert d.dossier_no == onestop[reference]["dossierNo"] and d.value_a == number
    # the platform's completion time (ThoiGianGD, Viet Nam time): when the receipt became due
    paid_at = datetime.strptime(payments[reference]["ThoiGianGD"], "%Y%m%d%H%M%S").replace(tzinfo=VN)
    assert d.since == paid_at.astimezone(UTC)
    assert d.age_seconds == int((AS_OF - d.since).total_seconds())
    assert d.last_exchange_id is not None  # the payment flow's last exchange about the reference
    assert reference in open(summary["html"], encoding="utf-8").read()
