import json

import pytest
import requests

from connectors.connection import Secret, connection_from_env
from connectors.errors import AuthenticationFailed, ConfigurationError, ProtocolError
from connectors.one_stop.client import OneStopClient
from connectors.transport import MemoryRecorder
from tests.conftest import ONESTOP_KEY
from tests.connectors.local_peer import answer

KEY = "stray-whitespace-key-Q4"


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


def test_a_list_that_shrinks_while_read_is_read_again_and_each_item_yielded_once(standins, monkeypatch):
    """Offset paging over a list that loses an item on a page already read: the next page's first
    item slid back and was never seen. Reading goes back over what a drop of the total can have
    moved, yielding only what was not yielded; a list that keeps shrinking is PeerUnavailable."""
    from connectors.errors import PeerUnavailable

    world = [{"dossierNo": f"D-{i:02d}", "version": 1} for i in range(10)]
    calls: list[int] = []

    def page(self, path, operation, params):
        calls.append(params["page"])
        if len(calls) == 2:  # after the first page, D-01 (read already) leaves the list
            world.pop(1)
        start = (params["page"] - 1) * params["size"]
        return [dict(d) for d in world[start:start + params["size"]]], len(world)

    monkeypatch.setattr(OneStopClient, "_page", page)
    client = OneStopClient(standins.onestop.url, Secret(ONESTOP_KEY), page_size=3)
    items = [d["dossierNo"] for p in client.iter_dossiers() for d in p]
    assert sorted(items) == [f"D-{i:02d}" for i in range(10)] and len(items) == len(set(items))
    assert calls == [1, 2, 1, 2, 3]  # back to page 1 once page 2 showed the drop; 9 left, 3 pages

    shrinking = {"total": 1000}

    def always_shrinking(self, path, operation, params):  # one item leaves before every page read
        shrinking["total"] -= 1
        return [{"dossierNo": f"D-{shrinking['total']}"}], shrinking["total"]

    monkeypatch.setattr(OneStopClient, "_page", always_shrinking)
    with pytest.raises(PeerUnavailable, match="the list kept shrinking while it was read"):
        for _ in client.iter_dossiers():
            pass


def test_a_utf8_answer_labelled_latin1_is_read_as_utf8(peers):
    """Java servers label JSON 'charset=ISO-8859-1' by default (Spring's string converter) while
    the bytes are UTF-8. Decoding by the label always succeeds, so 'Nguyễn Thị Hồng' was stored and
    forwarded as 'Nguyá»\\x85n Thá»\\x8b Há»\\x93ng' with no error. RFC 8259: JSON between systems is
    UTF-8."""
    name = "Nguyễn Thị Hồng"
    dossier = {"dossierNo": "000.00.01.H49-240315-0001", "applicantName": name}
    peer = peers(lambda h, body: answer(h, 200, json.dumps(dossier, ensure_ascii=False).encode("utf-8"),
                                        "application/json;charset=ISO-8859-1"))
    got = OneStopClient(peer.url, Secret(ONESTOP_KEY)).get_dossier(dossier["dossierNo"])
    assert got["applicantName"] == name


