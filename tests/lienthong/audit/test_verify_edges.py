"""``audit verify`` and ``audit redact`` at the log's edges (each case found in review, failing
before its fix): a record below every seal's range, values erased without ``audit redact``, and
a redaction asked for after part of the log was archived."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import text

from lienthong.audit import seal_exchanges, verify_exchanges
from lienthong.audit.archive import archive_exchanges
from lienthong.audit.redact import redact_exchanges
from lienthong.audit.verify import PERSONAL_FIELD_ALTERED, RECORD_INSERTED
from lienthong.exchange_log import BusRecorder

from .conftest import T0, cli_env, fill
from .test_redaction import DOSSIER, _exchange

COLUMNS = ("started_at, flow, run_id, task_id, peer, operation, direction, method, url, attempt, outcome, "
           "peer_code, http_status, duration_ms, record_count, request_headers, request_body, request_sha256, "
           "request_size, response_headers, response_body, response_sha256, response_size, error, leaf_version, "
           "request_blob_sha256, response_blob_sha256")


def sql(store, statement: str, **params) -> None:
    with store.begin() as conn:
        conn.execute(text(statement), params)


def test_a_record_with_an_id_below_every_seal_is_reported(store, keypair):
    private, public, *_ = keypair
    fill(store, 4)
    seal_exchanges(store, private)
    sql(store, f"INSERT INTO exchange_log (id, {COLUMNS}) SELECT 0, {COLUMNS} FROM exchange_log WHERE id = 2")
    result = verify_exchanges(store, public)
    assert not result.ok and (result.failure.kind, result.failure.record_id) == (RECORD_INSERTED, 0)
    assert "outside every seal's range" in result.failure.explanation


def test_deep_verify_reports_values_erased_without_audit_redact(store, keypair):
    private, public, *_ = keypair
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(1))
    seal_exchanges(store, private)
    sql(store, "UPDATE exchange_personal_field SET salt = NULL, value = NULL WHERE exchange_id = 1")
    deep = verify_exchanges(store, public, deep=True)
    assert not deep.ok and (deep.failure.kind, deep.failure.record_id) == (PERSONAL_FIELD_ALTERED, 1)
    assert "erased without a redaction record" in deep.failure.explanation


def test_deep_verify_still_takes_a_lawful_redaction(store, keypair):
    private, public, *_ = keypair
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(1))
    seal_exchanges(store, private)
    assert redact_exchanges(store, key=DOSSIER, reason="erasure request", actor="dpo").fields > 0
    deep = verify_exchanges(store, public, deep=True)
    assert deep.ok and deep.records_with_redactions == 1


def test_redact_says_which_archived_bundles_it_cannot_change(store, keypair, tmp_path, monkeypatch, capsys):
    from lienthong.cli import main

    private, public, *_ = keypair
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(1))
    seal_exchanges(store, private)
    fill(store, 1, start=7)
    result = archive_exchanges(store, [public], key=private, older_than_days=1, out_dir=tmp_path / "a", now=T0 + timedelta(days=9))
    bundle = result.archives[0]["bundle_path"]
    cli_env(store, tmp_path, monkeypatch)
    assert main(["audit", "redact", "--key", DOSSIER, "--reason", "erasure request"]) == 0
    out, err = capsys.readouterr()
    assert f"nothing to redact: no exchange in the database carries record {DOSSIER}" in out  # all archived
    assert f"seals 1-1 in {bundle}" in err and "which this command does not change" in err


def test_archiving_everything_on_sqlite_never_gives_an_archived_id_again(store, keypair, tmp_path):
    """SQLite numbers a new row after the highest id in the table: with every record archived,
    the next ones took ids 1, 2... inside archived seal 1, were never sealed, and verify blamed
    seal 1. The batch holding the newest record now waits until a newer one exists."""
    from sqlalchemy import select

    from lienthong.store import exchange_log

    private, public, *_ = keypair
    fill(store, 4)
    seal_exchanges(store, private, batch_size=2)  # seals 1 (ids 1-2) and 2 (ids 3-4)
    later = T0 + timedelta(days=9)
    first = archive_exchanges(store, [public], key=private, older_than_days=1, out_dir=tmp_path / "a", now=later)
    assert [(a["first_seq"], a["last_seq"]) for a in first.archives] == [(1, 1)]  # seal 2 holds the newest
    fill(store, 2, start=50)  # new traffic
    with store.engine.connect() as conn:
        assert conn.execute(select(exchange_log.c.id).order_by(exchange_log.c.id)).scalars().all() == [3, 4, 5, 6]
    assert seal_exchanges(store, private).records == 2
    result = verify_exchanges(store, public)
    assert result.ok and (result.records_checked, result.archived_records, result.unsealed_records) == (4, 2, 0)
    again = archive_exchanges(store, [public], key=private, older_than_days=1, out_dir=tmp_path / "a",
                              now=later + timedelta(days=9))
    assert [(a["first_seq"], a["last_seq"]) for a in again.archives] == [(2, 2)]  # seal 3 holds the newest now
    assert verify_exchanges(store, public).ok


def test_the_offline_verifier_refuses_an_archive_bundle_missing_a_record(store, keypair, tmp_path):
    """After pruning, an archive bundle is the only copy of its seals' records: one taken out (its
    record, proof and leaf, with the manifest made consistent again) verified before."""
    import hashlib
    import zipfile

    from lienthong.audit import bundle_verify

    private, public, _, public_path = keypair
    fill(store, 8)
    seal_exchanges(store, private, batch_size=4)
    fill(store, 1, start=20)  # newer, so that both seals are archived (SQLite keeps the newest record's batch)
    result = archive_exchanges(store, [public], key=private, older_than_days=1, out_dir=tmp_path / "a", now=T0 + timedelta(days=9))
    path = result.archives[0]["bundle_path"]
    assert bundle_verify.verify_bundle(path, public_path.read_bytes()).ok
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
        manifest = json.loads(zin.read("manifest.json"))
        for name in zin.namelist():
            if name in ("records/6.json", "proofs/6.json", "manifest.json"):
                continue
            data = zin.read(name)
            if name == "leaves.json":
                leaves = json.loads(data)
                del leaves["6"]
                data = json.dumps(leaves).encode()
            manifest["files"][name] = hashlib.sha256(data).hexdigest()
            zout.writestr(name, data)
        for name in ("records/6.json", "proofs/6.json"):
            del manifest["files"][name]
        manifest["counts"]["records"] -= 1
        signed = manifest.pop("selection_signature")  # as an older bundle, unsigned (signed: below)
        zout.writestr("manifest.json", json.dumps(manifest))
    assert manifest["selection"]["seals"] == [1, 2]
    check = bundle_verify.verify_bundle(str(bad), public_path.read_bytes())
    assert not check.ok and check.failure_kind == "record_missing"
    assert "seal 2 holds 4 records, the bundle 3 of them" in check.failure
    _rebuild(bad, bad.with_name("signed.zip"), lambda files, m: m.update(selection_signature=signed))
    check = bundle_verify.verify_bundle(str(bad.with_name("signed.zip")), public_path.read_bytes())
    assert not check.ok and check.failure_kind == "selection_signature"


def test_show_hints_the_personal_values_of_a_soap_body_as_it_does_a_json_ones(store):
    from lienthong.audit.search import format_exchange, get_exchange

    from .test_redaction import SOAP

    passport, tax = "C1234567", "8012345678123"
    soap = SOAP.replace(b"</ns:GuiHoSo>", f"<ns:SoGiayTo>{passport}</ns:SoGiayTo>"
                                          f"<ns:MaSoThue>{tax}</ns:MaSoThue></ns:GuiHoSo>".encode())
    ex = _exchange(1, soap=True)
    ex = type(ex)(**{**ex.__dict__, "request_body": soap})
    js = _exchange(2)
    js = type(js)(**{**js.__dict__, "request_body": json.dumps({"SoGiayTo": passport, "MaSoThue": tax}).encode()})
    recorder = BusRecorder(store, "ledger", "run-1", "submit")
    recorder.record(js)
    recorder.record(ex)
    for exchange_id in (1, 2):
        shown = format_exchange(get_exchange(store, exchange_id))  # the default view, no --reveal
        assert passport not in shown and tax not in shown
        assert "C******7" in shown and "8***********3" in shown
    revealed = format_exchange(get_exchange(store, 2), reveal=True)
    assert f"<ns:SoGiayTo>{passport}</ns:SoGiayTo>" in revealed and tax in revealed


def _archived_bundle(store, keypair, tmp_path):
    private, public, _, public_path = keypair
    fill(store, 8)
    seal_exchanges(store, private, batch_size=4)
    fill(store, 1, start=20)  # newer, so that both seals are archived (SQLite keeps the newest record's batch)
    result = archive_exchanges(store, [public], key=private, older_than_days=1, out_dir=tmp_path / "a",
                               now=T0 + timedelta(days=9))
    return result.archives[0]["bundle_path"]


def _rebuild(src, dst, edit, *, unsigned: bool = False) -> None:
    """Copy the bundle with ``edit(files)`` applied to its members, the manifest's hashes made
    consistent again (only its signed selection, when there is one, is an anchor; ``unsigned``
    takes that signature out, as in a bundle written before selections were signed)."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(src) as zin:
        files = {name: zin.read(name) for name in zin.namelist()}
    manifest = json.loads(files.pop("manifest.json"))
    if unsigned:
        manifest.pop("selection_signature", None)
    edit(files, manifest)
    manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    with zipfile.ZipFile(dst, "w") as zout:
        zout.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            zout.writestr(name, data)


