"""The reports as ministry tables (``tk_dvc_truc_tuyen``, ``ds_doi_soat_*``), upserted.

The tables belong to the ministry database and are created by its numbered migrations
(``connectors.ministry_db.replica.MIGRATIONS``, migrations 2 and 3). A KPI row is keyed by (first day,
last day, agency), an agreement row by (run, check[, record, aspect]): writing the same report
again replaces its rows in one transaction, so reruns are safe. A KPI period that does not start
and end at local midnight is refused (:func:`check_whole_days`): its row would be the whole days'
row, and two periods within one day would overwrite each other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, update
from sqlalchemy.engine import Connection

from connectors.ministry_db.replica import MinistryReplica, doi_soat_chenh_lech, doi_soat_tong_hop, thong_ke_dvc
from lienthong.reports.agreement import AgreementReport
from lienthong.reports.kpi import KpiReport, KpiRow, Period
from lienthong.store import utcnow

__all__ = ["check_whole_days", "flag_text", "kpi_columns", "write_agreement", "write_kpis"]


def check_whole_days(period: Period) -> None:
    """Refuse a period ``tk_dvc_truc_tuyen`` cannot key: its rows are keyed by local days.

    Raises:
        ValueError: a bound is not a local midnight (the message names it and what to do).
    """
    partial = period.partial_day_bounds()
    if partial:
        raise ValueError(
            f"KPI period {period.label}: the ministry table {thong_ke_dvc.name} keeps whole local days "
            f"(tu_ngay, den_ngay), and the period's {' and '.join(partial)} is not a local midnight "
            f"(Asia/Ho_Chi_Minh); its row would replace the whole days' row. Give dates, or leave the "
            f"ministry table out (--no-ministry)")


def flag_text(row: KpiRow) -> str | None:
    return ",".join(f"<{t * 100:g}%" for t in row.flags) or None


def kpi_columns(report: KpiReport, row: KpiRow) -> dict[str, Any]:
    """One KPI row in the ministry's column names (formatting only)."""
    return {
        "tu_ngay": report.period.first_day.isoformat(), "den_ngay": report.period.last_day.isoformat(),
        "ma_co_quan": row.agency_code, "ten_co_quan": row.agency_name,
        "so_tthc": row.procedures, "so_dvc_toan_trinh": row.level_full, "so_dvc_mot_phan": row.level_partial,
        "so_tthc_khong_truc_tuyen": row.level_none, "so_tthc_chua_cau_hinh": row.level_unknown,
        "ty_le_toan_trinh": row.share_full, "ty_le_mot_phan": row.share_partial,
        "hs_tiep_nhan": row.received, "hs_truc_tuyen": row.received_online,
        "hs_truc_tuyen_toan_trinh": row.online_full, "hs_truc_tuyen_mot_phan": row.online_partial,
        "hs_truc_tuyen_khac": row.online_none + row.online_unknown, "ty_le_hs_truc_tuyen": row.online_share,
        "hs_da_xu_ly": row.processed, "hs_dung_han": row.on_time, "hs_tre_han": row.late,
        "ty_le_dung_han": row.on_time_rate, "hs_qua_han_chua_xu_ly": row.open_past_due,
        "canh_bao": flag_text(row), "tinh_den": report.as_of,
    }


def _upsert(conn: Connection, table: Any, keys: dict[str, Any], values: dict[str, Any]) -> None:
    where = and_(*[table.c[k] == v for k, v in keys.items()])
    if not conn.execute(update(table).where(where).values(**values)).rowcount:
        conn.execute(table.insert().values(**keys, **values))


def write_kpis(replica: MinistryReplica, report: KpiReport) -> int:
    """Replace the period's rows (province and agencies) in one transaction: an agency no longer
    in the period (its dossiers moved to another) loses its row, so the agencies' rows add up to
    the province's. Returns how many rows were written.

    Raises:
        ValueError: the period is not whole local days (:func:`check_whole_days`).
    """
    check_whole_days(report.period)
    replica.migrate()
    now = utcnow()
    rows = []
    for row in report.rows():
        values = kpi_columns(report, row)
        rows.append(({k: values.pop(k) for k in ("tu_ngay", "den_ngay", "ma_co_quan")}, values))
    request = {"operation": "upsert_kpis", "table": thong_ke_dvc.name,
               "rows": [{"key": keys, "values": values} for keys, values in rows]}
    agencies = [str(keys["ma_co_quan"]) for keys, _ in rows]
    # one recorded transaction: the exchange log shows what was written to the ministry database
    with replica.write_transaction("upsert_kpis", request, record_keys=agencies) as (conn, result):
        if rows:
            first = rows[0][0]
            result["rows_deleted"] = conn.execute(delete(thong_ke_dvc).where(
                thong_ke_dvc.c.tu_ngay == first["tu_ngay"], thong_ke_dvc.c.den_ngay == first["den_ngay"],
                thong_ke_dvc.c.ma_co_quan.not_in(agencies))).rowcount
        for keys, values in rows:
            _upsert(conn, thong_ke_dvc, keys, {**values, "cap_nhat_luc": now})
        result["rows_written"] = len(rows)
    return len(rows)


def write_agreement(replica: MinistryReplica, report: AgreementReport) -> int:
    """Replace the run's summary and differences; returns how many differences were written."""
    replica.migrate()
    now = utcnow()
    written = 0
    request = {"operation": "replace_agreement", "run": report.run_id,
               "tables": [doi_soat_tong_hop.name, doi_soat_chenh_lech.name],
               "checks": [{"check": r.check_name, "checked": r.checked, "agreeing": r.agreeing,
                           "differing": r.differing,
                           "differences": [[d.record_key, d.aspect, d.value_a, d.value_b] for d in r.differences]}
                          for r in report.results]}
    # keyed by the agreement run, not by dossier: the report's own write must not become "the last
    # exchange that touched" a dossier it reports on
    with replica.write_transaction("replace_agreement", request, record_keys=[report.run_id]) as (conn, written_rows):
        conn.execute(delete(doi_soat_chenh_lech).where(doi_soat_chenh_lech.c.ma_lan_doi_soat == report.run_id))
        for result in report.results:
            _upsert(conn, doi_soat_tong_hop, {"ma_lan_doi_soat": report.run_id, "kiem_tra": result.check_name}, {
                "he_thong": result.systems, "tinh_den": result.as_of, "so_ban_ghi": result.checked,
                "so_khop": result.agreeing, "so_lech": result.differing, "ghi_chu": result.note,
                "cap_nhat_luc": now})
            rows = [{
                "ma_lan_doi_soat": report.run_id, "kiem_tra": d.check_name, "ma_ban_ghi": d.record_key,
                "khia_canh": d.aspect, "ma_co_quan": d.agency_code, "ma_ho_so": d.dossier_no,
                "gia_tri_a": d.value_a, "gia_tri_b": d.value_b, "tu_luc": d.since, "tuoi_giay": d.age_seconds,
                "nhat_ky_cuoi": d.last_exchange, "cap_nhat_luc": now} for d in result.differences]
            if rows:
                conn.execute(doi_soat_chenh_lech.insert(), rows)
            written += len(rows)
        written_rows["differences_written"] = written
    return written
