"""Personal fields are committed by salted hashes; redaction erases them and the seal still verifies."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from connectors.transport import Exchange
from lienthong.audit import bundle_verify, seal_exchanges, verify_exchanges
from lienthong.audit.bundle import export_bundle
from lienthong.audit.personal import (
    COMMITTED_FIELDS,
    PERSONAL_FIELDS,
    commit_body,
    commitment,
    restore_body,
    wire_digest,
)
from lienthong.audit.redact import RedactionError, redact_exchanges
from lienthong.audit.search import PERSONAL_FIELDS as MASKED_FIELDS
from lienthong.audit.search import format_exchange, get_exchange
from lienthong.cli import main
from lienthong.exchange_log import BusRecorder, exchange_body, personal_fields
from lienthong.store import exchange_log, exchange_personal_field, exchange_redaction

from .conftest import T0, cli_env, fill

DOSSIER = "000.00.01.H49-261102-0042"
CCCD, PHONE, EMAIL, NAME = "001095012345", "0912345678", "nguyen.van.a@example.vn", "Nguyễn Văn Anh"
REQUEST = {
    "MaHoSo": DOSSIER, "TrangThaiHoSo": "2", "ThoiDiemXuLy": "20261102081500",
    "ChuHoSo": NAME, "SoGiayToChuHoSo": CCCD,
    "LienHe": {"SoDienThoai": PHONE, "Email": EMAIL},
    "ThanhPhan": [{"TenGiayTo": "Đơn", "applicantIdNo": 123456789}],
    "GhiChu": "tiếp nhận",
}
SOAP = (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<soap:Body><ns:GuiHoSo xmlns:ns="urn:ledger"><ns:MaHoSo>{DOSSIER}</ns:MaHoSo>'
        f'<ns:SoCCCD>{CCCD}</ns:SoCCCD><ns:HoTenNguoiNop>{NAME}</ns:HoTenNguoiNop>'
        f'<ns:DienThoai>{PHONE}</ns:DienThoai></ns:GuiHoSo></soap:Body></soap:Envelope>').encode()


def _exchange(n: int, *, body=None, soap=False, keys=(DOSSIER,)) -> Exchange:
    if soap:
        req, ctype = SOAP, "text/xml; charset=utf-8"
    else:
        req, ctype = json.dumps(body or REQUEST, ensure_ascii=False, indent=1).encode(), "application/json"
    return Exchange(
        peer="ledger" if soap else "national_portal", operation="GuiHoSo" if soap else "DongBoHoSoMC",
        method="POST", url="http://127.0.0.1:18082/api/x", started_at=T0 + timedelta(minutes=n), duration_ms=5.0,
        attempt=1, outcome="ok", record_keys=tuple(keys), request_headers={"Content-Type": ctype},
        request_body=req, response_status=200, response_headers={"Content-Type": "application/json"},
        response_body=json.dumps({"error_code": 0, "email": EMAIL}).encode(), peer_code="0")


def personal_fields_of(store, exchange_id, side):
    with store.engine.connect() as conn:
        return personal_fields(conn, exchange_id, side)


def _db_bytes(store) -> bytes:
    path = Path(store.url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_the_personal_field_list_is_declared_once_and_shared_with_masking():
    assert MASKED_FIELDS is PERSONAL_FIELDS and PERSONAL_FIELDS <= COMMITTED_FIELDS
    assert {"sogiaytochuhoso", "socccd", "sodienthoai", "email", "masothue", "chuhoso", "hotennguoinop",
            "payername", "applicantname"} <= COMMITTED_FIELDS


def test_every_field_the_mappings_mark_personal_is_committed():
    import yaml

    marked: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for name, value in node.items():
                if isinstance(value, dict) and value.get("personal") is True:
                    marked.add(str(name))
                    source = value.get("from")
                    if isinstance(source, str):
                        marked.add(source.split(".")[-1])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    root = Path(__file__).resolve().parents[3] / "mappings"
    for path in root.rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    assert {"SoGiayToChuHoSo", "PayerName", "applicantIdNo"} <= marked
    assert {m for m in marked if m.lower() not in COMMITTED_FIELDS} == set()


def test_commit_body_tokenises_json_and_soap_values_and_restores_the_exact_bytes():
    raw = json.dumps(REQUEST, ensure_ascii=True, indent=2).encode()  # \u escapes kept as sent
    stored, fields = commit_body(raw, "application/json", "request")
    assert {f.path for f in fields} == {"/ChuHoSo", "/SoGiayToChuHoSo", "/LienHe/SoDienThoai", "/LienHe/Email",
                                        "/ThanhPhan/0/applicantIdNo"}
    for secret in (CCCD, PHONE, EMAIL, "123456789", "Nguy"):
        assert secret.encode() not in stored
    parsed = json.loads(stored)  # still JSON
    assert parsed["MaHoSo"] == DOSSIER and parsed["LienHe"]["Email"].startswith("lt-pf:")
    assert restore_body(stored, fields) == raw
    for f in fields:
        assert commitment(f.salt, f.path, f.value) == f.commitment and len(f.salt) == 16
    assert len({f.salt for f in fields}) == len(fields)  # a fresh salt each
    again, fields_again = commit_body(raw, "application/json", "request")
    assert again != stored and {f.commitment for f in fields}.isdisjoint({f.commitment for f in fields_again})

    stored, fields = commit_body(SOAP, "text/xml", "request")
    assert {f.path for f in fields} == {"xml:SoCCCD[1]", "xml:HoTenNguoiNop[1]", "xml:DienThoai[1]"}
    assert CCCD.encode() not in stored and DOSSIER.encode() in stored and restore_body(stored, fields) == SOAP

    stored, fields = commit_body(b'{"Email": "a@b.vn", "Email": "c@d.vn", "x": [{"phone": 1}, {"phone": 2}]}',
                                 None, "response")
    assert [f.path for f in fields] == ["/Email", "/Email#2", "/x/0/phone", "/x/1/phone"]

    # nothing personal, not JSON, or broken JSON: stored as sent, no fields
    for body, ctype in ((b'{"MaHoSo":"x"}', "application/json"), (b"plain", "text/plain"),
                        (b'{"Email": "a@b.vn"', "application/json")):
        assert commit_body(body, ctype, "request") == (body, [])


def test_recorded_bodies_hold_tokens_and_verify_recomputes_the_commitments(store, keypair):
    fill(store, 2)
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    recorder.record(_exchange(1))
    recorder.record(_exchange(2, soap=True))
    with store.engine.connect() as conn:
        row = conn.execute(select(exchange_log).where(exchange_log.c.id == 3)).mappings().first()
        fields = conn.execute(select(exchange_personal_field).where(exchange_personal_field.c.exchange_id == 3)).all()
    assert CCCD.encode() not in zlib.decompress(row["request_body"])
    assert exchange_body(store, row, "request") == _exchange(1).request_body
    # leaf format 3: the digest of a body with personal fields is salted with their salts
    request_fields = personal_fields_of(store, 3, "request")
    assert wire_digest(exchange_body(store, row, "request"), request_fields) == row["request_sha256"]
    assert hashlib.sha256(exchange_body(store, row, "request")).hexdigest() != row["request_sha256"]
    assert len(fields) == 6  # 5 in the request, the e-mail in the response
    seal_exchanges(store, keypair[0], batch_size=3)
    result = verify_exchanges(store, keypair[1])
    assert result.ok and result.records_checked == 4 and result.records_with_redactions == 0, result.failure


def _tamper_value(store):
    with store.begin() as conn:
        conn.execute(text("UPDATE exchange_personal_field SET value = :v WHERE exchange_id = 3 AND path = '/ChuHoSo'"),
                     {"v": '"Trần Thị B"'.encode()})


@pytest.mark.parametrize("case, statement, kind", [
    ("edited value", None, "personal_field_altered"),
    ("edited commitment", "UPDATE exchange_personal_field SET commitment = :c WHERE exchange_id = 3 "
                          "AND path = '/LienHe/Email'", "record_altered"),
    ("deleted field", "DELETE FROM exchange_personal_field WHERE exchange_id = 3 AND path = '/ChuHoSo'",
     "record_altered"),
    ("edited non-personal field", "UPDATE exchange_log SET http_status = 500 WHERE id = 3", "record_altered"),
    ("body token edited", "UPDATE exchange_log SET request_body = :b WHERE id = 3", "record_altered"),
])
@pytest.mark.parametrize("redacted", [False, True])
def test_tampering_with_committed_records_is_detected(store, keypair, case, statement, kind, redacted):
    fill(store, 2)
    BusRecorder(store, "dossier_status", "run-1", "deliver").record(_exchange(1))
    fill(store, 1, start=9)
    seal_exchanges(store, keypair[0], batch_size=2)
    if redacted:
        redact_exchanges(store, key=DOSSIER, reason="Điều 16 Nghị định 13/2023: yêu cầu xoá dữ liệu", actor="dpo")
        assert verify_exchanges(store, keypair[1]).ok
        if case == "edited value":
            kind = "record_altered"  # the value is gone: forge the commitment instead
            statement = "UPDATE exchange_personal_field SET commitment = :c WHERE exchange_id = 3 AND path = '/ChuHoSo'"
    if statement is None:
        _tamper_value(store)
    else:
        with store.engine.connect() as conn:
            body = zlib.decompress(conn.execute(text("SELECT request_body FROM exchange_log WHERE id = 3")).scalar())
        with store.begin() as conn:
            conn.execute(text(statement), {"c": "ab" * 32, "b": zlib.compress(body.replace(b"lt-pf:", b"lt-pf:0", 1))})
    result = verify_exchanges(store, keypair[1], deep=True)  # --deep: the salts and values too
    assert not result.ok and (result.failure.kind, result.failure.record_id, result.failure.seal_seq) == (
        kind, 3, 2), result.failure
    default = verify_exchanges(store, keypair[1])  # what was sealed; values are checked where they are read
    if kind == "personal_field_altered":
        assert default.ok, default.failure
    else:
        assert not default.ok and (default.failure.kind, default.failure.record_id) == (kind, 3), default.failure


def test_redact_erases_values_everywhere_in_the_file_and_the_seal_still_verifies(store, keypair, tmp_path):
    fill(store, 2)
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    recorder.record(_exchange(1))
    recorder.record(_exchange(2, soap=True))
    fill(store, 1, start=9)
    seal_exchanges(store, keypair[0], batch_size=3)
    assert verify_exchanges(store, keypair[1]).ok

    before = _db_bytes(store)
    assert CCCD.encode() in before and EMAIL.encode() in before
    with pytest.raises(RedactionError):
        redact_exchanges(store, key=DOSSIER, reason=" ")
    result = redact_exchanges(store, key=DOSSIER, reason="yêu cầu xoá của chủ thể dữ liệu", actor="dpo@h49")
    assert result.exchange_ids == [3, 4] and result.fields == 6 + 4 and result.checkpointed
    assert result.residual_occurrences == 0
    data = _db_bytes(store)
    for secret in (CCCD, PHONE, EMAIL, NAME, "123456789"):
        assert secret.encode() not in data, secret
        assert json.dumps(secret).encode() not in data
    with store.engine.connect() as conn:
        redaction = conn.execute(select(exchange_redaction)).mappings().one()
        assert (redaction["actor"], redaction["record_key"], redaction["exchange_ids"], redaction["fields"]) == (
            "dpo@h49", DOSSIER, [3, 4], 10)

    result = verify_exchanges(store, keypair[1])
    assert result.ok and result.records_with_redactions == 2 and result.redacted_record_ids == [3, 4], result.failure
    assert redact_exchanges(store, key=DOSSIER, reason="again").already_redacted == 10

    shown = format_exchange(get_exchange(store, 3), reveal=True)
    assert CCCD not in shown and '"[redacted]"' in shown and "personal field(s) of this body were redacted" in shown

    out = tmp_path / "redacted.zip"
    export_bundle(store, out, [keypair[1]], key=DOSSIER)
    check = bundle_verify.verify_bundle(str(out), keypair[3].read_bytes())
    assert check.ok and check.records_with_redactions == 2 and check.redacted_record_ids == [3, 4], check.failure
    with zipfile.ZipFile(out) as zf:
        everything = b"".join(zf.read(n) for n in zf.namelist())
        assert json.loads(zf.read("manifest.json"))["counts"]["records_with_redactions"] == 2
    for secret in (CCCD, PHONE, EMAIL):
        assert secret.encode() not in everything
    clean = tmp_path / "auditor"  # the bundle's own verify.py, elsewhere, with nothing of the project
    clean.mkdir()
    (clean / "b.zip").write_bytes(out.read_bytes())
    with zipfile.ZipFile(out) as zf:
        (clean / "verify.py").write_bytes(zf.read("verify.py"))
    proc = subprocess.run([sys.executable, "-I", "verify.py", "b.zip"], cwd=clean, capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", "")}, timeout=60, check=False)
    assert proc.returncode == 0 and "2 verified with redactions" in proc.stdout, proc.stdout + proc.stderr


def test_bundles_of_unredacted_records_carry_salts_and_the_verifier_checks_them(store, keypair, tmp_path):
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    recorder.record(_exchange(1))
    recorder.record(_exchange(2, soap=True))
    seal_exchanges(store, keypair[0])
    out = tmp_path / "b.zip"
    export_bundle(store, out, [keypair[1]], key=DOSSIER)
    check = bundle_verify.verify_bundle(str(out))
    assert check.ok and check.records_checked == 2 and check.records_with_redactions == 0, check.failure
    with zipfile.ZipFile(out) as zf:
        record = json.loads(zf.read("records/1.json"))
    assert {f["path"] for f in record["personal"] if f["side"] == "request"} >= {"/SoGiayToChuHoSo", "/ChuHoSo"}
    assert all(f["salt"] and f["value"] for f in record["personal"])

    def edit(field_edit):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(out) as zin, zipfile.ZipFile(bad, "w") as zout:
            for n in zin.namelist():
                data = zin.read(n)
                if n == "records/1.json":
                    rec = json.loads(data)
                    field_edit(next(f for f in rec["personal"] if f["path"] == "/SoGiayToChuHoSo"))
                    data = json.dumps(rec, ensure_ascii=False).encode()
                zout.writestr(n, data)
        return bundle_verify.verify_bundle(str(bad))

    check = edit(lambda f: f.update(value=base64.b64encode(b'"001095099999"').decode()))
    assert not check.ok and check.failure_kind == "personal_field_altered" and "record #1" in check.failure
    check = edit(lambda f: f.update(salt="00" * 16))
    assert not check.ok and check.failure_kind == "personal_field_altered"
    check = edit(lambda f: f.update(commitment="ab" * 32))
    assert not check.ok and check.failure_kind == "record_altered"
    check = edit(lambda f: f.update(salt=None, value=None))  # erased in the bundle: the record still holds,
    assert not check.ok and check.failure_kind == "manifest" and check.records_with_redactions == 1  # the manifest not


def test_cli_redact_then_verify_reports_redactions(store, keypair, tmp_path, monkeypatch, capsys):
    cli_env(store, tmp_path, monkeypatch)
    monkeypatch.setenv("LIENTHONG_SEAL_KEY", str(keypair[2]))
    recorder = BusRecorder(store, "dossier_status", "run-1", "deliver")
    recorder.record(_exchange(1))
    recorder.record(_exchange(2))
    assert main(["audit", "seal"]) == 0
    capsys.readouterr()
    assert main(["audit", "redact", "--key", DOSSIER, "--exchange-id", "2", "--reason", "lawful request 7/2026",
                 "--actor", "dpo", "--vacuum"]) == 0
    out = capsys.readouterr().out
    assert "erased 6 personal fields of 1 exchanges (#2)" in out
    for secret in (CCCD, PHONE, EMAIL):
        assert secret not in out
    with store.engine.connect() as conn:  # exchange 1 keeps its values, exchange 2 has none left
        rows = conn.execute(text("SELECT exchange_id, value FROM exchange_personal_field")).all()
    assert {i for i, v in rows if v is not None} == {1} and {i for i, v in rows if v is None} == {2}
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "verified: 2 records" in out and "verified-with-redactions: 1 records" in out and "#2" in out
    # a code no exchange carries (mistyped, say) is told apart from exchanges without personal values
    assert main(["audit", "redact", "--key", "NOPE", "--reason", "x"]) == 0
    assert capsys.readouterr().out == "nothing to redact: no exchange in the database carries record NOPE\n"
    assert main(["audit", "redact", "--key", DOSSIER, "--exchange-id", "2", "--reason", "again"]) == 0
    assert capsys.readouterr().out == ("nothing to redact: the 1 matched exchange(s) in the database hold no "
                                       "personal value (6 already redacted)\n")
    assert main(["audit", "redact", "--key", DOSSIER, "--exchange-id", "9", "--reason", "x"]) == 0
    assert capsys.readouterr().out == f"nothing to redact: no exchange in the database carries record {DOSSIER} " \
                                      "among exchanges #9\n"
