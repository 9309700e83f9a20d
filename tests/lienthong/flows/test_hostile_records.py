"""Hostile and malformed one-stop records through the dossier flow (issue #7), stand-ins as real servers.

Records are put in the one-stop feed exactly as given through its ``POST /_admin/dossiers/raw``
test door. Each bad record must end as one dead letter naming the record, the field and the rule,
with its original payload kept byte for byte; every other record is delivered; nothing is sent
twice; text is stored verbatim (SQL metacharacters are data, never SQL) and in NFC.
"""

from __future__ import annotations

import copy
import unicodedata
from datetime import datetime, timedelta

import pytest
import requests
from sqlalchemy import func, inspect, select

from connectors.connection import connection_from_env
from lienthong import tasks
from lienthong.flows import dossier_status
from lienthong.mapping import load_mapping
from lienthong.store import canonical_json, content_hash, dead_letter, delivery_state, outbox, progress_outbox

T = 10
SQL = "x'; DROP TABLE outbox;--%\"\\"


# --- helpers -------------------------------------------------------------------------------------
def get(peers, peer, path):
    base = peers.onestop.url if peer == "onestop" else peers.portal.url
    return requests.get(base + path, timeout=T).json()


def inject(peers, dossier):
    answer = requests.post(peers.onestop.url + "/_admin/dossiers/raw", json={"dossier": dossier}, timeout=T)
    assert answer.status_code == 200, answer.text
    return answer.json()


def template(peers, number):
    """A copy of the first seeded dossier under a new dossier code (day 261120: no seeded clash)."""
    first = copy.deepcopy(get(peers, "onestop", "/_state/dossiers")["dossiers"][0])
    first["dossierNo"] = f"000.00.03.H49-261120-{number:04d}"
    return first


def run(run_id):
    staged = tasks.stage_dossier_changes(connection_from_env, run_id=run_id, task_id="stage")
    delivered = tasks.deliver_dossier_statuses(connection_from_env, run_id=run_id, task_id="deliver")
    delivered.update(tasks.deliver_dossier_progress(connection_from_env, run_id=run_id, task_id="progress"))
    return staged, delivered


def bus():
    return tasks.open_store(connection_from_env)


def dead_letters(flow=dossier_status.FLOW):
    with bus().engine.connect() as conn:
        rows = conn.execute(select(dead_letter).where(dead_letter.c.flow == flow).order_by(dead_letter.c.id)).all()
    return {r.record_key: r for r in rows}


def portal_dossiers(peers):
    return {d["MaHoSo"]: d for d in get(peers, "portal", "/_state/dossiers")["dossiers"]}


def portal_history(peers, code):
    return get(peers, "portal", f"/_state/dossiers/{code}")


def seeded_expectation(peers):
    """The portal records of the seeded, non-defective dossiers."""
    mapping = load_mapping(dossier_status.MAPPING)
    skip = {d["dossierNo"] for d in get(peers, "onestop", "/_state")["defective"]}
    return {d["dossierNo"]: mapping.apply(d) for d in get(peers, "onestop", "/_state/dossiers")["dossiers"]
            if d["dossierNo"] not in skip}


def without(record, *names):
    return {k: v for k, v in record.items() if k not in names}


# --- wrong types, missing fields, extra fields ---------------------------------------------------
def bad_records(peers):
    """(dossier, MaHoSo-field, rule) for each malformed record; the field is the portal's name."""
    t = lambda n: template(peers, n)  # noqa: E731
    return [
        ({**t(1), "applicantName": ["Lê Văn An"]}, "ChuHoSo", "type"),
        ({**t(2), "dossierStatus": 4}, "TrangThaiHoSo", "type"),
        ({**t(3), "receiveDate": 20261102}, "NgayTiepNhan", "type"),
        ({**t(4), "progress": "none"}, "NgayTuChoi", "type"),
        ({**t(5), "fees": {"amount": 1}}, "DanhSachLePhi", "type"),
        (without(t(6), "briefNote"), "TrichYeuHoSo", "required"),
        (without(t(7), "serviceCode"), "MaTTHC", "required"),
        ({**t(8), "files": [1]}, "TaiLieuNop[0]", "type"),
        ({**t(9), "briefNote": 12}, "TrichYeuHoSo", "type"),
        ({**t(10), "submissionChannel": None}, "KenhThucHien", "required"),
        ({**t(11), "briefNote": "x" * 1001}, "TrichYeuHoSo", "max_length"),
        ({**t(12), "dossierNo": "000.00.03.H49-261120-0012'; DROP TABLE outbox;--"}, "MaHoSo", "format"),
    ]


