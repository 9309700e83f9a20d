"""The references of the full-sync scenario: a minimal client (the ceiling) and the naive way.

Neither has an outbox, a mapping engine or an exchange log: the ceiling posts payloads that are
already mapped, in the bus's batch size, as pre-built JSON text; the naive client reads the same
change feed and posts one dossier (then each of its progress entries) per request, mapping each
record by hand with code tables built afresh for every record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import requests

from bench.handmap import naive_dossier, naive_progress
from bench.standins import ONESTOP_KEY, PORTAL_PASSWORD, PORTAL_USER, UNIT

__all__ = ["MinimalPortal", "portal_counts", "run_ceiling", "run_naive"]


class PortalRefused(RuntimeError):
    pass


class MinimalPortal:
    """Log in once, then POST envelopes built as text around already-serialised records."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()
        self.http.headers.update({"dstcode": "DVCQG", "Content-Type": "application/json; charset=utf-8"})
        answer = self.http.post(f"{url}/auth", data=json.dumps({"username": PORTAL_USER, "password": PORTAL_PASSWORD}),
                                timeout=30).json()
        self.session = answer["session"]
        self.calls = 0

    def post(self, service: str, records_text: list[str], extra: str = "") -> None:
        body = (f'{{"session":"{self.session}","madonvi":"{UNIT}","service":"{service}"{extra},'
                f'"data":[{",".join(records_text)}]}}').encode()
        answer = self.http.post(f"{self.url}/integration", data=body, timeout=120).json()
        self.calls += 1
        if answer.get("error_code") != 0:
            raise PortalRefused(f"{service}: {answer.get('message')}")

    def post_one(self, service: str, record: dict, **fields: str) -> None:
        envelope = {"session": self.session, "madonvi": UNIT, "service": service, **fields, "data": [record]}
        answer = self.http.post(f"{self.url}/integration", data=json.dumps(envelope, ensure_ascii=False).encode(),
                                timeout=60).json()
        self.calls += 1
        if answer.get("error_code") != 0:
            raise PortalRefused(f"{service}: {answer.get('message')}")


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_ceiling(portal_url: str, dossiers: Iterator[str], progress: Iterator[str], *, batch_size: int,
                chunk_size: int) -> dict[str, float]:
    """Post every mapped dossier in batches, then every mapped progress entry in chunks. Timed:
    the login and each post (the client's work); not the iterators, which make the already-mapped
    payload texts (the harness's preparation: they are made batch by batch, so that 100,000
    dossiers' texts are never held at once)."""
    t0 = time.perf_counter()
    client = MinimalPortal(portal_url)
    deliver = time.perf_counter() - t0
    for batch in _chunks(dossiers, batch_size):
        t = time.perf_counter()
        client.post("DongBoHoSoMC", batch, ',"isUpdating":"False"')
        deliver += time.perf_counter() - t
    spent = 0.0
    for chunk in _chunks(progress, chunk_size):
        t = time.perf_counter()
        client.post("CapNhatTienDoHoSoMC", chunk)
        spent += time.perf_counter() - t
    return {"deliver": deliver, "progress": spent, "total": deliver + spent, "calls": client.calls}


def run_naive(onestop_url: str, portal_url: str, sample: int) -> dict[str, float]:
    """Read the feed; post each of the first ``sample`` dossiers, then each of its progress entries, alone."""
    t0 = time.perf_counter()
    client = MinimalPortal(portal_url)
    feed = requests.Session()
    feed.headers["X-Api-Key"] = ONESTOP_KEY
    done = entries = 0
    after = None
    while done < sample:
        params = {"limit": min(100, sample - done)}
        if after:
            params["after"] = after
        page = feed.get(f"{onestop_url}/api/v1/dossiers/changes", params=params, timeout=60).json()
        for item in page["items"]:
            dossier = item["dossier"]
            client.post_one("DongBoHoSoMC", naive_dossier(dossier), isUpdating="False")
            for entry in dossier.get("progress") or []:
                if entry.get("finishedAt"):
                    client.post_one("CapNhatTienDoHoSoMC", naive_progress({**entry, "dossierNo": dossier["dossierNo"]}))
                    entries += 1
            done += 1
        after = page["nextCursor"]
        if not page["hasMore"]:
            break
    total = time.perf_counter() - t0
    return {"total": total, "dossiers": done, "progress": entries, "calls": client.calls}


def portal_counts(portal_url: str) -> dict[str, int]:
    counts = requests.get(f"{portal_url}/_state", timeout=120).json()["counts"]
    return {"dossiers": int(counts["dossiers"]), "progress": int(counts["progress"])}
