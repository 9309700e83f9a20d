"""Cross-system agreement: do the systems hold the same facts? One pluggable check per pair.

A check (:class:`AgreementCheck`) compares what two (or three) systems hold for every record it
covers and returns a :class:`CheckResult` listing each :class:`Difference` with

- **since**: when the difference began — the last change of the side that moved without the
  other (the bus knows which: what it last delivered and saw acknowledged), read from that side's
  own clock; for a record one side never received, when the other side first had it;
- **age**: ``as_of − since``;
- the **last exchange-log record** that carried the record's key (the report's own look-ups,
  flow :data:`FLOW`, are left out), so an auditor sees what the bus last did about it.

Checks are registered by name in :data:`CHECKS` (:func:`register_check`) with a factory that opens
what the check needs from a connection resolver. :class:`DossierStatusCheck` compares every
dossier of the one-stop system with the national portal (``TraCuuHoSo``: status and number of
progress entries). :class:`FeePaymentCheck` compares paid fees across the payment platform, the
one-stop and the ministry ledger. Results are kept in the bus database (``agreement_run``,
``agreement_difference``) so the report writers read them back without counting again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select

from connectors.errors import IntegrationError
from lienthong.exchange_log import exchanges_for_key
from lienthong.mapping import load_mapping
from lienthong.reports.facts import parse_instant
from lienthong.store import Store, agreement_difference, agreement_run, delivery_state, fit_key, utcnow

__all__ = [
    "CHECKS",
    "CHECK_SYSTEMS",
    "FLOW",
    "CheckUnavailable",
    "AgreementCheck",
    "AgreementReport",
    "CheckResult",
    "Difference",
    "DossierStatusCheck",
    "FeePaymentCheck",
    "last_exchange",
    "load_agreement",
    "register_check",
    "save_result",
]

log = logging.getLogger(__name__)

FLOW = "report_agreement"  # the exchange-log flow of the report's own look-ups
PORTAL = "national_portal"  # delivery_state.peer of the dossier flow
LOCAL = ZoneInfo("Asia/Ho_Chi_Minh")


class CheckUnavailable(IntegrationError):
    """A check cannot run here (a peer's connection is not configured); the run records why."""


@dataclass
class Difference:
    check_name: str
    record_key: str
    aspect: str  # missing | status | progress | amount | receipt | ...
    value_a: str | None
    value_b: str | None
    since: datetime | None
    age_seconds: int | None = None
    agency_code: str | None = None
    dossier_no: str | None = None
    last_exchange_id: int | None = None
    last_exchange: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckResult:
    check_name: str
    systems: str  # "onestop↔national_portal"
    as_of: datetime
    checked: int = 0
    agreeing: int = 0
    differences: list[Difference] = field(default_factory=list)
    note: str | None = None  # set when the check could not run

    @property
    def differing(self) -> int:
        return len({d.record_key for d in self.differences})


@dataclass
class AgreementReport:
    run_id: str
    as_of: datetime
    results: list[CheckResult]

    def differences(self) -> list[Difference]:
        return [d for r in self.results for d in r.differences]


class AgreementCheck(Protocol):
    """One comparison between systems."""

    name: str
    systems: str

    def run(self, store: Store, *, as_of: datetime) -> CheckResult: ...


#: name → factory(resolve, store, run_id, task_id) → (check, closer); see :func:`register_check`
CheckFactory = Callable[..., tuple[AgreementCheck, Callable[[], None]]]
CHECKS: dict[str, CheckFactory] = {}
#: name → the systems the check compares (what a check that could not start is recorded with)
CHECK_SYSTEMS: dict[str, str] = {}


def register_check(name: str, systems: str) -> Callable[[CheckFactory], CheckFactory]:
    """Register a check factory ``f(resolve, store, *, run_id, task_id) -> (check, close)`` with the
    systems it compares (``"onestop↔national_portal"``), known before the factory runs."""
    def wrap(factory: CheckFactory) -> CheckFactory:
        CHECKS[name] = factory
        CHECK_SYSTEMS[name] = systems
        return factory
    return wrap


def _age(as_of: datetime, since: datetime | None) -> int | None:
    return None if since is None else max(0, int((as_of - since).total_seconds()))


def portal_time(text: Any) -> datetime | None:
    """``yyyyMMddHHmmss`` in Viet Nam time (contract §6.1) as aware UTC."""
    if not isinstance(text, str) or len(text.strip()) != 14:
        return None
    try:
        return datetime.strptime(text.strip(), "%Y%m%d%H%M%S").replace(tzinfo=LOCAL).astimezone(UTC)
    except ValueError:
        return None


def last_exchange(store: Store, record_key: str) -> tuple[int | None, str | None]:
    """The last exchange-log record that carried ``record_key`` (the report's own look-ups aside)."""
    rows = [r for r in exchanges_for_key(store, record_key) if r["flow"] != FLOW]
    if not rows:
        return None, None
    r = rows[-1]
    code = f" code={r['peer_code']}" if r["peer_code"] is not None else ""
    return r["id"], (f"#{r['id']} {r['started_at']:%Y-%m-%d %H:%M:%S} {r['peer']} {r['operation']} "
                     f"{r['outcome']}{code} flow={r['flow']} run={r['run_id']}")


def _newer_version(version: Any, seen: Any) -> bool:
    """A second snapshot of a dossier replaces the first unless both versions are known and it is
    not newer."""
    known = all(isinstance(v, int) and not isinstance(v, bool) for v in (version, seen))
    return not known or version > seen


def _finish(store: Store, result: CheckResult) -> CheckResult:
    """Ages and last exchanges of a check's differences. The last exchange is the last about the
    record compared (a fee's payment reference), not about its dossier: a later delivery of the
    dossier's status says nothing about a missing receipt."""
    for d in result.differences:
        d.age_seconds = _age(result.as_of, d.since)
        d.last_exchange_id, d.last_exchange = last_exchange(store, d.record_key)
    result.agreeing = result.checked - result.differing
    return result


# --- dossiers: one-stop ↔ national portal ---------------------------------------------------------
class DossierStatusCheck:
    """Every dossier of the one-stop system against the national portal (``TraCuuHoSo``).

    The portal should hold the dossier, with the status the one-stop's current snapshot maps to
    (through the dossier mapping's status code table) and as many progress entries (``SoTienDo``)
    as the snapshot's history.
    """

    name = "dossier_status"
    systems = "onestop↔national_portal"

    def __init__(self, onestop: Any, portal: Any, *, dossiers: list[str] | None = None):
        self.onestop = onestop
        self.portal = portal
        self.only = set(dossiers) if dossiers else None
        self.status_codes = load_mapping("onestop__canonical/dossier").code_tables["canonical_status"].values

    def _snapshots(self) -> Iterator[dict[str, Any]]:
        for page in self.onestop.iter_dossiers():
            for d in page:
                if self.only is None or d.get("dossierNo") in self.only:
                    yield d

    def compare(self, snapshot: dict[str, Any], row: dict[str, Any] | None,
                delivered_status: str | None = None) -> list[Difference]:
        """The differences between one one-stop snapshot and the portal's TraCuuHoSo row.

        ``delivered_status`` is the status the bus last saw the portal acknowledge: when the portal
        holds another one, the portal moved on its own and the difference began at the portal's
        last update (NgayCapNhat); otherwise the one-stop moved on and it began at the one-stop's
        last change (modifiedAt). Each side's time is read from its own clock.
        """
        key = str(snapshot.get("dossierNo"))
        agency = snapshot.get("govAgencyCode")
        status = snapshot.get("dossierStatus")
        expected = self.status_codes.get(status)
        shown_a = f"{expected} ({status})" if expected else f"— ({status}: no national code)"
        modified = parse_instant(snapshot.get("modifiedAt"))

        def diff(aspect: str, a: str, b: str, since: datetime | None, detail: str) -> Difference:
            return Difference(self.name, key, aspect, a, b, since, agency_code=agency, dossier_no=key, detail=detail)

        if row is None:
            first = parse_instant(snapshot.get("submitDate")) or modified
            return [diff("missing", shown_a, "—", first, "the national portal does not hold the dossier")]
        out = []
        held = str(row.get("TrangThaiHoSo") or "")
        if held != (expected or ""):
            if delivered_status is not None and held != delivered_status:
                since, detail = portal_time(row.get("NgayCapNhat")), (
                    f"changed at the portal only: the bus delivered status {delivered_status}")
            else:
                since, detail = modified, "the one-stop moved on; the portal has not been brought level yet"
            out.append(diff("status", shown_a, held or "—", since, detail))
        progress = snapshot.get("progress") if isinstance(snapshot.get("progress"), list) else []
        try:
            portal_count: int | None = int(row.get("SoTienDo"))
        except (TypeError, ValueError):
            portal_count = None
        # a portal row without SoTienDo (inferred in the contract: the real one may not send it)
        # says nothing about progress: unknown is no difference
        if portal_count is not None and portal_count != len(progress):
            if portal_count > len(progress):
                since, detail = portal_time(row.get("ThoiDiemXuLyCuoi")), "the portal holds more progress entries"
            else:
                since, detail = modified, "progress entries the portal does not hold yet (SoTienDo)"
            out.append(diff("progress", str(len(progress)), str(portal_count), since, detail))
        return out

    def run(self, store: Store, *, as_of: datetime) -> CheckResult:
        result = CheckResult(self.name, self.systems, as_of)
        with store.engine.connect() as conn:
            delivered = dict(conn.execute(select(delivery_state.c.record_key, delivery_state.c.peer_status)
                                          .where(delivery_state.c.peer == PORTAL)).all())
        # the one-stop's listing may yield a dossier twice (read back over pages after a change):
        # it is one dossier, compared in its newest version
        versions: dict[str, Any] = {}
        found: dict[str, list[Difference]] = {}
        for snapshot in self._snapshots():
            key = snapshot.get("dossierNo")
            if not key:
                continue
            key, version = str(key), snapshot.get("version")
            if key in versions and not _newer_version(version, versions[key]):
                continue
            versions[key] = version
            differences = self.compare(snapshot, self.portal.lookup_dossier(key), delivered.get(key))
            if differences:
                found[key] = differences
            else:
                found.pop(key, None)
        result.checked = len(versions)
        result.differences = [d for differences in found.values() for d in differences]
        return _finish(store, result)


def _resolve_all(resolve: Any, conn_ids: tuple[str, ...]) -> dict[str, Any]:
    """Each connection a check needs; one that is not configured makes the check unavailable
    (recorded as not checked, with the reason), whichever resolver said so."""
    specs = {}
    for conn_id in conn_ids:
        try:
            specs[conn_id] = resolve(conn_id)
        except Exception as exc:  # noqa: BLE001 - ConfigurationError, or Airflow's "connection not found"
            raise CheckUnavailable(f"connection {conn_id} is not configured ({exc})") from None
    return specs


@register_check("dossier_status", DossierStatusCheck.systems)
def _dossier_check(resolve: Any, store: Store, *, run_id: str, task_id: str | None = None,
                   dossiers: list[str] | None = None) -> tuple[AgreementCheck, Callable[[], None]]:
    from connectors.national_portal.client import NationalPortalClient
    from connectors.one_stop.client import OneStopClient
    from lienthong.exchange_log import BusRecorder
    from lienthong.tasks import NATIONAL_PORTAL_CONN_ID, ONESTOP_CONN_ID

    specs = _resolve_all(resolve, (ONESTOP_CONN_ID, NATIONAL_PORTAL_CONN_ID))
    recorder = BusRecorder(store, FLOW, run_id, task_id)
    onestop = OneStopClient.from_connection(specs[ONESTOP_CONN_ID], recorder=recorder)
    portal = NationalPortalClient.from_connection(specs[NATIONAL_PORTAL_CONN_ID], recorder=recorder)

    def close() -> None:
        onestop.close()
        portal.close()
    return DossierStatusCheck(onestop, portal, dossiers=dossiers), close


# --- fees: payment platform ↔ one-stop ↔ ministry ledger -------------------------------------------
class FeePaymentCheck:
    """Every paid fee: the payment platform, the one-stop system and the ministry ledger agree.

    Built on three narrow interfaces, so a test or another deployment can pass its own:

    - ``payments()`` → iterable of dicts ``{reference, dossier_no, amount, status, receipt_no,
      agency_code, changed_at}``: the one-stop system's payment requests;
    - ``platform(reference)`` → an object with ``status``, ``amount``, ``paid_at`` (or ``None``);
    - ``ledger(receipt_no)`` → the ledger's receipt dict with ``amount`` (or ``None``), and
      ``receipt_of(reference)`` → the receipt number the bus read from the platform's bill.
    """

    name = "fee_payment"
    systems = "payment_platform↔onestop↔ministry_ledger"

    def __init__(self, *, payments: Callable[[], Any], platform: Callable[[str], Any],
                 ledger: Callable[[str], dict[str, Any] | None], receipt_of: Callable[[str], str | None]):
        self.payments = payments
        self.platform = platform
        self.ledger = ledger
        self.receipt_of = receipt_of

    def run(self, store: Store, *, as_of: datetime) -> CheckResult:
        result = CheckResult(self.name, self.systems, as_of)
        # a request listed twice (it changed while the list was read) is one fee, as last read
        listed = {str(p["reference"]): p for p in self.payments()}
        for ref, p in listed.items():
            txn = self.platform(ref)
            onestop_paid = p.get("status") == "paid"
            platform_paid = txn is not None and getattr(txn, "status", None) == "paid"
            if not (onestop_paid or platform_paid):
                continue  # not a paid fee anywhere: nothing to agree on yet
            result.checked += 1
            dossier, agency = p.get("dossier_no"), p.get("agency_code")
            changed = p.get("changed_at")
            paid_at = getattr(txn, "paid_at", None)
            paid_at = paid_at.astimezone(UTC) if paid_at is not None else None

            def diff(aspect: str, a: Any, b: Any, since: datetime | None, detail: str,
                     _ref: str = ref, _dossier: Any = dossier, _agency: Any = agency) -> Difference:
                return Difference(self.name, _ref, aspect, None if a is None else str(a),
                                  None if b is None else str(b), since, agency_code=_agency, dossier_no=_dossier,
                                  detail=detail)

            if txn is None:
                result.differences.append(diff("platform_missing", p.get("status"), "—", changed,
                                               "the one-stop holds a paid fee the payment platform does not know"))
                continue
            if txn.status != p.get("status"):
                result.differences.append(diff("status", p.get("status"), txn.status,
                                               max([t for t in (changed, paid_at) if t], default=None),
                                               "one-stop fee status vs the platform's QUERY"))
            if p.get("amount") is not None and txn.amount != p.get("amount"):
                result.differences.append(diff("amount", p.get("amount"), txn.amount, paid_at or changed,
                                               "amount the one-stop asked for vs amount paid"))
            if not platform_paid:
                continue
            receipt_no = p.get("receipt_no") or self.receipt_of(ref)
            receipt = self.ledger(receipt_no) if receipt_no else None
            if receipt is None:
                result.differences.append(diff("ledger_missing", receipt_no or "—", "—", paid_at or changed,
                                               "a paid fee whose receipt the ministry ledger does not hold"))
            elif receipt.get("amount") is not None and receipt.get("amount") != txn.amount:
                result.differences.append(diff("ledger_amount", txn.amount, receipt.get("amount"), paid_at,
                                               "amount paid vs the ledger's receipt"))
        return _finish(store, result)


@register_check("fee_payment", FeePaymentCheck.systems)
def _fee_check(resolve: Any, store: Store, *, run_id: str, task_id: str | None = None
               ) -> tuple[AgreementCheck, Callable[[], None]]:
    """The fee check on the real connectors: one-stop payment requests, platform QUERY, ledger
    GetReceipt; the receipt number from the one-stop's request, else from the bus's payment_txn."""
    from connectors.errors import TransactionUnknown
    from connectors.ministry_ledger.client import ReceiptLedgerClient
    from connectors.one_stop.client import OneStopClient
    from connectors.payment_platform.client import PaymentPlatformClient
    from lienthong.exchange_log import BusRecorder
    from lienthong.store import dossier_fact, payment_txn
    from lienthong.tasks import LEDGER_CONN_ID, ONESTOP_CONN_ID, PAYMENT_PLATFORM_CONN_ID

    specs = _resolve_all(resolve, (ONESTOP_CONN_ID, PAYMENT_PLATFORM_CONN_ID, LEDGER_CONN_ID))
    recorder = BusRecorder(store, FLOW, run_id, task_id)
    onestop = OneStopClient.from_connection(specs[ONESTOP_CONN_ID], recorder=recorder)
    platform = PaymentPlatformClient.from_connection(specs[PAYMENT_PLATFORM_CONN_ID], recorder=recorder)
    ledger = ReceiptLedgerClient.from_connection(specs[LEDGER_CONN_ID], recorder=recorder)
    with store.engine.connect() as conn:
        agencies = dict(conn.execute(select(dossier_fact.c.dossier_no, dossier_fact.c.agency_code)).all())
        receipts = dict(conn.execute(select(payment_txn.c.reference, payment_txn.c.receipt_no)
                                     .where(payment_txn.c.receipt_no.is_not(None))).all())

    def payments() -> Iterator[dict[str, Any]]:
        for page in onestop.iter_payments(status=None):
            for p in page:
                dossier = p.get("dossierNo")
                yield {"reference": p.get("reference"), "dossier_no": dossier, "amount": p.get("amount"),
                       "status": p.get("status"), "receipt_no": p.get("receiptNo"),
                       "agency_code": agencies.get(dossier) or (str(dossier).split("-")[0] if dossier else None),
                       "changed_at": parse_instant(p.get("updatedAt")) or parse_instant(p.get("createdAt"))}

    def query(reference: str) -> Any:
        try:
            return platform.query(reference)
        except TransactionUnknown:
            return None

    def receipt(number: str) -> dict[str, Any] | None:
        held = ledger.get_receipt(number)
        if held is None:
            return None
        return {**held, "amount": held.get("AmountVND")}

    def close() -> None:
        for client in (onestop, platform, ledger):
            client.close()
    check = FeePaymentCheck(payments=payments, platform=query, ledger=receipt, receipt_of=receipts.get)
    return check, close


# --- storage ----------------------------------------------------------------------------------------
def _fit(text: str | None, limit: int) -> str | None:
    """A peer's key or code as the column holds it (:func:`lienthong.store.fit_key`): one longer
    than the column (a dossier the flow refuses, hence a difference to report) saved whole failed
    on PostgreSQL and lost the check's result."""
    return None if text is None else fit_key(text, limit)


def save_result(store: Store, run_id: str, result: CheckResult, *, started_at: datetime | None = None) -> None:
    """Keep a check's result under the run (a rerun of the same run replaces it)."""
    now = utcnow()
    with store.begin() as conn:
        conn.execute(delete(agreement_difference).where(agreement_difference.c.run_id == run_id,
                                                        agreement_difference.c.check_name == result.check_name))
        conn.execute(delete(agreement_run).where(agreement_run.c.run_id == run_id,
                                                 agreement_run.c.check_name == result.check_name))
        conn.execute(agreement_run.insert().values(
            run_id=run_id, check_name=result.check_name, systems=result.systems, as_of=result.as_of,
            started_at=started_at or now, finished_at=now, checked=result.checked, agreeing=result.agreeing,
            differing=result.differing, note=result.note))
        seen: set[tuple[str, str]] = set()
        rows = []
        for d in result.differences:
            row = {"run_id": run_id, **d.as_dict()}
            for name in ("record_key", "dossier_no", "agency_code"):
                row[name] = _fit(row[name], agreement_difference.c[name].type.length)
            if (row["record_key"], d.aspect) in seen:
                continue
            seen.add((row["record_key"], d.aspect))
            rows.append(row)
        if rows:
            conn.execute(agreement_difference.insert(), rows)


def load_agreement(store: Store, run_id: str | None = None) -> AgreementReport | None:
    """A stored agreement run (the latest when ``run_id`` is None), or None."""
    with store.engine.connect() as conn:
        if run_id is None:
            run_id = conn.execute(select(agreement_run.c.run_id)
                                  .order_by(agreement_run.c.finished_at.desc()).limit(1)).scalar()
            if run_id is None:
                return None
        runs = conn.execute(select(agreement_run).where(agreement_run.c.run_id == run_id)
                            .order_by(agreement_run.c.check_name)).mappings().all()
        diffs = conn.execute(select(agreement_difference).where(agreement_difference.c.run_id == run_id)
                             .order_by(agreement_difference.c.check_name, agreement_difference.c.record_key,
                                       agreement_difference.c.aspect)).mappings().all()
    if not runs:
        return None
    results = []
    for r in runs:
        result = CheckResult(r["check_name"], r["systems"], r["as_of"], r["checked"], r["agreeing"], note=r["note"])
        result.differences = [Difference(**{k: v for k, v in d.items() if k != "run_id"})
                              for d in diffs if d["check_name"] == r["check_name"]]
        results.append(result)
    return AgreementReport(run_id, max(r.as_of for r in results), results)


def mark_skipped(store: Store, run_id: str, name: str, systems: str, note: str, as_of: datetime) -> None:
    """Record that a check did not run (and why) so the report says so."""
    save_result(store, run_id, CheckResult(name, systems, as_of, note=note))
