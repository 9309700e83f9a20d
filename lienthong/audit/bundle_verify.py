#!/usr/bin/env python3
"""Check a lienthong audit evidence bundle offline:
``python verify.py BUNDLE.zip [--fingerprint HEX]... [--public-key PEM]``.

Anchor: the bundle carries its own ``public_key.pem``, which only shows the bundle is consistent
(whoever rewrote it could have re-signed every seal with a key of their own). The verifier prints
the fingerprint of the key that signed each run of seals; compare it with the seal key fingerprint
the operator published (``lienthong audit keygen`` printed it, ``lienthong audit verify`` prints
it), or pass it as ``--fingerprint`` (or the public key you hold as ``--public-key``): seals signed
by any other key then fail (``seal_unknown_key``).

Standalone on purpose: the standard library and ``cryptography`` only (no database, no project
code, no configuration), so an auditor can run the copy inside the bundle (``verify.py``).

Bundle format ``lienthong-audit-bundle/3`` (a zip; ``/1`` and ``/2`` bundles are read too; ``/3``
is ``/2`` that may hold leaf-format-3 records, so a verifier that predates them refuses it):

* ``manifest.json``: format, created_at, selection, counts, ``blobs`` (content type and size of
  each) and the SHA-256 of every other file;
* ``records/<id>.json``: one exchange-log record, every stored column (times as ISO 8601 UTC with
  microseconds, the zlib-compressed bodies as base64 of the stored bytes), ``record_keys`` and
  ``personal``: its personal fields (side, path, kind, commitment, salt in hex and value in
  base64 — both null once the field was redacted);
* ``blobs/<sha256>``: a body stored by content hash (a receipt PDF...), the bytes as stored;
* ``leaves.json``: ``{id: leaf hash}``;
* ``proofs/<id>.json``: the RFC 6962 inclusion proof of the record in its seal (``seal_seq``,
  ``leaf_index``, ``tree_size``, ``audit_path``);
* ``seals.json``: every seal from seal 1 to the one covering the last record, so the chain checks;
* ``public_key.pem``: the seal public key(s); ``verify.py``: this program.

``manifest.json`` may carry ``selection_signature`` (``format`` ``lienthong-bundle-selection/1``,
``key_fingerprint``, ``signature``): Ed25519, by the seal key, over the canonical JSON of
``{"format", "bundle_format", "selection", "head", "records", "leaves_sha256"}`` — the selection,
the last seal, the number of records and the SHA-256 of ``leaves.json`` (so which records the
bundle holds). ``audit archive`` always signs it, ``audit export`` when the seal private key is
available. A bundle without it (older, or exported without the private key) is checked as before,
with a warning: its selection is only a label. An older verifier ignores the field (it reads a
signed bundle as an unsigned one; stripping the signature does the same to this one), so the
format stays ``/3``.

What is checked, stopping at the first failure: every seal (seq continuity, seal hash, Ed25519
signature, link to the previous seal, id ranges); every record (its leaf hash recomputed exactly as
the sealer computes it — format ``lienthong-seal/1``, leaf format 1, 2 or 3 — its inclusion proof
against its seal's signed root; each personal field's salted commitment, and its token in the
stored body; the body as it went on the wire, rebuilt from the stored bytes or blob and the
personal values, against its recorded digest and size: the plain SHA-256 in leaf formats 1 and 2,
and in format 3 too for a body without personal fields; for one with, in format 3, SHA-256 of
``"lienthong-wire/3" 0x00`` ‖ the salts of that body's fields in the order of their paths ‖ the
bytes); that records match the selection; and
the manifest's hashes and counts. A record whose personal fields were redacted cannot be rebuilt:
everything else is checked and it is reported *verified with redactions*. Exit 0 verified, 1 not
verified, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import struct
import sys
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["BundleResult", "inclusion_ok", "leaf_hash", "main", "normalise_fingerprint", "selection_body",
           "signer_runs", "verify_bundle", "wire_digest"]

# /3 = /2 that may hold leaf-format-3 records: a verifier of /2 would check their salted digests as
# plain SHA-256 and call the bodies altered, so it must refuse a /3 bundle instead
BUNDLE_FORMAT = "lienthong-audit-bundle/3"
BUNDLE_FORMATS = ("lienthong-audit-bundle/1", "lienthong-audit-bundle/2", BUNDLE_FORMAT)
SEAL_FORMAT = "lienthong-seal/1"
GENESIS = "0" * 64
BLOB_FIELDS = ("request_body", "response_body")
# the columns of exchange_log in table order (lienthong.audit.records.LEAF_FIELDS_V1 / LEAF_FIELDS)
LEAF_FIELDS_V1 = (
    "id", "started_at", "flow", "run_id", "task_id", "peer", "operation", "direction", "method", "url",
    "attempt", "outcome", "peer_code", "http_status", "duration_ms", "record_count", "request_headers",
    "request_body", "request_sha256", "request_size", "response_headers", "response_body", "response_sha256",
    "response_size", "error",
)
LEAF_FIELDS = (*LEAF_FIELDS_V1, "leaf_version", "request_blob_sha256", "response_blob_sha256")
PF_DOMAIN = b"lienthong-pf/1\x00"  # lienthong.audit.personal
PF_TOKEN = b"lt-pf:"
WIRE_DOMAIN = b"lienthong-wire/3\x00"  # lienthong.audit.personal.wire_digest
SALTED_DIGEST_SINCE = 3
SEAL_FIELDS = ("seq", "first_id", "last_id", "count", "root", "prev_hash", "key_fingerprint", "sealed_at")
SELECTION_FORMAT = "lienthong-bundle-selection/1"
UNSIGNED_SELECTION = ("the bundle's selection is not signed (manifest.json: a bundle written before selections were "
                      "signed, or exported without the seal private key): what it says it holds is only a label; "
                      "see which seals it holds whole and which in part")


class BundleError(Exception):
    """The first thing in the bundle that does not verify."""

    def __init__(self, kind: str, where: str, explanation: str):
        super().__init__(f"{kind} ({where}): {explanation}")
        self.kind, self.where, self.explanation = kind, where, explanation


@dataclass
class BundleResult:
    ok: bool = True
    records_checked: int = 0
    seals_checked: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    blobs_checked: int = 0
    records_with_redactions: int = 0
    redacted_record_ids: list[int] = field(default_factory=list)
    failure: str | None = None
    failure_kind: str | None = None
    failure_where: str | None = None
    # which key signed which seals: ``{fingerprint, first_seq, last_seq, seals}`` per run of seals
    keys: list[dict[str, Any]] = field(default_factory=list)
    # checked against a key or fingerprint the caller holds, not only the bundle's own public_key.pem
    anchored: bool = False
    # the seals whose every record is in the bundle, and those it holds only part of ({seq, held,
    # count}), from the records and the signed seals: the manifest's selection is not signed
    whole_seals: list[int] = field(default_factory=list)
    partial_seals: list[dict[str, int]] = field(default_factory=list)
    # the selection (and the leaves held) signed by the seal key ``selection_key`` (audit archive,
    # audit export with the private key); unsigned: ``warnings`` says so
    selection_signed: bool = False
    selection_key: str | None = None
    warnings: list[str] = field(default_factory=list)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def commitment(salt: bytes, path: str, value: bytes) -> str:
    """A personal field's salted commitment (lienthong.audit.personal.commitment)."""
    p = path.encode()
    return hashlib.sha256(PF_DOMAIN + salt + struct.pack(">I", len(p)) + p + value).hexdigest()


