"""Renderers: the KPI and agreement reports as one HTML file (inline SVG charts) and as CSV.

They format what :mod:`lienthong.reports.kpi` and :mod:`lienthong.reports.agreement` computed and
never count anything themselves. The HTML opens from a file with no server: no script, no CDN,
no external font or image; every chart is an ``<svg>`` drawn here.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from lienthong.reports.agreement import AgreementReport, Difference
from lienthong.reports.kpi import LEVELS, KpiReport, KpiRow

__all__ = ["agreement_csv", "format_age", "kpi_csv", "kpi_days_csv", "render_html", "write_files"]

LOCAL = ZoneInfo("Asia/Ho_Chi_Minh")
COLOURS = {"full": "#1b7f3b", "partial": "#6cb0e0", "none": "#e6a23c", "unknown": "#b9b9b9"}
ONLINE, OTHER, PROCESSED, LATE = "#2a6fdb", "#c9d6ea", "#d9480f", "#c92a2a"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def format_age(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{seconds} s"


def _local(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(LOCAL).strftime("%Y-%m-%d %H:%M")


def _t(x: float, y: float, text: str, *, anchor: str = "start", size: int = 11, fill: str = "#222",
       weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}">{escape(text)}</text>')


def _short(text: str, n: int = 34) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _legend(x: float, y: float, items: list[tuple[str, str]]) -> list[str]:
    out = []
    for label, colour in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{colour}"/>')
        out.append(_t(x + 14, y, label))
        x += 24 + 6.2 * len(label)
    return out


def _svg(width: int, height: int, body: list[str], chart_id: str, title: str) -> str:
    return (f'<svg id="{chart_id}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def chart_levels(report: KpiReport) -> str:
    """Stacked bars: each agency's procedures by online service level."""
    rows = [r for r in report.agencies if r.procedures]
    bar_h, left, width = 18, 270, 900
    top = 34
    height = top + len(rows) * (bar_h + 6) + 20
    biggest = max([r.procedures for r in rows], default=1)
    scale = (width - left - 90) / biggest
    body = _legend(left, 16, [(report.labels[lv], COLOURS[lv]) for lv in LEVELS])
    for i, r in enumerate(rows):
        y = top + i * (bar_h + 6)
        body.append(_t(left - 8, y + 13, _short(f"{r.agency_name or r.agency_code}"), anchor="end"))
        x = float(left)
        for level in LEVELS:
            n = getattr(r, f"level_{level}")
            if n:
                w = n * scale
                body.append(f'<rect class="bar level-{level}" x="{x:.1f}" y="{y}" width="{w:.1f}" '
                            f'height="{bar_h}" fill="{COLOURS[level]}"><title>{escape(r.agency_code)} '
                            f'{escape(report.labels[level])}: {n}</title></rect>')
                x += w
        flag = " ⚑" if r.flags else ""
        body.append(_t(x + 6, y + 13, f"{r.procedures} · {pct(r.share_full)}{flag}",
                       fill="#c92a2a" if r.flags else "#222"))
    return _svg(width, height, body, "chart-levels", "Thủ tục theo mức độ DVC trực tuyến, theo cơ quan")


