"""``lienthong report kpi|agreement`` — the reports from the command line (same task functions as
the DAGs ``report_kpi`` and ``report_agreement``)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime

__all__ = ["add_report_commands"]


def _resolver():
    from lienthong.cli import _resolver as resolver

    return resolver()


def _percent(text: str) -> float:
    """A threshold as a fraction: "50" or "50%" or "0.5" is one half; "1%" is one hundredth (a
    percent sign always means percent), "1" is one whole."""
    raw = text
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a share (50, 50% or 0.5)") from None
    if not text.endswith("%") and value > 1:
        value /= 100
    if not 0 <= value <= 1:  # NaN fails this too; 150 would flag every agency, -5 none
        raise argparse.ArgumentTypeError(f"{raw!r} is not a share between 0 and 100% (50, 50% or 0.5)")
    return value


def cmd_report_kpi(args: argparse.Namespace) -> int:
    from lienthong.reports import tasks

    try:
        tasks.kpi_period(args.date_from, args.date_to, ministry=not args.no_ministry)
    except ValueError as exc:  # a bound that does not parse, --from after --to, or within a day for the ministry
        print(f"lienthong: {exc}", file=sys.stderr)
        return 2
    summary = tasks.kpi_report(_resolver(), date_from=args.date_from, date_to=args.date_to,
                               thresholds=args.threshold or None, out_dir=args.out,
                               ministry=not args.no_ministry, with_agreement=not args.no_agreement)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    print(f"HTML report: {summary['html']}")
    return 0


def cmd_report_agreement(args: argparse.Namespace) -> int:
    from lienthong.reports import tasks

    run_id = args.run_id or f"cli__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:6]}"
    summary = tasks.run_agreement(_resolver(), run_id=run_id, checks=tuple(args.check or tasks.AGREEMENT_CHECKS),
                                  out_dir=args.out, ministry=not args.no_ministry, task_id="cli")
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    print(f"HTML report: {summary['html']}")
    if not args.fail_on_difference:
        return 0
    # a check that could not run says nothing about agreement: unknown fails like a difference
    unknown = [r for r in summary["results"] if "skipped" in r]
    for r in unknown:
        print(f"lienthong: {r['check']} not checked: {r['skipped']}", file=sys.stderr)
    return 1 if summary["differences"] or unknown else 0


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="reports: online-service KPIs, cross-system agreement (HTML, CSV, "
                                      "ministry tables)")
    rs = p.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    q = rs.add_parser("kpi", help="online-service KPIs per agency and for the province, for a period")
    q.add_argument("--from", dest="date_from", help="first day (YYYY-MM-DD, local) or ISO date-time "
                                                    "(default: the first of the month of --to, or of this month)")
    q.add_argument("--to", dest="date_to", help="last day, included (YYYY-MM-DD) or ISO date-time, excluded "
                                                "(default: today); a period that ends before it starts is "
                                                "refused (exit 2)")
    q.add_argument("--threshold", action="append", type=_percent,
                   help="flag agencies whose toàn trình share is below this (50, 50%% or 0.5; 1%% is one "
                        "percent; repeat; default 50 and 30)")
    q.add_argument("--out", help="directory for the HTML and CSV files (default $LIENTHONG_HOME/reports)")
    q.add_argument("--no-ministry", action="store_true", help="do not write the ministry tables")
    q.add_argument("--no-agreement", action="store_true",
                   help="leave the latest agreement run out of the HTML report")
    q.set_defaults(func=cmd_report_kpi)
    q = rs.add_parser("agreement", help="does every system hold the same facts? (dossiers: one-stop ↔ portal; "
                                        "fees: payment platform ↔ one-stop ↔ ministry ledger)")
    q.add_argument("--check", action="append", help="only this check (dossier_status, fee_payment; repeat)")
    q.add_argument("--run-id", help="run id to record (default: cli__<time>_<random>)")
    q.add_argument("--out", help="directory for the HTML and CSV files (default $LIENTHONG_HOME/reports)")
    q.add_argument("--no-ministry", action="store_true", help="do not write the ministry tables")
    q.add_argument("--fail-on-difference", action="store_true",
                   help="exit 1 when a difference is found or a check could not run (its peers not configured)")
    q.set_defaults(func=cmd_report_agreement)
