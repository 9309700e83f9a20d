"""The full-sync ceiling times what a minimal client does with payloads that are already mapped:
its login and its posts. Making the payload texts (each clone's number put into its template's
mapped JSON) is the harness's preparation, not the client's work, and is never on its clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import clients


class FakePortal:
    """Logs in and posts without time passing; keeps what it was sent."""

    def __init__(self, url: str):
        self.calls = 0
        self.sent: list[tuple[str, list[str]]] = []

    def post(self, service: str, records_text: list[str], extra: str = "") -> None:
        self.calls += 1
        self.sent.append((service, list(records_text)))


def test_making_the_payloads_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(clients.time, "perf_counter", lambda: now[0])
    sent: list[FakePortal] = []
    monkeypatch.setattr(clients, "MinimalPortal", lambda url: sent.append(FakePortal(url)) or sent[-1])

    def made(kind: str, count: int) -> Iterator[str]:
        for i in range(count):
            now[0] += 1.0  # a second of the harness's own preparation per payload
            yield f'{{"{kind}":{i}}}'

    run = clients.run_ceiling("http://127.0.0.1:1", made("d", 120), made("p", 70), batch_size=50, chunk_size=50)
    assert run == {"deliver": 0.0, "progress": 0.0, "total": 0.0, "calls": 5}
    (portal,) = sent
    assert [(service, len(records)) for service, records in portal.sent] == [
        ("DongBoHoSoMC", 50), ("DongBoHoSoMC", 50), ("DongBoHoSoMC", 20),
        ("CapNhatTienDoHoSoMC", 50), ("CapNhatTienDoHoSoMC", 20)]


def test_the_client_s_own_time_is(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(clients.time, "perf_counter", lambda: now[0])

    class SlowPortal(FakePortal):
        def __init__(self, url: str):
            now[0] += 0.5  # the login
            super().__init__(url)

        def post(self, service: str, records_text: list[str], extra: str = "") -> None:
            now[0] += 2.0 if service == "DongBoHoSoMC" else 3.0
            super().post(service, records_text, extra)

    monkeypatch.setattr(clients, "MinimalPortal", SlowPortal)
    items: Any = lambda k, n: (f'{{"{k}":{i}}}' for i in range(n))  # noqa: E731
    run = clients.run_ceiling("http://127.0.0.1:1", items("d", 100), items("p", 50), batch_size=50, chunk_size=50)
    assert run == {"deliver": 4.5, "progress": 3.0, "total": 7.5, "calls": 3}