def wire_digest(body: bytes, salts_by_path: list[tuple[str, bytes]], leaf_version: int | None) -> str:
    """A body's recorded digest (lienthong.audit.personal.wire_digest): salted with the salts of
    its personal fields from leaf format 3 on, when it has any; else the plain SHA-256."""
    if (leaf_version or 1) < SALTED_DIGEST_SINCE or not salts_by_path:
        return hashlib.sha256(body).hexdigest()
    digest = hashlib.sha256(WIRE_DOMAIN)
    for _path, salt in sorted(salts_by_path, key=lambda pair: pair[0]):
        digest.update(salt)
    digest.update(body)
    return digest.hexdigest()


def pf_token(kind: str, commitment_hex: str) -> bytes:
    bare = PF_TOKEN + commitment_hex.encode()
    return b'"' + bare + b'"' if kind == "json" else bare


def leaf_hash(record: dict[str, Any]) -> str:
    """The leaf hash (hex) of a bundle record: as the sealer computes it from the database row."""
    version = record.get("leaf_version") or 1
    personal = sorted([str(f["side"]), str(f["path"]), str(f["kind"]), str(f["commitment"])]
                      for f in record.get("personal") or [])
    leaf: dict[str, Any] = {}
    for name in (LEAF_FIELDS_V1 if version == 1 else LEAF_FIELDS):
        value = record[name] if version == 1 else record.get(name)
        if name in BLOB_FIELDS and value is not None:
            blob = base64.b64decode(value, validate=True)
            value = {"sha256": hashlib.sha256(blob).hexdigest(), "len": len(blob)}
        leaf[name] = value
    if version == 1:
        for name in LEAF_FIELDS[len(LEAF_FIELDS_V1):]:
            if name != "leaf_version" and record.get(name) is not None:
                leaf[name] = record[name]
        if personal:
            leaf["personal"] = personal
    else:
        leaf["personal"] = personal
    leaf["v"] = version
    leaf["record_keys"] = sorted(record["record_keys"])
    return hashlib.sha256(b"\x00" + canonical_json(leaf)).hexdigest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_ok(leaf: str, index: int, size: int, path: list[str], root: str) -> bool:
    """RFC 9162 §2.1.3.2: does the audit path take leaf ``index`` of a ``size``-leaf tree to ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, bytes.fromhex(leaf)
    for sibling_hex in path:
        sibling = bytes.fromhex(sibling_hex)
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(sibling, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r.hex() == root


def _fingerprint(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def load_public_keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM text (one or several blocks), by fingerprint."""
    keys: dict[str, Ed25519PublicKey] = {}
    marker = b"-----BEGIN PUBLIC KEY-----"
    for part in pem.split(marker)[1:]:
        key = serialization.load_pem_public_key(marker + part.split(b"-----END PUBLIC KEY-----")[0]
                                                + b"-----END PUBLIC KEY-----\n")
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")  # noqa: TRY004 (reported as a bad key file)
        keys[_fingerprint(key)] = key
    if not keys:
        raise ValueError("no public key in the PEM text")
    return keys