def test_malformed_records_are_dead_lettered_one_by_one_and_the_others_delivered(bus_env):
    cases = bad_records(bus_env)
    extra = {**template(bus_env, 20), "unexpectedField": {"nested": [1, 2]}, "__proto__": "x"}
    fine = template(bus_env, 21)
    for dossier, _, _ in cases:
        inject(bus_env, dossier)
    inject(bus_env, extra)
    inject(bus_env, fine)

    _, first = run("hostile-1")

    letters = dead_letters()
    mapping = load_mapping(dossier_status.MAPPING)
    for dossier, field, rule in cases:
        letter = letters[dossier["dossierNo"]]
        assert (letter.stage, letter.error_class) == ("mapping", "RecordInvalid")
        assert [(e["field"], e["rule"]) for e in letter.errors] == [(field, rule)], letter.errors
        assert canonical_json(letter.source_payload) == canonical_json(dossier)  # the original, unmodified
    # the extra fields are not the portal's business: the record is delivered without them
    held = portal_dossiers(bus_env)
    assert held[extra["dossierNo"]] == mapping.apply(template(bus_env, 20))
    assert held[fine["dossierNo"]] == mapping.apply(fine)
    # every seeded dossier arrived, each once; none of the refused did
    expected = seeded_expectation(bus_env)
    assert {k: held[k] for k in expected} == expected
    assert set(held) == set(expected) | {extra["dossierNo"], fine["dossierNo"]}
    assert all(len(portal_history(bus_env, code)["history"]) == 1 for code in held)
    seeded_defective = [d for d in get(bus_env, "onestop", "/_state")["defective"] if d["defect"] != "raw"]
    assert first["rejected"] == len(cases) + len(seeded_defective)

    # a rerun sends nothing again and adds no dead letter
    _, second = run("hostile-2")
    assert (second["delivered_new"], second["delivered_update"], second["rejected"], second["portal_calls"]) == \
        (0, 0, 0, 0)
    assert len(dead_letters()) == len(letters)
    assert all(len(portal_history(bus_env, code)["history"]) == 1 for code in held)


def test_a_hostile_dossier_code_never_stops_the_feed(bus_env):
    """A dossierNo that is an object, too long for the bus database, holds a NUL or is missing: the
    record is staged under a stand-in key, dead-lettered naming MaHoSo, and the cursor moves on."""
    hostile = [
        {**template(bus_env, 30), "dossierNo": {"$ne": None}},
        {**template(bus_env, 31), "dossierNo": "0" * 300},
        {**template(bus_env, 32), "dossierNo": "000.00.03.H49-261120-0032\x00"},
        without(template(bus_env, 33), "dossierNo"),
    ]
    after = template(bus_env, 34)
    seqs = [inject(bus_env, d)["seq"] for d in hostile]
    inject(bus_env, after)

    staged, delivered = run("codes-1")

    letters = {k: v for k, v in dead_letters().items() if k.startswith("<")}
    assert len(letters) == len(hostile)
    by_payload = {canonical_json(v.source_payload): v for v in letters.values()}
    for dossier, seq in zip(hostile, seqs, strict=True):
        letter = by_payload[canonical_json(dossier)]
        what = "no dossierNo" if "dossierNo" not in dossier else "invalid dossierNo"
        assert letter.record_key == f"<{what}, seq {seq}, {content_hash(dossier)[:12]}>"
        assert [e["field"] for e in letter.errors] == ["MaHoSo"]
        assert letter.errors[0]["rule"] in {"type", "format", "required"}
    assert portal_dossiers(bus_env)[after["dossierNo"]] == load_mapping(dossier_status.MAPPING).apply(after)
    assert bus().get_cursor(dossier_status.FLOW) is not None
    again, _ = run("codes-2")
    assert again["staged"] == 0  # the feed moved past them: nothing staged twice


