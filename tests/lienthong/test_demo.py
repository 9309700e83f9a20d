"""The demo's summary (`make demo`): its lines must say what the numbers count."""

from __future__ import annotations

from lienthong.demo import _print_payment_summary, _print_summary


def _line(lines: list[str], start: str) -> str:
    (line,) = [line for line in lines if line.strip().startswith(start)]
    return line


def test_dossier_summary_says_its_portal_calls_leave_the_log_ins_out():
    """The first run printed "national portal calls 10" while `lienthong exchanges --run-id ...`,
    the command the demo names next, lists 12 national_portal records: two are log-ins, which the
    count leaves out without saying so."""
    lines: list[str] = []
    summary = {"run_id": "r1", "exchanges": 13,
               "counts": {"portal_calls": 1, "progress_calls": 9, "delivered_new": 41}}
    _print_summary(lines.append, summary, 1.0)
    line = _line(lines, "national portal calls")
    assert line.split()[-1] == "10" and "log-ins" in line, line


def test_payment_summary_says_the_fees_recorded_are_paid_and_failed_ones():
    """It printed "paid / failed / still pending 16 / 8 / 10" above "one-stop fees recorded where
    the callback was lost 23": more fees recorded than payments paid, because a failed payment's
    result is recorded at the one-stop too, which the line did not say."""
    lines: list[str] = []
    summary = {"run_id": "r1", "exchanges": 110,
               "counts": {"found_paid": 16, "found_failed": 8, "fees_updated": 23, "fees_already_recorded": 1}}
    _print_payment_summary(lines.append, summary, 1.0, [], None)
    line = _line(lines, "one-stop fee results")
    assert line.split()[-1] == "23" and "paid or failed" in line, line