def _json(zf: zipfile.ZipFile, name: str) -> Any:
    try:
        data = zf.read(name)
    except KeyError:
        raise BundleError("file_missing", name, "the file is not in the bundle") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError("file_corrupt", name, f"not valid JSON ({exc})") from None


def _check_seals(seals: list[dict[str, Any]], keys: dict[str, Ed25519PublicKey]) -> None:
    previous: dict[str, Any] | None = None
    for position, seal in enumerate(seals):
        if not isinstance(seal, dict):
            raise BundleError("seal_altered", f"seals.json, entry {position + 1}", "not a seal (a JSON object)")
        where = f"seals.json, seal {seal.get('seq', '?')}"
        missing = [f for f in (*SEAL_FIELDS, "seal_hash", "signature") if f not in seal]
        if missing:
            raise BundleError("seal_altered", where, f"fields missing: {', '.join(missing)}")
        mistyped = [f for f in SEAL_FIELDS + ("seal_hash", "signature")
                    if not isinstance(seal[f], int if f in ("seq", "first_id", "last_id", "count") else str)
                    or isinstance(seal[f], bool)]
        if mistyped:
            raise BundleError("seal_altered", where, f"fields of the wrong type: {', '.join(mistyped)}")
        seq = seal["seq"]
        if seq != position + 1:
            raise BundleError("seal_missing", where, f"seal {position + 1} expected here (the chain starts at "
                                                     f"seal 1 and has no gap)")
        body = canonical_json({"format": SEAL_FORMAT, **{f: seal[f] for f in SEAL_FIELDS}})
        if hashlib.sha256(body).hexdigest() != seal["seal_hash"]:
            raise BundleError("seal_altered", where, f"seal {seq}: its fields do not give its seal_hash")
        key = keys.get(seal["key_fingerprint"])
        if key is None:
            raise BundleError("seal_unknown_key", where, f"seal {seq} was signed by key "
                                                         f"{str(seal['key_fingerprint'])[:16]}…, not by the public "
                                                         f"key(s) given ({', '.join(f[:16] for f in keys)}…)")
        try:
            key.verify(bytes.fromhex(seal["signature"]), body)
        except (InvalidSignature, ValueError):
            raise BundleError("seal_signature", where, f"seal {seq}: the signature does not verify") from None
        if seal["prev_hash"] != (previous["seal_hash"] if previous else GENESIS):
            raise BundleError("seal_chain", where, f"seal {seq} does not chain to seal {seq - 1}'s hash")
        if previous and seal["first_id"] <= previous["last_id"]:
            raise BundleError("seal_chain", where, f"seal {seq} overlaps seal {seq - 1}")
        if seal["first_id"] > seal["last_id"] or seal["count"] < 1:
            raise BundleError("seal_altered", where, f"seal {seq} has an impossible id range or count")
        previous = seal


