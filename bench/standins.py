"""Run the one-stop and national stand-ins in their own process (``python -m bench.standins``).

Prints one JSON line ``{"onestop": url, "portal": url}`` when both listen, then serves until
its standard input closes (the harness holds the pipe), so their work never counts in the bus
process's time or memory. ``--portal-latency-ms`` makes the national stand-in wait before each
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onestop-dir", required=True)
    parser.add_argument("--portal-dir", required=True)
    parser.add_argument("--catalogue-size", type=int, default=None)
    parser.add_argument("--portal-latency-ms", type=float, default=0.0,
                        help="the national stand-in waits this long before answering each call (a WAN's round trip)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    from mocks.national_portal import NationalPortalMock
    from mocks.one_stop import OneStopMock

    onestop = OneStopMock(state_dir=args.onestop_dir, port=0, api_key=ONESTOP_KEY, seed_dossiers=0).start()
    extra = {"catalogue_size": args.catalogue_size} if args.catalogue_size else {}
    portal = NationalPortalMock(state_dir=args.portal_dir, port=0,
                                accounts={PORTAL_USER: {"password": PORTAL_PASSWORD, "unit": UNIT}}, **extra).start()
    if args.portal_latency_ms:
        # the mocks' own fault plan: a delay before every call is handled (login, integration, share)
        portal.faults.configure({"latency_ms": args.portal_latency_ms})
    print(json.dumps({"onestop": onestop.url, "portal": portal.url}), flush=True)
    try:
        sys.stdin.read()  # until the harness closes the pipe
    finally:
        onestop.stop()
        portal.stop()


if __name__ == "__main__":
    main()