def test_codes_written_with_other_unicode_digits_are_refused_by_the_mapping_naming_the_form(bus_env):
    """A dossier or procedure code in full-width (０-９) or Arabic-Indic (٠-٩) digits is not of the
    portal's form (§6.2, §6.4), yet the mapping's \\d took any Unicode digit: the dossier reached
    the portal, which refused it as another province's (code 5, stage peer) or an unknown procedure."""
    wide = str.maketrans("0123456789", "０１２３４５６７８９")
    arabic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    cases = [
        ({**template(bus_env, 40), "dossierNo": "000.00.03.H49-261120-0040".translate(wide)}, "MaHoSo"),
        ({**template(bus_env, 41), "dossierNo": "000.00.03.H49-261120-0041".translate(arabic)}, "MaHoSo"),
    ]
    code = template(bus_env, 42)
    head, number, rest = code["serviceCode"].split(".", 2)
    cases.append(({**code, "serviceCode": f"{head}.{number.translate(wide)}.{rest}"}, "MaTTHC"))
    for dossier, _ in cases:
        inject(bus_env, dossier)

    run("digits-1")

    letters = dead_letters()
    for dossier, field in cases:
        letter = letters[dossier["dossierNo"]]
        assert letter.stage == "mapping", (dossier["dossierNo"], letter.stage, letter.errors)
        assert [(e["field"], e["rule"]) for e in letter.errors] == [(field, "format")], letter.errors
    held = portal_dossiers(bus_env)
    assert not {d["dossierNo"] for d, _ in cases} & set(held)
    assert {k: held[k] for k in seeded_expectation(bus_env)} == seeded_expectation(bus_env)


# --- the one-stop's snapshot version ------------------------------------------------------------
def test_a_snapshot_version_that_is_not_a_whole_number_is_dead_lettered_naming_it(bus_env):
    """``version`` orders a dossier's snapshots (the stale and supersede guards): text, a fraction,
    ``true``, a negative number or an object is refused naming the field, never taken as "no
    version"; the payload is kept as sent, and the dossier's other records are untouched."""
    bad = {50: "7", 51: 7.5, 52: True, 53: -1, 54: {"n": 1}, 55: [3]}
    cases = {n: {**template(bus_env, n), "version": v} for n, v in bad.items()}
    unversioned = without(template(bus_env, 56), "version")  # absent is allowed: no ordering guard
    for dossier in cases.values():
        inject(bus_env, dossier)
    inject(bus_env, unversioned)

    _, first = run("version-1")

    letters = dead_letters()
    for n, dossier in cases.items():
        letter = letters[dossier["dossierNo"]]
        assert (letter.stage, letter.error_class) == ("source", "RecordRejected")
        assert [(e["field"], e["rule"]) for e in letter.errors] == [("version", "snapshot_version")]
        assert "whole number" in letter.errors[0]["message"]
        assert canonical_json(letter.source_payload) == canonical_json(dossier)
    assert "not '7'" in letters[cases[50]["dossierNo"]].errors[0]["message"]
    assert "not True" in letters[cases[52]["dossierNo"]].errors[0]["message"]
    assert "not a dict" in letters[cases[54]["dossierNo"]].errors[0]["message"]
    held = portal_dossiers(bus_env)
    assert not {d["dossierNo"] for d in cases.values()} & set(held)
    assert held[unversioned["dossierNo"]] == load_mapping(dossier_status.MAPPING).apply(unversioned)
    seeded_defective = [d for d in get(bus_env, "onestop", "/_state")["defective"] if d["defect"] != "raw"]
    assert first["rejected"] == len(cases) + len(seeded_defective)

    _, again = run("version-2")  # nothing sent again, no second dead letter
    assert (again["delivered_new"], again["rejected"], again["portal_calls"]) == (0, 0, 0)
    assert len(dead_letters()) == len(letters)