def chart_days(report: KpiReport) -> str:
    """Bars per day: dossiers received (online / other), with processed dossiers as a line."""
    days = report.days
    width, height, left, bottom, top = 900, 280, 50, 40, 30
    n = max(len(days), 1)
    step = (width - left - 20) / n
    biggest = max([max(d.received, d.processed) for d in days] + [1])
    scale = (height - top - bottom) / biggest
    base = height - bottom
    body = _legend(left, 16, [("nộp trực tuyến", ONLINE), ("nộp trực tiếp / bưu chính", OTHER),
                              ("đã xử lý xong", PROCESSED)])
    body.append(f'<line x1="{left}" y1="{base}" x2="{width - 20}" y2="{base}" stroke="#888"/>')
    for k in range(0, 5):
        value = biggest * k / 4
        y = base - value * scale
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(_t(left - 6, y + 4, f"{value:.0f}", anchor="end", size=10))
    points = []
    label_every = max(1, n // 12)
    for i, d in enumerate(days):
        x = left + i * step
        w = max(step * 0.7, 1)
        online_h, other_h = d.received_online * scale, (d.received - d.received_online) * scale
        label = d.day.isoformat()
        if other_h:
            body.append(f'<rect class="bar day-other" x="{x:.1f}" y="{base - other_h:.1f}" width="{w:.1f}" '
                        f'height="{other_h:.1f}" fill="{OTHER}"><title>{label}: {d.received - d.received_online} '
                        'khác</title></rect>')
        if online_h:
            body.append(f'<rect class="bar day-online" x="{x:.1f}" y="{base - other_h - online_h:.1f}" '
                        f'width="{w:.1f}" height="{online_h:.1f}" fill="{ONLINE}"><title>{label}: '
                        f'{d.received_online} trực tuyến</title></rect>')
        points.append(f"{x + w / 2:.1f},{base - d.processed * scale:.1f}")
        if i % label_every == 0:
            body.append(_t(x + w / 2, base + 14, d.day.strftime("%d/%m"), anchor="middle", size=10))
    if points:
        body.append(f'<polyline class="line-processed" points="{" ".join(points)}" fill="none" '
                    f'stroke="{PROCESSED}" stroke-width="2"/>')
    return _svg(width, height, body, "chart-days", "Hồ sơ tiếp nhận và xử lý theo ngày")


def chart_on_time(report: KpiReport) -> str:
    """Horizontal bars: each agency's on-time rate, late share in red."""
    rows = [r for r in report.agencies if r.on_time + r.late]
    bar_h, left, width = 18, 270, 900
    top = 34
    height = top + (len(rows) + 1) * (bar_h + 6) + 20
    span = width - left - 120
    body = _legend(left, 16, [("đúng hạn", COLOURS["full"]), ("trễ hạn", LATE)])
    for i, r in enumerate([report.province, *rows]):
        y = top + i * (bar_h + 6)
        total = r.on_time + r.late
        body.append(_t(left - 8, y + 13, _short(r.agency_name or r.agency_code), anchor="end",
                       weight="bold" if r.is_province else "normal"))
        if total:
            w_ok = span * r.on_time / total
            body.append(f'<rect class="bar on-time" x="{left}" y="{y}" width="{w_ok:.1f}" height="{bar_h}" '
                        f'fill="{COLOURS["full"]}"><title>{escape(r.agency_code)}: {r.on_time} đúng hạn</title></rect>')
            body.append(f'<rect class="bar late" x="{left + w_ok:.1f}" y="{y}" width="{span - w_ok:.1f}" '
                        f'height="{bar_h}" fill="{LATE}"><title>{escape(r.agency_code)}: {r.late} trễ hạn'
                        '</title></rect>')
        body.append(_t(left + span + 6, y + 13, f"{pct(r.on_time_rate)} ({r.on_time}/{total})"))
    return _svg(width, height, body, "chart-on-time", "Tỷ lệ hồ sơ xử lý đúng hạn")


def chart_disagreements(agreement: AgreementReport) -> str:
    """Bars: disagreements by check and aspect."""
    counts = Counter((d.check_name, d.aspect) for d in agreement.differences())
    for r in agreement.results:
        if not r.differences:
            counts[(r.check_name, "không lệch" if r.note is None else "không chạy")] = 0
    items = sorted(counts.items())
    bar_h, left, width = 20, 270, 900
    top = 20
    height = top + max(len(items), 1) * (bar_h + 6) + 20
    biggest = max([n for _, n in items] + [1])
    scale = (width - left - 80) / biggest
    body = []
    for i, ((check, aspect), n) in enumerate(items):
        y = top + i * (bar_h + 6)
        body.append(_t(left - 8, y + 14, f"{check} · {aspect}", anchor="end"))
        body.append(f'<rect class="bar disagreement" x="{left}" y="{y}" width="{max(n * scale, 1):.1f}" '
                    f'height="{bar_h}" fill="{LATE if n else "#ccc"}"><title>{n}</title></rect>')
        body.append(_t(left + n * scale + 6, y + 14, str(n)))
    if not items:
        body.append(_t(left, top + 14, "không có kiểm tra nào"))
    return _svg(width, height, body, "chart-disagreements", "Chênh lệch giữa các hệ thống")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f6f8}td.l,th.l{text-align:left}tr.flag td{background:#fff1f0}tr.province td{font-weight:bold}
.muted{color:#666;font-size:12px}.chart{display:block;margin:8px 0;background:#fff}
"""


def _kpi_table(report: KpiReport) -> str:
    labels = report.labels
    head = ("<tr><th class=l>Cơ quan</th><th>Số TTHC</th>"
            + "".join(f"<th>{escape(labels[lv])}</th><th>%</th>" for lv in LEVELS)
            + "<th>HS tiếp nhận</th><th>HS trực tuyến</th><th>% trực tuyến</th>"
            + "".join(f"<th>HS trực tuyến · {escape(labels[lv])}</th>" for lv in LEVELS)
            + "<th>Đã xử lý</th><th>Đúng hạn</th><th>Trễ hạn</th><th>% đúng hạn</th><th>Quá hạn chưa xử lý</th>"
            + "<th class=l>Cảnh báo</th></tr>")
    lines = []
    for r in report.rows():
        cls = "province" if r.is_province else ("flag" if r.flags else "")
        flag = ", ".join(f"&lt; {t * 100:g} %" for t in r.flags)
        lines.append(
            f'<tr class="{cls}"><td class=l>{escape(r.agency_name or "")} <span class=muted>{escape(r.agency_code)}'
            f"</span></td><td>{r.procedures}</td>"
            + "".join(f"<td>{getattr(r, f'level_{lv}')}</td><td>{pct(getattr(r, f'share_{lv}'))}</td>"
                      for lv in LEVELS)
            + f"<td>{r.received}</td><td>{r.received_online}</td><td>{pct(r.online_share)}</td>"
            + "".join(f"<td>{getattr(r, f'online_{lv}')}</td>" for lv in LEVELS)
            + f"<td>{r.processed}</td><td>{r.on_time}</td><td>{r.late}</td><td>{pct(r.on_time_rate)}</td>"
            f"<td>{r.open_past_due}</td><td class=l>{flag}</td></tr>")
    return f"<table class=kpi>{head}{''.join(lines)}</table>"


def _difference_rows(diffs: list[Difference]) -> str:
    out = []
    for d in sorted(diffs, key=lambda d: (-(d.age_seconds or 0), d.record_key)):
        out.append(
            f"<tr><td class=l>{escape(d.check_name)}</td><td class=l>{escape(d.record_key)}</td>"
            f"<td class=l>{escape(d.aspect)}</td><td class=l>{escape(d.value_a or '—')}</td>"
            f"<td class=l>{escape(d.value_b or '—')}</td><td>{_local(d.since)}</td>"
            f"<td>{format_age(d.age_seconds)}</td><td class=l>{escape(d.agency_code or '')}</td>"
            f"<td class=l>{escape(d.last_exchange or '—')}</td></tr>")
    return "".join(out)


def render_html(kpi: KpiReport | None, agreement: AgreementReport | None, *, title: str | None = None) -> str:
    parts = [f"<!DOCTYPE html><html lang=vi><head><meta charset=utf-8><title>{escape(title or 'lienthong report')}"
             f"</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{escape(title or 'Báo cáo dịch vụ công trực tuyến và đối soát liên thông')}</h1>")
    if kpi is not None:
        p = kpi.province
        flagged = kpi.flagged()
        parts.append(
            f"<p>Kỳ báo cáo <b>{kpi.period.first_day} → {kpi.period.last_day}</b> · số liệu tính đến "
            f"{_local(kpi.as_of)} · lập lúc {_local(kpi.generated_at)}</p>"
            f"<p>Toàn tỉnh: <b>{p.procedures}</b> TTHC; <b>{p.online_services}</b> DVC trực tuyến "
            f"({p.level_full} {escape(kpi.labels['full'])}, {p.level_partial} {escape(kpi.labels['partial'])}); "
            f"tỷ lệ toàn trình <b>{pct(p.share_full)}</b>. Hồ sơ: {p.received} tiếp nhận, {p.received_online} "
            f"trực tuyến ({pct(p.online_share)}); {p.processed} đã xử lý, {p.on_time} đúng hạn, {p.late} trễ hạn "
            f"({pct(p.on_time_rate)} đúng hạn); {p.open_past_due} quá hạn chưa xử lý.</p>")
        thresholds = ", ".join(f"{t * 100:g} %" for t in kpi.thresholds) or "không đặt ngưỡng"
        parts.append(f"<p>Ngưỡng cảnh báo tỷ lệ toàn trình: {thresholds}. Cơ quan dưới ngưỡng: "
                     f"<b>{len(flagged)}</b>"
                     + (": " + ", ".join(escape(f"{r.agency_code} ({pct(r.share_full)})") for r in flagged)
                        if flagged else "") + "</p>")
        parts.append("<h2>Mức độ DVC trực tuyến theo cơ quan</h2>" + chart_levels(kpi))
        parts.append("<h2>Hồ sơ theo ngày</h2>" + chart_days(kpi))
        parts.append("<h2>Tỷ lệ xử lý đúng hạn</h2>" + chart_on_time(kpi))
        parts.append("<h2>Chỉ số theo cơ quan</h2>" + _kpi_table(kpi))
    if agreement is not None:
        parts.append(f"<h2>Đối soát giữa các hệ thống</h2><p>Lần đối soát {escape(agreement.run_id)} · "
                     f"tính đến {_local(agreement.as_of)}</p>")
        parts.append("<table><tr><th class=l>Kiểm tra</th><th class=l>Hệ thống</th><th>Bản ghi</th><th>Khớp</th>"
                     "<th>Lệch</th><th class=l>Ghi chú</th></tr>" + "".join(
                         f"<tr><td class=l>{escape(r.check_name)}</td><td class=l>{escape(r.systems)}</td>"
                         f"<td>{r.checked}</td><td>{r.agreeing}</td><td>{r.differing}</td>"
                         f"<td class=l>{escape(r.note or '')}</td></tr>" for r in agreement.results) + "</table>")
        parts.append(chart_disagreements(agreement))
        parts.append("<table class=differences><tr><th class=l>Kiểm tra</th><th class=l>Bản ghi</th>"
                     "<th class=l>Khía cạnh</th><th class=l>Hệ thống A</th><th class=l>Hệ thống B</th>"
                     "<th>Lệch từ</th><th>Tuổi</th><th class=l>Cơ quan</th><th class=l>Trao đổi cuối</th></tr>"
                     + _difference_rows(agreement.differences()) + "</table>")
    parts.append("<p class=muted>Sinh bởi lienthong.reports — số liệu tính một lần (lienthong.reports.kpi, "
                 "lienthong.reports.agreement); tệp này không cần máy chủ.</p></body></html>")
    return "".join(parts)


#: what a spreadsheet takes as the start of a formula in a text cell
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell; text a peer supplied that a spreadsheet would run as a formula (an agency name
    '=HYPERLINK(...)') is kept as text behind an apostrophe. Numbers are left as numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buf.getvalue()


KPI_FIELDS = [f for f in KpiRow.__dataclass_fields__ if f != "flags"]


def kpi_csv(report: KpiReport) -> str:
    header = ["period_first_day", "period_last_day", *KPI_FIELDS, "flags"]
    rows = []
    for r in report.rows():
        d = r.as_dict()
        rows.append([report.period.first_day.isoformat(), report.period.last_day.isoformat(),
                     *[d[f] for f in KPI_FIELDS], " ".join(f"<{t:g}" for t in r.flags)])
    return _csv(header, rows)


def kpi_days_csv(report: KpiReport) -> str:
    return _csv(["day", "received", "received_online", "processed", "on_time", "late"],
                [[d.day.isoformat(), d.received, d.received_online, d.processed, d.on_time, d.late]
                 for d in report.days])


def agreement_csv(report: AgreementReport) -> str:
    header = ["run_id", "check_name", "record_key", "aspect", "dossier_no", "agency_code", "value_a", "value_b",
              "since", "age_seconds", "last_exchange_id", "last_exchange", "detail"]
    rows = [[report.run_id, d.check_name, d.record_key, d.aspect, d.dossier_no, d.agency_code, d.value_a, d.value_b,
             d.since.isoformat() if d.since else None, d.age_seconds, d.last_exchange_id, d.last_exchange, d.detail]
            for d in report.differences()]
    return _csv(header, rows)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def write_files(out_dir: Path, *, kpi: KpiReport | None = None, agreement: AgreementReport | None = None
                ) -> dict[str, Path]:
    """Write the HTML report and the CSV files; returns their paths by kind. The CSV files start
    with a UTF-8 byte-order mark: without it a spreadsheet opens Vietnamese names in the local code
    page ("Sá»Ÿ TÆ° phÃ¡p")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if kpi is not None:
        stem = f"kpi-{kpi.period.first_day}_{kpi.period.last_day}"
        paths["kpi_csv"] = out_dir / f"{stem}.csv"
        paths["kpi_csv"].write_text(kpi_csv(kpi), encoding="utf-8-sig")
        paths["kpi_days_csv"] = out_dir / f"{stem}-days.csv"
        paths["kpi_days_csv"].write_text(kpi_days_csv(kpi), encoding="utf-8-sig")
    else:
        stem = f"agreement-{_safe(agreement.run_id) if agreement else 'none'}"
    if agreement is not None:
        paths["agreement_csv"] = out_dir / f"agreement-{_safe(agreement.run_id)}.csv"
        paths["agreement_csv"].write_text(agreement_csv(agreement), encoding="utf-8-sig")
    paths["html"] = out_dir / f"report-{stem}.html"
    paths["html"].write_text(render_html(kpi, agreement), encoding="utf-8")
    return paths
