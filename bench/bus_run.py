"""The bus side of a sync, in its own process (``python -m bench.bus_run``): what an Airflow
worker runs for the dossier flow — stage the change feed, deliver dossiers, deliver progress — or
with ``--flow payments`` for the payment flow — collect, one-stop fees, ledger, reconcile — then
seal the exchange log. Prints one JSON line: time per step, counts, and the process's peak
resident memory (``VmHWM``), so the stand-ins' memory never counts. Not ``ru_maxrss``: Linux
carries it over ``exec`` from the forked copy of the parent, so it reported the harness's own
memory (which grows with the dossiers it seeds) whenever that was larger than the bus's (issue #8,
the "with sealing" line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time


def _proc(path: str, name: str) -> int | None:
    """The first number of the ``name:`` line of a /proc file of this process, if there is one."""
    try:
        with open(path, encoding="ascii") as lines:
            for line in lines:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    """VmHWM of this process so far in MB (10⁶ bytes, the unit of the 500 MB target and of
    :func:`_written_mb`; the kernel counts KiB), read from /proc when there is one (``ru_maxrss``,
    the fallback, includes the parent's memory at the fork before this program's ``exec``)."""
    kib = _proc("/proc/self/status", "VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 / 1e6


def _written_mb() -> float:
    """Bytes this process has caused to be written to storage so far (MB), from /proc/self/io."""
    return (_proc("/proc/self/io", "write_bytes") or 0) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onestop", required=True)
    parser.add_argument("--flow", choices=("dossiers", "payments"), default="dossiers")
    parser.add_argument("--portal", help="the national stand-in (dossiers)")
    parser.add_argument("--platform", help="the payment platform stand-in (payments)")
    parser.add_argument("--ledger", help="the ministry ledger stand-in (payments)")
    parser.add_argument("--ledger-batch-size", type=int, default=100, help="receipts per SubmitReceipts call")
    parser.add_argument("--report-dir", default=None, help="where the payment flow's reconciliation report goes")
    parser.add_argument("--bus-db", required=True, help="an SQLite file, or a PostgreSQL database's SQLAlchemy URL")
    parser.add_argument("--seal-key", required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--run-id", default="bench")
    parser.add_argument("--profile", default=None, help="write a pyinstrument HTML profile here")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)

    from bench.seed import PAYMENT_PARTNER, PAYMENT_SECRET
    from bench.standins import (
        LEDGER_PASSWORD,
        LEDGER_USER,
        ONESTOP_KEY,
        PORTAL_PASSWORD,
        PORTAL_USER,
        UNIT,
    )

    def http(url: str, **fields):
        host, port = url.removeprefix("http://").split(":")
        return {"conn_type": "http", "host": host, "port": int(port), "schema": "http", **fields}

    conns = {
        "onestop_default": http(args.onestop, password=ONESTOP_KEY,
                                extra={"page_size": args.page_size, "read_timeout": 120}),
        # an SQLite file, or the SQLAlchemy URL of a PostgreSQL database (the harness's --postgres)
        "lienthong_db": ({"conn_type": "postgres", "extra": {"sqlalchemy_url": args.bus_db}} if "://" in args.bus_db
                         else {"conn_type": "sqlite", "host": args.bus_db}),
    }
    if args.flow == "dossiers":
        conns["national_portal_default"] = http(args.portal, login=PORTAL_USER, password=PORTAL_PASSWORD,
                                                extra={"madonvi": UNIT, "read_timeout": 120,
                                                       "batch_size": args.batch_size,
                                                       "progress_chunk_size": args.chunk_size})
    else:
        conns["payment_platform_default"] = http(args.platform, login=PAYMENT_PARTNER, password=PAYMENT_SECRET,
                                                 extra={"read_timeout": 120})
        conns["ministry_ledger_default"] = http(args.ledger, login=LEDGER_USER, password=LEDGER_PASSWORD,
                                                extra={"operation_timeout": 120, "batch_size": args.ledger_batch_size})
    for conn_id, conn in conns.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)

    from connectors.connection import connection_from_env
    from lienthong import tasks
    from lienthong.audit.seal import seal_exchanges

    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    counts: dict[str, object] = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    peaks = {"start": _peak_mb()}
    written = {"start": _written_mb()}
    if args.flow == "dossiers":
        steps = (("stage", lambda: tasks.stage_dossier_changes(connection_from_env, run_id=args.run_id)),
                 ("deliver", lambda: tasks.deliver_dossier_statuses(connection_from_env, run_id=args.run_id)),
                 ("progress", lambda: tasks.deliver_dossier_progress(connection_from_env, run_id=args.run_id)))
    else:
        steps = (("collect", lambda: tasks.collect_payments(connection_from_env, run_id=args.run_id)),
                 ("fees", lambda: tasks.update_onestop_fees(connection_from_env, run_id=args.run_id)),
                 ("ledger", lambda: tasks.submit_payment_receipts(connection_from_env, run_id=args.run_id)),
                 ("reconcile", lambda: tasks.reconcile_payments(connection_from_env, run_id=args.run_id,
                                                                report_dir=args.report_dir)))
    times: dict[str, float] = {}
    for name, step in steps:
        t1 = time.perf_counter()
        counts[name] = step()
        times[name] = time.perf_counter() - t1
        peaks[name] = _peak_mb()
        written[name] = _written_mb()
    t3 = time.perf_counter()
    store = tasks.open_store(connection_from_env)
    sealed = seal_exchanges(store, args.seal_key)
    t4 = time.perf_counter()
    peaks["seal"] = _peak_mb()
    written["seal"] = _written_mb()
    counts["sealed"] = sealed.records
    counts["seals"] = len(sealed.seals)
    times.update({"seal": t4 - t3, "total": t4 - t0, "cpu": time.process_time() - c0})
    if profiler is not None:
        profiler.stop()
        with open(args.profile, "w", encoding="utf-8") as out:
            out.write(profiler.output_html())
        with open(args.profile.replace(".html", ".txt"), "w", encoding="utf-8") as out:
            out.write(profiler.output_text(unicode=False, color=False, show_all=False))
    print(json.dumps({"times": times, "counts": counts, "peak_rss_mb": _peak_mb(),
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
                      "peak_after_mb": peaks, "written_mb_after": written}, default=str), flush=True)


if __name__ == "__main__":
    main()