def test_a_bad_version_neither_supersedes_nor_is_superseded_and_a_fixed_one_goes_after_replay(bus_env):
    """A snapshot with an unusable version, staged after a valid one of the same dossier, is not
    silently dropped as "older" (it is dead-lettered by name); the next valid snapshot waits behind
    that dead letter and is the one a replay sends."""
    first = {**template(bus_env, 60), "version": 5}
    broken = {**first, "version": "6", "briefNote": "second change"}
    inject(bus_env, first)
    inject(bus_env, broken)

    run("supersede-1")

    code = first["dossierNo"]
    letter = dead_letters()[code]
    assert [(e["field"], e["rule"]) for e in letter.errors] == [("version", "snapshot_version")]
    assert canonical_json(letter.source_payload) == canonical_json(broken)
    with bus().engine.connect() as conn:
        states = conn.execute(select(outbox.c.source_version, outbox.c.state).where(
            outbox.c.record_key == code).order_by(outbox.c.id)).all()
    assert [tuple(s) for s in states] == [(5, "delivered"), (None, "rejected")]
    mapping = load_mapping(dossier_status.MAPPING)
    assert portal_dossiers(bus_env)[code] == mapping.apply(first)

    fixed = {**broken, "version": 7}
    inject(bus_env, fixed)
    _, waiting = run("supersede-2")
    assert waiting["held"] == 1 and portal_dossiers(bus_env)[code] == mapping.apply(first)

    dossier_status.replay(bus(), record_key=code, by="test")
    _, replayed = run("supersede-3")
    assert replayed["delivered_update"] == 1 and replayed["rejected"] == 0
    assert portal_dossiers(bus_env)[code] == mapping.apply(fixed)
    assert len(portal_history(bus_env, code)["history"]) == 2  # the first snapshot, then the fixed one


# --- SQL metacharacters --------------------------------------------------------------------------
def test_sql_metacharacters_are_stored_verbatim_everywhere(bus_env):
    dossier = template(bus_env, 40)
    for name in ("receiptNo", "serviceName", "domainName", "applicantName", "applicantIdNo", "contactEmail",
                 "contactTelNo", "briefNote", "handlingUnitName", "govAgencyName", "address"):
        dossier[name] = name + SQL
    dossier["applicantName"] += "\x00"  # the portal takes a NUL in text; it must survive as one
    for f in dossier["files"]:
        f["displayName"] = "file" + SQL
    for p in dossier["progress"]:
        p.update(actor="actor" + SQL, actorTitle="title" + SQL, department="dept" + SQL, note="note" + SQL)
    inject(bus_env, dossier)
    with bus().engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())

    run("sql-1")

    held = portal_dossiers(bus_env)[dossier["dossierNo"]]
    assert held["ChuHoSo"] == "applicantName" + SQL + "\x00"
    assert held["TrichYeuHoSo"] == "briefNote" + SQL
    assert (held["TenTTHC"], held["TenLinhVuc"], held["SoBienNhan"], held["DonViXuLy"], held["Email"]) == (
        "serviceName" + SQL, "domainName" + SQL, "receiptNo" + SQL, "handlingUnitName" + SQL, "contactEmail" + SQL)
    assert [f["TenTepDinhKem"] for f in held["TaiLieuNop"]] == ["file" + SQL] * len(dossier["files"])
    assert held == load_mapping(dossier_status.MAPPING).apply(dossier)
    progress = [p["record"] for p in get(bus_env, "portal", "/_state/progress")["progress"]
                if p["MaHoSo"] == dossier["dossierNo"]]
    finished = [p for p in dossier["progress"] if p["finishedAt"]]
    assert len(progress) == len(finished) > 0
    assert all((p["NguoiXuLy"], p["ChucDanh"], p["PhongBanXuLy"]) == ("actor" + SQL, "title" + SQL, "dept" + SQL)
               and p["NoiDungXuLy"].endswith("note" + SQL) for p in progress)
    with bus().engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == tables  # nothing dropped
        rows = conn.execute(select(outbox.c.source_payload, outbox.c.state)
                            .where(outbox.c.record_key == dossier["dossierNo"])).all()
        assert [(canonical_json(r.source_payload), r.state) for r in rows] == [(canonical_json(dossier), "delivered")]
        staged = conn.execute(select(progress_outbox.c.payload).where(
            progress_outbox.c.record_key == dossier["dossierNo"])).scalars().all()
        assert sorted(p["NguoiXuLy"] for p in staged) == ["actor" + SQL] * len(finished)
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() > 40


# --- NFC and NFD ---------------------------------------------------------------------------------
NAME = "Nguyễn Thị Phượng"
NOTE = "Đăng ký khai sinh cho cháu Lê Hoàng Yến"


