"""Leaf format 3: the recorded ``*_sha256`` of a body with personal fields is salted, so an erased
value cannot be brute-forced back from it (a 12-digit CCCD is only 10^12 SHA-256s of guesses
substituted into the stored, tokenised body)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
import zlib

import pytest
from sqlalchemy import select, text

from lienthong.audit import bundle_verify, records, seal_exchanges, verify_exchanges
from lienthong.audit.bundle import ExportError, export_bundle
from lienthong.audit.personal import PersonalField, token, wire_digest
from lienthong.audit.records import load_batch, scan_batch
from lienthong.audit.redact import redact_exchanges
from lienthong.audit.search import format_exchange, get_exchange
from lienthong.exchange_log import BusRecorder, exchange_body, personal_fields
from lienthong.store import exchange_log, exchange_personal_field

from .conftest import exchange, fill
from .test_redaction import CCCD, DOSSIER, _exchange

ONLY_CCCD = {"MaHoSo": DOSSIER, "TrangThaiHoSo": "2", "SoGiayToChuHoSo": CCCD}


def sql(store, statement, **params):
    with store.begin() as conn:
        conn.execute(text(statement), params)


def _row_and_fields(store, exchange_id):
    with store.engine.connect() as conn:
        row = conn.execute(select(exchange_log).where(exchange_log.c.id == exchange_id)).mappings().first()
        fields = conn.execute(select(exchange_personal_field)
                              .where(exchange_personal_field.c.exchange_id == exchange_id)).mappings().all()
    return dict(row), [dict(f) for f in fields]


def test_an_erased_value_cannot_be_guessed_back_from_the_recorded_digest(store):
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(1, body=ONLY_CCCD))
    assert redact_exchanges(store, key=DOSSIER, reason="erasure request", actor="dpo").fields == 2
    row, fields = _row_and_fields(store, 1)
    (field,) = [f for f in fields if f["side"] == "request"]
    assert field["path"] == "/SoGiayToChuHoSo" and field["salt"] is None and field["value"] is None
    stored = zlib.decompress(row["request_body"])
    tok = token(field["kind"], field["commitment"])
    assert stored.count(tok) == 1 and CCCD.encode() not in stored
    # what anyone holding the log can do: try every candidate value in the token's place (here the
    # hundred CCCDs around the real one, which stands for the 10^12 of them)
    guesses = [f'"{int(CCCD) - 50 + n:012d}"'.encode() for n in range(100)]
    assert f'"{CCCD}"'.encode() in guesses
    found = [g for g in guesses if hashlib.sha256(stored.replace(tok, g)).hexdigest() == row["request_sha256"]]
    assert found == []
    assert row["leaf_version"] == 3 and row["request_size"] == len(_exchange(1, body=ONLY_CCCD).request_body)


def test_before_redaction_the_salted_digest_is_recomputed_from_the_restored_body(store):
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(1, body=ONLY_CCCD))
    row, _ = _row_and_fields(store, 1)
    with store.engine.connect() as conn:
        fields = personal_fields(conn, 1, "request")
    wire = _exchange(1, body=ONLY_CCCD).request_body
    assert exchange_body(store, row, "request") == wire
    salt = fields[0].salt
    assert row["request_sha256"] == hashlib.sha256(b"lienthong-wire/3\x00" + salt + wire).hexdigest()
    assert row["request_sha256"] == wire_digest(wire, fields) != hashlib.sha256(wire).hexdigest()
    # rows of formats 1 and 2 keep the plain SHA-256, whatever their fields
    for version in (None, 1, 2):
        assert wire_digest(wire, fields, version) == hashlib.sha256(wire).hexdigest()
    # salts in the order of their paths, whatever order the fields come in
    two = [PersonalField("request", "/b", "json", "c1", b"\x01" * 16), PersonalField("request", "/a", "json", "c2",
                                                                                    b"\x02" * 16)]
    assert wire_digest(b"x", two) == wire_digest(b"x", two[::-1]) == hashlib.sha256(
        b"lienthong-wire/3\x00" + b"\x02" * 16 + b"\x01" * 16 + b"x").hexdigest()
    with pytest.raises(ValueError, match="salt of the request field /SoGiayToChuHoSo is erased"):
        wire_digest(wire, [dataclasses.replace(fields[0], salt=None, value=None)])


def test_a_body_without_personal_fields_keeps_its_plain_sha256(store):
    fill(store, 1)  # nothing personal on either side
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(2, body={"MaHoSo": DOSSIER}))
    row, fields = _row_and_fields(store, 1)
    plain = exchange(1)
    assert fields == [] and row["leaf_version"] == 3
    assert row["request_sha256"] == hashlib.sha256(plain.request_body).hexdigest()
    assert row["response_sha256"] == hashlib.sha256(plain.response_body).hexdigest()
    row, fields = _row_and_fields(store, 2)  # a personal e-mail in the response only
    sent = _exchange(2, body={"MaHoSo": DOSSIER})
    assert [(f["side"], f["path"]) for f in fields] == [("response", "/email")]
    assert row["request_sha256"] == hashlib.sha256(sent.request_body).hexdigest()
    assert row["response_sha256"] != hashlib.sha256(sent.response_body).hexdigest()
    assert row["response_sha256"] == hashlib.sha256(b"lienthong-wire/3\x00" + bytes(fields[0]["salt"])
                                                    + sent.response_body).hexdigest()


def _as_format_2(store, exchange_id):
    """Rewrite a freshly recorded row as the format-2 recorder wrote it: plain digests."""
    row, _ = _row_and_fields(store, exchange_id)
    digests = {side: hashlib.sha256(exchange_body(store, row, side)).hexdigest() for side in ("request", "response")}
    sql(store, "UPDATE exchange_log SET leaf_version = 2, request_sha256 = :q, response_sha256 = :r WHERE id = :i",
        q=digests["request"], r=digests["response"], i=exchange_id)


def _mixed_log(store):
    """Ids 1..8: plain exchanges and JSON/SOAP bodies with personal fields, 3, 4 and 7 in format 2."""
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    fill(store, 2)  # 1, 2
    recorder.record(_exchange(1))  # 3
    recorder.record(_exchange(2, soap=True))  # 4
    recorder.record(_exchange(3))  # 5
    recorder.record(_exchange(4, soap=True))  # 6
    recorder.record(_exchange(5, body=ONLY_CCCD))  # 7
    recorder.record(_exchange(6, body=ONLY_CCCD))  # 8
    for exchange_id in (3, 4, 7):
        _as_format_2(store, exchange_id)


def test_a_log_mixing_format_2_and_3_rows_verifies_fast_deep_and_in_a_bundle(store, keypair, tmp_path, monkeypatch):
    private, public, *_ = keypair
    _mixed_log(store)
    with store.engine.connect() as conn:
        versions = dict(conn.execute(text("SELECT id, leaf_version FROM exchange_log")).all())
    assert versions == {1: 3, 2: 3, 3: 2, 4: 2, 5: 3, 6: 3, 7: 2, 8: 3}
    seal_exchanges(store, private, batch_size=3)
    with store.engine.connect() as conn:
        exact = load_batch(conn, 0, 8, personal_values=False)
        with monkeypatch.context() as m:  # the fast path takes both formats: no chunk falls back
            m.setattr(records, "load_batch", lambda *a, **k: pytest.fail("fell back to the exact path"))
            fast = scan_batch(conn, 0, 8, chunk=3)
    assert fast.fast and fast.records == exact.records and len(fast.records) == 8
    for deep in (False, True):
        result = verify_exchanges(store, public, deep=deep)
        assert result.ok and result.records_checked == 8 and result.deep == deep, result.failure
    out = tmp_path / "mixed.zip"
    export_bundle(store, out, [public], key=DOSSIER)
    checked = bundle_verify.verify_bundle(str(out))
    assert checked.ok and checked.records_checked == 6 and checked.records_with_redactions == 0, checked.failure
    # audit show: the salted digest says so; a format-2 row's plain one does not
    shown = {i: format_exchange(get_exchange(store, i)) for i in (3, 5, 1)}
    assert "bytes, sha256 " in shown[3] and "salted" not in shown[3]
    assert shown[5].count("bytes, salted sha256 ") == 2
    assert "salted" not in shown[1]

    assert redact_exchanges(store, key=DOSSIER, reason="erasure request", actor="dpo").fields > 0
    assert verify_exchanges(store, public, deep=True).records_with_redactions == 6
    export_bundle(store, out, [public], key=DOSSIER)
    checked = bundle_verify.verify_bundle(str(out))
    assert checked.ok and checked.records_with_redactions == 6, checked.failure


@pytest.mark.parametrize("statement, params", [
    ("UPDATE exchange_log SET request_sha256 = :d WHERE id = 5", {"d": "00" * 32}),
    ("UPDATE exchange_log SET response_sha256 = :d WHERE id = 8", {"d": "ab" * 32}),
    ("UPDATE exchange_log SET leaf_version = 2 WHERE id = 5", {}),
    ("UPDATE exchange_log SET leaf_version = 3 WHERE id = 3", {}),
])
def test_an_altered_digest_or_leaf_version_after_sealing_is_caught(store, keypair, statement, params):
    private, public, *_ = keypair
    _mixed_log(store)
    seal_exchanges(store, private, batch_size=3)
    sql(store, statement, **params)
    record_id = int(statement.rsplit("= ", 1)[1])
    for deep in (False, True):
        result = verify_exchanges(store, public, deep=deep)
        assert not result.ok and (result.failure.kind, result.failure.record_id) == ("record_altered", record_id)


def test_an_altered_v3_body_is_caught(store, keypair):
    private, public, *_ = keypair
    _mixed_log(store)
    seal_exchanges(store, private, batch_size=3)
    with store.engine.connect() as conn:
        body = zlib.decompress(conn.execute(text("SELECT request_body FROM exchange_log WHERE id = 8")).scalar())
    sql(store, "UPDATE exchange_log SET request_body = :b WHERE id = 8",
        b=zlib.compress(body.replace(b'"2"', b'"3"')))
    for deep in (False, True):
        result = verify_exchanges(store, public, deep=deep)
        assert not result.ok and (result.failure.kind, result.failure.record_id) == ("record_altered", 8)


@pytest.mark.parametrize("case", ["v3 row with a plain digest", "v2 row with a salted digest", "v3 body altered"])
def test_the_bundle_checks_each_digest_by_its_rows_leaf_format(store, keypair, tmp_path, case):
    """Altered before sealing (the seal then covers it): only the bundle's rebuild of the wire body
    can tell, and it must use the digest rule of the row's format."""
    private, public, *_ = keypair
    _mixed_log(store)
    row, _ = _row_and_fields(store, 8)
    wire = exchange_body(store, row, "request")
    if case == "v3 row with a plain digest":
        sql(store, "UPDATE exchange_log SET request_sha256 = :d WHERE id = 8", d=hashlib.sha256(wire).hexdigest())
    elif case == "v2 row with a salted digest":
        sql(store, "UPDATE exchange_log SET leaf_version = 2 WHERE id = 8")
    else:
        stored = zlib.decompress(row["request_body"]).replace(b'"2"', b'"3"')
        sql(store, "UPDATE exchange_log SET request_body = :b WHERE id = 8", b=zlib.compress(stored))
    seal_exchanges(store, private, batch_size=3)
    assert verify_exchanges(store, public).ok  # sealed as it is: the leaves hold
    deep = verify_exchanges(store, public, deep=True)  # --deep rebuilds the body as the bundle does
    assert not deep.ok and (deep.failure.kind, deep.failure.record_id, deep.failure.seal_seq) == ("body_altered", 8, 3)
    assert "the request body" in deep.failure.explanation and "recorded sha256" in deep.failure.explanation
    out = tmp_path / "b.zip"  # export checks the bundle as verify.py will, and leaves none that fails
    with pytest.raises(ExportError, match=r"does not verify: body_corrupt \(record #8 .*the request body does not "
                                          r"match its recorded sha256"):
        export_bundle(store, out, [public], key=DOSSIER)
    assert not out.exists()


