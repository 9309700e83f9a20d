"""Verify the sealed exchange log and name the first record or seal that does not match.

With only the public key(s), :func:`verify_exchanges` walks the seals in ``seq`` order and, for
each, checks the seal itself (its hash, its Ed25519 signature, its link to the previous seal,
no missing ``seq``), then recomputes the leaf hash of every record in its id range and the Merkle
root over them. When the root differs, the stored per-record leaf hashes (whose own root must be
the signed one) say which record: deleted, inserted or altered. Records after the last seal are
counted as unsealed (not an error); leaf rows that point past the last seal mean a deleted seal.

Beyond the leaves (issue #6): every body stored by content hash must be in ``exchange_blob`` and
hash to its reference; records whose personal fields were erased by ``audit redact`` are reported
as *verified with redactions*, never as a failure. Seals whose records were archived (``audit
archive``) are checked through their stored leaf index (it must give the signed root), so the
chain still verifies across the archived range; the archives are reported with their bundle hash.

What the default verify checks, and what ``deep`` adds (issue #8). The seal covers each record's
columns, its record keys and its personal fields' ``(side, path, kind, commitment)``; the stored
bodies hold the commitments as tokens. So recomputing every leaf, every root, the seal chain, the
signatures and the blobs proves that nothing the seal covers was altered, deleted or inserted:
that is the default, and it reads no salt and no value. A stored salt and value are *not*
covered: they are what a commitment opens to, and a forged one simply fails to open it. They are
checked where they are read, so no altered value is ever shown or exported as genuine:
``get_exchange`` (``audit show``, the auditor page) marks it ``[altered]`` with a warning,
``audit export`` refuses the bundle, the offline bundle verifier rejects it; and all of them at
once with ``deep=True`` (``audit verify --deep``, reported as ``deep``). ``deep`` also rebuilds
every body as it went on the wire (its stored bytes or blob, its personal values put back) and
checks it against its recorded ``*_sha256`` and ``*_size`` (:func:`~lienthong.audit.personal.
wire_digest` by the row's leaf format: plain SHA-256 in formats 1 and 2, salted in 3 when the side
has personal fields), as the offline bundle verifier does: a body altered *before* it was sealed
is covered by its seal and only this finds it (``body_altered``, the first such record named); a
side with an erased field cannot be rebuilt and is skipped. Re-opening every
commitment (about 76 per record in the benchmark's log) on every verify would cost about three
times the leaves themselves (15,700 against 4,900 records/s there).

How it goes fast: the leaves come from :func:`lienthong.audit.records.scan_batch` (SQLite builds
each record's lists of personal fields and keys as JSON in C, Python encodes the columns with one
encoder built once and hashes with hashlib; a few queries per 500 records, never one per
record), optionally in worker processes, one seal each (``workers``; the CLI uses one per core).
A seal whose fast leaves do not give its root is recomputed by the exact, slower
:func:`~lienthong.audit.records.load_batch` before anything is reported, so failures are named
exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from lienthong.audit.bundle_verify import signer_runs
from lienthong.audit.keys import key_fingerprint, load_public_key
from lienthong.audit.personal import PersonalField, commitment, restore_body, wire_digest
from lienthong.audit.records import (
    GENESIS,
    Batch,
    archive_body,
    load_batch,
    merkle_root,
    redacted_ids,
    scan_batch,
    seal_body,
)
from lienthong.store import (
    Store,
    exchange_archive,
    exchange_blob,
    exchange_log,
    exchange_personal_field,
    exchange_redaction,
    exchange_seal,
    exchange_seal_leaf,
)

__all__ = ["Failure", "VerifyResult", "default_workers", "verify_exchanges"]

# failure kinds
RECORD_ALTERED = "record_altered"  # a field, body byte or record key of this record changed
RECORD_DELETED = "record_deleted"
RECORD_INSERTED = "record_inserted"  # a record inside a sealed range that the seal does not hold
SEAL_ALTERED = "seal_altered"  # seal_hash does not match the seal's fields
SEAL_SIGNATURE = "seal_signature"  # the signature does not verify with the public key
SEAL_UNKNOWN_KEY = "seal_unknown_key"  # signed by a key the verifier was not given
SEAL_CHAIN = "seal_chain"  # prev_hash is not the previous seal's hash
SEAL_MISSING = "seal_missing"  # a seq is missing (a deleted seal)
SEAL_LEAVES = "seal_leaves"  # the stored leaf index of a seal was altered (records unknown)
HEAD_MISMATCH = "head_mismatch"  # the expected head seal is not there (truncated seals)
PERSONAL_FIELD_ALTERED = "personal_field_altered"  # a stored salt/value does not give its sealed commitment
BLOB_MISSING = "blob_missing"  # a body stored by content hash is not in exchange_blob
BLOB_ALTERED = "blob_altered"  # the stored blob does not hash to its (sealed) reference
# --deep: a body rebuilt from its stored bytes and personal values does not give its recorded
# sha256 and size (altered before sealing: the seal then covers the altered bytes)
BODY_ALTERED = "body_altered"
# an archived seal's leaf index does not give its root, its bundle changed, or its archive row is
# forged (signature) or unsigned with no bundle at its path to check the absent records against
ARCHIVE_ALTERED = "archive_altered"


@dataclass
class Failure:
    kind: str
    explanation: str
    seal_seq: int | None = None
    record_id: int | None = None

    def __str__(self) -> str:
        where = []
        if self.record_id is not None:
            where.append(f"record #{self.record_id}")
        if self.seal_seq is not None:
            where.append(f"seal {self.seal_seq}")
        return f"{self.kind} ({', '.join(where) or 'log'}): {self.explanation}"


@dataclass
class VerifyResult:
    ok: bool = True
    records_checked: int = 0
    seals_checked: int = 0
    unsealed_records: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    failure: Failure | None = None
    warnings: list[str] = field(default_factory=list)
    # records whose personal fields were erased (audit redact): verified with redactions
    records_with_redactions: int = 0
    redacted_record_ids: list[int] = field(default_factory=list)
    blobs_checked: int = 0
    deep: bool = False  # every stored salt and value was checked against its commitment (--deep)
    personal_values_checked: int = 0
    bodies_checked: int = 0  # bodies rebuilt as on the wire against their recorded sha256 and size (--deep)
    archived_records: int = 0  # sealed records moved to bundles (audit archive), checked via leaf index
    archives: list[dict[str, Any]] = field(default_factory=list)
    # which key signed which seals: ``{fingerprint, first_seq, last_seq, seals}`` per run of seals
    # (a rotated key starts a new run), so the fingerprint to publish or compare is named
    keys: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _keys(public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey] | str | os.PathLike[str] | None
          ) -> dict[str, Ed25519PublicKey]:
    if public_keys is None or isinstance(public_keys, (str, os.PathLike)):
        public_keys = [load_public_key(public_keys)]
    elif isinstance(public_keys, Ed25519PublicKey):
        public_keys = [public_keys]
    return {key_fingerprint(k): k for k in public_keys}


def _locate(conn: Connection, seal: dict[str, Any], after_id: int,
            records: list[tuple[int, str]]) -> Failure:
    """The seal's root does not match its records: say which record, using the leaf index."""
    seq = seal["seq"]
    stored = [(r.exchange_id, r.leaf_hash) for r in conn.execute(
        select(exchange_seal_leaf.c.exchange_id, exchange_seal_leaf.c.leaf_hash)
        .where(exchange_seal_leaf.c.seal_seq == seq).order_by(exchange_seal_leaf.c.exchange_id))]
    index_ok = bool(stored) and len(stored) == seal["count"] and merkle_root([h for _, h in stored]) == seal["root"]
    note = "" if index_ok else " (and the seal's leaf index was altered too)"
    actual = dict(records)
    expected = dict(stored)
    for record_id in sorted(set(actual) | set(expected)):
        if record_id not in actual:
            return Failure(RECORD_DELETED, f"record #{record_id} sealed by seal {seq} is missing{note}", seq, record_id)
        if record_id not in expected:
            return Failure(RECORD_INSERTED, f"record #{record_id} lies in the range of seal {seq} "
                                            f"(ids {after_id + 1}..{seal['last_id']}) but was not sealed{note}",
                           seq, record_id)
        if actual[record_id] != expected[record_id]:
            return Failure(RECORD_ALTERED, f"record #{record_id} does not match its leaf hash in seal {seq}: a "
                                           f"field, body byte or record key changed{note}", seq, record_id)
    present = {record_id for record_id, _ in records}
    absent = [i for i in range(seal["first_id"], seal["last_id"] + 1) if i not in present]
    if absent and len(absent) == seal["count"] - len(records):  # the sealed count and id range pin them down
        return Failure(RECORD_DELETED, f"seal {seq} holds {seal['count']} records in ids {seal['first_id']}.."
                                       f"{seal['last_id']}, {len(records)} are left: record #{absent[0]} is missing"
                                       f"{' (and ' + str(len(absent) - 1) + ' more)' if len(absent) > 1 else ''}{note}",
                       seq, absent[0])
    return Failure(SEAL_LEAVES, f"the records of seal {seq} do not give its signed root and its leaf index "
                                f"was altered: cannot tell which record", seq)