def test_nfd_and_nfc_forms_of_a_name_are_one_payload_stored_nfc(bus_env):
    """The same Vietnamese name in NFD then NFC (and NFD again): one delivery, the same content hash,
    no spurious update, the portal holding NFC; the outbox keeps what the one-stop sent."""
    assert unicodedata.normalize("NFD", NAME) != NAME
    nfd = template(bus_env, 50)
    nfd.update(applicantName=unicodedata.normalize("NFD", NAME), briefNote=unicodedata.normalize("NFD", NOTE))
    for p in nfd["progress"]:
        p["actor"] = unicodedata.normalize("NFD", "Trần Văn Đức")
    inject(bus_env, nfd)
    _, first = run("nfc-1")

    code = nfd["dossierNo"]
    held = portal_dossiers(bus_env)[code]
    assert (held["ChuHoSo"], held["TrichYeuHoSo"]) == (NAME, NOTE)  # NFC on the wire, byte for byte
    assert held["ChuHoSo"].encode() == NAME.encode()
    progress = [p["record"] for p in get(bus_env, "portal", "/_state/progress")["progress"] if p["MaHoSo"] == code]
    assert {p["NguoiXuLy"] for p in progress} == {"Trần Văn Đức"}
    with bus().engine.connect() as conn:
        acked = conn.execute(select(delivery_state.c.payload_hash).where(delivery_state.c.record_key == code)
                             ).scalar_one()

    nfc = {**copy.deepcopy(nfd), "applicantName": NAME, "briefNote": NOTE, "version": nfd["version"] + 1}
    for p in nfc["progress"]:
        p["actor"] = "Trần Văn Đức"
    inject(bus_env, nfc)
    _, second = run("nfc-2")
    again = {**copy.deepcopy(nfd), "version": nfd["version"] + 2}
    inject(bus_env, again)
    _, third = run("nfc-3")

    mapping = load_mapping(dossier_status.MAPPING)
    assert content_hash(mapping.apply(nfd)) == content_hash(mapping.apply(nfc)) == acked
    for report in (second, third):
        assert (report["unchanged"], report["delivered_update"], report["portal_calls"], report["progress_sent"]) \
            == (1, 0, 0, 0)
    assert len(portal_history(bus_env, code)["history"]) == 1
    assert len([p for p in get(bus_env, "portal", "/_state/progress")["progress"] if p["MaHoSo"] == code]) == \
        len(progress)
    with bus().engine.connect() as conn:
        rows = conn.execute(select(outbox.c.state, outbox.c.payload_hash, outbox.c.source_payload)
                            .where(outbox.c.record_key == code).order_by(outbox.c.id)).all()
    assert [r.state for r in rows] == ["delivered", "unchanged", "unchanged"]
    assert {r.payload_hash for r in rows} == {acked}
    # the outbox keeps each payload as the one-stop sent it (the NFD one too)
    assert [r.source_payload["applicantName"] for r in rows] == [nfd["applicantName"], NAME, nfd["applicantName"]]
    with bus().engine.connect() as conn:  # what the bus sends on is stored NFC
        mapped = conn.execute(select(progress_outbox.c.payload).where(progress_outbox.c.record_key == code)
                              ).scalars().all()
    assert len(mapped) == len(progress) and {m["NguoiXuLy"].encode() for m in mapped} == {"Trần Văn Đức".encode()}
    assert not dead_letters().get(code)


# --- payment requests (the payment receipts flow) ------------------------------------------------
class HostileFeed:
    """The real one-stop client, with malformed payment requests slipped into its first page
    (the one-stop's own door refuses them, so they are added on the way)."""

    def __init__(self, client, hostile):
        self.client, self.hostile = client, hostile

    def iter_payments(self, **kw):
        for n, page in enumerate(self.client.iter_payments(**kw)):
            yield (self.hostile + page) if n == 0 else page