def test_a_bundle_holding_format_3_rows_is_refused_by_a_verifier_that_predates_them(store, keypair, tmp_path,
                                                                                     monkeypatch):
    """A verifier of bundle format /2 (leaf formats 1 and 2 only) would check a format-3 row's salted
    digest as a plain SHA-256 and call the body altered before sealing: a false accusation. The
    bundle says /3, so such a verifier refuses it as a format it does not read; this one reads /1-/3."""
    private, public, *_ = keypair
    _mixed_log(store)
    seal_exchanges(store, private, batch_size=3)
    out = tmp_path / "b.zip"
    export_bundle(store, out, [public], key=DOSSIER)
    assert bundle_verify.verify_bundle(str(out)).ok
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read("manifest.json"))["format"] == "lienthong-audit-bundle/3"
    monkeypatch.setattr(bundle_verify, "BUNDLE_FORMATS", ("lienthong-audit-bundle/1", "lienthong-audit-bundle/2"))
    refused = bundle_verify.verify_bundle(str(out))
    assert not refused.ok and refused.failure_kind == "manifest", refused.failure



@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("record_id, side, alter", [
    (4, "request", "UPDATE exchange_log SET request_size = request_size + 1 WHERE id = 4"),  # SOAP, personal
    (7, "response", None),  # its stored response body changed by one byte
    (1, "request", "UPDATE exchange_log SET request_sha256 = :d WHERE id = 1"),  # nothing personal
])
def test_deep_rebuilds_the_bodies_of_plain_digest_rows_too(store, keypair, version, record_id, side, alter):
    """Formats 1 and 2 record the plain SHA-256: a body, digest or size changed before sealing is
    named by --deep (the first such record), the default verify holds (the seal covers it)."""
    private, public, *_ = keypair
    _mixed_log(store)
    sql(store, "UPDATE exchange_log SET leaf_version = :v WHERE id IN (1, 3, 4, 7)", v=version)
    if alter is None:
        row, _ = _row_and_fields(store, record_id)
        stored = zlib.decompress(row[f"{side}_body"])
        sql(store, f"UPDATE exchange_log SET {side}_body = :b WHERE id = :i", b=zlib.compress(stored[:-1] + b" "),
            i=record_id)
    else:
        sql(store, alter, d="00" * 32)
    seal_exchanges(store, private, batch_size=3)
    assert verify_exchanges(store, public).ok
    deep = verify_exchanges(store, public, deep=True)
    assert not deep.ok and (deep.failure.kind, deep.failure.record_id) == ("body_altered", record_id), deep.failure
    assert f"the {side} body" in deep.failure.explanation


def test_deep_checks_the_bodies_of_an_untouched_log(bus_store, keypair):
    private, public, *_ = keypair
    _mixed_log(bus_store)
    seal_exchanges(bus_store, private, batch_size=3)
    result = verify_exchanges(bus_store, public, deep=True)
    assert result.ok and result.bodies_checked == 16 and result.records_checked == 8, result.failure
    sql(bus_store, "UPDATE exchange_personal_field SET value = :v WHERE exchange_id = 8", v=b'"079099000111"')
    deep = verify_exchanges(bus_store, public, deep=True)  # the value, named before the body it rebuilds
    assert not deep.ok and (deep.failure.kind, deep.failure.record_id) == ("personal_field_altered", 8)