def test_the_offline_verifier_refuses_a_record_file_holding_another_record(store, keypair, tmp_path):
    """records/6.json replaced by a copy of record 5 (and proofs/6.json by its proof): each record
    checked on its own verified, and the whole-seal count held, so record 6 was gone unnoticed."""
    from lienthong.audit import bundle_verify

    path = _archived_bundle(store, keypair, tmp_path)
    pem = keypair[3].read_bytes()

    def duplicate(files, manifest):
        files["records/6.json"] = files["records/5.json"]
        files["proofs/6.json"] = files["proofs/5.json"]

    bad = tmp_path / "dup.zip"
    _rebuild(path, bad, duplicate)
    check = bundle_verify.verify_bundle(str(bad), pem)
    assert not check.ok and check.failure_kind == "record_altered", check.failure
    assert "records/6.json" in check.failure and "record #5" in check.failure

    def renamed(files, manifest):  # the same record under a second name: held twice
        files["records/05.json"] = files["records/5.json"]
        manifest["counts"]["records"] += 1

    _rebuild(path, bad, renamed)
    check = bundle_verify.verify_bundle(str(bad), pem)
    assert not check.ok and check.failure_kind == "selection_signature"  # the count is signed
    _rebuild(path, bad, renamed, unsigned=True)  # as an older bundle
    check = bundle_verify.verify_bundle(str(bad), pem)
    assert not check.ok and check.failure_kind == "record_altered" and "records/05.json" in check.failure