def test_malformed_payment_requests_are_dead_lettered_and_the_others_registered(tmp_path):
    from connectors.connection import Secret
    from connectors.one_stop.client import OneStopClient
    from connectors.payment_platform.client import PaymentPlatformClient
    from lienthong.flows import payment_receipts
    from lienthong.store import Store, payment_txn
    from tests.lienthong.flows.test_payment_receipts import ONESTOP_KEY, PARTNER, PAY_SECRET, Peers

    hostile = [
        ({"reference": {"$gt": ""}, "dossierNo": "000.00.06.H49-261102-0001", "amount": 2000, "status": "pending"},
         [("reference", "type")]),
        ({"dossierNo": "000.00.06.H49-261102-0001", "amount": 2000, "status": "pending"}, [("reference", "required")]),
        ({"reference": "dvc-bad-amount", "amount": "2000; DROP TABLE payment_txn", "status": "pending"},
         [("amount", "type")]),
        ({"reference": "dvc-bad-types", "amount": True, "dossierNo": ["x"], "status": 1},
         [("amount", "type"), ("dossierNo", "type"), ("status", "type")]),
        ({"reference": "r" * 65, "amount": 1}, [("reference", "format")]),
        ({"reference": "dvc-nul", "amount": 1, "dossierNo": "000.00.06.H49-261102-0001\x00"}, [("dossierNo", "type")]),
    ]
    peers = Peers(tmp_path / "peers")
    store = Store(f"sqlite:///{tmp_path / 'bus.db'}")
    store.create_schema()
    onestop = OneStopClient(peers.onestop.url, Secret(ONESTOP_KEY))
    platform = PaymentPlatformClient(peers.platform.url, PARTNER, Secret(PAY_SECRET))
    try:
        feed = HostileFeed(onestop, [h for h, _ in hostile])
        first = payment_receipts.collect_payments(store, feed, platform, run_id="pay-1").counts()
        # listed in full again (as once a day): each malformed request is dead-lettered once
        second = payment_receipts.collect_payments(store, feed, platform, run_id="pay-2", full_listing=True).counts()
        listed = {p["reference"] for p in get(peers, "onestop", "/_state/payments")["payments"]}
    finally:
        onestop.close()
        platform.close()
        peers.stop()
    assert (first["requests_invalid"], second["requests_invalid"]) == (len(hostile), 0)  # dead-lettered once
    letters = store.dead_letters(payment_receipts.FLOW)
    assert len(letters) == len(hostile)
    by_payload = {canonical_json(dl["source_payload"]): dl for dl in letters}
    for payload, broken in hostile:
        letter = by_payload[canonical_json(payload)]
        assert letter["stage"] == "source" and letter["error_class"] == "RecordRejected"
        assert [(e["field"], e["rule"]) for e in letter["errors"]] == broken
        reference = payload.get("reference")
        assert letter["record_key"] == (reference if isinstance(reference, str)  # names the record when it can
                                        else f"<invalid reference, {content_hash(payload)[:12]}>")
    with store.engine.connect() as conn:
        registered = set(conn.execute(select(payment_txn.c.reference)).scalars())
        assert set(inspect(conn).get_table_names()) >= {"payment_txn", "dead_letter", "outbox"}
    assert registered == listed and listed  # every well-formed request, none of the others
    store.dispose()


def test_progress_entries_with_hostile_step_ids_are_each_sent_once(bus_env):
    """Entries without a usable stepId (missing, an object, 300 characters) would share one key or
    not fit the bus database: each distinct entry still reaches the portal, once, in time order."""
    dossier = template(bus_env, 60)
    first, second = [p for p in dossier["progress"] if p["finishedAt"]][:2]
    later = (datetime.fromisoformat(second["finishedAt"]) + timedelta(minutes=10)).isoformat()
    third = {**second, "note": "Bổ sung ý kiến thẩm định", "startedAt": second["finishedAt"], "finishedAt": later,
             "stepId": "S" * 300}
    del first["stepId"]
    second["stepId"] = {"id": 2}
    dossier["progress"] = [first, second, third]
    inject(bus_env, dossier)

    _, report = run("steps-1")

    mapping = load_mapping(dossier_status.PROGRESS_MAPPING)
    expected = [mapping.apply({**e, "dossierNo": dossier["dossierNo"]}) for e in (first, second, third)]
    held = [p["record"] for p in get(bus_env, "portal", "/_state/progress")["progress"]
            if p["MaHoSo"] == dossier["dossierNo"]]
    assert held == expected
    with bus().engine.connect() as conn:
        keys = conn.execute(select(progress_outbox.c.entry_key).where(
            progress_outbox.c.record_key == dossier["dossierNo"]).order_by(progress_outbox.c.id)).scalars().all()
    assert len(set(keys)) == 3 and all(len(k) <= 250 for k in keys)
    code = dossier["dossierNo"]
    assert keys == [f"{code}#<invalid stepId {content_hash({**e, 'dossierNo': code})[:16]}>"
                    for e in (first, second, third)]
    # a newer snapshot carrying the same entries sends none of them again
    inject(bus_env, {**copy.deepcopy(dossier), "version": dossier["version"] + 1, "briefNote": "Cập nhật trích yếu"})
    _, again = run("steps-2")
    assert (again["delivered_update"], again["progress_sent"]) == (1, 0)
    assert len([p for p in get(bus_env, "portal", "/_state/progress")["progress"]
                if p["MaHoSo"] == dossier["dossierNo"]]) == 3


