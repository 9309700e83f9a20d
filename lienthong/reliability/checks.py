"""The invariants of design §4, checked against the stand-ins' own state after a reliability run.

Each check reads what the destination systems hold (their ``/_state`` test doors and the ministry
database), works out what they should hold from the *source* systems' own state, and counts per
record: delivered (held with identical content), dead-lettered (not held, with an unresolved dead
letter or a reconciliation item that says why), lost (neither), duplicated (an effect held more
than once). It never trusts the bus database's idea of what it delivered.
"""

from __future__ import annotations

import tempfile
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from connectors.connection import ConnectionSpec
from connectors.ministry_db.replica import MinistryReplica
from connectors.national_portal.client import NationalPortalClient
from lienthong.flows import catalogue, dossier_status, payment_receipts
from lienthong.mapping import load_mapping
from lienthong.mapping.transforms import TransformError, datetime_from_portal, unit_of_dossier_code
from lienthong.store import Store, catalogue_current, dead_letter, reconciliation_item

__all__ = ["FlowResult", "check_catalogue", "check_dossiers", "check_payments"]

TIMEOUT = 30


@dataclass
class FlowResult:
    """One flow's invariant check: counts per record and up to 20 named problems."""

    flow: str
    records: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(url: str) -> Any:
    response = requests.get(url, timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()


def _unresolved_dead_letters(store: Store, flows: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with store.engine.connect() as conn:
        rows = conn.execute(select(dead_letter).where(dead_letter.c.flow.in_(flows),
                                                      dead_letter.c.resolved_at.is_(None))).mappings()
        for row in rows:
            out.setdefault(row["record_key"], []).append(dict(row))
    return out


# --- dossier statuses and progress ------------------------------------------------------------
def check_dossiers(store: Store, onestop_url: str, portal_url: str) -> FlowResult:
    """Every one-stop dossier that can be mapped is held by the portal equal to the mapping of its
    current snapshot, with every finished progress step exactly once and in time order; every one
    that cannot is dead-lettered with its reason."""
    result = FlowResult("dossier_status")
    status_mapping = load_mapping(dossier_status.MAPPING)
    progress_mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    state = _get(onestop_url + "/_state")
    defective = {d["dossierNo"] for d in state.get("defective", [])}
    source = _get(onestop_url + "/_state/dossiers")["dossiers"]
    held = {d["MaHoSo"]: d for d in _get(portal_url + "/_state/dossiers")["dossiers"]}
    held_progress: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(_get(portal_url + "/_state/progress")["progress"], key=lambda p: p["seq"]):
        held_progress.setdefault(p["MaHoSo"], []).append(p["record"])
    letters = _unresolved_dead_letters(store, (dossier_status.FLOW, dossier_status.PROGRESS_FLOW))
    progress_entries = progress_duplicates = 0
    for dossier in source:
        code = dossier["dossierNo"]
        result.records += 1
        if code in defective:
            if code in held:
                result.problem(f"{code}: defective at the source but held by the portal")
                result.lost += 1
            elif code in letters:
                result.dead_lettered += 1
            else:
                result.lost += 1
                result.problem(f"{code}: defective at the source, not held and not dead-lettered")
            continue
        expected = status_mapping.apply(dossier)
        entries = sorted((progress_mapping.apply({**e, "dossierNo": code}) for e in dossier["progress"]
                          if e["finishedAt"]), key=lambda r: r["ThoiDiemXuLy"])
        progress_entries += len(entries)
        got = held.get(code)
        got_progress = held_progress.get(code, [])
        keys = [repr(sorted(e.items())) for e in got_progress]
        extra = sum(n - 1 for n in Counter(keys).values() if n > 1)
        # each entry once (its first arrival): an entry held twice must not hide one never held
        once = [e for i, e in enumerate(got_progress) if keys.index(keys[i]) == i]
        progress_duplicates += extra
        if extra:
            result.duplicated += 1
            result.problem(f"{code}: {extra} progress entr{'y' if extra == 1 else 'ies'} held more than once")
        if got is None:
            if code in letters:
                result.dead_lettered += 1
                result.problem(f"{code}: well-formed but dead-lettered: "
                               f"{letters[code][0]['error_class']} {letters[code][0]['errors']}")
            else:
                result.lost += 1
                result.problem(f"{code}: not held by the portal and not dead-lettered")
            continue
        if got != expected:
            differing = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
            result.lost += 1
            result.problem(f"{code}: the portal holds other values in {', '.join(differing)}")
            continue
        if once != entries:
            result.lost += 1
            result.problem(f"{code}: progress held {len(once)} distinct entries, the source has {len(entries)} "
                           f"(or another order/content)")
            continue
        if not extra:
            result.delivered += 1
    strays = set(held) - {d["dossierNo"] for d in source}
    if strays:
        result.duplicated += len(strays)
        result.problem(f"the portal holds dossiers the one-stop never had: {sorted(strays)[:5]}")
    result.details = {"progress_entries": progress_entries, "progress_held": sum(map(len, held_progress.values())),
                      "progress_duplicates": progress_duplicates, "defective_at_source": len(defective)}
    return result


# --- procedure catalogue ----------------------------------------------------------------------
def check_catalogue(store: Store, portal: ConnectionSpec, onestop_url: str, ministry: ConnectionSpec) -> FlowResult:
    """The national catalogue, normalised afresh by a clean pull into a scratch database, equals
    the one-stop catalogue (through the one-stop mapping) and the ministry replica (its content,
    and its columns and fee rows through the ministry mapping), procedure by procedure; withdrawn
    ones are held by neither as published; every procedure that cannot be normalised is
    dead-lettered."""
    result = FlowResult("procedure_catalogue")
    with tempfile.TemporaryDirectory(prefix="lienthong-truth-") as scratch:
        truth_store = Store(f"sqlite:///{Path(scratch) / 'truth.db'}")
        truth_store.create_schema()
        client = NationalPortalClient.from_connection(portal)
        try:
            catalogue.pull_catalogue(truth_store, client, run_id="reliability-truth")
        finally:
            client.close()
        with truth_store.engine.connect() as conn:
            truth = {r.procedure_code: r.record for r in conn.execute(select(catalogue_current)) if r.published}
        rejected = set(_unresolved_dead_letters(truth_store, (catalogue.FLOW,)))
        truth_store.engine.dispose()
    letters = _unresolved_dead_letters(store, (catalogue.FLOW,))
    to_onestop = load_mapping(catalogue.TO_ONESTOP)
    to_ministry = load_mapping(catalogue.TO_MINISTRY)
    listed = _get(onestop_url + "/_state/procedures")["procedures"]
    per_code = Counter(p["serviceCode"] for p in listed)
    onestop = {p["serviceCode"]: p for p in listed if p.get("status") != "withdrawn"}
    replica = MinistryReplica.from_connection(ministry)
    try:
        ministry_held = replica.procedures(published_only=True)
    finally:
        replica.dispose()
    for code, n in per_code.items():
        if n > 1:
            result.duplicated += 1
            result.problem(f"{code}: held {n} times by the one-stop catalogue")
    for code, record in sorted(truth.items()):
        result.records += 1
        mapped = to_onestop.apply(record)
        problems = []
        if code not in onestop:
            problems.append("not in the one-stop catalogue")
        elif {k: onestop[code].get(k) for k in mapped} != mapped:
            problems.append("the one-stop holds other values in " + ", ".join(
                sorted(k for k in mapped if onestop[code].get(k) != mapped[k])))
        if code not in ministry_held:
            problems.append("not in the ministry replica")
        elif ministry_held[code]["noi_dung"] != record:
            problems.append("the ministry replica holds other content")
        else:
            differing = _replica_differences(to_ministry.apply(record), ministry_held[code])
            if differing:
                problems.append(f"the ministry replica holds other values in {', '.join(differing)}")
        if problems:
            result.lost += 1
            result.problem(f"{code}: {'; '.join(problems)}")
        else:
            result.delivered += 1
    for code in sorted(rejected):
        result.records += 1
        if code in letters:
            result.dead_lettered += 1
        else:
            result.lost += 1
            result.problem(f"{code}: cannot be normalised, yet not dead-lettered by the bus")
    for name, held in (("one-stop catalogue", onestop), ("ministry replica", ministry_held)):
        stale = sorted(set(held) - set(truth))
        if stale:
            result.lost += len(stale)
            result.problem(f"the {name} still publishes {len(stale)} withdrawn or unknown procedure(s): {stale[:5]}")
    result.details = {"published": len(truth), "cannot_normalise": len(rejected)}
    return result


def _replica_differences(mapped: dict[str, Any], held: dict[str, Any]) -> list[str]:
    """The replica's columns and fee rows that differ from the mapping of the procedure (the fee
    rows in order, each compared on the mapping's columns)."""
    differing = sorted(k for k in mapped if k != "fees" and held.get(k) != mapped[k])
    fees = mapped.get("fees") or []
    held_fees = held.get("fees") or []
    if len(held_fees) != len(fees) or any({k: h.get(k) for k in f} != f for f, h in zip(fees, held_fees)):
        differing.append(f"fees ({len(held_fees)} rows held, {len(fees)} expected, or other values)")
    return differing


# --- payment receipts -------------------------------------------------------------------------
def _unit(dossier_code: str) -> str | None:
    try:
        return unit_of_dossier_code(dossier_code)
    except TransformError:
        return None


def _same_time(iso_text: Any, portal_text: Any) -> bool:
    """An ISO 8601 time with offset (ledger, one-stop) is the platform's yyyyMMddHHmmss (Viet Nam time)."""
    try:
        return datetime.fromisoformat(str(iso_text)) == datetime.fromisoformat(datetime_from_portal(portal_text))
    except (TransformError, ValueError):
        return False


def _same_name(held: Any, applicant: Any) -> bool:
    """The ledger's PayerName is the dossier's applicant as the receipt mapping writes it (NFC)."""
    return (isinstance(held, str) and isinstance(applicant, str)
            and unicodedata.normalize("NFC", held) == unicodedata.normalize("NFC", applicant))


def check_payments(store: Store, onestop_url: str, platform_url: str, ledger_url: str) -> FlowResult:
    """Every payment the platform settled as paid has exactly one ledger receipt with its amount,
    receipt number, dossier, agency, payment time, payer (the applicant of the one-stop's dossier,
    where the receipt mapping takes it from) and the SHA-256 of the PDF the platform's GET_BILL
    serves for it, and a paid fee at the one-stop with its
    transaction, amount, payment time and bank; failed ones are recorded failed; a paid payment
    without its receipt is accounted for by an open reconciliation item or dead letter; nothing is
    booked, at the ledger or the one-stop, that the platform did not settle."""
    result = FlowResult("payment_receipts")
    platform = {p["MaThamChieu"]: p for p in _get(platform_url + "/_state/payments")["payments"]}
    onestop_state = _get(onestop_url + "/_state/payments")
    onestop = {p["reference"]: p for p in onestop_state["payments"]}
    receipts = _get(ledger_url + "/_state/receipts")["receipts"]
    applicants = {d["dossierNo"]: d.get("applicantName") for d in _get(onestop_url + "/_state/dossiers")["dossiers"]}
    per_reference = Counter(r["PaymentReference"] for r in receipts)
    receipt_of = {r["PaymentReference"]: r for r in receipts}
    letters = _unresolved_dead_letters(store, (payment_receipts.FLOW,))
    with store.engine.connect() as conn:
        open_items: dict[str, list[str]] = {}
        for row in conn.execute(select(reconciliation_item).where(reconciliation_item.c.resolved_at.is_(None))
                                ).mappings():
            open_items.setdefault(row["record_key"], []).append(row["kind"])
    # a payment's results as the one-stop applied them, in order: each outcome once, and a failed one
    # may turn paid later (the platform completing it: the bus books that), never paid then failed
    applied: dict[str, list[str]] = {}
    for c in onestop_state["callbacks"]:
        if c["outcome"] in ("paid", "failed"):
            applied.setdefault(c["reference"], []).append(c["outcome"])
    for ref, outcomes in sorted(applied.items()):
        if len(outcomes) > 1 and outcomes != ["failed", "paid"]:
            result.duplicated += 1
            result.problem(f"{ref}: the one-stop applied {len(outcomes)} payment results ({', '.join(outcomes)})")
    for ref, n in sorted(per_reference.items()):
        if n > 1:
            result.duplicated += 1
            result.problem(f"{ref}: {n} receipts in the ledger")
        if ref not in platform or platform[ref]["status"] != "paid":
            result.duplicated += 1
            result.problem(f"{ref}: a receipt for a payment the platform did not settle as paid")
    for ref, mine in sorted(onestop.items()):
        settled = platform.get(ref, {}).get("status")
        if mine["status"] in ("paid", "failed") and settled not in ("paid", "failed"):
            result.duplicated += 1
            held = f"the platform holds {settled!r}" if settled else "the platform has no such payment"
            result.problem(f"{ref}: the one-stop holds {mine['status']!r}; {held}")
    for ref, p in sorted(platform.items()):
        if p["status"] not in ("paid", "failed"):
            continue
        result.records += 1
        problems = []
        if p["status"] == "paid":
            receipt = receipt_of.get(ref)
            if receipt is None:
                problems.append("no receipt in the ledger")
            else:
                differ = [name for name, same in (
                    ("amount", int(receipt["AmountVND"]) == p["SoTien"]),
                    ("number", receipt["ReceiptNumber"] == p["SoBienLai"]),
                    ("dossier", receipt["DossierCode"] == p["MaHoSo"]),
                    ("agency", receipt["AgencyCode"] == _unit(p["MaHoSo"])),
                    ("payment time", _same_time(receipt["PaidAt"], p["ThoiGianGD"])),
                    ("payer name", _same_name(receipt.get("PayerName"), applicants.get(p["MaHoSo"]))),
                    ("receipt PDF", bool(p.get("PdfSha256")) and receipt.get("PdfSha256") == p["PdfSha256"]),
                    ) if not same]
                if differ:
                    problems.append(f"the ledger's receipt differs in {', '.join(differ)}")
            mine = onestop.get(ref)
            if mine is None or mine["status"] != "paid":
                problems.append(f"the one-stop holds {mine and mine['status']!r}, not this paid transaction")
            else:
                differ = [name for name, same in (
                    ("transaction", mine.get("transactionId") == p["MaGiaoDich"]),
                    ("amount", mine.get("amount") == p["SoTien"]),
                    ("payment time", _same_time(mine.get("paidAt"), p["ThoiGianGD"])),
                    ("bank", mine.get("bank") == p["MaNganHang"])) if not same]
                if differ:
                    problems.append(f"the one-stop's paid fee differs in {', '.join(differ)}")
        elif ref in onestop and onestop[ref]["status"] != "failed":
            problems.append(f"failed at the platform, {onestop[ref]['status']!r} at the one-stop")
        if not problems:
            result.delivered += 1
        elif ref in open_items or ref in letters:
            result.dead_lettered += 1
            result.problem(f"{ref}: held for follow-up ({', '.join(open_items.get(ref, []) or ['dead letter'])}): "
                           f"{'; '.join(problems)}")
        else:
            result.lost += 1
            result.problem(f"{ref}: {'; '.join(problems)}")
    result.details = {"paid": sum(1 for p in platform.values() if p["status"] == "paid"),
                      "failed": sum(1 for p in platform.values() if p["status"] == "failed"),
                      "receipts": len(receipts), "open_items": sum(map(len, open_items.values()))}
    return result