def test_an_archive_bundle_relabelled_as_a_time_selection_says_its_seal_is_held_in_part(store, keypair, tmp_path,
                                                                                        capsys):
    """The manifest is not signed: an archive bundle with record 6 taken out and its selection
    rewritten from `seals: [1, 2]` to a time range no longer has its whole seals checked, and
    verified as if complete. The verifier now says, from the records and the signed seals, which
    seals it holds whole and which in part."""
    from lienthong.audit import bundle_verify

    path = _archived_bundle(store, keypair, tmp_path)
    pem = keypair[3].read_bytes()
    good = bundle_verify.verify_bundle(path, pem)
    assert good.ok and good.partial_seals == [] and good.whole_seals == [1, 2]

    def relabel(files, manifest):
        for name in ("records/6.json", "proofs/6.json"):
            del files[name]
        leaves = json.loads(files["leaves.json"])
        del leaves["6"]
        files["leaves.json"] = json.dumps(leaves).encode()
        manifest["counts"]["records"] -= 1
        manifest["selection"] = {"key": None, "from": "1970-01-01T00:00:00+00:00", "to": None}

    bad = tmp_path / "relabelled.zip"
    _rebuild(path, bad, relabel)
    check = bundle_verify.verify_bundle(str(bad), pem)
    assert not check.ok and check.failure_kind == "selection_signature", check.failure  # now signed

    def relabel_unsigned(files, manifest):  # the signature taken out too: read as an older, unsigned bundle
        relabel(files, manifest)
        del manifest["selection_signature"]

    _rebuild(path, bad, relabel_unsigned)
    check = bundle_verify.verify_bundle(str(bad), pem)
    assert check.ok and not check.selection_signed  # a time selection may hold part of a seal...
    assert check.whole_seals == [1] and check.partial_seals == [{"seq": 2, "held": 3, "count": 4}]  # ...said
    assert bundle_verify.main([str(bad), "--public-key", str(keypair[3])]) == 0
    captured = capsys.readouterr()
    assert "seal 2: 3 of its 4 records" in captured.out and "whole: seal 1" in captured.out
    assert "selection is not signed" in captured.err