# --- national catalogue rows (the catalogue flow) -------------------------------------------------
class HostileCatalogue:
    """The real portal client, with hostile rows slipped into ``LayDanhSachTTHC``; remembers every
    code it is asked about with ``LayThuTuc``."""

    def __init__(self, client, hostile):
        self.client, self.hostile, self.asked = client, hostile, []

    def list_procedures(self):
        return self.hostile + self.client.list_procedures()

    def get_procedure(self, code):
        self.asked.append(code)
        return self.client.get_procedure(code)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.catalogue_size(40)
def test_hostile_procedure_codes_are_dead_lettered_never_sent_back(bus_env):
    from connectors.national_portal.client import NationalPortalClient
    from lienthong.flows import catalogue

    hostile = [{"MATTHC": {"$ne": ""}, "TENTTHC": "x"}, {"MATTHC": "1." + "0" * 300, "TENTTHC": "x"},
               {"MATTHC": "1.000001\x00", "TENTTHC": "x"},
               {"MATTHC": "2.000488.000.00.00.H49'; DROP TABLE catalogue;--", "TENTTHC": "x"}]
    client = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    portal = HostileCatalogue(client, hostile)
    store = bus()
    try:
        report = catalogue.pull_catalogue(store, portal, run_id="cat-1")
        again = catalogue.pull_catalogue(store, portal, run_id="cat-2")
    finally:
        client.close()
    letters = {canonical_json(dl["source_payload"]["listed"]): dl for dl in store.dead_letters(catalogue.FLOW)}
    for row in hostile[:3]:
        letter = letters[canonical_json(row)]
        assert letter["record_key"] == f"<invalid MATTHC, {content_hash(row)[:12]}>"
        assert [(e["field"], e["rule"]) for e in letter["errors"]] == [("MATTHC", "format")]
    sql = letters[canonical_json(hostile[3])]  # a well-formed text: asked about, as a value, and not found
    assert sql["record_key"] == hostile[3]["MATTHC"]
    assert [(e["field"], e["rule"]) for e in sql["errors"]] == [("MATTHC", "not_found")]
    assert portal.asked.count(hostile[3]["MATTHC"]) == 2
    assert not any(isinstance(c, str) and ("\x00" in c or len(c) > 64) for c in portal.asked)
    assert report.normalised == again.normalised > 0 and report.listed == again.listed
    assert len(store.dead_letters(catalogue.FLOW)) == len(letters)  # the second run repeated none


