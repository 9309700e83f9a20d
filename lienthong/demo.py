"""``make demo``: the three flows once, through Airflow, against the stand-ins, with a summary.

Steps: prepare Airflow's metadata DB (SQLite), start the stand-ins (state kept in
``var/mocks`` between runs), advance the one-stop world by a few events, let citizens pay a few
fees (some callbacks are lost on the way), run the ``sync_dossier_status``,
``sync_procedure_catalogue`` and ``sync_payment_receipts`` DAGs with ``airflow dags test`` (real
DagRuns in Airflow's DB, visible later in ``make airflow``, each task's log in ``var/airflow/logs``
through :mod:`lienthong.airflow_dag_test`), print what each run did from the bus
database, stop the stand-ins, seal and verify the exchange log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests

from lienthong.flows import dossier_status
from lienthong.localenv import POOLS_FILE, LocalTopology
from lienthong.store import Store

__all__ = ["StandIns", "prepare_airflow", "run_demo"]

Printer = Callable[[str], None]


class StandIns:
    """The stand-in peers as a child process (``python -m mocks up``), stopped by process id."""

    def __init__(self, topo: LocalTopology, env: dict[str, str], log_file: Path, extra_args: tuple[str, ...] = ()):
        self.topo = topo
        self.env = env
        self.log_file = log_file
        self.extra_args = extra_args  # more ``mocks up`` options (seed, world size...)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def onestop_url(self) -> str:
        return f"http://{self.topo.host}:{self.topo.onestop_port}"

    @property
    def portal_url(self) -> str:
        return f"http://{self.topo.host}:{self.topo.portal_port}"

    @property
    def payment_url(self) -> str:
        return f"http://{self.topo.host}:{self.topo.payment_port}"

    @property
    def ledger_url(self) -> str:
        return f"http://{self.topo.host}:{self.topo.ledger_port}"

    def start(self, timeout: float = 30.0) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        self.process = subprocess.Popen([*self.topo.mocks_command(), *self.extra_args], env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=self.topo.home)
        deadline = time.monotonic() + timeout
        pending = [self.onestop_url, self.portal_url, self.payment_url, self.ledger_url]
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"stand-ins exited with code {self.process.returncode}; see {self.log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stand-ins did not answer /health within {timeout:.0f}s; see {self.log_file}")
            try:
                if requests.get(pending[0] + "/health", timeout=1).ok:
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def advance(self, new: int, changes: int) -> dict[str, Any]:
        response = requests.post(self.onestop_url + "/_admin/advance", json={"new": new, "changes": changes},
                                 timeout=30)
        response.raise_for_status()
        return response.json()

    def publish_catalogue(self, *, add: int, amend: int, withdraw: int) -> dict[str, Any]:
        response = requests.post(self.portal_url + "/_admin/catalogue/publish",
                                 json={"add": add, "amend": amend, "withdraw": withdraw}, timeout=60)
        response.raise_for_status()
        return response.json()

    def pay_fees(self, opened: int, settled: int) -> dict[str, Any]:
        """Citizens start paying ``opened`` dossiers' fees (the one-stop sends INIT to the payment
        platform), then the platform completes the ``settled`` oldest pending payments and sends its
        callbacks (a seeded share of them is lost)."""
        response = requests.post(self.onestop_url + "/_admin/payments/open", json={"n": opened}, timeout=30)
        response.raise_for_status()
        result = {"opened": response.json().get("opened", [])}
        response = requests.post(self.payment_url + "/_admin/payments/settle", json={"n": settled}, timeout=30)
        response.raise_for_status()
        result["settled"] = response.json().get("settled", [])
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


def _airflow(args: list[str], env: dict[str, str], log_file: Path, timeout: float = 600,
             command: list[str] | None = None) -> int:
    """``airflow ARGS`` (or ``command ARGS``), its output appended to ``log_file``."""
    command = command or [str(Path(sys.executable).parent / "airflow")]
    with log_file.open("ab") as log:
        log.write(f"\n$ {' '.join([Path(command[0]).name, *command[1:], *args])}\n".encode())
        log.flush()
        return subprocess.run([*command, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False).returncode


#: ``airflow dags test`` that also writes each task's log where the UI reads it (under
#: ``AIRFLOW_HOME/logs``): plain ``dags test`` writes none, and ``make airflow`` then showed the
#: demo's task instances with "Could not read served logs".
DAG_TEST = [sys.executable, "-m", "lienthong.airflow_dag_test"]


def prepare_airflow(topo: LocalTopology, env: dict[str, str], log_file: Path) -> None:
    """Migrate Airflow's SQLite metadata DB (idempotent) and provision the pools."""
    topo.airflow_home.mkdir(parents=True, exist_ok=True)
    topo.write_passwords_file()
    if _airflow(["db", "migrate"], env, log_file) != 0:
        raise RuntimeError(f"airflow db migrate failed; see {log_file}")
    if _airflow(["pools", "import", str(POOLS_FILE)], env, log_file) != 0:
        raise RuntimeError(f"airflow pools import failed; see {log_file}")


