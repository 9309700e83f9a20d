"""``lienthong audit keygen|seal|verify|search|show|export|verify-bundle|redact|archive``: seal the log,
read it, prove it, erase personal values from it, archive and prune it.

The top-level CLI wires these in with :func:`add_audit_commands`. Exit codes: 0 done / verified,
1 the log does not verify (the first mismatch is named), 2 a usage or configuration problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from connectors.errors import ConfigurationError

__all__ = [
    "add_audit_commands",
    "cmd_archive",
    "cmd_redact",
    "cmd_export",
    "cmd_keygen",
    "cmd_seal",
    "cmd_search",
    "cmd_show",
    "cmd_verify",
    "cmd_verify_bundle",
]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2


def _store():
    from lienthong.cli import _store

    return _store()


def _existing_store():
    """The bus database of a command that only reads the log (search, show, verify, export): never
    created here. A mistyped `lienthong_db` path would otherwise be a fresh empty log, which
    'verifies' (0 records) and matches nothing.

    Raises:
        ConfigurationError: an SQLite connection whose file does not exist.
    """
    from sqlalchemy.engine import make_url

    from lienthong.cli import _resolver
    from lienthong.tasks import BUS_DB_CONN_ID, open_store

    spec = _resolver()(BUS_DB_CONN_ID)
    url = make_url(spec.sqlalchemy_url())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).is_file():
        raise ConfigurationError(f"no bus database at {url.database} (connection `{BUS_DB_CONN_ID}`): check the "
                                 f"connection, or run a flow (`make demo`) or `lienthong db init` first")
    return open_store(lambda _conn_id: spec)


def cmd_keygen(args: argparse.Namespace) -> int:
    from lienthong.audit.keys import generate_keypair

    try:
        private_path, public_path, fingerprint = generate_keypair(args.path)
    except ConfigurationError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {private_path} (mode 0600; keep it outside the bus database and its backups)")
    print(f"public key:  {public_path}")
    print(f"fingerprint: {fingerprint}")
    return EXIT_OK


def cmd_seal(args: argparse.Namespace) -> int:
    from lienthong.audit.keys import load_private_key
    from lienthong.audit.seal import seal_exchanges

    try:
        key = load_private_key(args.key)
    except ConfigurationError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = seal_exchanges(_store(), key, batch_size=args.batch_size)
    if not result.seals:
        print("nothing to seal")
        return EXIT_OK
    head = result.head
    print(f"sealed {result.records} records in {len(result.seals)} seals "
          f"({result.seals[0]['seq']}..{head['seq']}, records #{result.seals[0]['first_id']}..#{head['last_id']})")
    print(f"head: {head['seq']}:{head['seal_hash']}")
    return EXIT_OK


def _head(text: str) -> tuple[int, str]:
    seq, sep, seal_hash = text.partition(":")
    if not sep or not seq.isascii() or not seq.isdigit() or len(seal_hash) != 64 \
            or any(c not in "0123456789abcdef" for c in seal_hash.lower()):
        raise argparse.ArgumentTypeError("expected SEQ:SEAL_HASH (as printed by `lienthong audit seal`)")
    return int(seq), seal_hash.lower()


def cmd_verify(args: argparse.Namespace) -> int:
    from lienthong.audit.keys import load_public_key
    from lienthong.audit.verify import default_workers, verify_exchanges

    try:
        keys = [load_public_key(p) for p in args.public_key] if args.public_key else [load_public_key()]
    except ConfigurationError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    workers = args.workers if args.workers is not None else default_workers()
    result = verify_exchanges(_existing_store(), keys, expect_head=args.expect_head, deep=args.deep, workers=workers)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    elif result.ok:
        head = f"; head {result.head_seq}:{result.head_hash}" if result.head_seq else ""
        print(f"verified: {result.records_checked} records in {result.seals_checked} seals; "
              f"{result.unsealed_records} records not sealed yet{head}")
        for run in result.keys:
            print(f"seals {run['first_seq']}..{run['last_seq']} signed by key {run['fingerprint']}")
        if result.deep:
            print(f"deep: {result.personal_values_checked} stored personal values checked against their sealed "
                  f"commitments; {result.bodies_checked} bodies rebuilt as sent and checked against their "
                  f"recorded sha256 and size")
        else:
            print("personal values: checked where they are read (audit show, export, the auditor page); "
                  "--deep checks them all now")
        if result.records_with_redactions:
            print(f"verified-with-redactions: {result.records_with_redactions} records whose personal fields were "
                  f"erased (#{', #'.join(map(str, result.redacted_record_ids[:20]))}"
                  f"{' ...' if len(result.redacted_record_ids) > 20 else ''})")
        if result.blobs_checked:
            print(f"blobs: {result.blobs_checked} bodies stored by content hash checked")
        if result.archived_records:
            print(f"archived: {result.archived_records} sealed records pruned to bundles, checked through their "
                  f"seals' leaf index")
        for archive in result.archives:
            print(f"archived: seals {archive['first_seq']}..{archive['last_seq']} (records "
                  f"#{archive['first_id']}..#{archive['last_id']}, {archive['records']}) in {archive['bundle_path']} "
                  f"sha256 {archive['bundle_sha256']}"
                  f"{'' if archive['signed'] else ' (unsigned row, written before migration 0007: checked by its bundle)'}")
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(f"NOT VERIFIED after {result.records_checked} records in {result.seals_checked} seals: "
              f"{result.failure}")
    return EXIT_OK if result.ok else EXIT_MISMATCH


def _time(text: str):
    from lienthong.audit.search import parse_time

    try:
        return parse_time(text)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved out of range to UTC
        raise argparse.ArgumentTypeError("expected an ISO 8601 date or time (UTC unless it says otherwise)") from None


def _reversed_range(args: argparse.Namespace) -> bool:
    """``--from`` at or after ``--to``, said on stderr (nothing could match)."""
    if args.since is not None and args.until is not None and args.since >= args.until:
        print(f"lienthong: --from ({args.since.isoformat()}) must be before --to ({args.until.isoformat()})",
              file=sys.stderr)
        return True
    return False


def cmd_search(args: argparse.Namespace) -> int:
    from lienthong.audit.search import archived_ranges, format_line, iter_exchanges

    if _reversed_range(args):
        return EXIT_USAGE
    store = _existing_store()
    found = 0
    for row in iter_exchanges(store, key=args.key, peer=args.peer, operation=args.operation,
                              outcome=args.outcome, since=args.since, until=args.until, limit=args.limit):
        print(format_line(row))
        found += 1
    if not found:
        print("no exchange matches", file=sys.stderr)
    for a in archived_ranges(store):  # pruned from the database: only their bundles hold them
        print(f"lienthong: records #{a['first_id']}..#{a['last_id']} were archived (audit archive) and are not "
              f"searched here: they are in the evidence bundle {a['bundle_path']} "
              f"(seals {a['first_seq']}..{a['last_seq']})", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from lienthong.audit.search import archive_of, format_exchange, get_exchange

    # beyond a database integer there is no such exchange (the driver would raise OverflowError)
    store = _existing_store() if 0 < args.id < 2 ** 63 else None
    record = get_exchange(store, args.id) if store else None
    if record is None:
        archive = archive_of(store, args.id) if store else None
        if archive:
            print(f"lienthong: exchange #{args.id} was archived (audit archive): it is in the evidence bundle "
                  f"{archive['bundle_path']} (seals {archive['first_seq']}..{archive['last_seq']}, records "
                  f"#{archive['first_id']}..#{archive['last_id']}), no longer in the database", file=sys.stderr)
        else:
            print(f"lienthong: no exchange #{args.id}", file=sys.stderr)
        return EXIT_USAGE
    if args.reveal:
        print(f"lienthong: exchange #{args.id} shown with personal data REVEALED (--reveal)", file=sys.stderr)
    print(format_exchange(record, reveal=args.reveal))
    altered = record.get("personal_altered") or []
    if altered:
        print(f"lienthong: exchange #{args.id}: {len(altered)} stored personal value(s) do not match their sealed "
              f"commitment ({', '.join(f'{f.side} {f.path}' for f in altered)}): the database was altered; shown "
              f"as [altered]. Run `lienthong audit verify --deep`", file=sys.stderr)
        return EXIT_MISMATCH
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from lienthong.audit.bundle import ExportError, ExportKeyMissing, export_bundle
    from lienthong.audit.keys import PRIVATE_KEY_ENV, load_private_key, load_public_key

    if not (args.key or args.since or args.until):
        print("lienthong: choose what to export: --key and/or --from/--to", file=sys.stderr)
        return EXIT_USAGE
    if _reversed_range(args):
        return EXIT_USAGE
    try:
        keys = [load_public_key(p) for p in args.public_key] if args.public_key else [load_public_key()]
    except ConfigurationError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signing = None
    if args.seal_key or os.environ.get(PRIVATE_KEY_ENV):  # the seal private key signs the selection
        try:
            signing = load_private_key(args.seal_key)
        except ConfigurationError as exc:
            if args.seal_key:
                print(f"lienthong: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(f"lienthong: {exc}", file=sys.stderr)  # $LIENTHONG_SEAL_KEY not readable here: unsigned
    try:
        result = export_bundle(_existing_store(), args.out, keys, key=args.key, since=args.since, until=args.until,
                               signing_key=signing)
    except ExportKeyMissing as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExportError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    if not result.records:  # an empty bundle would verify, as if it were the evidence asked for: none written
        left = (f" ({result.unsealed_left_out} match but are not sealed yet: run `lienthong audit seal` first)"
                if result.unsealed_left_out else "")
        print(f"lienthong: no sealed exchange matches{left}; no bundle written", file=sys.stderr)
        return EXIT_USAGE
    print(f"exported {result.records} records and {result.seals} seals to {result.path}")
    if result.selection_signed:
        print("selection signed with the seal key: the verifier holds the bundle to it")
    else:
        print("lienthong: the bundle's selection is not signed (no seal private key: --seal-key or "
              "$LIENTHONG_SEAL_KEY); verify.py will say so", file=sys.stderr)
    if result.unsealed_left_out:
        print(f"lienthong: {result.unsealed_left_out} matching records are not sealed yet and were left out "
              f"(run `lienthong audit seal` first)", file=sys.stderr)
    return EXIT_OK


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    from lienthong.audit import bundle_verify

    argv = [args.bundle] + (["--public-key", args.public_key] if args.public_key else [])
    for fingerprint in args.fingerprint or ():
        argv += ["--fingerprint", fingerprint]
    return bundle_verify.main(argv + (["--json"] if args.json else []))


def _archived_bundles(store: Any) -> list[str]:
    """The evidence bundles of the archived (pruned) ranges of the log, as ``audit archive`` left them."""
    from sqlalchemy import select

    from lienthong.store import exchange_archive

    with store.engine.connect() as conn:
        return [f"seals {r.first_seq}-{r.last_seq} in {r.bundle_path}" for r in conn.execute(
            select(exchange_archive.c.first_seq, exchange_archive.c.last_seq, exchange_archive.c.bundle_path)
            .order_by(exchange_archive.c.first_seq))]


def cmd_redact(args: argparse.Namespace) -> int:
    from lienthong.audit.redact import RedactionError, redact_exchanges

    store = _store()
    try:
        result = redact_exchanges(store, reason=args.reason, key=args.key, exchange_ids=args.exchange_id,
                                  actor=args.actor, vacuum=args.vacuum)
    except RedactionError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    archived = _archived_bundles(store)
    if archived:  # pruned records are only in their bundles: nothing here can erase them
        print(f"lienthong: {len(archived)} archived range(s) of the log are no longer in the database (audit archive); "
              f"exchanges of what you asked for there are in these evidence bundles, which this command does not "
              f"change: {', '.join(archived)}", file=sys.stderr)
    if result.redaction_id is None:
        if not result.matched:  # a mistyped code must not read as "this person's data is gone"
            ids = f" among exchanges #{', #'.join(map(str, args.exchange_id))}" if args.exchange_id else ""
            print(f"nothing to redact: no exchange in the database carries record {args.key}{ids}")
            return EXIT_OK
        already = f" ({result.already_redacted} already redacted)" if result.already_redacted else ""
        print(f"nothing to redact: the {result.matched} matched exchange(s) in the database hold no personal "
              f"value{already}")
        return EXIT_OK
    print(f"redaction #{result.redaction_id}: erased {result.fields} personal fields of {len(result.exchange_ids)} "
          f"exchanges (#{', #'.join(map(str, result.exchange_ids))}); the seals still verify")
    if result.residual_occurrences:
        print(f"lienthong: {result.residual_occurrences} occurrence(s) of the erased values remain in sealed text "
              f"outside the personal fields (free-text notes...); they cannot be erased without breaking the seal",
              file=sys.stderr)
    if result.checkpointed is False:
        print("lienthong: the database's WAL could not be checkpointed now (a reader is active): the erased "
              "values leave the WAL file at the next checkpoint", file=sys.stderr)
    return EXIT_OK


def cmd_archive(args: argparse.Namespace) -> int:
    from lienthong.audit.archive import ArchiveError, archive_exchanges, sign_archive_rows
    from lienthong.audit.keys import load_public_key

    try:
        if args.sign_unsigned:
            signed = sign_archive_rows(_store(), args.key)
        else:
            keys = [load_public_key(p) for p in args.public_key] if args.public_key else [load_public_key()]
            result = archive_exchanges(_store(), keys, key=args.key, older_than_days=args.older_than,
                                       out_dir=args.out)
    except ConfigurationError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArchiveError as exc:
        print(f"lienthong: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    if args.sign_unsigned:
        for row in signed:
            print(f"signed the archive row of seals {row['first_seq']}..{row['last_seq']} ({row['bundle_path']})")
        if not signed:
            print("no unsigned archive row")
        return EXIT_OK
    if not result.archives:
        print(f"nothing to archive: no whole sealed batch older than {result.cutoff.isoformat(timespec='seconds')}")
        return EXIT_OK
    for archive in result.archives:
        print(f"archived seals {archive['first_seq']}..{archive['last_seq']} ({archive['records']} records) to "
              f"{archive['bundle_path']} sha256 {archive['bundle_sha256']}")
    print(f"pruned {result.records} records and {result.blobs_pruned} blobs from the database")
    return EXIT_OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:  # SQL's LIMIT 0 is nothing, and SQLite's LIMIT -1 is everything
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_audit_commands(subparsers: argparse._SubParsersAction) -> None:
    from connectors.transport import OUTCOMES

    p = subparsers.add_parser("audit", help="seal the exchange log (signed Merkle roots) and verify it")
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    q = audit.add_parser("keygen", help="write a new Ed25519 seal key pair: PATH (private, mode 0600) and PATH.pub")
    q.add_argument("path", help="where to write the private key (outside the bus database)")
    q.set_defaults(func=cmd_keygen)

    q = audit.add_parser("seal", help="seal every exchange-log record not sealed yet")
    q.add_argument("--key", help="the private key file (default: $LIENTHONG_SEAL_KEY)")
    q.add_argument("--batch-size", type=_positive, default=10_000, metavar="N", help="at most this many records per seal (default 10000)")
    q.set_defaults(func=cmd_seal)

    q = audit.add_parser("verify", help="recompute every seal and sealed record; exit 1 naming the first mismatch")
    q.add_argument("--public-key", action="append", help="a public key file; repeat for rotated keys (default: "
                                                         "$LIENTHONG_SEAL_PUBLIC_KEY, else $LIENTHONG_SEAL_KEY.pub)")
    q.add_argument("--expect-head", type=_head, metavar="SEQ:HASH",
                   help="a head printed earlier by `audit seal`, which must still be there")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.add_argument("--deep", action="store_true", help="also check every stored personal value (salt and value) "
                                                       "against its sealed commitment (otherwise checked when read) "
                                                       "and every body, rebuilt as sent, against its recorded "
                                                       "sha256 and size")
    q.add_argument("--workers", type=_positive, metavar="N", help="processes recomputing the leaves of seals at once "
                                                            "(SQLite files; default: one per core, at most 8)")
    q.set_defaults(func=cmd_verify)

    q = audit.add_parser("search", help="exchanges by record key (dossier, receipt, procedure code), peer, "
                                        "operation, outcome and time; one line each")
    q.add_argument("--key", help="a record key: dossier code, receipt number or procedure code")
    q.add_argument("--peer", help="the peer (national_portal, onestop...)")
    q.add_argument("--operation", help="the operation (DongBoHoSoMC...)")
    q.add_argument("--outcome", choices=OUTCOMES, metavar="OUTCOME", help=" | ".join(OUTCOMES))
    q.add_argument("--from", dest="since", type=_time, metavar="ISO", help="started at or after (UTC by default)")
    q.add_argument("--to", dest="until", type=_time, metavar="ISO", help="started before (UTC by default)")
    q.add_argument("--limit", type=_positive, metavar="N", help="at most this many (oldest first)")
    q.set_defaults(func=cmd_search)

    q = audit.add_parser("show", help="one exchange: headers and bodies, personal data masked unless --reveal")
    q.add_argument("id", type=int, help="the exchange number (from search)")
    q.add_argument("--reveal", action="store_true", help="print ID numbers, phone numbers and e-mails as stored")
    q.set_defaults(func=cmd_show)

    q = audit.add_parser("export", help="write an evidence bundle (records, seals, proofs, public key, verifier)")
    q.add_argument("out", help="the bundle to write (.zip)")
    q.add_argument("--key", help="only the exchanges carrying this record key (dossier code...)")
    q.add_argument("--from", dest="since", type=_time, metavar="ISO", help="started at or after (UTC by default)")
    q.add_argument("--to", dest="until", type=_time, metavar="ISO", help="started before (UTC by default)")
    q.add_argument("--public-key", action="append", help="a seal public key; repeat for rotated keys: the bundle "
                                                         "holds those that signed its seals (default: "
                                                         "$LIENTHONG_SEAL_PUBLIC_KEY, else $LIENTHONG_SEAL_KEY.pub)")
    q.add_argument("--seal-key", metavar="PEM", help="the seal private key, to sign the bundle's selection (default: "
                                                     "$LIENTHONG_SEAL_KEY when set; without one the selection is "
                                                     "not signed)")
    q.set_defaults(func=cmd_export)

    q = audit.add_parser("verify-bundle", help="check an evidence bundle offline (the same as its verify.py)")
    q.add_argument("bundle", help="the bundle (.zip)")
    q.add_argument("--public-key", help="the seal public key PEM you trust (default: the bundle's own)")
    q.add_argument("--fingerprint", action="append", metavar="HEX",
                   help="the fingerprint of a seal key you trust (as keygen and verify print it); repeatable")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=cmd_verify_bundle)

    q = audit.add_parser("redact", help="erase the personal values (ID numbers, phones, e-mails, names) of the "
                                        "exchanges of a record; the seals still verify")
    q.add_argument("--key", required=True, help="the record key (dossier code, receipt number...)")
    q.add_argument("--exchange-id", type=int, action="append", help="only this exchange (repeatable)")
    q.add_argument("--reason", required=True, help="why (the lawful request answered); recorded")
    q.add_argument("--actor", help="who asks (default: $LIENTHONG_ACTOR, else the OS user)")
    q.add_argument("--vacuum", action="store_true", help="SQLite: also rebuild the database file (VACUUM) so no "
                                                         "stale copy of an erased value survives in free pages")
    q.set_defaults(func=cmd_redact)

    q = audit.add_parser("archive", help="write sealed batches older than the retention age to evidence bundles, "
                                         "verify them, then prune them from the database")
    q.add_argument("--older-than", type=float, metavar="DAYS",
                   help="age in days (default: $LIENTHONG_RETENTION_DAYS, else 30)")
    q.add_argument("--out", help="the archive directory (default: $LIENTHONG_HOME/archive)")
    q.add_argument("--key", help="the seal private key file that signs each archive row "
                                 "(default: $LIENTHONG_SEAL_KEY)")
    q.add_argument("--sign-unsigned", action="store_true",
                   help="archive nothing; sign the rows written before migration 0007, each only once its "
                        "bundle is at its path, unchanged, and verifies (exit 1, nothing signed, otherwise)")
    q.add_argument("--public-key", action="append", help="the public key(s) to put in and check the bundles with "
                                                         "(default: $LIENTHONG_SEAL_PUBLIC_KEY, else "
                                                         "$LIENTHONG_SEAL_KEY.pub)")
    q.set_defaults(func=cmd_archive)