class RewrittenCatalogue(HostileCatalogue):
    """The real portal client, with some text fields of one procedure's detail rewritten."""

    def __init__(self, client, code, texts):
        super().__init__(client, [])
        self.code, self.texts = code, texts

    def get_procedure(self, code):
        detail = self.client.get_procedure(code)
        if code == self.code and detail is not None:
            detail = {**detail, **self.texts}
            detail["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][0]["PHILEPHI"][0]["MOTA"] = "fee" + SQL
        return detail


@pytest.mark.catalogue_size(40)
def test_sql_metacharacters_in_the_catalogue_reach_every_destination_verbatim(bus_env, tmp_path, monkeypatch):
    import json as _json

    from connectors.connection import Secret
    from connectors.ministry_db.replica import MinistryReplica
    from connectors.national_portal.client import NationalPortalClient
    from connectors.one_stop.client import OneStopClient
    from lienthong.flows import catalogue
    from tests.conftest import ONESTOP_KEY

    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       _json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    code = "2.000488.000.00.00.H49"
    texts = {"TENTTHC": "name" + SQL, "MOTA": "desc" + SQL + "\x00", "YEUCAU": "req" + SQL}
    client = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    onestop = OneStopClient(bus_env.onestop.url, Secret(ONESTOP_KEY))
    replica = MinistryReplica.from_connection(connection_from_env("ministry_db_default"))
    store = bus()
    try:
        pulled = catalogue.pull_catalogue(store, RewrittenCatalogue(client, code, texts), run_id="sqlcat-1")
        catalogue.push_catalogue(store, run_id="sqlcat-1", onestop=onestop)
        catalogue.push_catalogue(store, run_id="sqlcat-1", replica=replica)
        held_replica = replica.procedures(published_only=True)
        with replica.engine.connect() as conn:
            replica_tables = set(inspect(conn).get_table_names())
    finally:
        client.close()
        onestop.close()
        replica.dispose()
    assert pulled.normalised > 1 and not [r for r in pulled.rejected if r["record_key"] == code]
    held = {p["serviceCode"]: p for p in get(bus_env, "onestop", "/_state/procedures")["procedures"]}[code]
    assert held["serviceName"] == "name" + SQL
    assert held["channels"][0]["fees"][0]["feeName"] == "fee" + SQL
    row = held_replica[code]
    assert row["ten_tthc"] == "name" + SQL
    assert row["fees"][0]["mo_ta"] == "fee" + SQL
    assert (row["noi_dung"]["description"], row["noi_dung"]["requirements"]) == ("desc" + SQL + "\x00", "req" + SQL)
    assert {"tthc_thu_tuc", "tthc_phi_le_phi"} <= replica_tables
    with bus().engine.connect() as conn:
        from lienthong.store import catalogue_current

        record = conn.execute(select(catalogue_current.c.record).where(catalogue_current.c.procedure_code == code)
                              ).scalar_one()
    assert record["procedure_name"] == "name" + SQL and record["description"] == "desc" + SQL + "\x00"


@pytest.mark.catalogue_size(40)
def test_a_nul_in_a_procedure_name_is_refused_by_the_ministry_database_only(bus_env, tmp_path, monkeypatch):
    """The one-stop takes the NUL (JSON); PostgreSQL text cannot, so the ministry push dead-letters the
    procedure naming the column (on every backend alike) and delivers the rest of its batch."""
    import json as _json

    from connectors.connection import Secret
    from connectors.ministry_db.replica import MinistryReplica
    from connectors.national_portal.client import NationalPortalClient
    from connectors.one_stop.client import OneStopClient
    from lienthong.flows import catalogue
    from tests.conftest import ONESTOP_KEY

    monkeypatch.setenv("AIRFLOW_CONN_MINISTRY_DB_DEFAULT",
                       _json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ministry.db")}))
    code = "2.000488.000.00.00.H49"
    client = NationalPortalClient.from_connection(connection_from_env("national_portal_default"))
    onestop = OneStopClient(bus_env.onestop.url, Secret(ONESTOP_KEY))
    replica = MinistryReplica.from_connection(connection_from_env("ministry_db_default"))
    store = bus()
    try:
        pulled = catalogue.pull_catalogue(store, RewrittenCatalogue(client, code, {"TENTTHC": "Cấp\x00Phiếu"}),
                                          run_id="nul-1")
        catalogue.push_catalogue(store, run_id="nul-1", onestop=onestop)
        (pushed,) = catalogue.push_catalogue(store, run_id="nul-1", replica=replica)
        held_replica = replica.procedures(published_only=True)
    finally:
        client.close()
        onestop.close()
        replica.dispose()
    held = {p["serviceCode"]: p for p in get(bus_env, "onestop", "/_state/procedures")["procedures"]}
    assert held[code]["serviceName"] == "Cấp\x00Phiếu"
    assert code not in held_replica and len(held_replica) == pulled.normalised - 1 == pushed.upserted
    assert pushed.rejected == [{"record_key": code, "stage": "ministry", "errors": [
        {"field": "ten_tthc", "rule": "no_nul_character",
         "message": "the text holds a NUL character, which the ministry database cannot store"}]}]
    letter = [dl for dl in store.dead_letters(catalogue.FLOW) if dl["record_key"] == code]
    assert len(letter) == 1 and letter[0]["source_payload"]["procedure_name"] == "Cấp\x00Phiếu"