def _print_summary(out: Printer, summary: dict[str, Any], seconds: float) -> None:
    counts = summary.get("counts", {})
    out("")
    out(f"Run {summary['run_id']} of sync_dossier_status")
    rows = [
        ("new change events staged from the one-stop feed", counts.get("staged", 0)),
        ("dossiers read for delivery", counts.get("considered", 0)),
        ("delivered to the national portal as new", counts.get("delivered_new", 0)),
        ("delivered as updates", counts.get("delivered_update", 0)),
        ("unchanged since the portal's last acknowledgement (not re-sent)", counts.get("unchanged", 0)),
        ("held back behind an earlier change in dead letters", counts.get("held", 0)),
        ("rejected (dead-lettered with reasons)", counts.get("rejected", 0)),
        ("progress entries sent (CapNhatTienDoHoSoMC)", counts.get("progress_sent", 0)),
        ("progress entries rejected", counts.get("progress_rejected", 0)),
        ("national portal calls (log-ins not counted)",
         counts.get("portal_calls", 0) + counts.get("progress_calls", 0)),
        ("exchange-log records written", summary.get("exchanges", 0)),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out(f"  {label:<{width}}  {value:>6}")
    for rejection in counts.get("rejections", []) + counts.get("progress_rejections", []):
        reasons = "; ".join(f"{e['field']}: {e['message']} [{e['rule']}]" for e in rejection["errors"])
        out(f"    ✗ {rejection['record_key']} ({rejection['stage']}): {reasons}")
    out(f"  {'took':<{width}}  {seconds:>5.1f}s")


def _print_catalogue_summary(out: Printer, summary: dict[str, Any], seconds: float) -> None:
    counts = summary.get("counts", {})
    out("")
    out(f"Run {summary['run_id']} of sync_procedure_catalogue")
    rows = [
        ("procedures listed by the national catalogue", counts.get("listed", 0)),
        ("added since the last sync", counts.get("added", 0)),
        ("amended", counts.get("amended", 0)),
        ("withdrawn", counts.get("withdrawn", 0)),
        ("unchanged (nothing pushed)", counts.get("unchanged", 0)),
        ("malformed (dead-lettered with reasons)", counts.get("rejected", 0)),
        ("pushed to the one-stop catalogue (upserts / withdrawals)",
         f"{counts.get('onestop_upserted', 0)} / {counts.get('onestop_withdrawn', 0)}"),
        ("written to the ministry replica (upserts / withdrawals)",
         f"{counts.get('ministry_upserted', 0)} / {counts.get('ministry_withdrawn', 0)}"),
        ("exchange-log records written", summary.get("exchanges", 0)),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out(f"  {label:<{width}}  {value:>9}")
    for rejection in counts.get("rejections", [])[:10]:
        reasons = "; ".join(f"{e['field']}: {e['message']} [{e['rule']}]" for e in rejection["errors"])
        out(f"    ✗ {rejection['record_key']}: {reasons}")
    out(f"  {'took':<{width}}  {seconds:>8.1f}s")


def _print_payment_summary(out: Printer, summary: dict[str, Any], seconds: float, mismatches: list[dict[str, Any]],
                           report: Path | None) -> None:
    counts = summary.get("counts", {})
    out("")
    out(f"Run {summary['run_id']} of sync_payment_receipts")
    rows = [
        ("payment requests listed at the one-stop", counts.get("requests_listed", 0)),
        ("asked at the payment platform (QUERY): paid / failed / still pending",
         f"{counts.get('found_paid', 0)} / {counts.get('found_failed', 0)} / {counts.get('still_pending', 0)}"),
        ("receipts fetched (GET_BILL, PDF kept by hash)", counts.get("bills_fetched", 0)),
        ("one-stop fee results (paid or failed) recorded where the callback was lost", counts.get("fees_updated", 0)),
        ("one-stop fees the callback had already recorded", counts.get("fees_already_recorded", 0)),
        ("receipts delivered to the ministry ledger (SOAP)", counts.get("receipts_accepted", 0)),
        ("receipts the ledger already held (not booked again)", counts.get("receipts_unchanged", 0)),
        ("held for follow-up / dead-lettered",
         f"{counts.get('fees_held', 0) + counts.get('receipts_held', 0)} / "
         f"{counts.get('platform_rejected', 0) + counts.get('fees_rejected', 0) + counts.get('receipts_rejected', 0)}"),
        ("reconciliation: paid transactions checked / all three agree",
         f"{counts.get('reconciled_paid', 0)} / {counts.get('reconciled_agreed', 0)}"),
        ("reconciliation: open mismatches", counts.get("mismatches", 0)),
        ("exchange-log records written", summary.get("exchanges", 0)),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out(f"  {label:<{width}}  {value:>9}")
    for item in mismatches[:10]:
        out(f"    ! {item['kind']}: payment {item['record_key']} dossier {item['dossier_code'] or '-'}")
    if report is not None:
        out(f"  reconciliation report: {report}")
    out(f"  {'took':<{width}}  {seconds:>8.1f}s")


def _write_report(topo: LocalTopology, out: Printer) -> Path | None:
    """The KPI and agreement report (HTML with charts, CSV, ministry tables), while the stand-ins run."""
    from lienthong.reports.tasks import write_demo_report

    lines: list[str] = []
    try:
        return write_demo_report(topo, out=lines.append)
    except Exception as exc:  # noqa: BLE001 - the report must not hide the flows' results
        out(f"✗ the report could not be written: {type(exc).__name__}: {exc}")
        return None
    finally:
        for line in lines:
            out(line)


def _run_dag(dag_id: str, flow: str, store: Store, env: dict[str, str], log_file: Path, out: Printer
             ) -> tuple[dict[str, Any] | None, float]:
    before = store.latest_run(flow)
    out(f"· running DAG {dag_id} through Airflow (airflow dags test) …")
    t0 = time.monotonic()
    code = _airflow([dag_id], env, log_file, command=DAG_TEST)
    seconds = time.monotonic() - t0
    after = store.latest_run(flow)
    if code != 0 or after is None or (before and after["run_id"] == before["run_id"]):
        out(f"✗ {dag_id} did not complete (exit code {code}); Airflow's output is in {log_file}")
        return None, seconds
    return after, seconds


def _seal_and_verify(topo: LocalTopology, store: Store, out: Printer) -> bool:
    """Seal what the runs logged (signed with the local key) and verify the whole log."""
    from lienthong.audit import generate_keypair, seal_exchanges, verify_exchanges

    if not topo.seal_key.exists():
        generate_keypair(topo.seal_key)
    sealed = seal_exchanges(store, topo.seal_key)
    result = verify_exchanges(store, topo.seal_key.with_name(topo.seal_key.name + ".pub"))
    out("")
    if result.ok:
        out(f"Exchange log sealed ({sealed.records} new records in {len(sealed.seals)} seals) and verified: "
            f"{result.records_checked} records, {result.seals_checked} seals, chain head {result.head_seq}:"
            f"{(result.head_hash or '')[:16]}…")
        return True
    failure = result.failure
    out(f"✗ exchange log does NOT verify: {failure.kind if failure else '?'} — "
        f"{failure.explanation if failure else ''}")
    return False


def run_demo(topo: LocalTopology, *, new: int = 3, changes: int = 5, out: Printer = print) -> int:
    """Run the demo; returns the process exit code."""
    from lienthong.flows import catalogue, payment_receipts

    started = time.monotonic()
    env = {**os.environ, **topo.environment()}
    os.environ.update(topo.environment())
    topo.log_dir.mkdir(parents=True, exist_ok=True)
    airflow_log = topo.log_dir / "airflow-cli.log"

    out(f"lienthong demo — local state in {topo.home}")
    out("· preparing Airflow's metadata DB on SQLite and the pools …")
    prepare_airflow(topo, env, airflow_log)

    store = Store(f"sqlite:///{topo.bus_db}")
    store.create_schema()
    first_catalogue = store.latest_run(catalogue.FLOW) is None

    standins = StandIns(topo, env, topo.log_dir / "mocks.log")
    out(f"· starting the stand-ins: one-stop {standins.onestop_url}, national portal {standins.portal_url}, "
        f"payment platform {standins.payment_url}, ministry ledger {standins.ledger_url}")
    standins.start()
    report_html: Path | None = None
    try:
        world = standins.advance(new, changes)
        out(f"· the one-stop world moved on: {len(world.get('created', []))} new dossiers, "
            f"{len(world.get('changed', []))} status changes")
        for change in world.get("changed", []):
            out(f"    {change['dossierNo']}: {change['from']} → {change['to']}")
        if not first_catalogue:
            published = standins.publish_catalogue(add=2, amend=3, withdraw=1)
            out(f"· the national catalogue moved on: {len(published['added'])} added, "
                f"{len(published['amended'])} amended, {len(published['withdrawn'])} withdrawn")
        paying = standins.pay_fees(opened=3, settled=4)
        lost = sum(1 for s in paying["settled"] if s.get("callback") == "lost")
        out(f"· citizens paid fees: {len(paying['opened'])} payments started, {len(paying['settled'])} completed "
            f"at the payment platform ({lost} of their callbacks to the one-stop lost on the way)")
        dossiers, dossier_seconds = _run_dag("sync_dossier_status", dossier_status.FLOW, store, env,
                                             airflow_log, out)
        procedures, catalogue_seconds = _run_dag("sync_procedure_catalogue", catalogue.FLOW, store, env,
                                                 airflow_log, out)
        payments, payment_seconds = _run_dag("sync_payment_receipts", payment_receipts.FLOW, store, env,
                                             airflow_log, out)
        out("· writing the report for ministries and auditors (KPIs and cross-system agreement) …")
        report_html = _write_report(topo, out)
    finally:
        standins.stop()
        out("· stand-ins stopped (their state stays in " + str(topo.mocks_dir) + ")")

    if dossiers is not None:
        _print_summary(out, dossiers, dossier_seconds)
    if procedures is not None:
        _print_catalogue_summary(out, procedures, catalogue_seconds)
        report = topo.home / "reports"
        reports = sorted(report.glob("catalogue-*.md"), key=lambda p: p.stat().st_mtime)
        if reports:
            out(f"  change report: {reports[-1]}")
    if payments is not None:
        safe_run = "".join(ch if ch.isalnum() else "_" for ch in payments["run_id"])
        report_path = topo.home / "reports" / f"payments-{safe_run}.md"
        _print_payment_summary(out, payments, payment_seconds, payment_receipts.open_items(store),
                               report_path if report_path.exists() else None)
    if report_html is not None:
        out("")
        out(f"Report for ministries and auditors (open in a browser, no server needed): {report_html}")
    verified = _seal_and_verify(topo, store, out)
    out(f"  whole demo took {time.monotonic() - started:.1f}s")
    out("")
    if dossiers is not None:
        out(f"Exchange log of the dossier run:  .venv/bin/lienthong exchanges --run-id '{dossiers['run_id']}'")
    out("Dead letters:                     .venv/bin/lienthong deadletter list   (show ID, replay ID)")
    out("Airflow UI with these runs:       make airflow   (http://127.0.0.1:8080, user admin / admin)")
    out("Verify the exchange log:          .venv/bin/lienthong audit verify")
    out("Payment mismatches kept:          .venv/bin/lienthong payments mismatches")
    if dossiers is None or procedures is None or payments is None or report_html is None or not verified:
        return 1
    missing = [k for k in ("events_read", "considered", "progress_sent") if k not in dossiers["counts"]]
    missing += [k for k in ("listed", "onestop_upserted", "ministry_upserted") if k not in procedures["counts"]]
    missing += [k for k in ("requests_listed", "receipts_accepted", "reconciled_paid") if k not in payments["counts"]]
    if missing:
        out(f"✗ the runs skipped steps: {', '.join(missing)}")
        return 1
    return 0