def _check_seal(seal: dict[str, Any], previous: dict[str, Any] | None, keys: dict[str, Ed25519PublicKey]
                ) -> Failure | None:
    seq = seal["seq"]
    expected_seq = previous["seq"] + 1 if previous else 1
    if seq != expected_seq:
        missing = f"seal {expected_seq}" if seq == expected_seq + 1 else f"seals {expected_seq}..{seq - 1}"
        return Failure(SEAL_MISSING, f"{missing} missing before seal {seq}", expected_seq)
    body = seal_body(seal)
    if hashlib.sha256(body).hexdigest() != seal["seal_hash"]:
        return Failure(SEAL_ALTERED, f"seal {seq}: its fields do not give its seal_hash", seq)
    key = keys.get(seal["key_fingerprint"])
    if key is None:
        return Failure(SEAL_UNKNOWN_KEY, f"seal {seq} was signed by key {seal['key_fingerprint'][:16]}…, "
                                         f"not by the public key(s) given ({', '.join(f[:16] for f in keys)}…)", seq)
    try:
        key.verify(bytes.fromhex(seal["signature"]), body)
    except (InvalidSignature, ValueError):
        return Failure(SEAL_SIGNATURE, f"seal {seq}: the signature does not verify", seq)
    prev_hash = previous["seal_hash"] if previous else GENESIS
    if seal["prev_hash"] != prev_hash:
        return Failure(SEAL_CHAIN, f"seal {seq} does not chain to seal {seq - 1}'s hash", seq)
    if previous and seal["first_id"] <= previous["last_id"]:
        return Failure(SEAL_CHAIN, f"seal {seq} overlaps seal {seq - 1}", seq)
    return None


