"""Fixtures shared by the connector tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.connectors.local_peer import Handler, Peer


@pytest.fixture
def peers() -> Iterator[Callable[[Handler], Peer]]:
    """Makes local peers (:class:`~tests.connectors.local_peer.Peer`); all are closed afterwards."""
    made: list[Peer] = []

    def make(handle: Handler) -> Peer:
        peer = Peer(handle)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()