def _selected(record: dict[str, Any], selection: dict[str, Any], seal_seq: int) -> str | None:
    """Why ``record`` falls outside the bundle's declared selection, or None."""
    seals = selection.get("seals")
    if seals and not seals[0] <= seal_seq <= seals[1]:
        return f"its seal {seal_seq} is outside the selected seals {seals[0]}..{seals[1]}"
    key = selection.get("key")
    if key and key not in record["record_keys"]:
        return f"it does not carry the selected key {key}"
    started = datetime.fromisoformat(record["started_at"])
    for bound, inside in (("from", lambda t: started >= t), ("to", lambda t: started < t)):
        if selection.get(bound):
            limit = datetime.fromisoformat(selection[bound])
            limit = limit if limit.tzinfo else limit.replace(tzinfo=timezone.utc)  # noqa: UP017 (Python < 3.11 too)
            if not inside(limit):
                return f"its started_at {record['started_at']} is outside the selected range"
    return None


def _body(zf: zipfile.ZipFile, record: dict[str, Any], side: str, where: str, result: BundleResult) -> bytes:
    """The stored bytes of one side's body: the blob it references, else the inline body."""
    ref = record.get(f"{side}_blob_sha256")
    if ref is None:
        try:
            return zlib.decompress(base64.b64decode(record[f"{side}_body"]))
        except (zlib.error, ValueError):
            raise BundleError("body_corrupt", where, f"the {side} body does not decompress") from None
    try:
        data = zf.read(f"blobs/{ref}")
    except KeyError:
        raise BundleError("blob_missing", where, f"its {side} body, stored by content hash, is not in the "
                                                 f"bundle (blobs/{ref})") from None
    if hashlib.sha256(data).hexdigest() != ref:
        raise BundleError("blob_altered", f"{where} (blobs/{ref})", f"the {side} body's blob does not hash to "
                                                                   f"its sealed reference")
    result.blobs_checked += 1
    return data


def _check_bodies(zf: zipfile.ZipFile, record: dict[str, Any], where: str, result: BundleResult) -> bool:
    """Check both bodies and the personal fields; True when some field was redacted."""
    redacted = False
    fields = record.get("personal") or []
    for side in ("request", "response"):
        stored = _body(zf, record, side, where, result)
        restored, side_redacted, salts = stored, False, []
        for f in (f for f in fields if f.get("side") == side):
            tok = pf_token(str(f["kind"]), str(f["commitment"]))
            if stored.count(tok) != 1:
                raise BundleError("personal_field_altered", where, f"the {side} body does not hold the token of "
                                                                   f"its field {f['path']} exactly once")
            if f.get("salt") is None and f.get("value") is None:
                side_redacted = True
                continue
            try:
                salt, value = bytes.fromhex(f["salt"]), base64.b64decode(f["value"], validate=True)
            except (TypeError, ValueError):
                raise BundleError("personal_field_altered", where, f"the salt or value of its {side} field "
                                                                   f"{f['path']} is not well formed") from None
            if commitment(salt, str(f["path"]), value) != f["commitment"]:
                raise BundleError("personal_field_altered", where, f"the salt and value of its {side} field "
                                                                   f"{f['path']} do not give its sealed commitment")
            restored = restored.replace(tok, value, 1)
            salts.append((str(f["path"]), salt))
        if side_redacted:
            redacted = True
            continue
        if (wire_digest(restored, salts, record.get("leaf_version")) != record[f"{side}_sha256"]
                or len(restored) != record[f"{side}_size"]):
            raise BundleError("body_corrupt", where, f"the {side} body does not match its recorded sha256 and size "
                                                     f"(altered before sealing)")
    return redacted


