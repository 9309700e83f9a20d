"""``lienthong audit archive``: move old sealed exchanges into evidence bundles and prune them.

Retention (issue #6; X-Road keeps records 30 days, then archives and cleans them): whole seal
batches whose every record started more than ``older_than_days`` ago (default
``$LIENTHONG_RETENTION_DAYS``, else 30) are written, oldest first and contiguously, as evidence
bundles (the ``audit export`` format, selection ``seals: [first, last]``, signed with the seal key so
the offline verifier holds the bundle to every record of those seals) into the archive
directory (default ``$LIENTHONG_HOME/archive``). Each bundle is verified as written, with the
public key(s) given; only then, in one transaction, an ``exchange_archive`` row is recorded (seal
range, id range, bundle path, bundle and manifest SHA-256, signed with the seal key: the row is
what lets those records be absent, so ``audit verify`` refuses one it cannot trust) and the records
are deleted with their
record keys and personal fields, and the blobs no other record references (blobs a flow pinned
stay). Unsealed records are never pruned, nor a seal batch holding one record too young, nor (on
SQLite, which would give its ids again) the batch holding the newest record while nothing is newer.

Seal rows and their leaf index (``exchange_seal_leaf``) stay: ``audit verify`` checks the
archived seals through them, so the seal chain still verifies across the archived range, and it
reports each archive with its bundle hash (and fails if the bundle, still at its path, changed).

Redact before archiving: a bundle keeps the personal values its records held when written.

One run at a time per database: a run holds the archive lock from choosing its seals to its last
prune (PostgreSQL: a session advisory lock; SQLite: an exclusive ``flock`` on
``<database>-archive.lock`` next to the file, which neither recorders nor sealing take), so a
second run started meanwhile waits, then finds those seals archived and archives nothing twice.
Each prune also re-checks, under the database's write lock, that its seals follow the last
archived one (else it removes its bundle and stops: :class:`ArchiveError`).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, or_, select, text

from connectors.errors import ConfigurationError
from lienthong.audit.bundle import _pem, export_bundle
from lienthong.audit.bundle_verify import verify_bundle
from lienthong.audit.keys import key_fingerprint, load_private_key
from lienthong.audit.records import archive_body
from lienthong.store import (
    Store,
    exchange_archive,
    exchange_blob,
    exchange_key,
    exchange_log,
    exchange_personal_field,
    exchange_seal,
    exchange_seal_leaf,
    sqlite_file_lock,
    utcnow,
    write_lock,
)

__all__ = ["DEFAULT_RETENTION_DAYS", "RETENTION_ENV", "ArchiveError", "ArchiveResult", "archive_exchanges",
           "retention_days", "sign_archive_rows"]

RETENTION_ENV = "LIENTHONG_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 30
DEFAULT_MAX_RECORDS = 100_000  # per bundle (whole seals: a bundle may exceed it by one seal)
_ADVISORY_LOCK = 0x6C74_6172  # "ltar": one `audit archive` at a time (PostgreSQL)


class ArchiveError(Exception):
    """An archive bundle could not be written or does not verify: nothing was pruned."""


class _Overtaken(ArchiveError):
    """Another run archived these seals between this run's choice and its prune."""


@dataclass
class ArchiveResult:
    cutoff: datetime | None = None
    archives: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    blobs_pruned: int = 0


def retention_days(value: int | float | None = None) -> float:
    """``value``, else ``$LIENTHONG_RETENTION_DAYS``, else 30."""
    if value is not None:
        chosen: Any = value
    else:
        chosen = os.environ.get(RETENTION_ENV) or DEFAULT_RETENTION_DAYS
    try:
        days = float(chosen)
    except ValueError:
        raise ConfigurationError(f"{RETENTION_ENV} must be a number of days") from None
    if days < 0:
        raise ConfigurationError("the retention age cannot be negative")
    return days


def _eligible(conn, cutoff: datetime) -> list[dict[str, Any]]:
    """Seals after the last archived one, oldest first, while all their records are older than
    ``cutoff`` (and present)."""
    done = conn.execute(select(func.max(exchange_archive.c.last_seq))).scalar() or 0
    seals = [dict(r) for r in conn.execute(select(exchange_seal).where(exchange_seal.c.seq > done)
                                           .order_by(exchange_seal.c.seq)).mappings()]
    previous_last = conn.execute(select(exchange_seal.c.last_id).where(exchange_seal.c.seq == done)).scalar() or 0
    # SQLite gives a new row the highest id in the table plus one: were the record holding it
    # pruned, the next records would take ids the archived seals cover, and never be sealed. So on
    # SQLite the batch holding the newest record waits until a newer record exists.
    top = conn.execute(select(func.max(exchange_log.c.id))).scalar() if conn.dialect.name == "sqlite" else None
    out = []
    for seal in seals:
        if top is not None and seal["last_id"] >= top:
            break
        newest, count = conn.execute(select(func.max(exchange_log.c.started_at), func.count())
                                     .where(exchange_log.c.id > previous_last,
                                            exchange_log.c.id <= seal["last_id"])).first()
        if count == 0 or newest is None:
            break
        newest = newest if newest.tzinfo else newest.replace(tzinfo=cutoff.tzinfo)
        if newest >= cutoff:
            break
        seal["after_id"] = previous_last
        out.append(seal)
        previous_last = seal["last_id"]
    return out


