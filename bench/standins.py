"""Run the stand-ins in their own process (``python -m bench.standins``): the one-stop always, and
the national portal, the payment platform and the ministry ledger for the state directories given.

Prints one JSON line of their URLs (``{"onestop": url, "portal": url, ...}``) when all listen,
then serves until its standard input closes (the harness holds the pipe), so their work never
counts in the bus process's time or memory. ``--portal-latency-ms`` makes the national stand-in wait before each
answer, as a portal across a wide-area network does (the mocks' ``latency_ms`` fault).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

ONESTOP_KEY = "bench-onestop-key"
PORTAL_USER = "lienthong.h49"
PORTAL_PASSWORD = "bench-portal-secret"
UNIT = "000.00.01.H49"
LEDGER_USER = "lienthong.h49"
LEDGER_PASSWORD = "bench-ledger-secret"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onestop-dir", required=True)
    parser.add_argument("--portal-dir", default=None)
    parser.add_argument("--platform-dir", default=None, help="the payment platform's state (seeded by bench.seed)")
    parser.add_argument("--ledger-dir", default=None, help="the ministry receipt ledger's state")
    parser.add_argument("--catalogue-size", type=int, default=None)
    parser.add_argument("--portal-latency-ms", type=float, default=0.0,
                        help="the national stand-in waits this long before answering each call (a WAN's round trip)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    from bench.seed import PAYMENT_PARTNER, PAYMENT_SECRET, SEED
    from mocks.ministry_ledger import MinistryLedgerMock
    from mocks.national_portal import NationalPortalMock
    from mocks.one_stop import OneStopMock
    from mocks.payment_platform import PaymentPlatformMock

    started = {"onestop": OneStopMock(state_dir=args.onestop_dir, port=0, api_key=ONESTOP_KEY, seed_dossiers=0,
                                      payment_secret=PAYMENT_SECRET, payment_partner=PAYMENT_PARTNER)}
    if args.portal_dir:
        extra = {"catalogue_size": args.catalogue_size} if args.catalogue_size else {}
        started["portal"] = NationalPortalMock(state_dir=args.portal_dir, port=0,
                                               accounts={PORTAL_USER: {"password": PORTAL_PASSWORD, "unit": UNIT}},
                                               **extra)
    if args.platform_dir:  # seeded state: its transactions are there already, no callback is ever sent
        started["platform"] = PaymentPlatformMock(state_dir=args.platform_dir, port=0, seed=SEED,
                                                  partner_code=PAYMENT_PARTNER, secret=PAYMENT_SECRET)
    if args.ledger_dir:
        started["ledger"] = MinistryLedgerMock(state_dir=args.ledger_dir, port=0, username=LEDGER_USER,
                                               password=LEDGER_PASSWORD)
    try:
        for mock in started.values():
            mock.start()
        if "platform" in started:  # the one-stop's INIT door (citizens clicking "pay": /_admin/payments/open)
            started["onestop"].payment_platform_url = started["platform"].url
        if args.portal_latency_ms and "portal" in started:
            # the mocks' own fault plan: a delay before every call is handled (login, integration, share)
            started["portal"].faults.configure({"latency_ms": args.portal_latency_ms})
        print(json.dumps({name: mock.url for name, mock in started.items()}), flush=True)
        sys.stdin.read()  # until the harness closes the pipe
    finally:
        for mock in started.values():
            mock.stop()


if __name__ == "__main__":
    main()
