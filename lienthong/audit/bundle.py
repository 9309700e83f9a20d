"""``lienthong audit export``: a self-contained evidence bundle of sealed exchanges.

The bundle (a zip, format ``lienthong-audit-bundle/3``, described in
:mod:`lienthong.audit.bundle_verify`) holds the selected records as stored, their leaf hashes,
every seal from seal 1 up to the one covering the last selected record, each record's RFC 6962
inclusion proof in its seal, the public key of every key that signed one of those seals (all must
be given: :class:`ExportKeyMissing` otherwise) and the standalone verifier as ``verify.py``; the
bodies stored by content hash as ``blobs/<sha256>``; and each record's personal fields (with salt
and value, so the verifier rebuilds the body, or without them once redacted).
Only sealed records can be proven, so records of the selection that are not sealed yet are left
out and counted (``counts.unsealed_left_out``): seal first. Each personal value is checked against
its sealed commitment as it is read: a stored value that does not give it stops the export
(:class:`ExportError`, naming the record and field) before anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from lienthong.audit.bundle_verify import SELECTION_FORMAT, _seal_list, selection_body, verify_bundle
from lienthong.audit.keys import key_fingerprint
from lienthong.audit.personal import PersonalField
from lienthong.audit.records import (
    BLOB_FIELDS,
    LEAF_FIELDS,
    _personal_rows,
    _root,
    _value,
    load_records,
)
from lienthong.audit.search import altered_fields, erased_by_redaction, selection_query
from lienthong.store import (
    Store,
    exchange_blob,
    exchange_key,
    exchange_log,
    exchange_seal,
    exchange_seal_leaf,
    utcnow,
)

__all__ = ["BUNDLE_FORMAT", "ExportError", "ExportKeyMissing", "ExportResult", "bundle_record", "export_bundle",
           "inclusion_proof"]

BUNDLE_FORMAT = "lienthong-audit-bundle/3"  # /3: may hold leaf-format-3 records (salted digests)
VERIFIER_SOURCE = Path(__file__).with_name("bundle_verify.py")


class ExportError(Exception):
    """The bundle cannot be made (e.g. the sealed log does not give its seal's root: run `audit verify`)."""


class ExportKeyMissing(ExportError):
    """A seal of the bundle was signed by a key whose public key was not given (a key rotated
    since): give it too (``--public-key``, repeatable). Nothing was written."""


@dataclass
class ExportResult:
    path: Path
    records: int = 0
    seals: int = 0
    unsealed_left_out: int = 0
    record_ids: list[int] = field(default_factory=list)
    # the fingerprints of the public keys put in the bundle: those that signed one of its seals
    key_fingerprints: list[str] = field(default_factory=list)
    selection_signed: bool = False


def bundle_record(row: dict[str, Any], record_keys: Sequence[str],
                  personal: Sequence[PersonalField] = ()) -> dict[str, Any]:
    """An exchange-log row as the bundle holds it: every column (times in the leaf's ISO form,
    bodies as base64 of the stored zlib bytes), its sorted record keys and its personal fields
    (salt in hex, value in base64; both null once redacted)."""
    record: dict[str, Any] = {}
    for name in LEAF_FIELDS:
        value = row.get(name)
        if name in BLOB_FIELDS:
            record[name] = None if value is None else base64.b64encode(bytes(value)).decode("ascii")
        else:
            record[name] = _value(name, value)
    record["record_keys"] = sorted(record_keys)
    record["personal"] = [
        {"side": f.side, "path": f.path, "kind": f.kind, "commitment": f.commitment,
         "salt": None if f.salt is None else f.salt.hex(),
         "value": None if f.value is None else base64.b64encode(f.value).decode("ascii")}
        for f in sorted(personal, key=lambda f: (f.side, f.path))]
    return record


class _Tree:
    """An RFC 6962 tree over leaf hashes, with subtree hashes cached for many proofs."""

    def __init__(self, leaves: Sequence[str]):
        self.leaves = [bytes.fromhex(h) for h in leaves]
        self._cache: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        cached = self._cache.get((lo, hi))
        if cached is None:
            cached = self._cache[(lo, hi)] = _root(self.leaves[lo:hi])
        return cached

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = 1 << ((n - 1).bit_length() - 1)
        if m < k:
            return self.path(m, lo, lo + k) + [self.mth(lo + k, hi)]
        return self.path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]


def inclusion_proof(leaves: Sequence[str], index: int) -> list[str]:
    """The RFC 6962 audit path (hex) of leaf ``index`` among ``leaves``."""
    tree = _Tree(leaves)
    return [h.hex() for h in tree.path(index, 0, len(leaves))]


def _pem(keys: Sequence[Ed25519PublicKey]) -> bytes:
    return b"".join(k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                    for k in keys)


