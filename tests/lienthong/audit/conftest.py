"""A real SQLite bus database filled by BusRecorder with synthetic exchanges, and a seal key pair."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from connectors.transport import Exchange
from lienthong.audit.keys import generate_keypair, load_private_key, load_public_key
from lienthong.exchange_log import BusRecorder
from lienthong.store import Store

T0 = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)


def exchange(n: int) -> Exchange:
    body = json.dumps({"MaHoSo": f"HS-{n:04d}", "TrangThai": "2", "ghi_chu": "Tiếp nhận hồ sơ"},
                      ensure_ascii=False).encode()
    return Exchange(
        peer="national_portal" if n % 2 else "onestop",
        operation="DongBoHoSoMC" if n % 2 else "changes",
        method="POST",
        url="http://127.0.0.1:18082/api/DongBoHoSoMC",
        started_at=T0 + timedelta(seconds=n, microseconds=123),
        duration_ms=12.5 + n,
        attempt=1,
        outcome="ok",
        record_keys=(f"HS-{n:04d}", f"HS-{n + 1:04d}"),
        request_headers={"Content-Type": "application/json", "Authorization": "***"},
        request_body=body,
        response_status=200,
        response_headers={"Content-Type": "application/json"},
        response_body=b'{"error_code":0,"message":"th\xc3\xa0nh c\xc3\xb4ng"}',
        peer_code="0",
    )


def fill(store: Store, count: int, start: int = 1) -> None:
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    for n in range(start, start + count):
        recorder.record(exchange(n))


def cli_env(store: Store, tmp_path, monkeypatch) -> None:
    """The CLI (`lienthong audit ...`) run in-process on ``store``: its home in ``tmp_path`` and its
    bus database named by the connection the CLI resolves."""
    monkeypatch.setenv("LIENTHONG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_DB",
                       json.dumps({"conn_type": "sqlite", "host": store.url.removeprefix("sqlite:///")}))


@pytest.fixture
def keypair(tmp_path):
    private_path, public_path, _ = generate_keypair(tmp_path / "keys" / "seal.key")
    return load_private_key(private_path), load_public_key(public_path), private_path, public_path
