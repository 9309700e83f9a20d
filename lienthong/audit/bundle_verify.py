#!/usr/bin/env python3
"""Check a lienthong audit evidence bundle offline: ``python verify.py BUNDLE.zip [--public-key PEM]``.

Standalone on purpose: the standard library and ``cryptography`` only (no database, no project
code, no configuration), so an auditor can run the copy inside the bundle (``verify.py``).

Bundle format ``lienthong-audit-bundle/1`` (a zip):

* ``manifest.json``: format, created_at, selection, counts and the SHA-256 of every other file;
* ``records/<id>.json``: one exchange-log record, every stored column (times as ISO 8601 UTC with
  microseconds, the zlib-compressed bodies as base64 of the stored bytes) and ``record_keys``;
* ``leaves.json``: ``{id: leaf hash}``;
* ``proofs/<id>.json``: the RFC 6962 inclusion proof of the record in its seal (``seal_seq``,
  ``leaf_index``, ``tree_size``, ``audit_path``);
* ``seals.json``: every seal from seal 1 to the one covering the last record, so the chain checks;
* ``public_key.pem``: the seal public key(s); ``verify.py``: this program.

What is checked, stopping at the first failure: every seal (seq continuity, seal hash, Ed25519
signature, link to the previous seal, id ranges); every record (its leaf hash recomputed exactly as
the sealer computes it — format ``lienthong-seal/1`` — its bodies against their recorded SHA-256
and size, its inclusion proof against its seal's signed root); that records match the selection;
and the manifest's hashes and counts. Exit 0 verified, 1 not verified, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["BundleResult", "inclusion_ok", "leaf_hash", "main", "verify_bundle"]

BUNDLE_FORMAT = "lienthong-audit-bundle/1"
SEAL_FORMAT = "lienthong-seal/1"
GENESIS = "0" * 64
LEAF_VERSION = 1
BLOB_FIELDS = ("request_body", "response_body")
# every column of exchange_log in table order (lienthong.audit.records.LEAF_FIELDS)
LEAF_FIELDS = (
    "id", "started_at", "flow", "run_id", "task_id", "peer", "operation", "direction", "method", "url",
    "attempt", "outcome", "peer_code", "http_status", "duration_ms", "record_count", "request_headers",
    "request_body", "request_sha256", "request_size", "response_headers", "response_body", "response_sha256",
    "response_size", "error",
)
SEAL_FIELDS = ("seq", "first_id", "last_id", "count", "root", "prev_hash", "key_fingerprint", "sealed_at")


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
    failure: str | None = None
    failure_kind: str | None = None
    failure_where: str | None = None


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def leaf_hash(record: dict[str, Any]) -> str:
    """The leaf hash (hex) of a bundle record: as the sealer computes it from the database row."""
    leaf: dict[str, Any] = {}
    for name in LEAF_FIELDS:
        value = record[name]
        if name in BLOB_FIELDS and value is not None:
            blob = base64.b64decode(value, validate=True)
            value = {"sha256": hashlib.sha256(blob).hexdigest(), "len": len(blob)}
        leaf[name] = value
    leaf["v"] = LEAF_VERSION
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
        where = f"seals.json, seal {seal.get('seq', '?')}"
        missing = [f for f in (*SEAL_FIELDS, "seal_hash", "signature") if f not in seal]
        if missing:
            raise BundleError("seal_altered", where, f"fields missing: {', '.join(missing)}")
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


def _selected(record: dict[str, Any], selection: dict[str, Any]) -> str | None:
    """Why ``record`` falls outside the bundle's declared selection, or None."""
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


def _check_record(zf: zipfile.ZipFile, name: str, leaves: dict[str, str], seals: list[dict[str, Any]],
                  selection: dict[str, Any]) -> None:
    record = _json(zf, name)
    try:
        record_id = int(record["id"])
        computed = leaf_hash(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError("record_altered", name, f"the record is not complete or well formed ({exc!r})") from None
    where = f"record #{record_id}"
    unexpected = set(record) - {*LEAF_FIELDS, "record_keys"}
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
    for side in ("request", "response"):
        try:
            body = zlib.decompress(base64.b64decode(record[f"{side}_body"]))
        except (zlib.error, ValueError):
            raise BundleError("body_corrupt", f"{where} ({name})", f"the {side} body does not decompress") from None
        if hashlib.sha256(body).hexdigest() != record[f"{side}_sha256"] or len(body) != record[f"{side}_size"]:
            raise BundleError("body_corrupt", f"{where} ({name})", f"the {side} body does not match its recorded "
                                                                   f"sha256 and size (altered before sealing)")
    outside = _selected(record, selection)
    if outside:
        raise BundleError("selection", f"{where} ({name})", f"record #{record_id} is in the bundle but {outside}")


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


def verify_bundle(path: str, public_key_pem: bytes | None = None) -> BundleResult:
    """Verify the bundle at ``path`` with the public key(s) in ``public_key_pem`` (default: the
    bundle's own ``public_key.pem``, which only proves consistency — pass the key you hold)."""
    result = BundleResult()
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():  # every member must decompress and pass its CRC check
                try:
                    zf.read(name)
                except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
                    raise BundleError("file_corrupt", name, f"the zip member is damaged ({exc})") from None
            manifest = _json(zf, "manifest.json")
            if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
                raise BundleError("manifest", "manifest.json", f"not a {BUNDLE_FORMAT} manifest")
            result.selection = manifest.get("selection") or {}
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
            seals = _json(zf, "seals.json")
            if not isinstance(seals, list):
                raise BundleError("file_corrupt", "seals.json", "not a list of seals")
            _check_seals(seals, keys)
            result.seals_checked = len(seals)
            if seals:
                result.head_seq, result.head_hash = seals[-1]["seq"], seals[-1]["seal_hash"]
            leaves = _json(zf, "leaves.json")
            names = sorted((n for n in zf.namelist() if n.startswith("records/") and n.endswith(".json")),
                           key=lambda n: (len(n), n))
            for name in names:
                _check_record(zf, name, leaves, seals, result.selection)
                result.records_checked += 1
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify.py", description="Verify a lienthong audit evidence bundle "
                                                                    "offline.")
    parser.add_argument("bundle", help="the bundle (.zip)")
    parser.add_argument("--public-key", help="the seal public key PEM you trust (default: the bundle's own)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    pem = None
    if args.public_key:
        try:
            with open(args.public_key, "rb") as fh:
                pem = fh.read()
        except OSError as exc:
            print(f"verify: cannot read {args.public_key}: {exc}", file=sys.stderr)
            return 2
    result = verify_bundle(args.bundle, pem)
    if args.json:
        print(json.dumps(result.__dict__, ensure_ascii=False, indent=2))
    elif result.ok:
        print(f"bundle verified: {result.records_checked} records, {result.seals_checked} seals "
              f"(head {result.head_seq}:{result.head_hash})")
        if not args.public_key:
            print("note: checked with the bundle's own public key; pass --public-key with the key you trust",
                  file=sys.stderr)
    else:
        print(f"BUNDLE NOT VERIFIED: {result.failure}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
