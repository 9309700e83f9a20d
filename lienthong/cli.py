"""``lienthong`` — the command line of the data-exchange bus.

Every command that touches a peer or the bus database resolves connections as the DAGs do:
from ``AIRFLOW_CONN_<ID>`` variables, else (Airflow installed) through Airflow's own chain —
its secrets backends and its metadata database, where connections made in the UI live. Only
when no ``AIRFLOW_CONN_*`` variable is set at all does the local topology (``var/``, the
stand-ins on 127.0.0.1) provide them; in a configured environment a connection found nowhere is
an error naming it (exit 2), never a fresh local bus database.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from connectors.connection import ConnectionSpec, connection_from_env, env_var_name
from connectors.errors import ConfigurationError, IntegrationError, PeerUnavailable
from lienthong import localenv

__all__ = ["build_parser", "main"]


def _resolver():
    """Resolve connections: the local topology's when no ``AIRFLOW_CONN_*`` variable is set (this
    machine, ``make demo``), else the environment's, then Airflow's (see the module docstring)."""
    if not any(key.startswith("AIRFLOW_CONN_") for key in os.environ):
        env = {**localenv.topology().environment(), **os.environ}
        return lambda conn_id: connection_from_env(conn_id, env)
    env = dict(os.environ)
    found: dict[str, ConnectionSpec] = {}

    def resolve(conn_id: str) -> ConnectionSpec:
        if env.get(env_var_name(conn_id)):
            return connection_from_env(conn_id, env)
        if conn_id not in found:
            found[conn_id] = _airflow_connection(conn_id)
        return found[conn_id]

    return resolve


def _airflow_connection(conn_id: str) -> ConnectionSpec:
    """``conn_id`` through Airflow's chain, as ``airflow connections get`` reads it (its secrets
    backends, then its metadata database).

    Raises:
        ConfigurationError: Airflow is not installed here, or knows no such connection.
    """
    hint = (f"connection '{conn_id}' is not defined: set {env_var_name(conn_id)} (JSON or URI form) or define it "
            f"in Airflow (AIRFLOW_CONN_* variables are set, so the local topology under $LIENTHONG_HOME is not used)")
    try:
        from connectors.hooks import airflow_connection_spec
    except ImportError:
        raise ConfigurationError(f"{hint}; Airflow is not installed here to look it up") from None
    context = os.environ.get("_AIRFLOW_PROCESS_CONTEXT")
    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"  # what Airflow's own CLI sets: the metadata DB is read too
    try:
        return airflow_connection_spec(conn_id)
    except Exception as exc:  # noqa: BLE001 - Airflow's "not found", or its database unreachable
        raise ConfigurationError(f"{hint}; Airflow: {type(exc).__name__}: {exc}") from None
    finally:
        if context is None:
            os.environ.pop("_AIRFLOW_PROCESS_CONTEXT", None)
        else:
            os.environ["_AIRFLOW_PROCESS_CONTEXT"] = context


def _store():
    from lienthong.tasks import open_store

    return open_store(_resolver())


def cmd_demo(args: argparse.Namespace) -> int:
    from lienthong.demo import run_demo

    return run_demo(localenv.topology(), new=args.new, changes=args.changes)


def cmd_mocks_up(args: argparse.Namespace) -> int:
    topo = localenv.topology()
    env = {**os.environ, **topo.environment()}
    command = topo.mocks_command()
    if args.seed_dossiers is not None:
        command += ["--seed-dossiers", str(args.seed_dossiers)]
    topo.mocks_dir.mkdir(parents=True, exist_ok=True)
    os.execve(command[0], command, env)
    return 0  # not reached


def cmd_airflow(args: argparse.Namespace) -> int:
    """Run an ``airflow`` command with the local environment (venv on PATH, our DAGs and connections)."""
    from lienthong.demo import prepare_airflow

    topo = localenv.topology()
    env = {**os.environ, **topo.environment()}
    topo.log_dir.mkdir(parents=True, exist_ok=True)
    if args.airflow_args[:1] == ["standalone"]:
        prepare_airflow(topo, env, topo.log_dir / "airflow-cli.log")
    # standalone starts its components as `airflow ...` from PATH: the wrapper keeps the
    # scheduler's and triggerer's log servers, which bind every interface, from starting
    airflow = str(topo.write_airflow_wrapper())
    env["PATH"] = str(topo.airflow_bin) + os.pathsep + env["PATH"]
    os.execve(airflow, [airflow, *args.airflow_args], env)
    return 0  # not reached


def cmd_env(args: argparse.Namespace) -> int:
    topo = localenv.topology()
    for key, value in topo.environment().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    store = _store()
    print(f"bus database ready: {store.engine.url.render_as_string(hide_password=True)}")
    return 0


def _steps(steps: list[tuple[str, Callable[[], Any]]], close: Callable[[dict[str, str]], Any]) -> dict[str, Any]:
    """Run a flow's steps in order, each named as the DAG's task is, and return their results.

    When one raises, the run's summary is closed as the DAG's closing task closes it (``close``,
    given ``failed_tasks``: the step ``failed``, each after it ``upstream_failed``, as it did not
    run), and the step's error goes on (the command then exits non-zero as before). A summary that
    cannot be closed is said on stderr, never hiding the step's error."""
    results: dict[str, Any] = {}
    for i, (name, step) in enumerate(steps):
        try:
            results[name] = step()
        except (Exception, KeyboardInterrupt):
            failed = {name: "failed", **{later: "upstream_failed" for later, _ in steps[i + 1:]}}
            try:
                close(failed)
            except Exception as exc:  # noqa: BLE001 - the step's error is the one to report
                print(f"lienthong: the run summary could not be closed as failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
            raise
    return results


def cmd_run(args: argparse.Namespace) -> int:
    """Run a flow once without a scheduler (same task functions as the DAG). A step that fails
    closes the run's summary as failed, naming it (outcome, failed_tasks), as the DAGs do."""
    from lienthong import tasks

    resolve = _resolver()
    run_id = args.run_id or f"cli__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:6]}"
    if args.flow == "payment-receipts":
        report_dir = str(localenv.topology().home / "reports")
        full = True if args.full_reconciliation else None
        done = _steps([
            ("collect_payments", lambda: tasks.collect_payments(resolve, run_id=run_id, task_id="cli",
                                                                full_listing=full)),
            ("update_onestop_fees", lambda: tasks.update_onestop_fees(resolve, run_id=run_id, task_id="cli")),
            ("submit_receipts", lambda: tasks.submit_payment_receipts(resolve, run_id=run_id, task_id="cli")),
            ("reconcile_payments", lambda: tasks.reconcile_payments(resolve, run_id=run_id, task_id="cli",
                                                                    report_dir=report_dir, full=full)),
        ], lambda failed: tasks.reconcile_payments(resolve, run_id=run_id, task_id="cli", report_dir=report_dir,
                                                   failed_tasks=failed))
        summary = done["reconcile_payments"]
        print(json.dumps({"run_id": run_id, "collected": done["collect_payments"],
                          "fees": done["update_onestop_fees"], "receipts": done["submit_receipts"],
                          "reconciliation": {k: v for k, v in summary.get("counts", {}).items()
                                             if k.startswith(("reconciled", "mismatches"))},
                          "open_mismatches": summary.get("open_mismatches"), "report": summary.get("report_path"),
                          "exchanges": summary.get("exchanges")}, ensure_ascii=False, indent=2))
        return 0
    done = _steps([
        ("stage_dossier_changes", lambda: tasks.stage_dossier_changes(
            resolve, run_id=run_id, task_id="cli", feed_from=args.feed_from, window_from=args.window_from,
            window_to=args.window_to)),
        ("deliver_dossier_statuses", lambda: tasks.deliver_dossier_statuses(
            resolve, run_id=run_id, task_id="cli", batch_size=args.batch_size,
            resend_acknowledged=args.resend_acknowledged)),
        ("deliver_progress_entries", lambda: tasks.deliver_dossier_progress(resolve, run_id=run_id, task_id="cli")),
    ], lambda failed: tasks.dossier_run_summary(resolve, run_id=run_id, failed_tasks=failed))
    summary = tasks.dossier_run_summary(resolve, run_id=run_id)
    print(json.dumps({"run_id": run_id, "staged": done["stage_dossier_changes"],
                      "delivered": done["deliver_dossier_statuses"], "progress": done["deliver_progress_entries"],
                      "exchanges": summary.get("exchanges")}, ensure_ascii=False, indent=2))
    return 0


def cmd_exchanges(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from lienthong.audit.search import format_body, judged_personal_fields, visible_text
    from lienthong.exchange_log import record_key_stored
    from lienthong.store import exchange_key, exchange_log

    store = _store()
    query = select(exchange_log).order_by(exchange_log.c.id.desc()).limit(args.limit)
    if args.run_id:
        query = query.where(exchange_log.c.run_id == args.run_id)
    if args.peer:
        query = query.where(exchange_log.c.peer == args.peer)
    if args.dossier:
        query = query.join(exchange_key, exchange_key.c.exchange_id == exchange_log.c.id).where(
            exchange_key.c.record_key == record_key_stored(args.dossier))
    with store.engine.connect() as conn:
        rows = list(reversed(conn.execute(query).mappings().all()))
    if args.bodies and args.reveal and rows:
        print("lienthong: exchange bodies shown with personal data REVEALED (--reveal)", file=sys.stderr)
    for r in rows:
        code = f" code={r['peer_code']}" if r["peer_code"] is not None else ""
        # no HTTP status: a call that got no answer, or the ministry database's SQL
        http = f"HTTP {r['http_status']}" if r["http_status"] is not None else "no HTTP status"
        # a peer's text (its code, its answer) reaches the terminal with control characters escaped
        print(visible_text(f"#{r['id']} {r['started_at']:%Y-%m-%d %H:%M:%S} {r['peer']:<15} {r['operation']:<14} "
                           f"try {r['attempt']} {r['outcome']:<15} {http}{code} "
                           f"{r['duration_ms']:.0f}ms records={r['record_count']} run={r['run_id']} "
                           f"task={r['task_id'] or '-'}"))
        if args.bodies:
            # its personal fields judged as `audit show` judges them: erased without a redaction
            # record is altered, not redacted
            with store.engine.connect() as conn:
                fields, altered = judged_personal_fields(conn, r["id"])
            for side, arrow in (("request", "→"), ("response", "←")):
                if r[f"{side}_blob_sha256"]:
                    print(f"  {arrow} [stored by hash: sha256 {r[f'{side}_blob_sha256']}, {r[f'{side}_size']} bytes]")
                else:
                    print(f"  {arrow} " + visible_text(format_body(
                        r[f"{side}_body"], args.reveal, [f for f in fields if f.side == side],
                        [f for f in altered if f.side == side], indent=None)[:2000]))
            if altered:
                print(f"lienthong: exchange #{r['id']}: {len(altered)} stored personal value(s) do not match their "
                      f"sealed commitment: shown as [altered]; run `lienthong audit verify --deep`", file=sys.stderr)
    if not rows:
        print("no exchanges match")
    return 0


def cmd_deadletter_list(args: argparse.Namespace) -> int:
    store = _store()
    letters = store.dead_letters(args.flow, unresolved_only=not args.all)
    for d in letters:
        state = f" resolved: {d['resolution']}" if d["resolved_at"] else ""
        print(f"#{d['id']} {d['created_at']:%Y-%m-%d %H:%M:%S} {d['flow']} {d['record_key']} "
              f"[{d['stage']}: {d['error_class']}] run={d['run_id']}{state}")
        for e in d["errors"]:
            print(f"    {e['field']}: {e['message']} [{e['rule']}]")
    if not letters:
        print("no dead letters")
    return 0


def cmd_deadletter_show(args: argparse.Namespace) -> int:
    store = _store()
    letter = next((d for d in store.dead_letters(unresolved_only=False) if d["id"] == args.id), None)
    if letter is None:
        print(f"lienthong: no dead letter #{args.id}", file=sys.stderr)
        return 1
    shown = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in letter.items()}
    if args.reveal:
        print("lienthong: the dead letter's original record shown with personal data REVEALED (--reveal)",
              file=sys.stderr)
    else:  # masked as `exchanges --bodies` and `audit show` mask them
        from lienthong.audit.search import mask_json

        shown["source_payload"] = mask_json(shown["source_payload"])
        shown["errors"] = mask_json(shown["errors"])
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    return 0


def _unreplayable(store, ids: list[int], *, flows: tuple[str, ...] | None = None,
                  action: str = "replay") -> dict[int, str]:
    """The ids among ``ids`` that ``action`` (replay, or discard of ``flows``) cannot act on, each
    with the reason."""
    from sqlalchemy import select

    from lienthong.flows import catalogue, dossier_status, payment_receipts
    from lienthong.store import dead_letter

    if flows is None:
        flows = (dossier_status.FLOW, dossier_status.PROGRESS_FLOW, payment_receipts.FLOW, catalogue.FLOW)
    with store.engine.connect() as conn:
        found = {r.id: r for r in conn.execute(select(dead_letter.c.id, dead_letter.c.flow, dead_letter.c.resolved_at,
                                                      dead_letter.c.resolution).where(dead_letter.c.id.in_(ids)))}
    reasons = {}
    for letter_id in ids:
        letter = found.get(letter_id)
        if letter is None:
            reasons[letter_id] = "no such dead letter"
        elif letter.resolved_at is not None:
            reasons[letter_id] = f"already resolved {letter.resolved_at:%Y-%m-%d %H:%M}: {letter.resolution}"
        elif letter.flow not in flows:
            reasons[letter_id] = f"flow {letter.flow}, which {action} does not handle"
    return reasons


def cmd_deadletter_replay(args: argparse.Namespace) -> int:
    """Resolve dead letters and deliver their records again, once. Exit 1 when an id given, or
    the --record given, matches no unresolved dead letter (each named, with the reason)."""
    from lienthong import tasks
    from lienthong.flows import catalogue, dossier_status, payment_receipts

    if not (args.ids or args.record or args.all):
        print("lienthong: say which dead letters to replay: ids, --record KEY, or --all", file=sys.stderr)
        return 2
    store = _store()
    by = _os_user()
    skipped = _unreplayable(store, sorted(set(args.ids))) if args.ids else {}
    ids = [i for i in args.ids if i not in skipped] if args.ids else None
    replayed, requeued = 0, []
    if ids != []:  # ids all unreplayable: replay nothing (None would mean every one)
        result = dossier_status.replay(store, dead_letter_ids=ids, record_key=args.record, by=by)
        payment_ids, references = payment_receipts.replay(store, dead_letter_ids=ids, record_key=args.record, by=by)
        catalogue_ids, codes = catalogue.replay(store, dead_letter_ids=ids, record_key=args.record, by=by)
        replayed, requeued = len(result.dead_letters) + len(payment_ids) + len(catalogue_ids), result.requeued
        done = {*result.dead_letters, *payment_ids, *catalogue_ids}
        skipped.update({i: "resolved meanwhile (by a run or another replay)" for i in ids or () if i not in done})
        if result.dead_letters or not replayed:
            print(f"resolved {len(result.dead_letters)} dead letters; requeued: "
                  f"{', '.join(result.requeued) or 'nothing'}")
        if payment_ids:
            print(f"resolved {len(payment_ids)} payment dead letters; the next sync_payment_receipts run (or "
                  f"`lienthong run payment-receipts`) takes up again: {', '.join(references)}")
        if catalogue_ids:
            print(f"resolved {len(catalogue_ids)} catalogue dead letters; the next sync_procedure_catalogue run "
                  f"reads and pushes again (and dead-letters anew if still refused): {', '.join(codes)}")
    for letter_id, reason in skipped.items():
        print(f"lienthong: dead letter #{letter_id} not replayed: {reason}", file=sys.stderr)
    code = 1 if skipped else 0
    if args.record and not replayed:
        print(f"lienthong: no unresolved dead letter of record {args.record!r} to replay", file=sys.stderr)
        code = 1
    if args.no_deliver or not requeued:
        return code
    resolve = _resolver()
    run_id = f"replay__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:6]}"
    delivered = tasks.deliver_dossier_statuses(resolve, run_id=run_id, task_id="replay")
    progress = tasks.deliver_dossier_progress(resolve, run_id=run_id, task_id="replay")
    tasks.dossier_run_summary(resolve, run_id=run_id)
    print(json.dumps({"run_id": run_id, "delivered": delivered, "progress": progress}, ensure_ascii=False, indent=2))
    return code


def cmd_deadletter_discard(args: argparse.Namespace) -> int:
    """Resolve dossier, progress and payment dead letters without sending their records again,
    releasing what they held back. Exit 1 naming an id, or the --record, that matches no unresolved
    dead letter discard handles (each with the reason)."""
    from lienthong.flows import dossier_status, payment_receipts

    if not (args.ids or args.record):
        print("lienthong: say which dead letters to discard: ids or --record KEY", file=sys.stderr)
        return 2
    reason = " ".join(args.reason.split())
    if not reason:
        print("lienthong: --reason must say why the records are discarded", file=sys.stderr)
        return 2
    actor = " ".join((args.actor or _os_user()).split()) or "operator"
    store = _store()
    flows = (dossier_status.FLOW, dossier_status.PROGRESS_FLOW, payment_receipts.FLOW)
    skipped = _unreplayable(store, sorted(set(args.ids)), flows=flows, action="discard") if args.ids else {}
    ids = [i for i in args.ids if i not in skipped] if args.ids else None
    done: list[int] = []
    if ids != []:  # ids all refused: discard nothing (None would mean every one of the record)
        result = dossier_status.discard(store, dead_letter_ids=ids, record_key=args.record, by=actor, reason=reason)
        payments = payment_receipts.discard(store, dead_letter_ids=ids, record_key=args.record, by=actor,
                                            reason=reason)
        done = [*result.dead_letters, *payments.dead_letters]
        skipped.update(payments.refused)
        skipped.update({i: "resolved meanwhile (by a run, a replay or another discard)"
                        for i in ids or () if i not in done and i not in skipped})
        if result.dead_letters:
            print(f"discarded {len(result.dead_letters)} dead letters "
                  f"({', '.join(f'#{i}' for i in result.dead_letters)}): not sent again; released for the next "
                  f"dossier-status run: {', '.join(result.requeued) or 'nothing held'}")
        if payments.dead_letters:
            print(f"discarded {len(payments.dead_letters)} payment dead letters "
                  f"({', '.join(f'#{i}' for i in payments.dead_letters)}): their step is not done again, and the "
                  f"reconciliation report lists them as discarded: {', '.join(payments.references)}")
    for letter_id, reason_skipped in skipped.items():
        print(f"lienthong: dead letter #{letter_id} not discarded: {reason_skipped}", file=sys.stderr)
    code = 1 if skipped else 0
    if args.record and not done:
        print(f"lienthong: no unresolved dossier_status, dossier_progress or payment_receipts dead letter of record "
              f"{args.record!r} that discard handles", file=sys.stderr)
        code = 1
    return code


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "operator"


def cmd_payments_mismatches(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from lienthong.flows import payment_receipts
    from lienthong.store import reconciliation_item

    store = _store()
    query = select(reconciliation_item).where(reconciliation_item.c.flow == payment_receipts.FLOW)
    if not args.all:
        query = query.where(reconciliation_item.c.resolved_at.is_(None))
    with store.engine.connect() as conn:
        items = [dict(r) for r in conn.execute(query.order_by(reconciliation_item.c.id)).mappings()]
    counts = payment_receipts.payment_counts(store)
    if args.json:
        print(json.dumps({"payments": counts, "mismatches": items}, ensure_ascii=False, indent=2, default=str))
        return 0
    print("payments followed: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "none"))
    for item in items:
        state = f" resolved {item['resolved_at']:%Y-%m-%d %H:%M}" if item["resolved_at"] else ""
        details = ", ".join(f"{k}={v}" for k, v in sorted(item["details"].items()))
        print(f"#{item['id']} {item['kind']:<22} {item['record_key']} dossier={item['dossier_code'] or '-'} "
              f"receipt={item['receipt_no'] or '-'} since {item['first_seen_at']:%Y-%m-%d %H:%M} {details}{state}")
    if not items:
        print("no mismatches: the payment platform, the one-stop system and the ministry ledger agree")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienthong",
        description="lienthong — data-exchange bus between the provincial one-stop system, the national "
                    "public service portal and ministry databases.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the three flows once through Airflow against the stand-ins")
    p.add_argument("--new", type=int, default=3, help="new dossiers the one-stop world gains first (default 3)")
    p.add_argument("--changes", type=int, default=5, help="status changes applied first (default 5)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("mocks", help="the stand-in peers")
    mocks_sub = p.add_subparsers(dest="mocks_command", required=True, metavar="ACTION")
    up = mocks_sub.add_parser("up", help="run the stand-ins in the foreground on 127.0.0.1 (Ctrl-C stops)")
    up.add_argument("--seed-dossiers", type=int, default=None, help="dossiers seeded into a fresh one-stop world")
    up.set_defaults(func=cmd_mocks_up)

    p = sub.add_parser("airflow", help="run an airflow command with the local environment, e.g. "
                                       "`lienthong airflow standalone`")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER, help="arguments for airflow")
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("env", help="print the local environment as shell exports")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("db", help="the bus database")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("init", help="create the bus database's tables").set_defaults(func=cmd_db_init)

    p = sub.add_parser("run", help="run a flow once without a scheduler")
    p.add_argument("flow", choices=["dossier-status", "payment-receipts"], help="which flow")
    p.add_argument("--run-id", help="run id to record (default: cli__<time>_<random>)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="dossier-status: dossiers per portal call (default: the connection's extra.batch_size, "
                        "else 50)")
    p.add_argument("--feed-from", help='backfill: "beginning" or a cursor to re-read the change feed from')
    p.add_argument("--resend-acknowledged", action="store_true",
                   help="backfill: re-send payloads the portal already acknowledged")
    p.add_argument("--window-from", help="backfill: also stage dossiers modified from this ISO time (with offset)")
    p.add_argument("--window-to", help="backfill: ... and before this ISO time (with offset)")
    p.add_argument("--full-reconciliation", action="store_true",
                   help="payment-receipts: list every one-stop payment request and reconcile every transaction, "
                        "not only the newest requests and those changed since the last pass (both also run in full "
                        "by themselves once a day)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("exchanges", help="list exchange-log records, newest last")
    p.add_argument("--run-id", help="only this run")
    p.add_argument("--dossier", help="only exchanges that carried this dossier code")
    p.add_argument("--peer", help="only this peer (onestop, national_portal, payment_platform, ministry_ledger, "
                                   "ministry_db)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--bodies", action="store_true", help="also print request and response bodies (secrets are "
                                                         "already redacted; ID numbers, phones and e-mails masked)")
    p.add_argument("--reveal", action="store_true", help="with --bodies: show ID numbers, phones and e-mails "
                                                         "unmasked (said on stderr, as `audit show --reveal`)")
    p.set_defaults(func=cmd_exchanges)

    p = sub.add_parser("deadletter", help="records that could not be delivered: list, show, replay, discard")
    dl = p.add_subparsers(dest="deadletter_command", required=True, metavar="ACTION")
    q = dl.add_parser("list", help="dead letters with their field errors (unresolved ones by default)")
    q.add_argument("--flow", help="only this flow (dossier_status, dossier_progress, procedure_catalogue, "
                                  "payment_receipts)")
    q.add_argument("--all", action="store_true", help="include resolved ones")
    q.set_defaults(func=cmd_deadletter_list)
    q = dl.add_parser("show", help="one dead letter in full: errors, peer code, original payload (ID numbers, "
                                   "phones and e-mails masked unless --reveal)")
    q.add_argument("id", type=int, help="dead letter number (from list)")
    q.add_argument("--reveal", action="store_true", help="show the original record's personal data as stored "
                                                         "(said on stderr)")
    q.set_defaults(func=cmd_deadletter_show)
    replay_help = ("resolve dead letters and deliver their records again, once (after a mapping or portal fix); "
                   "catalogue ones are read and pushed again by the next catalogue run; exit 1 naming any id (or "
                   "--record) that matches no unresolved dead letter")
    q = dl.add_parser("replay", help=replay_help, description=replay_help)
    q.add_argument("ids", nargs="*", type=int, help="dead letter numbers")
    q.add_argument("--record", help="every unresolved dead letter of this record key (dossier code, procedure code, "
                                    "payment reference)")
    q.add_argument("--all", action="store_true", help="every unresolved dead letter")
    q.add_argument("--no-deliver", action="store_true", help="only requeue; the next run delivers")
    q.set_defaults(func=cmd_deadletter_replay)
    discard_help = ("resolve dossier_status, dossier_progress and payment_receipts dead letters WITHOUT sending "
                    "their records again (the record reached its peer anyway, or was delivered by other means) and "
                    "release what they held back for the next run; the refused snapshot or progress entry is never "
                    "sent (a dossier's next change goes normally); a payment's refused step (platform: asking the "
                    "platform; onestop: recording the fee; mapping, ledger: booking the receipt) is not done again, "
                    "its other steps go on, and the reconciliation report lists it as discarded, not as a mismatch; "
                    "payment source and catalogue dead letters are not handled (replay them); "
                    "`list --all` shows 'discarded by <actor>: <reason>'; exit 1 naming any id (or --record) that "
                    "matches no unresolved dead letter it handles")
    q = dl.add_parser("discard", help=discard_help, description=discard_help)
    q.add_argument("ids", nargs="*", type=int, help="dead letter numbers")
    q.add_argument("--record", help="every unresolved dead letter of this dossier code (its progress steps' too), "
                                    "progress entry key or payment reference")
    q.add_argument("--reason", required=True, help="why they are discarded (kept in the resolution)")
    q.add_argument("--actor", help="who discards them (default: the OS user)")
    q.set_defaults(func=cmd_deadletter_discard)

    p = sub.add_parser("payments", help="payment receipts: where every payment stands, open mismatches")
    pay = p.add_subparsers(dest="payments_command", required=True, metavar="ACTION")
    q = pay.add_parser("mismatches", help="disagreements between the payment platform, the one-stop system and "
                                          "the ministry ledger kept for follow-up (open ones by default)")
    q.add_argument("--all", action="store_true", help="include resolved ones")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_payments_mismatches)

    from lienthong import distributed

    p = sub.add_parser("e2e-distributed", help="the three flows on Airflow's CeleryExecutor (api-server, scheduler, "
                                               "dag-processor, triggerer, 2 Celery workers; PostgreSQL, Redis), "
                                               "invariants checked, PASS/FAIL")
    distributed.build_parser(p).set_defaults(func=distributed.run_from_args)

    from lienthong.reliability.settings import build_parser as reliability_options

    p = sub.add_parser("reliability", help="the three flows under seeded random faults and SIGKILLs, then the "
                                           "invariants against the stand-ins' state; a table; exit 1 on any loss "
                                           "or duplicate")
    reliability_options(p).set_defaults(func=cmd_reliability)

    from lienthong.mapping_cli import add_mapping_commands

    add_mapping_commands(sub)
    from lienthong.audit.cli import add_audit_commands

    add_audit_commands(sub)
    from lienthong.reports.cli import add_report_commands

    add_report_commands(sub)
    return parser


def cmd_reliability(args: argparse.Namespace) -> int:
    from lienthong.reliability import harness  # loads the flows: only when this command runs

    return harness.run_from_args(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "audit":
        # The local seal key (var/keys/seal.key, made by `make demo`) unless one is configured.
        os.environ.setdefault("LIENTHONG_SEAL_KEY", str(localenv.topology().seal_key))
    try:
        return int(args.func(args) or 0)
    except IntegrationError as exc:
        print(f"lienthong: {type(exc).__name__}: {exc}", file=sys.stderr)
        if isinstance(exc, PeerUnavailable) and exc.peer:
            print(f"lienthong: is {exc.peer} running and reachable? `lienthong env` shows the connections "
                  "(AIRFLOW_CONN_*) the bus uses; locally, `make mocks` runs the stand-ins", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`lienthong exchanges | head`): stop quietly, as a command ended by
        # SIGPIPE would, and point stdout at /dev/null so that the interpreter's last flush of
        # what is still buffered does not fail again on the way out.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (replaced in-process)
            pass
        return 141


if __name__ == "__main__":
    sys.exit(main())
