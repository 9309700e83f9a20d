"""Online-service KPIs: the one place where the report's numbers are computed.

Sources, all in the bus database: the national catalogue as last pulled (``catalogue_current``,
published procedures) and the dossier facts (``dossier_fact``, see :mod:`lienthong.reports.facts`).
Renderers (HTML, CSV, ministry tables) only format a :class:`KpiReport`; they never count.

Definitions (per agency and for the whole province, for a period ``[start, end)``):

- **procedures**: published procedures the agency implements (``agencies.implementing``, else the
  publishing agency); the province counts each procedure once. The catalogue is the one held now.
- **levels**: the procedure's online public-service level (``online_level``, the highest LayDVC
  MUCDO, both vocabularies through the mapping's ``online_level`` code table): ``full`` = mức độ 4
  / toàn trình, ``partial`` = mức độ 3 / một phần, ``none`` = mức độ 1–2 (not an online service),
  ``unknown`` = no LayDVC configuration. Online public services = full + partial. Each level's
  share is its count over the procedures.
- **received**: dossiers submitted in the period (``submitDate``); **online**: those whose channel
  is the national "trực tuyến" channel (KenhThucHien 2 through the dossier mappings' code tables),
  split by their procedure's level (``unknown`` when the procedure is not in the catalogue).
- **processed**: dossiers whose processing finished in the period (``finishDate``): **on time**
  when finished by their due date, **late** after it; finished dossiers without a due date (refused
  at reception) are counted apart. **On-time rate** = on time / (on time + late).
- **open past due**: dossiers not finished at ``as_of`` (the period's end, or now if earlier) whose
  due date is before ``as_of``.
- **flags**: the thresholds (fractions) the agency's full-level share is below.

Shares are ``numerator / denominator`` as floats, ``None`` when the denominator is 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select

from lienthong.mapping import load_mapping
from lienthong.store import Store, catalogue_current, dossier_fact, utcnow

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LEVELS",
    "KpiReport",
    "KpiRow",
    "Period",
    "compute_kpis",
    "level_labels",
    "online_channels",
    "month_start",
    "parse_period",
    "share",
]

LOCAL = ZoneInfo("Asia/Ho_Chi_Minh")  # the wire time zone of every peer (design §4.8)
LEVELS = ("full", "partial", "none", "unknown")
ONLINE_LEVELS = ("full", "partial")
DEFAULT_THRESHOLDS = (0.5, 0.3)
NATIONAL_ONLINE_CHANNEL = "2"  # KenhThucHien "Trực tuyến" (contract §5.2)
PROVINCE = "*"  # agency_code of the whole-province row


def share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def level_labels() -> dict[str, str]:
    """Each level with both vocabularies, from the catalogue mapping's ``online_level`` code table:
    ``{"full": "mức độ 4 / Toàn trình", ...}``."""
    table = load_mapping("national_portal__canonical/procedure").code_tables["online_level"].values
    words: dict[str, list[str]] = defaultdict(list)
    for source, level in table.items():
        words[level].append(f"mức độ {source}" if source.isdigit() else source)
    labels = {level: " / ".join(sorted(names, key=lambda n: (not n.startswith("mức"), n)))
              for level, names in words.items()}
    labels.setdefault("unknown", "chưa cấu hình DVC")
    return {level: labels.get(level, level) for level in LEVELS}


def online_channels() -> frozenset[str]:
    """The one-stop channel keys that are the national online channel (through the mappings)."""
    to_canonical = load_mapping("onestop__canonical/dossier").code_tables["channel"].values
    to_portal = load_mapping("canonical__national_portal/dossier").code_tables["kenh_thuc_hien"].values
    return frozenset(k for k, v in to_canonical.items() if to_portal.get(v) == NATIONAL_ONLINE_CHANNEL)


@dataclass(frozen=True)
class Period:
    """``[start, end)`` as aware UTC instants; ``label`` as the user gave it."""

    start: datetime
    end: datetime
    label: str

    @property
    def first_day(self) -> date:
        return self.start.astimezone(LOCAL).date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).astimezone(LOCAL).date()

    def partial_day_bounds(self) -> list[str]:
        """Which bounds (``start``, ``end``) are not a local midnight: a period given by
        date-times within a day, which a table keyed by days cannot tell from the whole day."""
        return [name for name, moment in (("start", self.start), ("end", self.end))
                if moment.astimezone(LOCAL).timetz().replace(tzinfo=None) != time(0)]


def _bound(text: str, *, end: bool) -> datetime:
    if "T" in text or " " in text.strip():
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=LOCAL)
        return moment.astimezone(UTC)
    day = date.fromisoformat(text)
    if end:
        day += timedelta(days=1)  # a date as the end means "that whole day"
    return datetime.combine(day, time(0), tzinfo=LOCAL).astimezone(UTC)


def month_start(end: str) -> str:
    """The first day of the month of ``end``'s last included day (``end`` as :func:`parse_period`
    takes it: a date, included, or a date-time, excluded)."""
    last = (_bound(end, end=True) - timedelta(microseconds=1)).astimezone(LOCAL).date()
    return last.replace(day=1).isoformat()


def parse_period(start: str, end: str) -> Period:
    """``2026-11-01``..``2026-11-30`` (local dates, both days included) or ISO date-times
    (``end`` exclusive; without an offset, local time)."""
    period = Period(_bound(start, end=False), _bound(end, end=True), f"{start} → {end}")
    if period.end <= period.start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    return period


@dataclass
class KpiRow:
    agency_code: str
    agency_name: str
    procedures: int = 0
    level_full: int = 0
    level_partial: int = 0
    level_none: int = 0
    level_unknown: int = 0
    online_services: int = 0
    share_full: float | None = None
    share_partial: float | None = None
    share_none: float | None = None
    share_unknown: float | None = None
    received: int = 0
    received_online: int = 0
    online_full: int = 0
    online_partial: int = 0
    online_none: int = 0
    online_unknown: int = 0
    online_share: float | None = None
    processed: int = 0
    on_time: int = 0
    late: int = 0
    finished_without_due: int = 0
    on_time_rate: float | None = None
    open_past_due: int = 0
    flags: list[float] = field(default_factory=list)

    @property
    def is_province(self) -> bool:
        return self.agency_code == PROVINCE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DayRow:
    day: date
    received: int = 0
    received_online: int = 0
    processed: int = 0
    on_time: int = 0
    late: int = 0


@dataclass
class KpiReport:
    period: Period
    as_of: datetime
    generated_at: datetime
    thresholds: tuple[float, ...]
    province: KpiRow
    agencies: list[KpiRow]
    days: list[DayRow]
    labels: dict[str, str]

    def rows(self) -> list[KpiRow]:
        """The province first, then the agencies by code."""
        return [self.province, *self.agencies]

    def flagged(self) -> list[KpiRow]:
        return [r for r in self.agencies if r.flags]


def _level(value: Any) -> str:
    return value if value in ("full", "partial", "none") else "unknown"


def _agencies_of(record: dict[str, Any]) -> list[tuple[str, str | None]]:
    found = [(str(a["code"]), a.get("name")) for a in ((record.get("agencies") or {}).get("implementing") or [])
             if isinstance(a, dict) and a.get("code")]
    if not found and record.get("publishing_agency_code"):
        found = [(str(record["publishing_agency_code"]), None)]
    # once per agency code, under the first name given: an agency listed twice under two names
    # ("Sở Tư pháp", "Sở Tư pháp tỉnh") was counted twice
    first: dict[str, tuple[str, str | None]] = {}
    for code, name in found:
        first.setdefault(code, (code, name))
    return list(first.values())


def compute_kpis(
    store: Store,
    period: Period,
    *,
    thresholds: tuple[float, ...] | list[float] = DEFAULT_THRESHOLDS,
    as_of: datetime | None = None,
) -> KpiReport:
    """Count every KPI of the period from the bus database (see the module docstring)."""
    now = as_of or utcnow()
    at = min(period.end, now)
    thresholds = tuple(sorted({float(t) for t in thresholds}, reverse=True))
    online = online_channels()
    with store.engine.connect() as conn:
        catalogue = conn.execute(select(catalogue_current.c.procedure_code, catalogue_current.c.record)
                                 .where(catalogue_current.c.published.is_(True))).all()
        f = dossier_fact.c
        # only the dossiers some KPI of the period counts (a province holds millions)
        facts = conn.execute(select(dossier_fact).where(or_(
            and_(f.submitted_at >= period.start, f.submitted_at < period.end),
            and_(f.finished_at >= period.start, f.finished_at < period.end),
            and_(f.due_at < at, or_(f.finished_at.is_(None), f.finished_at >= at))))).mappings().all()

    names: dict[str, str] = {}
    rows: dict[str, KpiRow] = {}

    def row(code: str | None) -> KpiRow:
        key = code or "(không rõ)"
        if key not in rows:
            rows[key] = KpiRow(key, "")
        return rows[key]

    province = KpiRow(PROVINCE, "Toàn tỉnh")
    level_of: dict[str, str] = {}
    for code, record in catalogue:
        level = _level(record.get("online_level"))
        level_of[code] = level
        for target in [province] + [row(a) for a, _ in _agencies_of(record)]:
            target.procedures += 1
            setattr(target, f"level_{level}", getattr(target, f"level_{level}") + 1)
        for agency, name in _agencies_of(record):
            if name:
                names.setdefault(agency, name)

    days: dict[date, DayRow] = {}
    day = period.first_day
    while day <= period.last_day:
        days[day] = DayRow(day)
        day += timedelta(days=1)

    for f in facts:
        if f["agency_name"] and f["agency_code"]:
            names[f["agency_code"]] = f["agency_name"]
        targets = [province, row(f["agency_code"])]
        submitted = f["submitted_at"]
        if submitted is not None and period.start <= submitted < period.end:
            is_online = f["channel"] in online
            local_day = days.get(submitted.astimezone(LOCAL).date())
            for t in targets:
                t.received += 1
                if is_online:
                    t.received_online += 1
                    level = level_of.get(f["procedure_code"] or "", "unknown")
                    setattr(t, f"online_{level}", getattr(t, f"online_{level}") + 1)
            if local_day is not None:
                local_day.received += 1
                local_day.received_online += int(is_online)
        finished, due = f["finished_at"], f["due_at"]
        if finished is not None and period.start <= finished < period.end:
            local_day = days.get(finished.astimezone(LOCAL).date())
            kind = "finished_without_due" if due is None else ("on_time" if finished <= due else "late")
            for t in targets:
                t.processed += 1
                setattr(t, kind, getattr(t, kind) + 1)
            if local_day is not None:
                local_day.processed += 1
                if kind != "finished_without_due":
                    setattr(local_day, kind, getattr(local_day, kind) + 1)
        if due is not None and due < at and (finished is None or finished >= at) and \
                (submitted is None or submitted < at):
            for t in targets:
                t.open_past_due += 1

    for r in [province, *rows.values()]:
        r.agency_name = r.agency_name or names.get(r.agency_code, "")
        r.online_services = r.level_full + r.level_partial
        for level in LEVELS:
            setattr(r, f"share_{level}", share(getattr(r, f"level_{level}"), r.procedures))
        r.online_share = share(r.received_online, r.received)
        r.on_time_rate = share(r.on_time, r.on_time + r.late)
        if r.procedures:
            r.flags = [t for t in thresholds if (r.share_full or 0.0) < t]
    return KpiReport(
        period=period, as_of=at, generated_at=utcnow(), thresholds=thresholds, province=province,
        agencies=[rows[k] for k in sorted(rows)], days=list(days.values()), labels=level_labels())