def _check_record(zf: zipfile.ZipFile, name: str, leaves: dict[str, str], seals: list[dict[str, Any]],
                  selection: dict[str, Any], result: BundleResult) -> int:
    """Check one record against its leaf, its proof and its seal; return its seal's seq."""
    record = _json(zf, name)
    try:
        record_id = int(record["id"])
        computed = leaf_hash(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError("record_altered", name, f"the record is not complete or well formed ({exc!r})") from None
    where = f"record #{record_id}"
    if name != f"records/{record_id}.json":  # else one record copied over another hides the other's absence
        raise BundleError("record_altered", name, f"the file holds record #{record_id}, not the record its name "
                                                  f"says (records/<id>.json): a record held twice or in another's "
                                                  f"place")
    unexpected = set(record) - {*LEAF_FIELDS, "record_keys", "personal"}
    if unexpected:
        raise BundleError("record_altered", f"{where} ({name})", f"fields no seal covers were added: "
                                                                  f"{', '.join(sorted(unexpected))}")
    proof_name = f"proofs/{record_id}.json"
    proof = _json(zf, proof_name)
    try:
        seal = seals[int(proof["seal_seq"]) - 1]
        index, size, path = int(proof["leaf_index"]), int(proof["tree_size"]), list(proof["audit_path"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BundleError("proof_altered", f"{proof_name}", f"the proof is not well formed or names a seal "
                                                           f"not in the bundle ({exc!r})") from None
    listed = leaves.get(str(record_id))
    if listed is None:
        raise BundleError("leaf_missing", "leaves.json", f"no leaf hash for record #{record_id}")
    previous_last = seals[seal["seq"] - 2]["last_id"] if seal["seq"] > 1 else 0
    if not previous_last < record_id <= seal["last_id"]:
        raise BundleError("proof_altered", proof_name, f"record #{record_id} is not in the id range of seal "
                                                       f"{seal['seq']} ({previous_last + 1}..{seal['last_id']})")
    if size != seal["count"]:
        raise BundleError("proof_altered", proof_name, f"tree size {size} but seal {seal['seq']} holds "
                                                       f"{seal['count']} records")
    try:
        proves = inclusion_ok(computed, index, size, path, seal["root"])
        listed_proves = listed != computed and inclusion_ok(listed, index, size, path, seal["root"])
    except ValueError:
        raise BundleError("proof_altered", proof_name, "the audit path is not hex") from None
    if not proves:
        if listed_proves:
            raise BundleError("record_altered", f"{where} ({name})", f"record #{record_id} does not match its "
                                                                      f"sealed leaf hash: a field, body byte or "
                                                                      f"record key changed")
        if listed == computed:
            raise BundleError("proof_altered", proof_name, f"the inclusion proof of record #{record_id} does not "
                                                           f"lead to the signed root of seal {seal['seq']}")
        raise BundleError("record_altered", f"{where} ({name})", f"record #{record_id} matches neither its "
                                                                  f"listed leaf hash nor, by its proof, seal "
                                                                  f"{seal['seq']}'s root")
    if listed != computed:
        raise BundleError("leaf_altered", "leaves.json", f"the leaf hash listed for record #{record_id} is not "
                                                         f"the one the record and its proof give")
    if _check_bodies(zf, record, f"{where} ({name})", result):
        result.records_with_redactions += 1
        result.redacted_record_ids.append(record_id)
    outside = _selected(record, selection, seal["seq"])
    if outside:
        raise BundleError("selection", f"{where} ({name})", f"record #{record_id} is in the bundle but {outside}")
    return int(seal["seq"])


def selection_body(manifest: dict[str, Any]) -> bytes:
    """What ``selection_signature`` signs (lienthong.audit.bundle writes it the same way)."""
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    return canonical_json({"format": SELECTION_FORMAT, "bundle_format": manifest.get("format"),
                           "selection": manifest.get("selection"), "head": manifest.get("head"),
                           "records": counts.get("records"), "leaves_sha256": files.get("leaves.json")})


def _check_selection_signature(manifest: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> str | None:
    """The fingerprint of the key that signed the manifest's selection, None when it is unsigned."""
    signed = manifest.get("selection_signature")
    if signed is None:
        return None
    where = "manifest.json, selection_signature"
    if not isinstance(signed, dict) or signed.get("format") != SELECTION_FORMAT \
            or not all(isinstance(signed.get(f), str) for f in ("key_fingerprint", "signature")):
        raise BundleError("selection_signature", where, f"not a {SELECTION_FORMAT} signature")
    fingerprint = signed["key_fingerprint"]
    key = keys.get(fingerprint)
    if key is None:
        raise BundleError("selection_signature", where, f"the selection was signed by key {fingerprint[:16]}…, not "
                                                        f"by the public key(s) given ({', '.join(f[:16] for f in keys)}…)")
    try:
        key.verify(bytes.fromhex(signed["signature"]), selection_body(manifest))
    except (InvalidSignature, ValueError):
        raise BundleError("selection_signature", where, "the signature does not verify: the selection, the head, the "
                                                        "record count or the leaves held (leaves.json) changed "
                                                        "since the bundle was signed") from None
    return fingerprint


def _check_whole_seals(selection: dict[str, Any], seals: list[dict[str, Any]], held: Counter) -> None:
    """A bundle of whole seals (``selection: {seals: [first, last]}`` and nothing narrower, as
    ``audit archive`` writes them: after pruning, the only copy of those records) must hold every
    record of each of them."""
    chosen = selection.get("seals")
    if not chosen or any(selection.get(k) for k in ("key", "from", "to")):
        return
    for seal in seals:
        if chosen[0] <= seal["seq"] <= chosen[1] and held[seal["seq"]] != seal["count"]:
            raise BundleError("record_missing", "seals.json", f"seal {seal['seq']} holds {seal['count']} records, "
                                                              f"the bundle {held[seal['seq']]} of them")


def _check_manifest(zf: zipfile.ZipFile, manifest: dict[str, Any], records: int,
                    seals_list: list[dict[str, Any]]) -> None:
    seals = len(seals_list)
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise BundleError("manifest", "manifest.json", "no file list")
    present = [n for n in zf.namelist() if n != "manifest.json" and not n.endswith("/")]
    for name in sorted(present):
        if name not in listed:
            raise BundleError("manifest", name, "the file is in the bundle but not in the manifest")
        if hashlib.sha256(zf.read(name)).hexdigest() != listed[name]:
            raise BundleError("manifest", name, "its sha256 differs from the one in manifest.json")
    for name in sorted(set(listed) - set(present)):
        raise BundleError("manifest", name, "listed in manifest.json but not in the bundle")
    head = manifest.get("head")
    if seals_list and head != {"seq": seals_list[-1]["seq"], "seal_hash": seals_list[-1]["seal_hash"]}:
        raise BundleError("manifest", "manifest.json", f"its head {head} is not the last seal of seals.json")
    counts = manifest.get("counts") or {}
    if counts.get("records") != records or counts.get("seals") != seals:
        raise BundleError("manifest", "manifest.json", f"counts {counts} do not match the bundle "
                                                       f"({records} records, {seals} seals)")


def signer_runs(seals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which key signed which seals, as runs of consecutive seals (a rotated key starts a new run);
    ``audit verify`` reports the same (this module stands alone, so it is the one copy)."""
    runs: list[dict[str, Any]] = []
    for seal in seals:
        if runs and runs[-1]["fingerprint"] == seal["key_fingerprint"]:
            runs[-1]["last_seq"] = seal["seq"]
            runs[-1]["seals"] += 1
        else:
            runs.append({"fingerprint": seal["key_fingerprint"], "first_seq": seal["seq"], "last_seq": seal["seq"],
                         "seals": 1})
    return runs


def normalise_fingerprint(text: str) -> str:
    """A key fingerprint as ``lienthong audit keygen`` prints it (64 hex digits; case and colons
    ignored); ValueError otherwise."""
    hex_digits = text.replace(":", "").strip().lower()
    if len(hex_digits) != 64 or any(c not in "0123456789abcdef" for c in hex_digits):
        raise ValueError(f"not a seal key fingerprint (64 hex digits): {text!r}")
    return hex_digits


def verify_bundle(path: str, public_key_pem: bytes | None = None,
                  fingerprints: list[str] | None = None) -> BundleResult:
    """Verify the bundle at ``path`` with the public key(s) in ``public_key_pem`` (default: the
    bundle's own ``public_key.pem``, which only proves consistency: whoever rewrote the bundle could
    have re-signed it with a key of their own). Anchor it with the key you hold, or with
    ``fingerprints``: only keys with one of these fingerprints are accepted. ``result.keys`` says
    which key signed which seals; ``result.anchored`` whether a key or fingerprint was given."""
    result = BundleResult()
    trusted = {normalise_fingerprint(f) for f in fingerprints or ()}
    result.anchored = public_key_pem is not None or bool(trusted)
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():  # every member must decompress and pass its CRC check
                try:
                    zf.read(name)
                except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
                    raise BundleError("file_corrupt", name, f"the zip member is damaged ({exc})") from None
            manifest = _json(zf, "manifest.json")
            if not isinstance(manifest, dict) or manifest.get("format") not in BUNDLE_FORMATS:
                raise BundleError("manifest", "manifest.json", f"not a {BUNDLE_FORMAT} manifest")
            result.selection = manifest.get("selection") or {}
            if not isinstance(result.selection, dict):
                raise BundleError("manifest", "manifest.json", "its selection is not a JSON object")
            pem = public_key_pem
            if pem is None:
                try:
                    pem = zf.read("public_key.pem")
                except KeyError:
                    raise BundleError("file_missing", "public_key.pem", "no public key in the bundle") from None
            try:
                keys = load_public_keys(pem)
            except ValueError as exc:
                raise BundleError("public_key", "public_key.pem", str(exc)) from None
            if trusted:
                keys = {f: k for f, k in keys.items() if f in trusted}
                if not keys:
                    raise BundleError("seal_unknown_key", "public_key.pem" if public_key_pem is None else "--public-key",
                                      f"no public key there has the fingerprint(s) you trust "
                                      f"({', '.join(f[:16] for f in sorted(trusted))}…)")
            result.selection_key = _check_selection_signature(manifest, keys)
            result.selection_signed = result.selection_key is not None
            if not result.selection_signed:
                result.warnings.append(UNSIGNED_SELECTION)
            seals = _json(zf, "seals.json")
            if not isinstance(seals, list):
                raise BundleError("file_corrupt", "seals.json", "not a list of seals")
            _check_seals(seals, keys)
            result.keys = signer_runs(seals)
            result.seals_checked = len(seals)
            if seals:
                result.head_seq, result.head_hash = seals[-1]["seq"], seals[-1]["seal_hash"]
            leaves = _json(zf, "leaves.json")
            names = sorted((n for n in zf.namelist() if n.startswith("records/") and n.endswith(".json")),
                           key=lambda n: (len(n), n))
            held: Counter = Counter()
            for name in names:
                held[_check_record(zf, name, leaves, seals, result.selection, result)] += 1
                result.records_checked += 1
            _check_whole_seals(result.selection, seals, held)
            result.whole_seals = [s["seq"] for s in seals if held[s["seq"]] == s["count"]]
            result.partial_seals = [{"seq": s["seq"], "held": held[s["seq"]], "count": s["count"]}
                                    for s in seals if 0 < held[s["seq"]] < s["count"]]
            extra = set(leaves) - {n.removeprefix("records/").removesuffix(".json") for n in names}
            if extra:
                raise BundleError("record_missing", "leaves.json", f"records listed without their file: "
                                                                   f"#{', #'.join(sorted(extra, key=int))}")
            _check_manifest(zf, manifest, len(names), seals)
    except BundleError as exc:
        result.ok, result.failure = False, str(exc)
        result.failure_kind, result.failure_where = exc.kind, exc.where
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:
        result.ok, result.failure = False, f"file_corrupt (bundle): {exc}"
        result.failure_kind, result.failure_where = "file_corrupt", str(path)
    return result


def _seal_list(seqs: list[int]) -> str:
    """``seal 3`` or ``seals 1..4, 7``."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    text = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs)
    return f"seal {text}" if len(seqs) == 1 else f"seals {text}"


def _describe(selection: dict[str, Any]) -> str:
    """``seals 1..2`` / ``key HS-1, from …``: a manifest's selection in words."""
    parts = []
    if selection.get("seals"):
        parts.append(f"seals {selection['seals'][0]}..{selection['seals'][1]}")
    if selection.get("key"):
        parts.append(f"key {selection['key']}")
    if selection.get("from"):
        parts.append(f"from {selection['from']}")
    if selection.get("to"):
        parts.append(f"to {selection['to']}")
    return ", ".join(parts) or "everything"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify.py", description="Verify a lienthong audit evidence bundle "
                                                                    "offline.")
    parser.add_argument("bundle", help="the bundle (.zip)")
    parser.add_argument("--public-key", help="the seal public key PEM you trust (default: the bundle's own)")
    parser.add_argument("--fingerprint", action="append", metavar="HEX",
                        help="the fingerprint of a seal key you trust (as `lienthong audit keygen` and `lienthong "
                             "audit verify` print it); repeat for rotated keys; seals signed by any other key fail")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        fingerprints = [normalise_fingerprint(f) for f in args.fingerprint or ()]
    except ValueError as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return 2
    pem = None
    if args.public_key:
        try:
            with open(args.public_key, "rb") as fh:
                pem = fh.read()
        except OSError as exc:
            print(f"verify: cannot read {args.public_key}: {exc}", file=sys.stderr)
            return 2
    result = verify_bundle(args.bundle, pem, fingerprints)
    if args.json:
        print(json.dumps(result.__dict__, ensure_ascii=False, indent=2))
    elif result.ok:
        redactions = (f", {result.records_with_redactions} verified with redactions (personal fields erased)"
                      if result.records_with_redactions else "")
        print(f"bundle verified: {result.records_checked} records, {result.seals_checked} seals "
              f"(head {result.head_seq}:{result.head_hash}){redactions}")
        for run in result.keys:
            print(f"seals {run['first_seq']}..{run['last_seq']} signed by key {run['fingerprint']}")
        if result.selection_signed:
            print(f"selection ({_describe(result.selection)}) signed by key {result.selection_key}: the bundle holds "
                  f"exactly the records it was written with")
        if result.whole_seals:
            print(f"whole: {_seal_list(result.whole_seals)} (every record of them is in the bundle)")
        for part in result.partial_seals:
            print(f"in part: seal {part['seq']}: {part['held']} of its {part['count']} records (a selection by key "
                  f"or time; an archive bundle holds its seals whole)")
        for warning in result.warnings:
            print(f"note: {warning}", file=sys.stderr)
        if not result.anchored:
            print(f"note: checked with the bundle's own public key, which whoever rewrote the bundle could have "
                  f"replaced: compare {', '.join(r['fingerprint'] for r in result.keys) or 'its fingerprint'} with "
                  f"the seal key fingerprint the operator published (`lienthong audit keygen` printed it), or pass "
                  f"--fingerprint HEX or --public-key PEM", file=sys.stderr)
    else:
        print(f"BUNDLE NOT VERIFIED: {result.failure}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
