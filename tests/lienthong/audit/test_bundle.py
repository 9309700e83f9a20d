"""`audit export` → an evidence bundle that `verify.py` checks offline, naming the first tampering."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
import zipfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lienthong.audit import bundle_verify, seal_exchanges, verify_exchanges
from lienthong.audit.bundle import bundle_record, export_bundle, inclusion_proof
from lienthong.audit.personal import PersonalField, commitment, wire_digest
from lienthong.audit.records import LEAF_FIELDS_V1, leaf_hash, merkle_root
from lienthong.audit.search import search_exchanges
from lienthong.cli import main

from .conftest import T0, cli_env, fill


def _sealed(store, keypair, count=13, batch_size=4):
    fill(store, count)
    seal_exchanges(store, keypair[0], batch_size=batch_size)


def _rewrite(src: Path, dst: Path, name: str, edit) -> None:
    """Copy the zip with one member's bytes changed by ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, edit(data) if info.filename == name else data)


def _flip_hex(data: bytes, marker: bytes) -> bytes:
    """Flip one hex digit just after ``marker`` (the JSON stays valid)."""
    at = data.index(marker) + len(marker)
    while chr(data[at]) not in "0123456789abcdef":
        at += 1
    out = bytearray(data)
    out[at] = ord("1") if data[at] != ord("1") else ord("2")
    return bytes(out)


def test_leaf_hash_of_the_standalone_verifier_agrees_with_the_sealer():
    rng = random.Random(7)
    for n in range(300):
        body = zlib.compress(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60))))
        row = {
            "id": n + 1, "started_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.random() * 1e7),
            "flow": rng.choice([None, "dossier_status", "tiến độ"]), "run_id": rng.choice([None, f"run-{n}"]),
            "task_id": None, "peer": rng.choice(["national_portal", "onestop"]), "operation": "DongBoHoSoMC",
            "direction": "outbound", "method": "POST", "url": f"http://x/{n}?q=ü&z={rng.random()}",
            "attempt": rng.randrange(1, 4), "outcome": rng.choice(["ok", "peer_error"]),
            "peer_code": rng.choice([None, "0", "-1"]), "http_status": rng.choice([None, 200, 500]),
            "duration_ms": rng.choice([0.0, 12.5, rng.random() * 1000, 1e-7, 123456789.123]),
            "record_count": rng.randrange(0, 3),
            "request_headers": {"Content-Type": "application/json", "X-Ý": "ả\"\\\n", "n": [1, 2.5, None, True]},
            "request_body": body, "request_sha256": "ab" * 32, "request_size": rng.randrange(0, 99),
            "response_headers": {}, "response_body": zlib.compress(b""), "response_sha256": "cd" * 32,
            "response_size": 0, "error": rng.choice([None, "timeout: đọc quá hạn"]),
        }
        keys = [f"000.00.01.H49-2611{rng.randrange(10, 99)}-{k:04d}" for k in range(rng.randrange(0, 4))]
        version = rng.choice([None, 1, 2, 2, 3, 3])  # None/1: rows written before leaf format 2
        if version is not None or rng.random() < 0.5:
            row["leaf_version"] = version
            row["request_blob_sha256"] = rng.choice([None, f"{n:064x}"]) if version in (2, 3) else None
            row["response_blob_sha256"] = rng.choice([None, "ef" * 32]) if version in (2, 3) else None
        personal = []
        if version in (2, 3) or rng.random() < 0.1:
            for k in range(rng.randrange(0, 4)):
                salt, value = rng.randbytes(16), f'"0{rng.randrange(10**9):09d}"'.encode()
                path = rng.choice(["/ChuHoSo", f"/a/{k}/SoDienThoai", "/x~1y", "xml:SoCCCD[1]"]) + str(k)
                personal.append(PersonalField(rng.choice(["request", "response"]), path,
                                              "xml" if path.startswith("xml") else "json",
                                              commitment(salt, path, value), *rng.choice([(salt, value), (None, None)])))
        bundled = json.loads(json.dumps(bundle_record(row, keys, personal), ensure_ascii=False, indent=1))
        sealed = leaf_hash(row, keys, [(f.side, f.path, f.kind, f.commitment) for f in personal])
        assert bundle_verify.leaf_hash(bundled) == sealed
        for f in personal:
            if f.salt is not None:
                assert bundle_verify.commitment(f.salt, f.path, f.value) == f.commitment
        for side in ("request", "response"):  # the recorded digest, by the row's leaf format
            fields = [f for f in personal if f.side == side and f.salt is not None]
            wire = rng.randbytes(rng.randrange(0, 40))
            assert bundle_verify.wire_digest(wire, [(f.path, f.salt) for f in fields], version) \
                == wire_digest(wire, fields, version)
        if not version or version == 1:
            old_row = {name: row[name] for name in LEAF_FIELDS_V1}
            if not personal:  # rows of earlier versions keep their leaf hash exactly
                assert sealed == _leaf_format_1(old_row, keys)
            else:  # personal fields slipped under a format-1 row change its leaf
                assert sealed != _leaf_format_1(old_row, keys)


