import pytest
import requests

from connectors.connection import Secret
from connectors.errors import AuthenticationFailed
from connectors.one_stop.client import OneStopClient
from connectors.transport import MemoryRecorder
from tests.conftest import ONESTOP_KEY


def test_change_feed_pages_cover_every_event_once_in_order(standins):
    rec = MemoryRecorder()
    client = OneStopClient(standins.onestop.url, Secret(ONESTOP_KEY), recorder=rec, page_size=7)
    pages = list(client.iter_changes(None))
    seqs = [e.seq for p in pages for e in p.events]
    last_seq = requests.get(standins.onestop.url + "/_state", timeout=5).json()["lastSeq"]
    assert seqs == list(range(1, last_seq + 1))
    assert len(pages) == len(rec.exchanges) == -(-last_seq // 7) or len(pages) == -(-last_seq // 7) + 1
    assert all(e.operation == "changes" and e.outcome == "ok" for e in rec.exchanges)
    # resuming from the last cursor yields nothing new
    tail = client.changes(pages[-1].next_cursor)
    assert tail.events == [] and tail.next_cursor == pages[-1].next_cursor


def test_wrong_key_is_fatal_and_not_logged(standins):
    rec = MemoryRecorder()
    client = OneStopClient(standins.onestop.url, Secret("wrong-key-XYZ"), recorder=rec)
    with pytest.raises(AuthenticationFailed):
        client.changes(None)
    assert len(rec.exchanges) == 1
    assert rec.exchanges[0].request_headers["X-Api-Key"] == "***"


def test_dossier_by_number(standins):
    client = OneStopClient(standins.onestop.url, Secret(ONESTOP_KEY))
    first = next(iter(client.changes(None).events))
    current = client.get_dossier(first.dossier_no)
    assert current["dossierNo"] == first.dossier_no
    assert client.get_dossier("000.00.01.H49-991231-9999") is None
