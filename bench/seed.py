"""Bulk seeding of the stand-ins' state for the benchmark.

The one-stop stand-in seeds its world dossier by dossier (``seed_dossiers`` ≤ 5000, each a handful
of SQL statements and RNG draws). A benchmark needs 10⁵–10⁶ dossiers, so this module builds a few
hundred *template* dossiers with the stand-in's own :class:`mocks.one_stop.world.Generator`
(same shape, same vocabulary, legal transitions only, no defects), walks each through about five
processing steps, and then clones them with unique dossier numbers straight into the stand-in's
SQLite tables (``dossiers`` and ``events``), keeping the feed consistent: one event per dossier
(its current snapshot), ``seq`` 1..N in dossier order, and the ``events``/``created`` counters
set so the stand-in carries on numbering after them.

The national stand-in is not seeded here except for the incremental scenario, where the portal
must already hold the dossiers being updated (:func:`seed_portal_dossiers`).
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mocks.one_stop.world import FINAL_STATUSES, LEGAL_TRANSITIONS, Generator
from mocks.server import VN_TZ, dumps, load_seed, seeded_rng

__all__ = ["Template", "dossier_no", "make_templates", "seed_onestop", "iter_snapshots"]

SEED = 49
#: the marker dossier number of a template, replaced in the JSON text of each clone
_MARK_DAY = "010101"


@dataclass(frozen=True)
class Template:
    unit: str
    mark: str  # the template's dossier number, e.g. 000.00.01.H49-010101-0007
    text: str  # the snapshot as JSON text (the stand-in's own dumps)
    status: str
    version: int
    modified_at: str
    progress: int


def make_templates(count: int = 400, *, seed: int = SEED, steps: int = 5) -> list[Template]:
    """``count`` valid dossiers, each walked through up to ``steps`` progress entries (fewer when it
    reaches a final status first)."""
    gen = Generator(load_seed(), seed)
    templates = []
    base = datetime(2026, 10, 5, 8, 0, tzinfo=VN_TZ)
    for k in range(1, count + 1):
        rng = seeded_rng(seed, "bench-template", k)
        unit, proc = gen.pick_unit_and_procedure(rng)
        now = base + timedelta(minutes=37 * k)
        mark = f"{unit['code']}-{_MARK_DAY}-{k:04d}"
        receipts = iter(range(k * 100, k * 100 + 100))

        def next_receipt(unit_code: str = unit["code"], n: Any = receipts) -> str:
            return f"{unit_code.split('.')[2]}-2026-{next(n):06d}"

        snap = gen.new_dossier(rng, unit=unit, proc=proc, dossier_no=mark, now=now, defect=None,
                               next_receipt=next_receipt)
        while len(snap["progress"]) < steps and snap["dossierStatus"] not in FINAL_STATUSES \
                and snap["dossierStatus"] in LEGAL_TRANSITIONS:
            options = [t for t, _ in LEGAL_TRANSITIONS[snap["dossierStatus"]]]
            # prefer a step that keeps the dossier open until its fifth entry, as a busy office does
            open_ = [t for t in options if t not in FINAL_STATUSES]
            target = gen.pick_target(rng, snap["dossierStatus"])
            if target in FINAL_STATUSES and open_ and len(snap["progress"]) < steps - 1:
                target = rng.choice(open_)
            now = now + timedelta(hours=rng.randint(2, 30))
            snap = gen.move(rng, snap, target, now=now, defect=None, next_receipt=next_receipt)
        templates.append(Template(unit["code"], mark, dumps(snap), snap["dossierStatus"], snap["version"],
                                  snap["modifiedAt"], len(snap["progress"])))
    return templates


def dossier_no(template: Template, index: int) -> str:
    """A unique dossier number for clone ``index`` (0-based): the template's unit, a day and a
    daily number (9,000 per day), ``{unit}-{yyMMdd}-{NNNN}`` as the one-stop numbers them."""
    day = datetime(2026, 1, 1) + timedelta(days=index // 9000)
    return f"{template.unit}-{day:%y%m%d}-{index % 9000 + 1:04d}"


def iter_snapshots(templates: list[Template], start: int, stop: int) -> Iterator[tuple[int, str, Template, str]]:
    """``(index, dossier number, template, snapshot JSON text)`` for clones ``start..stop-1``."""
    n = len(templates)
    for i in range(start, stop):
        t = templates[i % n]
        number = dossier_no(t, i)
        yield i, number, t, t.text.replace(t.mark, number)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def seed_onestop(state_dir: Path, count: int, *, templates: list[Template] | None = None,
                 chunk: int = 20_000) -> list[Template]:
    """Create the one-stop stand-in's state in ``state_dir`` with ``count`` dossiers (one feed
    event each, seq 1..count). Returns the templates used."""
    from mocks.one_stop import OneStopMock

    templates = templates or make_templates()
    mock = OneStopMock(state_dir=state_dir, seed=SEED, seed_dossiers=0)
    mock.open_state()  # the stand-in's own schema and world meta, with no dossier
    mock.stop()
    conn = _connect(Path(state_dir) / OneStopMock.state_file)
    with conn:
        for start in range(0, count, chunk):
            rows = list(iter_snapshots(templates, start, min(count, start + chunk)))
            conn.executemany(
                "INSERT INTO dossiers(dossier_no, idx, status, defect, version, snapshot) VALUES(?, ?, ?, NULL, ?, ?)",
                [(no, i + 1, t.status, t.version, text) for i, no, t, text in rows])
            conn.executemany(
                "INSERT INTO events(seq, dossier_no, version, changed_at, snapshot) VALUES(?, ?, ?, ?, ?)",
                [(i + 1, no, t.version, t.modified_at, text) for i, no, t, text in rows])
        conn.executemany("INSERT INTO counters(name, value) VALUES(?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                         [("events", count), ("created", count)])
    conn.close()
    return templates


def append_changes(state_dir: Path, templates: list[Template], indices: list[int]) -> None:
    """Append one feed event per dossier index: a new version of that dossier (one more
    ``modifiedAt`` second and ``version``), as the one-stop does when a dossier changes."""
    from mocks.one_stop import OneStopMock

    conn = _connect(Path(state_dir) / OneStopMock.state_file)
    with conn:
        seq = int(conn.execute("SELECT value FROM counters WHERE name = 'events'").fetchone()[0])
        events = []
        for i in indices:
            (_, number, t, text), = iter_snapshots(templates, i, i + 1)
            snap = json.loads(text)
            snap["version"] += 1
            snap["briefNote"] = snap["briefNote"] + " (bổ sung)"
            text = dumps(snap)
            seq += 1
            events.append((seq, number, snap["version"], snap["modifiedAt"], text))
            conn.execute("UPDATE dossiers SET version = ?, snapshot = ? WHERE dossier_no = ?",
                         (snap["version"], text, number))
        conn.executemany("INSERT INTO events(seq, dossier_no, version, changed_at, snapshot) VALUES(?, ?, ?, ?, ?)",
                         events)
        conn.execute("UPDATE counters SET value = ? WHERE name = 'events'", (seq,))
    conn.close()


def sample_indices(count: int, changes: int, seed: int = SEED) -> list[int]:
    """``changes`` distinct dossier indices spread over ``0..count-1`` (seeded)."""
    return sorted(random.Random(f"{seed}/changes/{count}").sample(range(count), changes))


# --- payments --------------------------------------------------------------------------------------
#: the payment platform's partner code and checksum secret in the benchmark's stand-ins
PAYMENT_PARTNER = "DVC_H49"
PAYMENT_SECRET = "bench-payment-secret"


def payment_dossiers(templates: list[Template], count: int) -> list[dict[str, Any]]:
    """The fields of the ``count`` cloned dossiers that the stand-ins' own
    :func:`mocks.payment_platform.seeded_payments` reads (number, fees, payer, time)."""
    shapes = []
    for t in templates:
        snap = json.loads(t.text)
        shapes.append({"fees": snap.get("fees") or [], "applicantName": snap.get("applicantName"),
                       "modifiedAt": snap.get("modifiedAt")})
    n = len(templates)
    return [{"dossierNo": dossier_no(templates[i % n], i), **shapes[i % n]} for i in range(count)]


def seed_payments(onestop_dir: Path, platform_dir: Path, templates: list[Template], count: int) -> dict[str, int]:
    """The payments of the first ``count`` dossiers of a one-stop seeded by :func:`seed_onestop`,
    as the stand-ins seed their own world (one per dossier with fees, paid, failed or still
    pending at the platform): pending requests at the one-stop (no callback reached it), the
    platform's transactions with their outcomes and receipt numbers. Returns the count by the
    platform's status."""
    from mocks.one_stop import OneStopMock
    from mocks.payment_platform import PaymentPlatformMock, seeded_payments

    dossiers = payment_dossiers(templates, count)
    onestop = OneStopMock(state_dir=onestop_dir, seed=SEED, seed_dossiers=0)
    onestop.open_state()  # the state seed_onestop made: its world seed, no payment request yet
    db = onestop.require_db()
    with db.tx():
        onestop._seed_payments(db, dossiers)  # the stand-in's own seeding: every request pending
    onestop.stop()
    platform = PaymentPlatformMock(state_dir=platform_dir, seed=SEED, partner_code=PAYMENT_PARTNER,
                                   secret=PAYMENT_SECRET, dossiers=dossiers)
    platform.open_state()  # the stand-in's own seeding: each payment completed as its seed says
    platform.stop()
    counts = {"paid": 0, "failed": 0, "pending": 0}
    for p in seeded_payments(dossiers, SEED):  # what both stand-ins seeded from
        counts[p["status"]] += 1
    return counts