@contextmanager
def _archive_lock(store: Store) -> Iterator[None]:
    """Hold the database's archive lock (see the module doc) until the block ends; wait for it."""
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK})
            conn.commit()  # a session lock: it outlives the transaction, not idle in one meanwhile
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK})
                conn.commit()
        return
    # (an in-memory database has one process: the prune's re-check under the write lock suffices)
    with sqlite_file_lock(store.engine, "-archive.lock"):
        yield


def _chunks(seals: list[dict[str, Any]], max_records: int) -> list[list[dict[str, Any]]]:
    chunks: list[list[dict[str, Any]]] = []
    for seal in seals:
        if chunks and sum(s["count"] for s in chunks[-1]) + seal["count"] <= max_records:
            chunks[-1].append(seal)
        else:
            chunks.append([seal])
    return chunks


def _prune(store: Store, chunk: list[dict[str, Any]], info: dict[str, Any]) -> tuple[int, int]:
    """Record the archive and delete its records (one transaction); (records, blobs) deleted."""
    first, last = chunk[0]["seq"], chunk[-1]["seq"]
    sealed = select(exchange_seal_leaf.c.exchange_id).where(exchange_seal_leaf.c.seal_seq >= first,
                                                            exchange_seal_leaf.c.seal_seq <= last)
    with store.begin() as conn:
        write_lock(conn)  # SQLite: the write lock before the re-check (PostgreSQL: the archive lock)
        done = conn.execute(select(func.max(exchange_archive.c.last_seq))).scalar() or 0
        if done != first - 1:
            raise _Overtaken(f"seals {first}..{last}: another `audit archive` archived up to seal {done} meanwhile; "
                             f"nothing was pruned by this run from seal {first} on")
        conn.execute(exchange_archive.insert().values(**info))
        refs = set()
        for req, resp in conn.execute(select(exchange_log.c.request_blob_sha256, exchange_log.c.response_blob_sha256)
                                      .where(exchange_log.c.id.in_(sealed))):
            refs |= {r for r in (req, resp) if r}
        conn.execute(delete(exchange_personal_field).where(exchange_personal_field.c.exchange_id.in_(sealed)))
        conn.execute(delete(exchange_key).where(exchange_key.c.exchange_id.in_(sealed)))
        records = conn.execute(delete(exchange_log).where(exchange_log.c.id.in_(sealed))).rowcount
        blobs = 0
        for sha in sorted(refs):
            # Hold the blob first (PostgreSQL: a row lock; SQLite: this transaction's write lock,
            # taken by its first insert), then look for references: a recorder that found it
            # present holds it until its own reference is committed (exchange_log.put_blob).
            if conn.execute(select(exchange_blob.c.sha256).where(
                    exchange_blob.c.sha256 == sha, exchange_blob.c.pinned.is_(False)).with_for_update()).first() is None:
                continue
            used = conn.execute(select(exchange_log.c.id).where(or_(
                exchange_log.c.request_blob_sha256 == sha, exchange_log.c.response_blob_sha256 == sha)).limit(1)).first()
            if used is None:
                blobs += conn.execute(delete(exchange_blob).where(exchange_blob.c.sha256 == sha,
                                                                  exchange_blob.c.pinned.is_(False))).rowcount
    return records, blobs


def archive_exchanges(store: Store, public_keys: Sequence[Ed25519PublicKey], *,
                      key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
                      older_than_days: float | None = None, out_dir: str | Path | None = None,
                      now: datetime | None = None, max_records: int = DEFAULT_MAX_RECORDS) -> ArchiveResult:
    """Archive and prune the sealed records older than the retention age (see the module doc).

    Args:
        store: the bus database.
        public_keys: the public key(s) the bundles are written with and checked against.
        key: the seal private key (or its PEM path; default ``$LIENTHONG_SEAL_KEY``) that signs
            each archive row; its public key must be among ``public_keys``.

    Raises:
        ConfigurationError: no seal private key, or one whose public key was not given.
        ArchiveError: a bundle could not be exported or does not verify (nothing of it was pruned).
    """
    days = retention_days(older_than_days)
    if not isinstance(key, Ed25519PrivateKey):
        key = load_private_key(key)
    fingerprint = key_fingerprint(key)
    if fingerprint not in {key_fingerprint(k) for k in public_keys}:
        raise ConfigurationError(f"the seal key {fingerprint[:16]}… that signs the archive rows is not among the "
                                 f"public keys given: audit verify could not check them")
    if out_dir is None:
        from lienthong.localenv import topology

        out_dir = topology().home / "archive"
    out_dir = Path(out_dir).resolve()
    result = ArchiveResult(cutoff=(now or utcnow()) - timedelta(days=days))
    with _archive_lock(store):
        _archive(store, result, public_keys, key, fingerprint, out_dir, now, max_records)
    return result