def _personal_rows(cursor: Any) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    """The rows of ``exchange_personal_field`` from ``cursor`` (ordered by record), by record."""
    record_id, group = None, []
    while rows := cursor.fetchmany(5000):
        for row in rows:
            if row[0] != record_id and group:
                yield record_id, group
                group = []
            record_id = row[0]
            group.append(row)
    if group:
        yield record_id, group


def _blob_bytes(conn: Connection, sha: str, cache: dict[str, bytes | None]) -> bytes | None:
    """A body stored by content hash, as stored (None when missing, not zlib or not hashing to its
    name: :func:`_check_extras` names it)."""
    if sha not in cache:
        if len(cache) > 64:
            cache.clear()
        data = conn.execute(select(exchange_blob.c.data).where(exchange_blob.c.sha256 == sha)).scalar()
        try:
            stored = None if data is None else zlib.decompress(bytes(data))
            cache[sha] = stored if stored is not None and hashlib.sha256(stored).hexdigest() == sha else None
        except zlib.error:
            cache[sha] = None
    return cache[sha]


def _check_wire(conn: Connection, row: tuple[Any, ...], fields: dict[str, list[PersonalField]],
                blobs: dict[str, bytes | None]) -> tuple[Failure | None, int]:
    """``--deep``: each side of one record rebuilt as it went on the wire (stored bytes or blob, its
    personal values put back) against its recorded digest (:func:`wire_digest` by the row's leaf
    format: plain SHA-256 in 1 and 2) and size, as the offline bundle verifier does. A side with an
    erased field cannot be rebuilt and is skipped. Returns the failure and the sides checked."""
    record_id, leaf_version = row[0], row[1]
    checked = 0
    for n, side in enumerate(("request", "response")):
        body, sha, size, ref = row[2 + 4 * n:6 + 4 * n]
        side_fields = fields.get(side, [])
        if any(f.salt is None or f.value is None for f in side_fields):
            continue  # redacted: checked by its redaction record
        if ref is not None:
            stored = _blob_bytes(conn, ref, blobs)
            if stored is None:
                continue  # missing or corrupt blob: _check_extras names it
        else:
            try:
                stored = zlib.decompress(bytes(body))
            except zlib.error:
                return Failure(BODY_ALTERED, f"record #{record_id}: its stored {side} body does not decompress",
                               None, record_id), checked
        wire = restore_body(stored, side_fields) if side_fields else stored
        checked += 1
        try:
            digest = wire_digest(wire, side_fields, leaf_version)
        except ValueError:
            digest = None
        if digest != sha or len(wire) != size:
            return Failure(BODY_ALTERED, f"record #{record_id}: the {side} body rebuilt from its stored bytes and "
                                         f"personal values does not match its recorded sha256 and size (altered "
                                         f"before sealing)", None, record_id), checked
    return None, checked