def test_a_malformed_seal_list_is_reported_not_a_traceback(store, keypair, tmp_path):
    from lienthong.audit import bundle_verify

    path = _archived_bundle(store, keypair, tmp_path)
    bad = tmp_path / "malformed.zip"
    for seals in ([1, 2], [{"seq": 1, **{f: 1 for f in ("first_id", "last_id", "count", "root", "prev_hash",
                                                           "key_fingerprint", "sealed_at", "seal_hash",
                                                           "signature")}}]):
        _rebuild(path, bad, lambda files, manifest, seals=seals: files.update({"seals.json": json.dumps(seals).encode()}))
        check = bundle_verify.verify_bundle(str(bad), keypair[3].read_bytes())
        assert not check.ok and check.failure_kind == "seal_altered" and "seals.json" in check.failure, check.failure


def test_the_selection_of_an_archive_bundle_is_signed_and_a_record_taken_out_is_refused(store, keypair, tmp_path,
                                                                                       capsys):
    """The manifest's selection (seals 1..2) was a label anyone could edit: the whole-seal check
    rested on it. `audit archive` now signs it (with the head and the leaves it holds), and the
    verifier checks that signature: record 6 taken out, or the selection rewritten, is refused."""
    from lienthong.audit import bundle_verify
    from lienthong.audit.keys import key_fingerprint

    fp = key_fingerprint(keypair[1])
    path = _archived_bundle(store, keypair, tmp_path)
    pem = keypair[3].read_bytes()
    good = bundle_verify.verify_bundle(path, pem)
    assert good.ok and good.selection_signed and good.selection_key == fp, good.failure
    assert bundle_verify.main([path, "--fingerprint", fp]) == 0
    captured = capsys.readouterr()
    assert f"selection (seals 1..2) signed by key {fp}" in captured.out and "not signed" not in captured.err

    def take_out_6(files, manifest):  # the selection left as it is: the whole-seal check must catch it
        for name in ("records/6.json", "proofs/6.json"):
            del files[name]
        leaves = json.loads(files["leaves.json"])
        del leaves["6"]
        files["leaves.json"] = json.dumps(leaves).encode()
        manifest["counts"]["records"] -= 1

    def narrow(files, manifest):
        take_out_6(files, manifest)
        manifest["selection"]["seals"] = [1, 1]

    def other_key(files, manifest):
        manifest["selection_signature"]["key_fingerprint"] = "ab" * 32

    bad = tmp_path / "bad.zip"
    for edit, where in ((take_out_6, "leaves"), (narrow, "selection"), (other_key, "ab" * 8)):
        _rebuild(path, bad, edit)
        check = bundle_verify.verify_bundle(str(bad), pem)
        assert not check.ok and check.failure_kind == "selection_signature", check.failure
        assert "manifest.json" in check.failure and where in check.failure, check.failure
    # the manifest re-encoded, nothing changed: the signature is over its fields, not its bytes
    _rebuild(path, bad, lambda files, manifest: None)
    assert bundle_verify.verify_bundle(str(bad), pem, fingerprints=[fp]).ok


def test_cli_export_signs_the_selection_when_the_seal_private_key_is_available(store, keypair, tmp_path,
                                                                               monkeypatch, capsys):
    import zipfile

    from lienthong.audit import bundle_verify
    from lienthong.cli import main

    cli_env(store, tmp_path, monkeypatch)
    fill(store, 4)
    seal_exchanges(store, keypair[0])
    monkeypatch.setenv("LIENTHONG_SEAL_PUBLIC_KEY", str(keypair[3]))
    out = tmp_path / "e.zip"
    assert main(["audit", "export", str(out), "--key", "HS-0002"]) == 0  # no private key: unsigned, said
    assert "selection is not signed" in capsys.readouterr().err
    check = bundle_verify.verify_bundle(str(out), keypair[3].read_bytes())
    assert check.ok and not check.selection_signed
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    assert main(["audit", "export", str(out), "--key", "HS-0002"]) == 0
    assert "not signed" not in capsys.readouterr().err
    check = bundle_verify.verify_bundle(str(out), keypair[3].read_bytes())
    assert check.ok and check.selection_signed and check.selection == {"key": "HS-0002", "from": None, "to": None}
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read("manifest.json"))["format"] == "lienthong-audit-bundle/3"
    assert main(["audit", "export", str(out), "--key", "HS-0002", "--seal-key", str(tmp_path / "nope.key")]) == 2