def _seal_out(seal: dict[str, Any]) -> dict[str, Any]:
    out = {name: seal[name] for name in ("seq", "first_id", "last_id", "count", "root", "prev_hash", "seal_hash",
                                         "signature", "key_fingerprint")}
    out["sealed_at"] = _value("sealed_at", seal["sealed_at"])
    return out


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="microseconds") if value else None


def export_bundle(store: Store, out: str | Path, public_keys: Sequence[Ed25519PublicKey], *,
                  key: str | None = None, since: datetime | None = None,
                  until: datetime | None = None, seals: tuple[int, int] | None = None,
                  signing_key: Ed25519PrivateKey | None = None) -> ExportResult:
    """Write the evidence bundle of the sealed records carrying ``key`` and/or started in
    ``[since, until)`` and/or sealed by seals ``seals[0]..seals[1]`` to ``out``.

    The bundle holds the public keys of ``public_keys`` that signed one of its seals (after a key
    rotation, give the old ones too). With ``signing_key`` (the seal private key) the manifest's
    selection is signed (``selection_signature``, see :mod:`lienthong.audit.bundle_verify`), with
    the head and the leaves held, so the verifier holds the bundle to it; its public key is put in
    the bundle too. It is written next to ``out``, checked with those keys, and
    only then renamed to ``out``; nothing is written when no sealed record matches.

    Raises:
        ExportKeyMissing: a seal was signed by a key not in ``public_keys`` (nothing written).
        ExportError: the log does not give a seal's root, a personal value or blob is altered or
            missing, or the bundle does not verify (nothing written at ``out``).
    """
    out = Path(out)
    result = ExportResult(out)
    seal_range = seals
    redacted: dict[int, bool] = {}
    with store.engine.connect() as conn:
        query = selection_query(key=key, since=since, until=until)
        if seal_range is not None:
            query = query.where(exchange_log.c.id.in_(select(exchange_seal_leaf.c.exchange_id).where(
                exchange_seal_leaf.c.seal_seq >= seal_range[0], exchange_seal_leaf.c.seal_seq <= seal_range[1])))
        ids = list(conn.execute(query).scalars())
        sealed: dict[int, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sealed.update(conn.execute(select(exchange_seal_leaf.c.exchange_id, exchange_seal_leaf.c.seal_seq)
                                       .where(exchange_seal_leaf.c.exchange_id.in_(chunk))).all())
        chosen = [i for i in ids if i in sealed]
        result.unsealed_left_out = len(ids) - len(chosen)
        last_seq = max((sealed[i] for i in chosen), default=0)
        seals = [dict(r) for r in conn.execute(select(exchange_seal).where(exchange_seal.c.seq <= last_seq)
                                               .order_by(exchange_seal.c.seq)).mappings()]
        by_seq = {s["seq"]: s for s in seals}
        bundle_keys = _signing_keys(seals, public_keys)
        files: dict[str, bytes] = {}
        leaves_out: dict[str, str] = {}
        blobs_out: dict[str, dict[str, Any]] = {}
        wanted: dict[int, list[int]] = {}
        for i in chosen:
            wanted.setdefault(sealed[i], []).append(i)
        for seq, record_ids in sorted(wanted.items()):
            seal = by_seq.get(seq)
            previous = by_seq.get(seq - 1)
            if seal is None or (seq > 1 and previous is None):
                raise ExportError(f"seal {seq} or the one before it is missing: run `lienthong audit verify`")
            after_id = previous["last_id"] if previous else 0
            records = load_records(conn, after_id, seal["last_id"])
            leaves = [h for _, h in records]
            tree = _Tree(leaves)
            if len(leaves) != seal["count"] or tree.mth(0, len(leaves)).hex() != seal["root"]:
                raise ExportError(f"the records of seal {seq} do not give its signed root: the log was altered; "
                                  f"run `lienthong audit verify`")
            position = {record_id: n for n, (record_id, _) in enumerate(records)}
            rows = {r["id"]: dict(r) for r in conn.execute(
                select(exchange_log).where(exchange_log.c.id.in_(record_ids))).mappings()}
            keys: dict[int, list[str]] = {i: [] for i in record_ids}
            for exchange_id, record_key in conn.execute(select(exchange_key.c.exchange_id, exchange_key.c.record_key)
                                                        .where(exchange_key.c.exchange_id.in_(record_ids))):
                keys[exchange_id].append(record_key)
            personal = _personal_rows(conn, min(record_ids), max(record_ids))
            lawful = erased_by_redaction(conn, min(record_ids), max(record_ids))
            for record_id in record_ids:
                altered = altered_fields(personal.get(record_id, []), erased_by_redaction=lawful.get(record_id, set()))
                if altered:
                    raise ExportError(f"record #{record_id}: {len(altered)} stored personal value(s) do not match "
                                      f"their sealed commitment ({', '.join(f'{f.side} {f.path}' for f in altered)})"
                                      f": the database was altered; run `lienthong audit verify --deep`")
            for record_id in record_ids:
                index = position[record_id]
                leaf = leaves[index]
                record = bundle_record(rows[record_id], keys[record_id], personal.get(record_id, ()))
                redacted[record_id] = any(f.value is None for f in personal.get(record_id, ()))
                for side in ("request", "response"):
                    ref = rows[record_id].get(f"{side}_blob_sha256")
                    if ref and f"blobs/{ref}" not in files:
                        blob = conn.execute(select(exchange_blob).where(exchange_blob.c.sha256 == ref)).mappings().first()
                        if blob is None:
                            raise ExportError(f"record #{record_id}: its {side} body (blob {ref[:16]}…) is missing "
                                              f"from exchange_blob; run `lienthong audit verify`")
                        files[f"blobs/{ref}"] = zlib.decompress(bytes(blob["data"]))
                        blobs_out[ref] = {"content_type": blob["content_type"], "size": blob["size"]}
                files[f"records/{record_id}.json"] = _dump(record)
                files[f"proofs/{record_id}.json"] = _dump({
                    "record_id": record_id, "seal_seq": seq, "leaf_index": index, "tree_size": len(leaves),
                    "audit_path": [h.hex() for h in tree.path(index, 0, len(leaves))]})
                leaves_out[str(record_id)] = leaf
    result.records, result.seals, result.record_ids = len(chosen), len(seals), chosen
    files["leaves.json"] = _dump(leaves_out)
    files["seals.json"] = _dump([_seal_out(s) for s in seals])
    if signing_key is not None and key_fingerprint(signing_key) not in {key_fingerprint(k) for k in bundle_keys}:
        bundle_keys.append(signing_key.public_key())
    files["public_key.pem"] = _pem(bundle_keys)
    result.key_fingerprints = [key_fingerprint(k) for k in bundle_keys]
    files["verify.py"] = VERIFIER_SOURCE.read_bytes()
    manifest = {
        "format": BUNDLE_FORMAT,
        "seal_format": "lienthong-seal/1",
        "created_at": _iso(utcnow()),
        "selection": {"key": key, "from": _iso(since), "to": _iso(until),
                      **({"seals": list(seal_range)} if seal_range is not None else {})},
        "counts": {"records": len(chosen), "seals": len(seals), "unsealed_left_out": result.unsealed_left_out,
                   "blobs": len(blobs_out),
                   "records_with_redactions": sum(1 for rid in chosen if redacted.get(rid))},
        "blobs": blobs_out,
        "head": {"seq": seals[-1]["seq"], "seal_hash": seals[-1]["seal_hash"]} if seals else None,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        "verify": "python verify.py THIS.zip --fingerprint <the published seal key fingerprint> "
                  "(or --public-key <the seal public key you trust>)",
    }
    if signing_key is not None:
        manifest["selection_signature"] = {
            "format": SELECTION_FORMAT, "key_fingerprint": key_fingerprint(signing_key),
            "signature": signing_key.sign(selection_body(manifest)).hex()}
    result.selection_signed = signing_key is not None
    if not chosen:  # an empty bundle would verify, as if it were the evidence asked for: none is written
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    # a file of its own next to OUT (two exports at once never share it), checked as the auditor
    # will check it, and only then renamed to OUT: a bundle that fails its own check is never there
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", _dump(manifest))
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
        check = verify_bundle(str(tmp), files["public_key.pem"] if bundle_keys else None)
        if not check.ok or check.records_checked != len(chosen) or check.selection_signed != result.selection_signed:
            failure = check.failure or f"{check.records_checked} of {len(chosen)} records checked"
            raise ExportError(f"the bundle does not verify: {failure}; nothing was written at {out}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _signing_keys(seals: Sequence[dict[str, Any]], public_keys: Sequence[Ed25519PublicKey]) -> list[Ed25519PublicKey]:
    """The public keys (of ``public_keys``) that signed ``seals``, in the order they first did.

    Raises:
        ExportKeyMissing: naming the seals signed by a key not given, and its fingerprint.
    """
    given = {key_fingerprint(k): k for k in public_keys}
    signed: dict[str, list[int]] = {}
    for seal in seals:
        signed.setdefault(seal["key_fingerprint"], []).append(seal["seq"])
    missing = {fp: seqs for fp, seqs in signed.items() if fp not in given}
    if missing:
        raise ExportKeyMissing("; ".join(
            f"{_seal_list(seqs)} {'was' if len(seqs) == 1 else 'were'} signed by key {fp}, whose public key was not "
            f"given" for fp, seqs in missing.items())
            + ": give every seal key's public key, the keys rotated since included (--public-key PEM, repeatable); "
              "no bundle written")
    return [given[fp] for fp in signed]



def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True).encode() + b"\n"
