"""Command line of the stand-in peers: ``python -m mocks up`` runs all four in the foreground.

Credentials come from the options, else from the environment, else from the demo defaults:

* ``LIENTHONG_MOCK_ONESTOP_API_KEY`` — the one-stop ``X-Api-Key``;
* ``LIENTHONG_MOCK_PORTAL_USERNAME``, ``LIENTHONG_MOCK_PORTAL_PASSWORD``,
  ``LIENTHONG_MOCK_PORTAL_UNIT`` — the portal's adapter account;
* ``LIENTHONG_MOCK_PAYMENT_PARTNER``, ``LIENTHONG_MOCK_PAYMENT_SECRET`` — the payment platform's
  MaDoiTac and checksum secret;
* ``LIENTHONG_MOCK_LEDGER_USERNAME``, ``LIENTHONG_MOCK_LEDGER_PASSWORD`` — the ministry ledger's
  WS-Security UsernameToken.

The stand-ins are wired to each other: the one-stop sends INIT to the payment platform (same
partner and secret) and the platform POSTs its confirm callbacks to the one-stop's
``/api/v1/payments/confirm`` unless ``--payment-callback-url`` names another receiver.

Secrets are never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from mocks.ministry_ledger import DEFAULT_PASSWORD as DEFAULT_LEDGER_PASSWORD
from mocks.ministry_ledger import DEFAULT_USERNAME as DEFAULT_LEDGER_USERNAME
from mocks.ministry_ledger import MinistryLedgerMock
from mocks.national_portal import DEFAULT_ACCOUNT, NationalPortalMock, PortalAccount
from mocks.one_stop import DEFAULT_API_KEY, OneStopMock
from mocks.payment_platform import DEFAULT_PARTNER, DEFAULT_SECRET, PaymentPlatformMock
from mocks.server import NonLoopbackHost

__all__ = ["build_parser", "main"]

DEFAULT_STATE_DIR = os.path.join("var", "mocks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mocks", description="lienthong stand-in peers")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the one-stop, national portal, payment platform and ministry ledger "
                                   "stand-ins in the foreground",
                        epilog="Faults are switched at run time, per stand-in, with POST <url>/_admin/faults and a "
                               "JSON plan: error_rate + http_status, drop_rate, latency_ms, slow_rate + slow_ms, "
                               "malformed_rate, ambiguous_rate and session_expire_every (portal), soap_fault_rate "
                               "(ledger), seed, operations. GET <url>/_admin/faults shows the plan and the faults "
                               "injected by kind (injected: this plan; injected_total: since start). See "
                               "mocks/README.md.")
    up.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                    help="directory of onestop.db, national_portal.db, payment_platform.db and ministry_ledger.db "
                         f"(default {DEFAULT_STATE_DIR})")
    up.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    up.add_argument("--onestop-port", type=int, default=18081, help="one-stop port (default 18081, 0 = any)")
    up.add_argument("--portal-port", type=int, default=18082, help="national portal port (default 18082, 0 = any)")
    up.add_argument("--payment-port", type=int, default=18083,
                    help="payment platform port (default 18083, 0 = any)")
    up.add_argument("--ledger-port", type=int, default=18084, help="ministry ledger port (default 18084, 0 = any)")
    up.add_argument("--payment-callback-url", default=None,
                    help="URL the payment platform POSTs confirm callbacks to (http://127.0.0.1 only; "
                         "default: the one-stop's /api/v1/payments/confirm)")
    up.add_argument("--payment-lost-share", type=float, default=0.3,
                    help="share of confirm callbacks never sent (default 0.3)")
    up.add_argument("--seed", type=int, default=49, help="world seed for a fresh state (default 49)")
    up.add_argument("--seed-dossiers", type=int, default=40, help="dossiers in a fresh one-stop world (default 40)")
    up.add_argument("--session-ttl", type=float, default=600.0, help="portal session lifetime, seconds (default 600)")
    up.add_argument("--dstcode", default="DVCQG", help="dstcode header the portal expects (default DVCQG)")
    up.add_argument("--catalogue-size", type=int, default=None,
                    help="procedures in a fresh generated national catalogue (default 3000; the seed's 15 at least)")
    up.add_argument("--verbose", "-v", action="store_true", help="log every request (paths and statuses only)")
    return parser


def _portal_account() -> tuple[PortalAccount, bool]:
    username = os.environ.get("LIENTHONG_MOCK_PORTAL_USERNAME") or DEFAULT_ACCOUNT.username
    password = os.environ.get("LIENTHONG_MOCK_PORTAL_PASSWORD") or DEFAULT_ACCOUNT.password
    unit = os.environ.get("LIENTHONG_MOCK_PORTAL_UNIT") or DEFAULT_ACCOUNT.unit
    return PortalAccount(username, password, unit), password == DEFAULT_ACCOUNT.password


def _up(args: argparse.Namespace, out: Any) -> int:
    api_key = os.environ.get("LIENTHONG_MOCK_ONESTOP_API_KEY") or DEFAULT_API_KEY
    account, default_password = _portal_account()
    partner = os.environ.get("LIENTHONG_MOCK_PAYMENT_PARTNER") or DEFAULT_PARTNER
    secret = os.environ.get("LIENTHONG_MOCK_PAYMENT_SECRET") or DEFAULT_SECRET
    try:
        onestop = OneStopMock(args.state_dir, host=args.host, port=args.onestop_port, seed=args.seed,
                              seed_dossiers=args.seed_dossiers, api_key=api_key, payment_secret=secret,
                              payment_partner=partner)
        portal = NationalPortalMock(args.state_dir, host=args.host, port=args.portal_port, seed=args.seed,
                                    accounts=[account], session_ttl=args.session_ttl, dstcode=args.dstcode,
                                    **({"catalogue_size": args.catalogue_size} if args.catalogue_size is not None else {}))
        payment = PaymentPlatformMock(
            args.state_dir, host=args.host, port=args.payment_port, seed=args.seed,
            partner_code=partner, secret=secret,
            callback_url=args.payment_callback_url, lost_share=args.payment_lost_share,
            seed_dossiers=args.seed_dossiers)
        ledger = MinistryLedgerMock(
            args.state_dir, host=args.host, port=args.ledger_port, seed=args.seed,
            username=os.environ.get("LIENTHONG_MOCK_LEDGER_USERNAME") or DEFAULT_LEDGER_USERNAME,
            password=os.environ.get("LIENTHONG_MOCK_LEDGER_PASSWORD") or DEFAULT_LEDGER_PASSWORD)
    except (NonLoopbackHost, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    started: list[Any] = []
    try:
        for mock in (onestop, portal, payment, ledger):
            try:
                started.append(mock.start())
            except OSError as exc:
                print(f"error: cannot start the {mock.name} mock on {args.host}: {exc}", file=sys.stderr)
                return 1
        _wire_payments(onestop, payment, explicit_callback=args.payment_callback_url)
        state = onestop.state_summary()
        print(f"lienthong mocks up — state in {os.path.abspath(args.state_dir)}", file=out)
        print(f"  one-stop         {onestop.url}   (X-Api-Key: "
              f"{'demo default' if api_key == DEFAULT_API_KEY else 'from LIENTHONG_MOCK_ONESTOP_API_KEY'}; "
              f"{state['counts']['dossiers']} dossiers, lastSeq {state['lastSeq']})", file=out)
        print(f"    API:        GET {onestop.url}/api/v1/dossiers/changes?after=<cursor>&limit=100", file=out)
        print("    payments:   GET /api/v1/payments  GET /api/v1/dossiers/<dossierNo>/fees  "
              "POST /api/v1/payments/<ref>/result  POST /api/v1/payments/confirm (callbacks; "
              f"INIT to {'the payment platform' if onestop.payment_platform_url else 'nowhere'})", file=out)
        print("    test doors: GET /_state  GET /_state/dossiers  GET /_state/events  GET /_state/payments  "
              "POST /_admin/advance  POST /_admin/payments/open  POST /_admin/faults  POST /_admin/reset", file=out)
        print(f"  national portal  {portal.url}   (account {account.username}, unit {account.unit}, password "
              f"{'demo default' if default_password else 'from LIENTHONG_MOCK_PORTAL_PASSWORD'}; "
              f"dstcode {args.dstcode})", file=out)
        print(f"    API:        POST {portal.url}/auth  /integration  /share", file=out)
        print("    test doors: GET /_state  GET /_state/dossiers[/<MaHoSo>]  GET /_state/calls  POST /_admin/reset  "
              "POST /_admin/expire-sessions  POST /_admin/faults", file=out)
        secret_from = "from LIENTHONG_MOCK_PAYMENT_SECRET" if os.environ.get("LIENTHONG_MOCK_PAYMENT_SECRET") \
            else "demo default"
        print(f"  payment platform {payment.url}   (MaDoiTac {payment.partner_code}, secret {secret_from}; "
              f"callbacks to {payment.callback_url or 'nowhere'}, lost share {payment.lost_share})", file=out)
        print(f"    API:        POST {payment.url}/api/payment  (LoaiBanTin INIT / QUERY / GET_BILL)", file=out)
        print("    test doors: GET /_state  GET /_state/payments  GET /_state/callbacks  "
              "POST /_admin/payments/settle  POST /_admin/callbacks  POST /_admin/faults  POST /_admin/reset",
              file=out)
        password_from = "from LIENTHONG_MOCK_LEDGER_PASSWORD" if os.environ.get("LIENTHONG_MOCK_LEDGER_PASSWORD") \
            else "demo default"
        print(f"  ministry ledger  {ledger.url}   (SOAP 1.1, UsernameToken {ledger.username}, password "
              f"{password_from})", file=out)
        print(f"    API:        WSDL {ledger.url}/?wsdl  SOAP POST {ledger.url}/", file=out)
        print("    test doors: GET /_state  GET /_state/receipts  POST /_admin/faults  POST /_admin/reset", file=out)
        print("Ctrl-C or SIGTERM stops all four.", file=out, flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping mocks", file=out, flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for mock in reversed(started):
            mock.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wire_payments(onestop: OneStopMock, payment: PaymentPlatformMock, *, explicit_callback: str | None) -> None:
    """Run together, the one-stop opens payments at the platform and the platform calls the
    one-stop back (unless ``--payment-callback-url`` names another receiver)."""
    if payment.host == "127.0.0.1":
        onestop.payment_platform_url = payment.url
    if explicit_callback is None and onestop.host == "127.0.0.1":
        payment.callback_url = onestop.url + "/api/v1/payments/confirm"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mocks``; returns the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "up":
        return _up(args, sys.stdout)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