def _leaf_format_1(row, record_keys):
    """The leaf hash as lienthong 0.x computed it (before leaf format 2), verbatim."""
    import hashlib

    from lienthong.store import canonical_json

    def value(name, v):
        if name in ("request_body", "response_body"):
            blob = bytes(v) if v is not None else None
            return None if blob is None else {"sha256": hashlib.sha256(blob).hexdigest(), "len": len(blob)}
        if isinstance(v, datetime):
            aware = v if v.tzinfo else v.replace(tzinfo=UTC)
            return aware.astimezone(UTC).isoformat(timespec="microseconds")
        return v

    record = {name: value(name, row[name]) for name in LEAF_FIELDS_V1}
    record["v"] = 1
    record["record_keys"] = sorted(record_keys)
    return hashlib.sha256(b"\x00" + canonical_json(record)).hexdigest()


def test_a_log_sealed_before_leaf_format_2_still_verifies_and_exports(store, keypair, tmp_path):
    from sqlalchemy import text

    from lienthong.audit import verify_exchanges

    fill(store, 5)
    with store.begin() as conn:  # what earlier versions wrote: no leaf_version, no personal fields
        conn.execute(text("UPDATE exchange_log SET leaf_version = NULL WHERE id <= 3"))
    seal_exchanges(store, keypair[0], batch_size=2)
    assert verify_exchanges(store, keypair[1]).ok
    out = tmp_path / "old.zip"
    export_bundle(store, out, [keypair[1]], since=T0)
    assert bundle_verify.verify_bundle(str(out)).ok
    with store.begin() as conn:  # a blob reference slipped under a format-1 row is not sealed data
        conn.execute(text("UPDATE exchange_log SET response_blob_sha256 = :s WHERE id = 2"), {"s": "ab" * 32})
    result = verify_exchanges(store, keypair[1])
    assert not result.ok and (result.failure.kind, result.failure.record_id) == ("record_altered", 2)


def test_inclusion_proofs_verify_for_every_leaf_and_tree_size():
    for size in range(1, 34):
        leaves = [f"{i:064x}" for i in range(size)]
        root = merkle_root(leaves)
        for index in range(size):
            path = inclusion_proof(leaves, index)
            assert bundle_verify.inclusion_ok(leaves[index], index, size, path, root)
            assert not bundle_verify.inclusion_ok(leaves[(index + 1) % size], index, size, path, root) or size == 1
            if path:
                assert not bundle_verify.inclusion_ok(leaves[index], index, size, path[:-1], root)


def test_the_verifier_imports_only_the_standard_library_and_cryptography():
    source = Path(bundle_verify.__file__).read_text()
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules - {"__future__", "cryptography"} <= set(sys.stdlib_module_names)


