"""``python -m mocks up``: both stand-ins in the foreground, state kept between runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mocks.cli import main

TIMEOUT = 5
REPO = Path(__file__).resolve().parents[2]


def _run_up(state_dir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mocks", "up", "--state-dir", str(state_dir), "--onestop-port", "0",
         "--portal-port", "0", "--payment-port", "0", "--ledger-port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    lines = []
    for _ in range(20):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    text = "".join(lines)
    urls = re.findall(r"http://127\.0\.0\.1:\d+(?=\s)", text)
    assert len(urls) >= 2, text + process.stderr.read()
    return process, text, urls


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    return out


def test_up_runs_both_and_a_second_run_sees_the_first_runs_state(tmp_path):
    process, text, urls = _run_up(tmp_path)
    try:
        onestop, portal = urls[0], urls[1]
        assert "test doors" in text
        assert requests.get(onestop + "/health", timeout=TIMEOUT).json() == {"status": "ok"}
        assert requests.get(portal + "/health", timeout=TIMEOUT).json() == {"status": "ok"}
        did = requests.post(onestop + "/_admin/advance", json={"new": 2, "changes": 1}, timeout=TIMEOUT).json()
        login = requests.post(portal + "/auth", json={"username": "lienthong.h49", "password": "demo-portal-secret"},
                              timeout=TIMEOUT).json()
        assert login["error_code"] == 0
    finally:
        assert "stopping" in _stop(process)
    assert (tmp_path / "onestop.db").exists() and (tmp_path / "national_portal.db").exists()

    process, _, urls = _run_up(tmp_path)
    try:
        state = requests.get(urls[0] + "/_state", timeout=TIMEOUT).json()
        assert state["lastSeq"] == did["lastSeq"] and state["counts"]["dossiers"] == 42
        calls = requests.get(urls[1] + "/_state/calls", timeout=TIMEOUT).json()
        assert calls["login"] == {"0": 1}
    finally:
        _stop(process)


def test_credentials_come_from_the_environment_and_are_never_printed(tmp_path):
    env = {
        "LIENTHONG_MOCK_ONESTOP_API_KEY": "key-from-env-123",
        "LIENTHONG_MOCK_PORTAL_USERNAME": "dvc.tamky",
        "LIENTHONG_MOCK_PORTAL_PASSWORD": "pw-from-env-456",
        "LIENTHONG_MOCK_PORTAL_UNIT": "000.00.05.H49",
    }
    process, text, urls = _run_up(tmp_path, env)
    try:
        headers = {"X-Api-Key": "key-from-env-123"}
        assert requests.get(urls[0] + "/api/v1/dossiers", headers=headers, timeout=TIMEOUT).status_code == 200
        assert requests.get(urls[0] + "/api/v1/dossiers", headers={"X-Api-Key": "demo-onestop-key"},
                            timeout=TIMEOUT).status_code == 401
        login = requests.post(urls[1] + "/auth", json={"username": "dvc.tamky", "password": "pw-from-env-456"},
                              timeout=TIMEOUT).json()
        assert login["error_code"] == 0
        assert "000.00.05.H49" in text and "dvc.tamky" in text
    finally:
        out = _stop(process)
    assert "key-from-env-123" not in text + out and "pw-from-env-456" not in text + out


def test_up_refuses_a_public_host(capsys):
    assert main(["up", "--host", "0.0.0.0", "--state-dir", "unused"]) == 2
    assert "loopback" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "5", "12001"])
def test_up_refuses_a_catalogue_size_out_of_range_with_2(tmp_path, capsys, size):
    """README: exit 2 for bad arguments. --catalogue-size 0 was read as 'not given' and the mocks came up
    with the default 3000 procedures instead of saying no."""
    assert main(["up", "--catalogue-size", size, "--state-dir", str(tmp_path),
                 "--onestop-port", "0", "--portal-port", "0", "--payment-port", "0", "--ledger-port", "0"]) == 2
    assert "catalogue_size must be an integer between" in capsys.readouterr().err