@pytest.mark.parametrize("key", [KEY + "\n", " " + KEY, KEY + "\r\n", KEY[:8] + "\n" + KEY[8:], KEY + "ạ"])
def test_an_api_key_that_is_not_a_header_value_is_a_configuration_error_never_quoting_it(peers, key):
    """A key read from a secrets file keeps its newline: requests refused the header with
    ``InvalidHeader: ... header value: 'review-onestop-key-Q4\\n'`` -- the key itself, in an exception
    outside the error tree, which Airflow writes to the task log."""
    peer = peers(lambda h, body: answer(h, 200, {"items": [], "nextCursor": "", "hasMore": False}))
    env = {"AIRFLOW_CONN_ONESTOP_DEFAULT": json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": peer.port, "schema": "http", "password": key})}
    with pytest.raises(ConfigurationError, match="connection 'onestop_default': the password") as info:
        OneStopClient.from_connection(connection_from_env("onestop_default", env))
    assert KEY not in str(info.value) and KEY[8:] not in str(info.value)
    with pytest.raises(ConfigurationError, match="onestop: the value of the X-Api-Key header") as info:
        OneStopClient(peer.url, Secret(key))
    assert KEY not in str(info.value) and KEY[8:] not in str(info.value)
    assert peer.requests == []


def test_a_redirect_to_another_host_never_carries_the_api_key(peers):
    """The one-stop (or a proxy in front of it) answered 302 to another host: requests followed it
    and sent X-Api-Key there (it strips only Authorization on a host change)."""
    elsewhere = peers(lambda h, body: answer(h, 200, {"items": [], "nextCursor": "", "hasMore": False}))
    onestop = peers(lambda h, body: answer(
        h, 302, b"", "text/html",
        headers={"Location": f"http://localhost:{elsewhere.port}/api/v1/dossiers/changes"}))
    recorder = MemoryRecorder()
    with pytest.raises(ProtocolError, match="HTTP 302 redirect to host localhost refused"):
        OneStopClient(onestop.url, Secret(KEY), recorder=recorder).changes()
    assert elsewhere.requests == [] and [e.response_status for e in recorder.exchanges] == [302]


# -- one-stop paged lists under steady churn -----------------------------------------------------------


def test_a_list_read_whole_under_steady_churn_is_not_refused(monkeypatch):
    """A clerk changes one already-read dossier of the window before every read of page 2 (it
    leaves the window: the change feed has it). Whole passes over the list each saw the total drop
    and gave up after five, though every dossier still in the window had been yielded; reading back
    over the pages a drop can have moved items across finishes and misses none (review)."""
    world = [{"dossierNo": f"D-{i:02d}", "version": 1} for i in range(10)]

    def page(self, path, operation, params):
        if params["page"] == 2:  # between page 1 and page 2 of each pass, a read dossier leaves
            world.pop(0)
        start = (params["page"] - 1) * params["size"]
        return [dict(d) for d in world[start:start + params["size"]]], len(world)

    monkeypatch.setattr(OneStopClient, "_page", page)
    client = OneStopClient("http://127.0.0.1:9", Secret("k"), page_size=3)
    seen: list[str] = []
    for items in client.iter_dossiers(modified_from="2026-11-01T00:00:00+07:00",
                                      modified_to="2026-11-02T00:00:00+07:00"):
        seen.extend(d["dossierNo"] for d in items)
    assert {d["dossierNo"] for d in world} <= set(seen)


def test_a_change_feed_whose_cursor_goes_back_is_refused_not_read_for_ever(monkeypatch):
    """Items are in seq order and a cursor continues after the page it ends (docs/wire/onestop.md).
    A feed whose nextCursor leads back to a page already read (A -> B -> A ...) was read in a loop
    for ever, staging the same events again and again; an item whose seq is not past every seq
    read before is now a ProtocolError naming the seqs, before its page is handed on."""
    from connectors.one_stop.client import ChangeEvent, ChangePage

    def events(*seqs):
        return [ChangeEvent(s, "2026-11-02T08:00:00+07:00", {"dossierNo": f"D-{s}"}) for s in seqs]

    feed = {None: ChangePage(events(1, 2), "A", True), "A": ChangePage(events(3, 4), "B", True),
            "B": ChangePage(events(1, 2), "A", True)}
    calls: list[str | None] = []

    def changes(self, after=None):
        calls.append(after)
        if len(calls) > 10:
            raise AssertionError("the feed was read in a loop")
        return feed[after]

    monkeypatch.setattr(OneStopClient, "changes", changes)
    client = OneStopClient("http://127.0.0.1:9", Secret(KEY))
    seen = []
    with pytest.raises(ProtocolError) as info:
        for page in client.iter_changes(None):
            seen.extend(e.seq for e in page.events)
    assert seen == [1, 2, 3, 4] and calls == [None, "A", "B"]
    assert "seq 1" in str(info.value) and "seq 4" in str(info.value) and "'B'" in str(info.value)

    feed = {None: ChangePage(events(5, 3), "A", False)}  # out of order within one page
    calls.clear()
    with pytest.raises(ProtocolError, match="seq 3 after seq 5"):
        list(client.iter_changes(None))


def test_a_list_paged_by_another_size_than_asked_is_refused_not_read_with_gaps(peers):
    """A server that caps the page size (asked 5, answers 2 a page: offset (page-1)*2) made the
    client read pages 1 and 2 of its size as if they held items 0..9, and stop: items 4..6 of 7
    were never seen (a payment listing missing requests, an agreement report missing dossiers).
    A page that is short while its total says more follow is now a ProtocolError naming it."""
    from urllib.parse import parse_qs, urlsplit

    world = [{"reference": f"R-{i}", "amount": 1000} for i in range(7)]

    def capped(h, _body):
        query = parse_qs(urlsplit(h.path).query)
        page, size = int(query["page"][0]), min(int(query["size"][0]), 2)
        answer(h, 200, {"items": world[(page - 1) * size:page * size], "page": page, "size": size,
                        "total": len(world)})

    peer = peers(capped)
    client = OneStopClient(peer.url, Secret(ONESTOP_KEY))
    read = []
    with pytest.raises(ProtocolError) as info:
        for page in client.iter_payments(status=None, size=5):
            read.extend(p["reference"] for p in page)
    assert read == []  # nothing handed on from a page that does not fit the paging
    assert "payments: page 1 holds 2 items" in str(info.value) and "size 5" in str(info.value)
    assert "total 7" in str(info.value)
    # the same server read with a size it honours gives every item once
    assert [p["reference"] for page in client.iter_payments(status=None, size=2) for p in page] == \
        [f"R-{i}" for i in range(7)]
