"""``python -m mocks up`` also runs the payment platform and the ministry ledger."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from mocks.cli import build_parser, main

TIMEOUT = 5
REPO = Path(__file__).resolve().parents[2]


def test_new_port_options_default_to_18083_and_18084():
    args = build_parser().parse_args(["up"])
    assert (args.onestop_port, args.portal_port, args.payment_port, args.ledger_port) == (18081, 18082, 18083, 18084)
    assert args.payment_callback_url is None and args.payment_lost_share == 0.3


def test_a_public_callback_url_is_refused(capsys):
    assert main(["up", "--state-dir", "unused", "--payment-callback-url", "http://10.1.2.3/cb"]) == 2
    assert "127.0.0.1" in capsys.readouterr().err


def test_up_runs_all_four(tmp_path):
    env = {**os.environ, "LIENTHONG_MOCK_LEDGER_PASSWORD": "ledger-pw-789", "LIENTHONG_MOCK_PAYMENT_SECRET": "pay-s-1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mocks", "up", "--state-dir", str(tmp_path), "--onestop-port", "0", "--portal-port",
         "0", "--payment-port", "0", "--ledger-port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines = []
    try:
        for _ in range(30):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        urls = re.findall(r"http://127\.0\.0\.1:\d+(?=\s)", text)
        assert len(urls) == 4, text + process.stderr.read()
        payment, ledger = urls[2], urls[3]
        assert requests.get(payment + "/_state", timeout=TIMEOUT).json()["counts"]["payments"] == 31
        assert "ReceiptLedgerService" in requests.get(ledger + "/?wsdl", timeout=TIMEOUT).text
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "ledger-pw-789" not in text + out and "pay-s-1" not in text + out
    assert (tmp_path / "payment_platform.db").exists() and (tmp_path / "ministry_ledger.db").exists()