def _archive(store: Store, result: ArchiveResult, public_keys: Sequence[Ed25519PublicKey], key: Ed25519PrivateKey,
             fingerprint: str, out_dir: Path, now: datetime | None, max_records: int) -> None:
    """Archive the eligible seals (the caller holds the archive lock)."""
    assert result.cutoff is not None
    with store.engine.connect() as conn:
        seals = _eligible(conn, result.cutoff)
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    for chunk in _chunks(seals, max_records):
        first, last = chunk[0]["seq"], chunk[-1]["seq"]
        path = out_dir / f"exchanges-seals-{first:08d}-{last:08d}-{stamp}.zip"
        expected = sum(s["count"] for s in chunk)
        try:  # checked as written, before it is at its path (export_bundle): a bundle there verifies
            export = export_bundle(store, path, public_keys, seals=(first, last), signing_key=key)
        except Exception as exc:  # noqa: BLE001 (ExportError, OSError...: reported, nothing pruned)
            raise ArchiveError(f"seals {first}..{last}: the bundle could not be written: {exc}") from None
        if export.records != expected:
            path.unlink(missing_ok=True)
            raise ArchiveError(f"seals {first}..{last}: the bundle holds {export.records} of their {expected} "
                               f"records; nothing was pruned")
        with zipfile.ZipFile(path) as zf:
            manifest_sha = hashlib.sha256(zf.read("manifest.json")).hexdigest()
        with open(path, "rb") as fh:
            bundle_sha = hashlib.file_digest(fh, "sha256").hexdigest()
        info = {"first_seq": first, "last_seq": last, "first_id": chunk[0]["first_id"],
                "last_id": chunk[-1]["last_id"], "records": expected, "bundle_path": str(path),
                "bundle_sha256": bundle_sha, "manifest_sha256": manifest_sha, "archived_at": utcnow(),
                "key_fingerprint": fingerprint}
        info["signature"] = key.sign(archive_body(info)).hex()
        try:
            records, blobs = _prune(store, chunk, info)
        except _Overtaken:
            with store.engine.connect() as conn:  # its bundle, unless the other run's has its name
                if conn.execute(select(exchange_archive.c.id).where(exchange_archive.c.bundle_path == str(path))
                                ).first() is None:
                    path.unlink(missing_ok=True)
            raise
        result.records += records
        result.blobs_pruned += blobs
        result.archives.append({**info, "archived_at": info["archived_at"].isoformat()})


def sign_archive_rows(store: Store, key: Ed25519PrivateKey | str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Sign the archive rows written before migration 0007, which carry no signature (``audit
    verify`` accepts such a row only with its bundle at its path). Each is signed only once its
    bundle is found at its path with the SHA-256 the row records and verifies with the key's public
    key, holding as many records as the row says: the key holder vouches for a row its bundle still
    proves. All or nothing.

    Returns:
        the rows signed (seal range, bundle path).

    Raises:
        ArchiveError: a bundle is not at its path, changed, or does not verify (nothing signed).
    """
    if not isinstance(key, Ed25519PrivateKey):
        key = load_private_key(key)
    fingerprint = key_fingerprint(key)
    pem = _pem([key.public_key()])
    signed: list[dict[str, Any]] = []
    with store.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(exchange_archive).where(exchange_archive.c.signature.is_(None))
                                              .order_by(exchange_archive.c.first_seq)).mappings()]
        for row in rows:
            where = f"seals {row['first_seq']}..{row['last_seq']}"
            path = row["bundle_path"]
            try:
                with open(path, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError:
                raise ArchiveError(f"{where}: the bundle is not at {path}; put it back there to sign its row "
                                   f"(nothing was signed)") from None
            check = verify_bundle(path, pem)
            if digest != row["bundle_sha256"] or not check.ok or check.records_checked != row["records"]:
                raise ArchiveError(f"{where}: the bundle {path} is not the one the row records, or does not verify "
                                   f"with this key ({check.failure or 'another file'}); nothing was signed")
            row["key_fingerprint"] = fingerprint
            signature = key.sign(archive_body(row)).hex()
            conn.execute(exchange_archive.update().where(exchange_archive.c.id == row["id"])
                         .values(key_fingerprint=fingerprint, signature=signature))
            signed.append({"first_seq": row["first_seq"], "last_seq": row["last_seq"], "bundle_path": path})
    return signed