def _check_personal(conn: Connection, first_id: int, last_id: int, result: VerifyResult,
                    redacted: set[int], redactions: set[int]) -> Failure | None:
    """``--deep``: every stored salt and value of the records in ``first_id..last_id`` must give
    its sealed commitment, and every erased one must name its ``audit redact`` (``redactions``:
    the ids of ``exchange_redaction``; erased ones go to ``redacted``); then each record's bodies,
    rebuilt with those values, must give their recorded digests (:func:`_check_wire`); the first
    record that does not."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    dbapi = conn.connection.dbapi_connection
    cursor = dbapi.cursor()  # millions of rows: plain tuples, a page at a time
    bodies = dbapi.cursor()
    blobs: dict[str, bytes | None] = {}
    try:
        cursor.execute(f"SELECT exchange_id, side, path, commitment, salt, value, redaction_id, kind "
                       f"FROM {exchange_personal_field.name} "
                       f"WHERE exchange_id >= {mark} AND exchange_id <= {mark} ORDER BY exchange_id",
                       (first_id, last_id))
        bodies.execute(f"SELECT id, leaf_version, request_body, request_sha256, request_size, request_blob_sha256, "
                       f"response_body, response_sha256, response_size, response_blob_sha256 "
                       f"FROM {exchange_log.name} WHERE id >= {mark} AND id <= {mark} ORDER BY id",
                       (first_id, last_id))
        groups = _personal_rows(cursor)
        group = next(groups, None)
        checked = 0

        def check_fields(rows: list[tuple[Any, ...]]) -> tuple[Failure | None, dict[str, list[PersonalField]]]:
            nonlocal checked
            by_side: dict[str, list[PersonalField]] = {}
            for record_id, side, path, sealed, salt, value, redaction_id, kind in rows:
                by_side.setdefault(side, []).append(PersonalField(
                    side, path, kind, sealed, None if salt is None else bytes(salt),
                    None if value is None else bytes(value)))
                if salt is None and value is None:
                    if redaction_id not in redactions:  # erased, but no `audit redact` says who or why
                        return Failure(PERSONAL_FIELD_ALTERED, f"record #{record_id}: the salt and value of its "
                                                               f"{side} field {path} were erased without a "
                                                               "redaction record (audit redact)", None,
                                       record_id), by_side
                    redacted.add(record_id)
                    continue
                checked += 1
                if salt is None or value is None or commitment(bytes(salt), path, bytes(value)) != sealed:
                    return Failure(PERSONAL_FIELD_ALTERED, f"record #{record_id}: the stored salt and value of its "
                                                           f"{side} field {path} do not give the sealed commitment",
                                   None, record_id), by_side
            return None, by_side

        while rows := bodies.fetchmany(500):
            for row in rows:
                fields: dict[str, list[PersonalField]] = {}
                while group is not None and group[0] <= row[0]:  # a field of a record not here is checked too
                    failure, by_side = check_fields(group[1])
                    if failure:
                        return failure
                    if group[0] == row[0]:
                        fields = by_side
                    group = next(groups, None)
                failure, sides = _check_wire(conn, row, fields, blobs)
                result.bodies_checked += sides
                if failure:
                    return failure
        while group is not None:
            failure, _ = check_fields(group[1])
            if failure:
                return failure
            group = next(groups, None)
    finally:
        cursor.close()
        bodies.close()
        result.personal_values_checked += checked
    return None


def _check_extras(conn: Connection, batch: Batch, result: VerifyResult,
                  blob_cache: dict[str, str | None], personal: Failure | None = None) -> Failure | None:
    """Blob references of records whose leaves matched, and the records with erased fields
    (``personal``: what :func:`_check_personal` found, under ``--deep``)."""
    problems: list[Failure] = [personal] if personal else []
    for record_id in sorted(batch.redacted):
        result.records_with_redactions += 1
        result.redacted_record_ids.append(record_id)
    wanted = sorted({sha for _, _, sha in batch.blobs if sha not in blob_cache})
    for start in range(0, len(wanted), 200):
        chunk = wanted[start:start + 200]
        found = dict(conn.execute(select(exchange_blob.c.sha256, exchange_blob.c.data)
                                  .where(exchange_blob.c.sha256.in_(chunk))).all())
        for sha in chunk:
            if sha not in found:
                blob_cache[sha] = BLOB_MISSING
                continue
            try:
                data = zlib.decompress(bytes(found[sha]))
            except zlib.error:
                blob_cache[sha] = BLOB_ALTERED
                continue
            blob_cache[sha] = None if hashlib.sha256(data).hexdigest() == sha else BLOB_ALTERED
            result.blobs_checked += 1
    for record_id, side, sha in batch.blobs:
        kind = blob_cache.get(sha)
        if kind == BLOB_MISSING:
            problems.append(Failure(BLOB_MISSING, f"record #{record_id}: its {side} body, stored by content hash "
                                                  f"{sha[:16]}…, is missing from exchange_blob", None, record_id))
        elif kind == BLOB_ALTERED:
            problems.append(Failure(BLOB_ALTERED, f"record #{record_id}: the stored blob of its {side} body does "
                                                  f"not hash to the sealed {sha[:16]}…", None, record_id))
    if not problems:
        return None
    first = min(problems, key=lambda f: f.record_id or 0)
    seq = conn.execute(select(exchange_seal_leaf.c.seal_seq)
                       .where(exchange_seal_leaf.c.exchange_id == first.record_id)).scalar()
    first.seal_seq = seq
    if seq is not None:
        first.explanation += f" (seal {seq})"
    return first


def _check_archived(conn: Connection, seal: dict[str, Any], archive: dict[str, Any],
                    records: list[tuple[int, str]], missing: dict[int, str]) -> Failure | None:
    """A seal whose records went to an archive bundle: its stored leaf index must give its signed
    root, and the records still here must match their leaves; the others go to ``missing``."""
    seq = seal["seq"]
    stored = [(r.exchange_id, r.leaf_hash) for r in conn.execute(
        select(exchange_seal_leaf.c.exchange_id, exchange_seal_leaf.c.leaf_hash)
        .where(exchange_seal_leaf.c.seal_seq == seq).order_by(exchange_seal_leaf.c.exchange_id))]
    if len(stored) != seal["count"] or merkle_root([h for _, h in stored]) != seal["root"]:
        return Failure(ARCHIVE_ALTERED, f"seal {seq} was archived (bundle {archive['bundle_path']}) but its leaf "
                                        f"index no longer gives its signed root", seq)
    expected = dict(stored)
    for record_id, leaf in records:
        if expected.get(record_id) != leaf:
            kind = RECORD_ALTERED if record_id in expected else RECORD_INSERTED
            return Failure(kind, f"record #{record_id} does not match its leaf hash in archived seal {seq}", seq,
                           record_id)
    present = {record_id for record_id, _ in records}
    missing.update({i: h for i, h in stored if i not in present})
    return None


def _check_archive_row(info: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> Failure | None:
    """An archive row signed with a key given, over its fields (``archive_body``); an unsigned row
    (written before revision 0007) passes here and needs its bundle at its path."""
    where = f"the archive row of seals {info['first_seq']}..{info['last_seq']}"
    if info["signature"] is None and info["key_fingerprint"] is None:
        return None
    key = keys.get(info["key_fingerprint"] or "")
    if key is None:
        return Failure(ARCHIVE_ALTERED, f"{where} was signed by key {(info['key_fingerprint'] or '?')[:16]}…, not by "
                                        f"the public key(s) given", info["first_seq"])
    try:
        key.verify(bytes.fromhex(info["signature"] or ""), archive_body(info))
    except (InvalidSignature, ValueError):
        return Failure(ARCHIVE_ALTERED, f"{where}: its signature does not verify (the row was altered or forged: "
                                        f"the records it says were archived may have been deleted)", info["first_seq"])
    return None


def _check_bundle_file(info: dict[str, Any], missing: dict[int, str]) -> str | None:
    """None when the archive bundle is where it was written, with the same bytes, and holds every
    record of its seals that left the database (same leaf hashes); a warning when it was moved
    away; ``"!"`` + the reason when it is there but does not hold them."""
    path = info["bundle_path"]
    where = f"seals {info['first_seq']}..{info['last_seq']}"
    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return (f"archive bundle of {where} is not at {path} (moved off-site?): the {len(missing)} records it "
                f"holds were not checked against it")
    if digest != info["bundle_sha256"]:
        return f"!the archive bundle {path} of {where} changed since it was written"
    try:
        with zipfile.ZipFile(path) as zf:
            leaves = json.loads(zf.read("leaves.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return f"!the archive bundle {path} of {where} has no readable leaves.json"
    absent = sorted(i for i, h in missing.items() if leaves.get(str(i)) != h)
    if absent:
        return (f"!record #{absent[0]} of the archived {where} is neither in the database nor, with its sealed "
                f"leaf hash, in the archive bundle {path}")
    return None


def _check_leaves(conn: Connection, seal: dict[str, Any], after_id: int, batch: Batch,
                  archive: dict[str, Any] | None, archive_missing: dict[str, dict[int, str]]) -> Failure | None:
    """The records of one seal against its signed root and its stored leaf index."""
    records = batch.records
    if archive is not None and len(records) < seal["count"]:
        missing: dict[int, str] = {}
        failure = _check_archived(conn, seal, archive, records, missing)
        if failure is None:
            archive_missing.setdefault(archive["bundle_path"], {}).update(missing)
        return failure
    if (len(records) != seal["count"] or records[0][0] != seal["first_id"]
            or merkle_root([h for _, h in records]) != seal["root"]):
        return _locate(conn, seal, after_id, records)
    stored = [(r.exchange_id, r.leaf_hash) for r in conn.execute(
        select(exchange_seal_leaf.c.exchange_id, exchange_seal_leaf.c.leaf_hash)
        .where(exchange_seal_leaf.c.seal_seq == seal["seq"]).order_by(exchange_seal_leaf.c.exchange_id))]
    if stored != records:  # the records hold; the per-record index beside them was edited
        held = set(records)
        bad = next((i for (i, h) in stored if (i, h) not in held),
                   next((i for i, _ in records if i not in dict(stored)), None))
        return Failure(SEAL_LEAVES, f"seal {seal['seq']}: its records match the signed root but "
                                    f"its leaf index was altered", seal["seq"], bad)
    return None


_WORKER: dict[str, Store] = {}
POOL_MIN_RECORDS = 20_000  # below this, starting worker processes (about a second each) costs more than it saves


def _worker_scan(url: str, after_id: int, up_to_id: int) -> Batch:
    """In a pool process: the leaves of one seal's records, through that process's own store."""
    store = _WORKER.get(url)
    if store is None:
        store = _WORKER[url] = Store(url)
    with store.engine.connect() as conn:
        return scan_batch(conn, after_id, up_to_id)


def _pool_url(store: Store) -> str | None:
    """The URL worker processes can open the same database with: SQLite files only."""
    url = store.engine.url
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or "mode=memory" in str(url):
        return None
    return url.render_as_string(hide_password=False)


def default_workers() -> int:
    """Processes ``audit verify`` uses by default: one per core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def _batches(store: Store, conn: Connection, ranges: list[tuple[int, int]], workers: int) -> Iterator[Batch]:
    """The batches of the seals' id ranges, in order: here, or ``workers`` processes ahead."""
    big = len(ranges) > 1 and sum(up_to_id - after_id for after_id, up_to_id in ranges) >= POOL_MIN_RECORDS
    url = _pool_url(store) if workers > 1 and big else None
    if url is None:
        for after_id, up_to_id in ranges:
            yield scan_batch(conn, after_id, up_to_id)
        return
    pool = ProcessPoolExecutor(min(workers, len(ranges)), mp_context=multiprocessing.get_context("spawn"))
    try:
        todo = iter(ranges)
        pending: deque[Future[Batch]] = deque(pool.submit(_worker_scan, url, *r) for r in islice(todo, workers * 2))
        while pending:
            batch = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(_worker_scan, url, *following))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify_exchanges(store: Store, public_keys: Any = None, *,
                     expect_head: tuple[int, str] | None = None, deep: bool = False,
                     workers: int = 1) -> VerifyResult:
    """Recompute every seal and every sealed record; stop at the first mismatch.

    Args:
        store: the bus database.
        public_keys: an Ed25519 public key, several (key rotation), or a PEM file path; default
            ``$LIENTHONG_SEAL_PUBLIC_KEY``, else ``$LIENTHONG_SEAL_KEY.pub``.
        expect_head: ``(seq, seal_hash)`` of a head published earlier (e.g. printed by ``audit
            seal``); it must still be there, which detects seals deleted from the end.
        deep: also check every stored salt and value against its sealed commitment (``audit
            verify --deep``); by default they are checked where they are read (``audit show``,
            ``audit export``, the auditor page).
        workers: recompute the leaves of that many seals at once in worker processes (SQLite
            files; the CLI uses :func:`default_workers`); the checks and their order stay here.
    """
    keys = _keys(public_keys)
    result = VerifyResult(deep=deep)

    def fail(failure: Failure) -> VerifyResult:
        result.ok, result.failure = False, failure
        return result

    blob_cache: dict[str, str | None] = {}
    archive_missing: dict[str, dict[int, str]] = {}
    with store.engine.connect() as conn:
        seals = [dict(r) for r in conn.execute(select(exchange_seal).order_by(exchange_seal.c.seq)).mappings()]
        archived: dict[int, dict[str, Any]] = {}
        for archive in conn.execute(select(exchange_archive).order_by(exchange_archive.c.first_seq)).mappings():
            failure = _check_archive_row(dict(archive), keys)
            if failure:
                return fail(failure)
            info = {k: archive[k] for k in ("first_seq", "last_seq", "first_id", "last_id", "records",
                                            "bundle_path", "bundle_sha256", "manifest_sha256")}
            info["archived_at"] = archive["archived_at"].isoformat() if archive["archived_at"] else None
            info["signed"] = archive["signature"] is not None
            result.archives.append(info)
            for seq in range(archive["first_seq"], archive["last_seq"] + 1):
                archived[seq] = info
        redaction_ids = set(conn.execute(select(exchange_redaction.c.id)).scalars()) if deep else set()
        redactions = bool(redaction_ids) if deep else \
            conn.execute(select(exchange_redaction.c.id).limit(1)).first() is not None
        previous: dict[str, Any] | None = None
        batches = _batches(store, conn, [(s["last_id"] if s else 0, seal["last_id"])
                                         for s, seal in zip([None, *seals], seals)], workers)
        for seal in seals:
            failure = _check_seal(seal, previous, keys)
            if failure:  # (returning drops ``batches``, whose pool then shuts down)
                return fail(failure)
            after_id = previous["last_id"] if previous else 0
            batch = next(batches)
            archive = archived.get(seal["seq"])
            failure = _check_leaves(conn, seal, after_id, batch, archive, archive_missing)
            if failure and batch.fast:  # say it from the exact (slower) computation
                batch = load_batch(conn, after_id, seal["last_id"], personal_values=False)
                failure = _check_leaves(conn, seal, after_id, batch, archive, archive_missing)
            if failure:
                return fail(failure)
            records = batch.records
            personal = None
            if deep:
                personal = _check_personal(conn, after_id + 1, seal["last_id"], result, batch.redacted, redaction_ids)
            elif redactions:
                batch.redacted = redacted_ids(conn, after_id + 1, seal["last_id"])
            if archive is not None and len(records) < seal["count"]:
                failure = _check_extras(conn, batch, result, blob_cache, personal)
                if failure:
                    return fail(failure)
                result.archived_records += seal["count"] - len(records)
                result.records_checked += len(records)
                result.seals_checked += 1
                result.head_seq, result.head_hash = seal["seq"], seal["seal_hash"]
                previous = seal
                continue
            failure = _check_extras(conn, batch, result, blob_cache, personal)
            if failure:
                return fail(failure)
            result.records_checked += len(records)
            result.seals_checked += 1
            result.head_seq, result.head_hash = seal["seq"], seal["seal_hash"]
            previous = seal
        result.keys = signer_runs(seals)
        last_id = previous["last_id"] if previous else 0
        orphan = conn.execute(select(func.min(exchange_seal_leaf.c.seal_seq), func.min(exchange_seal_leaf.c.exchange_id))
                              .where(exchange_seal_leaf.c.seal_seq > (previous["seq"] if previous else 0))).first()
        if orphan[0] is not None:
            return fail(Failure(SEAL_MISSING, f"seal {orphan[0]} is missing: its leaf index is still there "
                                              f"(from record #{orphan[1]})", orphan[0], orphan[1]))
        stray = conn.execute(select(func.min(exchange_log.c.id), func.count()).where(exchange_log.c.id <= 0)).first()
        if stray[1]:  # ids start at 1: below every seal's range, where no seal and no count would see them
            return fail(Failure(RECORD_INSERTED, f"record #{stray[0]}: {stray[1]} record(s) with an id at or below 0, "
                                                 "outside every seal's range (ids start at 1)", None, stray[0]))
        result.unsealed_records = int(conn.execute(
            select(func.count()).select_from(exchange_log).where(exchange_log.c.id > last_id)).scalar_one())
    for info in result.archives:
        warning = _check_bundle_file(info, archive_missing.get(info["bundle_path"], {}))
        if warning and warning.startswith("!"):
            return fail(Failure(ARCHIVE_ALTERED, warning[1:], info["first_seq"]))
        if warning and not info["signed"]:  # nothing vouches for the row: the absent records are unaccounted for
            return fail(Failure(ARCHIVE_ALTERED, f"the archive row of seals {info['first_seq']}..{info['last_seq']} is "
                                                 f"unsigned and its bundle is not at {info['bundle_path']}: nothing "
                                                 f"shows its {info['records']} records were archived rather than "
                                                 f"deleted (put the bundle back at that path)", info["first_seq"]))
        if warning:
            result.warnings.append(warning)
    if expect_head is not None:
        seq, seal_hash = expect_head
        held = next((s for s in seals if s["seq"] == seq), None)
        if held is None or held["seal_hash"] != seal_hash:
            return fail(Failure(HEAD_MISMATCH, f"seal {seq} with hash {seal_hash[:16]}… is not in the log "
                                               f"(seals deleted or replaced)", seq))
    return result