def test_export_then_verify_offline_in_a_clean_subprocess(store, keypair, tmp_path):
    _sealed(store, keypair)
    fill(store, 2, start=50)  # not sealed: left out
    out = tmp_path / "bundle.zip"
    result = export_bundle(store, out, [keypair[1]], since=T0)
    assert (result.records, result.seals, result.unsealed_left_out) == (13, 4, 2)
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        verifier = zf.read("verify.py")
    assert {"manifest.json", "leaves.json", "seals.json", "public_key.pem", "verify.py"} <= names
    assert {f"records/{i}.json" for i in range(1, 14)} <= names and {f"proofs/{i}.json" for i in range(1, 14)} <= names
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["counts"] == {"records": 13, "seals": 4, "unsealed_left_out": 2, "blobs": 0,
                                  "records_with_redactions": 0}

    clean = tmp_path / "auditor"
    clean.mkdir()
    (clean / "bundle.zip").write_bytes(out.read_bytes())
    (clean / "verify.py").write_bytes(verifier)
    proc = subprocess.run([sys.executable, "-I", "verify.py", "bundle.zip", "--json"], cwd=clean,
                          env={"PATH": os.environ.get("PATH", "")}, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["records_checked"] == 13 and report["seals_checked"] == 4
    assert sorted(os.listdir(clean)) == ["bundle.zip", "verify.py"]

    (clean / "other.zip").write_bytes(b"PK\x03\x04 not a zip")
    proc = subprocess.run([sys.executable, "-I", "verify.py", "other.zip"], cwd=clean,
                          env={"PATH": os.environ.get("PATH", "")}, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "NOT VERIFIED" in proc.stdout


@pytest.mark.parametrize("name, edit, kind, where", [
    ("records/6.json", lambda d: d.replace(b"18082", b"18083", 1), "record_altered", "record #6"),
    ("records/6.json", lambda d: d.replace(b'"HS-0006"', b'"HS-0066"', 1), "record_altered", "record #6"),
    ("proofs/6.json", lambda d: _flip_hex(d, b'"audit_path": [\n  "'), "proof_altered", "proofs/6.json"),
    ("seals.json", lambda d: _flip_hex(d, b'"root": "'), "seal_altered", "seal 1"),
    ("seals.json", lambda d: _flip_hex(d, b'"signature": "'), "seal_signature", "seal 1"),
    ("records/6.json", lambda d: d.replace(b'{\n', b'{\n "note": "added",\n', 1), "record_altered", "record #6"),
    ("leaves.json", lambda d: _flip_hex(d, b'"6": "'), "leaf_altered", "leaves.json"),
    ("manifest.json", lambda d: _flip_hex(d, b'"seal_hash": "'), "manifest", "head"),
    ("manifest.json", lambda d: _flip_hex(d, b'"records/6.json": "'), "manifest", "records/6.json"),
    ("verify.py", lambda d: d + b"\n# edited\n", "manifest", "verify.py"),
])
def test_a_flipped_byte_is_named(store, keypair, tmp_path, name, edit, kind, where):
    _sealed(store, keypair)
    out = tmp_path / "bundle.zip"
    export_bundle(store, out, [keypair[1]], since=T0)
    bad = tmp_path / "bad.zip"
    _rewrite(out, bad, name, edit)
    result = bundle_verify.verify_bundle(str(bad))
    assert not result.ok and result.failure_kind == kind, result.failure
    assert where in result.failure, result.failure


def test_a_corrupted_zip_byte_and_a_foreign_key_are_named(store, keypair, tmp_path):
    _sealed(store, keypair)
    out = tmp_path / "bundle.zip"
    export_bundle(store, out, [keypair[1]], since=T0)
    data = bytearray(out.read_bytes())
    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("records/6.json")
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0x40  # inside the compressed member
    (tmp_path / "crc.zip").write_bytes(bytes(data))
    result = bundle_verify.verify_bundle(str(tmp_path / "crc.zip"))
    assert not result.ok and "records/6.json" in result.failure

    from lienthong.audit.keys import generate_keypair
    _, other_pub, _ = generate_keypair(tmp_path / "other.key")
    result = bundle_verify.verify_bundle(str(out), other_pub.read_bytes())
    assert not result.ok and result.failure_kind == "seal_unknown_key" and "seal 1" in result.failure


def test_a_bundle_for_one_dossier_holds_only_its_records_and_verifies(store, keypair, tmp_path):
    _sealed(store, keypair)
    expected = [r["id"] for r in search_exchanges(store, key="HS-0007")]
    assert expected == [6, 7]
    out = tmp_path / "hs7.zip"
    result = export_bundle(store, out, [keypair[1]], key="HS-0007")
    assert result.record_ids == [6, 7] and result.seals == 2  # the chain up to seal 2 (records 5..8)
    with zipfile.ZipFile(out) as zf:
        records = sorted(n for n in zf.namelist() if n.startswith("records/"))
        assert records == ["records/6.json", "records/7.json"]
        assert all("HS-0007" in json.loads(zf.read(n))["record_keys"] for n in records)
        assert json.loads(zf.read("manifest.json"))["selection"]["key"] == "HS-0007"
    result = bundle_verify.verify_bundle(str(out), keypair[3].read_bytes())
    assert result.ok and result.records_checked == 2 and result.seals_checked == 2, result.failure

    # a record of another dossier slipped in (with its genuine proof) is outside the selection
    full = tmp_path / "full.zip"
    export_bundle(store, full, [keypair[1]], since=T0)
    with zipfile.ZipFile(full) as zf:
        foreign = {n: zf.read(n) for n in ("records/5.json", "proofs/5.json")}
        leaf5 = json.loads(zf.read("leaves.json"))["5"]
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(out) as zin, zipfile.ZipFile(mixed, "w") as zout:
        for n in zin.namelist():
            data = zin.read(n)
            if n == "leaves.json":
                data = json.dumps({**json.loads(data), "5": leaf5}).encode()
            zout.writestr(n, data)
        for n, data in foreign.items():
            zout.writestr(n, data)
    result = bundle_verify.verify_bundle(str(mixed))
    assert not result.ok and result.failure_kind == "selection" and "record #5" in result.failure


def test_cli_export_and_verify_bundle(store, keypair, tmp_path, monkeypatch, capsys):
    cli_env(store, tmp_path, monkeypatch)
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    _sealed(store, keypair, count=6, batch_size=10)
    fill(store, 1, start=40)
    out = tmp_path / "e.zip"
    assert main(["audit", "export", str(out)]) == 2  # a selection is required
    assert main(["audit", "export", str(out), "--from", "2026-03-01", "--to", "2026-03-02"]) == 0
    captured = capsys.readouterr()
    assert "exported 6 records and 1 seals" in captured.out and "1 matching records are not sealed" in captured.err
    assert main(["audit", "verify-bundle", str(out), "--public-key", str(keypair[3])]) == 0
    assert "bundle verified: 6 records, 1 seals" in capsys.readouterr().out
    bad = tmp_path / "bad.zip"
    _rewrite(out, bad, "records/2.json", lambda d: d.replace(b"18082", b"18083", 1))
    assert main(["audit", "verify-bundle", str(bad)]) == 1
    assert "record #2" in capsys.readouterr().out


def test_cli_export_of_a_selection_with_no_sealed_exchange_writes_no_bundle(store, keypair, tmp_path, monkeypatch,
                                                                           capsys):
    """`audit export --key` of a code with no sealed exchange said 'exported 0 records and 0 seals'
    (exit 0) and left a bundle that verifies, as if it were the evidence asked for; the auditor
    page answers 404 'no sealed exchange matches'."""
    cli_env(store, tmp_path, monkeypatch)
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    _sealed(store, keypair, count=2, batch_size=10)
    fill(store, 1, start=40)  # HS-0040 and HS-0041, not sealed
    out = tmp_path / "e.zip"
    assert main(["audit", "export", str(out), "--key", "HS-9999"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "lienthong: no sealed exchange matches; no bundle written\n"
    assert not out.exists()
    assert main(["audit", "export", str(out), "--key", "HS-0040"]) == 2
    assert capsys.readouterr().err == ("lienthong: no sealed exchange matches (1 match but are not sealed yet: run "
                                       "`lienthong audit seal` first); no bundle written\n")
    assert not out.exists()
    assert main(["audit", "export", str(out), "--key", "HS-0002"]) == 0
    assert "exported 2 records and 1 seals" in capsys.readouterr().out and out.exists()


def test_a_value_erased_without_a_redaction_record_is_not_exported_as_redacted(store, keypair, tmp_path):
    """Salt and value set to NULL in the database, with no `audit redact` behind it, is what
    `audit verify --deep` calls altered; the export (CLI and the auditor page's /bundle) took it for
    a redaction and wrote a bundle that verifies, marking the record redacted."""
    from sqlalchemy import text

    from lienthong.audit.bundle import ExportError
    from lienthong.exchange_log import BusRecorder

    from .test_redaction import DOSSIER, _exchange

    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    recorder.record(_exchange(1))
    recorder.record(_exchange(2))
    seal_exchanges(store, keypair[0])
    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_personal_field SET salt = NULL, value = NULL "
                          "WHERE exchange_id = 2 AND path = '/SoGiayToChuHoSo'"))
    out = tmp_path / "out.zip"
    with pytest.raises(ExportError, match=r"record #2: 1 stored personal value\(s\) do not match their sealed "
                                          r"commitment \(request /SoGiayToChuHoSo\)"):
        export_bundle(store, out, [keypair[1]], key=DOSSIER)
    assert not out.exists()
    assert not verify_exchanges(store, keypair[1], deep=True).ok  # as --deep judges it


def test_a_bundle_resealed_with_a_substituted_key_is_told_apart_by_its_fingerprint(store, keypair, tmp_path, capsys):
    """Whoever rewrites a bundle can re-sign every seal with a key of their own and put its public
    key in public_key.pem: the bundle is then consistent, so `python verify.py B.zip` alone cannot
    refuse it. It must say which key signed the seals, so the auditor can compare that fingerprint
    with the published one, and take that fingerprint (--fingerprint) as the anchor."""
    from lienthong.audit.keys import generate_keypair, key_fingerprint, load_private_key, load_public_key
    from lienthong.store import Store

    genuine = key_fingerprint(keypair[1])
    _sealed(store, keypair, count=6, batch_size=3)
    good = tmp_path / "good.zip"
    export_bundle(store, good, [keypair[1]], since=T0)
    forged_store = Store(f"sqlite:///{tmp_path / 'forged.db'}")
    forged_store.create_schema()
    fill(forged_store, 6)
    private_path, public_path, forged = generate_keypair(tmp_path / "attacker.key")
    seal_exchanges(forged_store, load_private_key(private_path), batch_size=3)
    bad = tmp_path / "bad.zip"
    export_bundle(forged_store, bad, [load_public_key(public_path)], since=T0)
    forged_store.dispose()

    result = bundle_verify.verify_bundle(str(bad))
    assert result.ok and not result.anchored
    assert result.keys == [{"fingerprint": forged, "first_seq": 1, "last_seq": 2, "seals": 2}]
    assert bundle_verify.main([str(bad)]) == 0
    captured = capsys.readouterr()
    assert f"seals 1..2 signed by key {forged}" in captured.out
    assert forged in captured.err and "compare" in captured.err

    # the published fingerprint is an anchor: the forged bundle is refused, the genuine one passes
    assert bundle_verify.main([str(bad), "--fingerprint", genuine]) == 1
    assert "seal_unknown_key" in capsys.readouterr().out
    assert bundle_verify.main([str(good), "--fingerprint", genuine.upper()]) == 0
    captured = capsys.readouterr()
    assert f"seals 1..2 signed by key {genuine}" in captured.out and "compare" not in captured.err
    check = bundle_verify.verify_bundle(str(good), fingerprints=[genuine])
    assert check.ok and check.anchored
    assert bundle_verify.main([str(good), "--fingerprint", "not-hex"]) == 2


def test_cli_export_after_a_key_rotation_bundles_every_signing_key_or_refuses_naming_the_missing_one(
        store, keypair, tmp_path, monkeypatch, capsys):
    """After a rotation `audit export` put only the current public key in the bundle: its own check
    then failed on the older seals (seal_unknown_key), it exited 1 and left that bundle at OUT."""
    from lienthong.audit.keys import generate_keypair, key_fingerprint, load_private_key

    cli_env(store, tmp_path, monkeypatch)
    old_fp = key_fingerprint(keypair[1])
    _sealed(store, keypair, count=4, batch_size=4)  # seal 1: the old key
    new_private, new_public, new_fp = generate_keypair(tmp_path / "keys" / "seal2.key")
    fill(store, 4, start=5)
    seal_exchanges(store, load_private_key(new_private), batch_size=2)  # seals 2..3: the new key
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(new_private))
    out = tmp_path / "e.zip"
    assert main(["audit", "export", str(out), "--from", "2026-03-01"]) == 2
    captured = capsys.readouterr()
    assert f"seal 1 was signed by key {old_fp}, whose public key was not given" in captured.err, captured.err
    assert "--public-key" in captured.err and "no bundle written" in captured.err
    assert not any(p.startswith("e.zip") for p in os.listdir(tmp_path))  # nor a part of it

    assert main(["audit", "export", str(out), "--from", "2026-03-01", "--public-key", str(keypair[3]),
                 "--public-key", str(new_public)]) == 0
    assert "exported 8 records and 3 seals" in capsys.readouterr().out
    with zipfile.ZipFile(out) as zf:
        assert set(bundle_verify.load_public_keys(zf.read("public_key.pem"))) == {old_fp, new_fp}
    check = bundle_verify.verify_bundle(str(out), fingerprints=[old_fp, new_fp])
    assert check.ok and check.records_checked == 8, check.failure
    assert [(k["fingerprint"], k["first_seq"], k["last_seq"]) for k in check.keys] == [(old_fp, 1, 1), (new_fp, 2, 3)]

    # only the keys that signed a seal of the bundle (or its selection: the current key, from
    # $LIENTHONG_SEAL_KEY): the old seal alone needs only the old key
    only_old = tmp_path / "old.zip"
    monkeypatch.delenv("LIENTHONG_SEAL_KEY")
    assert main(["audit", "export", str(only_old), "--key", "HS-0002", "--public-key", str(keypair[3]),
                 "--public-key", str(new_public)]) == 0
    with zipfile.ZipFile(only_old) as zf:
        assert set(bundle_verify.load_public_keys(zf.read("public_key.pem"))) == {old_fp}


def test_a_bundle_failing_its_own_check_is_never_left_at_the_output_path(store, keypair, tmp_path, monkeypatch,
                                                                        capsys):
    from lienthong.audit import bundle as bundle_module
    from lienthong.audit.bundle import ExportError

    cli_env(store, tmp_path, monkeypatch)
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    _sealed(store, keypair, count=4, batch_size=4)
    out = tmp_path / "out" / "e.zip"
    out.parent.mkdir()
    out.write_bytes(b"an earlier bundle")

    def failing(path, *args, **kwargs):
        return bundle_verify.BundleResult(ok=False, failure="record_altered (record #2): injected")

    monkeypatch.setattr(bundle_module, "verify_bundle", failing)
    with pytest.raises(ExportError, match=r"does not verify: record_altered \(record #2\): injected"):
        export_bundle(store, out, [keypair[1]], since=T0)
    assert out.read_bytes() == b"an earlier bundle" and os.listdir(out.parent) == ["e.zip"]
    assert main(["audit", "export", str(out), "--from", "2026-03-01"]) == 1
    assert "injected" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier bundle" and os.listdir(out.parent) == ["e.zip"]
