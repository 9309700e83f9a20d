"""The one-stop stand-in's world: how dossiers are born and move (docs/wire/onestop.md).

Pure functions over plain dicts: given the seed data, a seeded RNG and the world clock they build
snapshots in the one-stop wire format. The server (``app.py``) owns storage and numbering.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mocks.server import iso, seeded_rng

__all__ = [
    "DEFECT_KINDS",
    "FINAL_STATUSES",
    "LEGAL_TRANSITIONS",
    "STATUSES",
    "Generator",
]

STATUSES = ("receiving", "new", "processing", "waiting", "paying", "denied", "cancelled", "unresolved",
            "releasing", "done", "interoperating")
FINAL_STATUSES = frozenset({"done", "denied", "cancelled", "unresolved"})

#: Legal transitions (onestop.md) with the weights the world uses to pick among them.
LEGAL_TRANSITIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "receiving": (("new", 85), ("denied", 15)),
    "new": (("processing", 100),),
    "processing": (("releasing", 58), ("waiting", 17), ("paying", 17), ("unresolved", 8)),
    "waiting": (("processing", 80), ("cancelled", 20)),
    "paying": (("processing", 100),),
    "releasing": (("done", 100),),
}

#: Defects carried by every 20th created dossier, in this cycle.
DEFECT_KINDS = ("missing_receive_date", "unmapped_status", "empty_service_code")

# (role of the actor, action text, note kind or fixed note)
_STEPS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("receiving", "new"): ("desk", "Tiếp nhận hồ sơ", "Hồ sơ đầy đủ, hợp lệ; tiếp nhận và hẹn ngày trả kết quả"),
    ("receiving", "denied"): ("desk", "Từ chối tiếp nhận hồ sơ", "@denied"),
    ("new", "processing"): ("desk", "Chuyển hồ sơ đến phòng chuyên môn", "Chuyển xử lý theo quy trình"),
    ("processing", "releasing"): ("leadership", "Phê duyệt kết quả", "Đã ký duyệt, chuyển Bộ phận Một cửa trả kết quả"),
    ("processing", "waiting"): ("processing", "Yêu cầu bổ sung hồ sơ", "@waiting"),
    ("processing", "paying"): ("processing", "Yêu cầu thực hiện nghĩa vụ tài chính",
                               "Đề nghị người nộp thực hiện nghĩa vụ tài chính theo thông báo"),
    ("processing", "unresolved"): ("leadership", "Dừng xử lý hồ sơ", "@unresolved"),
    ("waiting", "processing"): ("desk", "Tiếp nhận hồ sơ bổ sung", "Người nộp đã bổ sung đầy đủ giấy tờ"),
    ("waiting", "cancelled"): ("desk", "Rút hồ sơ theo yêu cầu", "@cancelled"),
    ("paying", "processing"): ("desk", "Xác nhận hoàn thành nghĩa vụ tài chính", "Đã nộp đủ các khoản theo thông báo"),
    ("releasing", "done"): ("desk", "Trả kết quả", "Đã trả kết quả cho người nộp hồ sơ"),
}

_TITLES = {"desk": "Cán bộ một cửa", "processing": "Chuyên viên", "leadership": "Phó Giám đốc"}
_DISTRICT_TITLES = {"desk": "Cán bộ một cửa", "processing": "Chuyên viên", "leadership": "Phó Chủ tịch UBND"}


def ascii_fold(text: str) -> str:
    """Strip Vietnamese diacritics (for e-mail addresses)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def add_working_days(start: datetime, days: int) -> datetime:
    t = start
    added = 0
    while added < days:
        t += timedelta(days=1)
        if t.weekday() < 5:
            added += 1
    return t


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class Applicant:
    name: str
    type: str
    id_type: str
    id_no: str
    email: str | None
    phone: str | None
    address: str


class Generator:
    """Builds dossier snapshots from the seed data.

    Args:
        seed_data: the loaded ``fixtures/seed/*.yaml``.
        seed: the world seed; every random choice derives from it.
    """

    def __init__(self, seed_data: dict[str, Any], seed: int | str):
        self.data = seed_data
        self.seed = seed
        self.province = seed_data["province"]
        self.units = {u["code"]: u for u in seed_data["units"]}
        self.procedures = {p["code"]: p for p in seed_data["procedures"]}
        self.unit_codes = [u["code"] for u in seed_data["units"]]
        self.procs_by_unit: dict[str, list[str]] = {code: [] for code in self.unit_codes}
        for proc in seed_data["procedures"]:
            for unit in proc["units"]:
                if unit not in self.procs_by_unit:
                    raise ValueError(f"procedure {proc['code']} names unknown unit {unit}")
                self.procs_by_unit[unit].append(proc["code"])
        empty = [u for u, procs in self.procs_by_unit.items() if not procs]
        if empty:
            raise ValueError(f"units without procedures in the seed file: {', '.join(empty)}")
        self._staff: dict[str, dict[str, str]] = {}

    # -- people --------------------------------------------------------------------------------
    def person_name(self, rng: random.Random) -> tuple[str, bool]:
        names = self.data["names"]
        male = rng.random() < 0.5
        middle = rng.choice(names["middle_male" if male else "middle_female"])
        given = rng.choice(names["given_male" if male else "given_female"])
        return f"{rng.choice(names['family'])} {middle} {given}", male

    def staff(self, unit_code: str) -> dict[str, str]:
        """The (stable) people who handle dossiers at a unit, by role."""
        if unit_code not in self._staff:
            rng = seeded_rng(self.seed, "staff", unit_code)
            self._staff[unit_code] = {role: self.person_name(rng)[0] for role in ("desk", "processing", "leadership")}
        return self._staff[unit_code]

    def submitter(self, applicant: Applicant, dossier_no: str) -> str:
        """The person who submitted online: the citizen, or the person who filed for a business,
        agency or organisation (a progress actor is a person's name, at most 50 characters). Drawn
        from its own RNG so the dossier's other data does not depend on it."""
        if applicant.type == "citizen":
            name = applicant.name
        else:
            name = self.person_name(seeded_rng(self.seed, "submitter", dossier_no))[0]
        return name if 0 < len(name) <= 50 else "Cán bộ một cửa"

    def address(self, rng: random.Random) -> str:
        addr = self.data["addresses"]
        district = rng.choice(addr["districts"])
        commune = rng.choice(district["communes"])
        if commune.startswith("xã"):
            place = f"Thôn {rng.randint(1, 9)}"
        else:
            place = f"{rng.randint(1, 250)} {rng.choice(addr['streets'])}"
        return f"{place}, {commune}, {district['name']}, {self.province['full_name']}"

    def applicant(self, rng: random.Random, kind: str) -> Applicant:
        names = self.data["names"]
        phone = "09" + "".join(str(rng.randint(0, 9)) for _ in range(8))
        tax_no = self.province["tax_prefix"] + "".join(str(rng.randint(0, 9)) for _ in range(7))
        if kind == "business":
            brand = rng.choice(names["business_brands"])
            name = f"{rng.choice(names['business_forms'])} {rng.choice(names['business_words'])} {brand}"
            email = f"lienhe.{ascii_fold(brand).lower().replace(' ', '')}{rng.randint(1, 99)}@gmail.com"
            return Applicant(name, kind, "mst", tax_no, email, phone, self.address(rng))
        if kind in ("organization", "agency"):
            person, _ = self.person_name(rng)
            name = f"{rng.choice(names['organization_prefixes'])} {person}"
            return Applicant(name, kind, "mst", tax_no, None, phone, self.address(rng))
        name, male = self.person_name(rng)
        year = rng.randint(1950, 2005)
        if rng.random() < 0.06 and year < 1990:
            id_type, id_no = "cmnd", "205" + "".join(str(rng.randint(0, 9)) for _ in range(6))
        else:
            century_sex = (0 if male else 1) + (2 if year >= 2000 else 0)
            id_type = "cccd"
            id_no = (self.province["id_prefix"] + str(century_sex) + f"{year % 100:02d}"
                     + "".join(str(rng.randint(0, 9)) for _ in range(6)))
        email = None
        if rng.random() < 0.6:
            parts = ascii_fold(name).lower().split()
            email = f"{parts[-1]}{parts[0]}{rng.randint(10, 9999)}@gmail.com"
        return Applicant(name, "citizen", id_type, id_no, email, phone if rng.random() < 0.95 else None,
                         self.address(rng))

    # -- progress entries ------------------------------------------------------------------------
    def _note(self, rng: random.Random, note: str) -> str:
        return rng.choice(self.data["notes"][note[1:]]) if note.startswith("@") else note

    def _entry(self, snapshot: dict[str, Any], *, role: str, action: str, note: str, status: str,
               started: str | None, finished: datetime, actor: str | None = None,
               title: str | None = None, department: str | None = None) -> dict[str, Any]:
        unit = self.units[snapshot["govAgencyCode"]]
        titles = _TITLES if unit.get("level", 1) == 1 else _DISTRICT_TITLES
        return {
            "stepId": len(snapshot["progress"]) + 1,
            "actor": actor or self.staff(unit["code"])[role],
            "actorTitle": title or titles[role],
            "department": department or unit["departments"][role],
            "action": action,
            "note": note,
            "status": status,
            "startedAt": started or iso(finished),
            "finishedAt": iso(finished),
            "dueAt": snapshot.get("dueDate"),
        }

    # -- birth -----------------------------------------------------------------------------------
    def pick_unit_and_procedure(self, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
        unit = self.units[rng.choice(self.unit_codes)]
        proc = self.procedures[rng.choice(self.procs_by_unit[unit["code"]])]
        return unit, proc

    def new_dossier(self, rng: random.Random, *, unit: dict[str, Any], proc: dict[str, Any], dossier_no: str,
                    now: datetime, defect: str | None, next_receipt: Any) -> dict[str, Any]:
        """A new dossier's first snapshot (version 1).

        ``next_receipt()`` returns the unit's next receipt number (called only when a receipt is given).
        """
        applicant = self.applicant(rng, rng.choice(proc["applicant_types"]))
        if defect == "missing_receive_date":
            channel = "counter"  # received at the desk, so the missing receiveDate is a real defect
        else:
            channel = rng.choices(("online", "counter", "postal"), weights=(45, 45, 10))[0]
        received = channel != "online"
        status = "interoperating" if defect == "unmapped_status" else ("new" if received else "receiving")
        if defect == "unmapped_status":
            received = True
        fees = []
        for fee in proc.get("fees") or []:
            if int(fee["amount"]) <= 0:
                continue
            paid_online = channel == "online" and rng.random() < 0.5
            fees.append({
                "feeCode": fee["code"], "feeName": fee["name"], "feeKind": fee["kind"], "amount": int(fee["amount"]),
                "paid": received or paid_online, "paidOnline": paid_online,
            })
        base_url = self.province["file_base_url"]
        files = []
        for part_no, paper in enumerate(proc.get("papers") or [], start=1):
            file_id = _uuid(rng)
            files.append({
                "fileId": file_id, "displayName": f"{paper}.pdf", "partNo": f"TP{part_no}",
                "url": f"{base_url}/{file_id}.pdf", "removed": False, "digitized": rng.random() < 0.7,
            })
        snapshot: dict[str, Any] = {
            "dossierNo": dossier_no,
            "receiptNo": next_receipt() if received else None,
            "serviceCode": "" if defect == "empty_service_code" else proc["code"],
            "serviceName": proc["name"],
            "domainCode": proc["domain"]["code"],
            "domainName": proc["domain"]["name"],
            "govAgencyCode": unit["code"],
            "govAgencyName": unit["name"],
            "handlingUnitName": unit["name"],
            "applicantName": applicant.name,
            "applicantType": applicant.type,
            "applicantIdType": applicant.id_type,
            "applicantIdNo": applicant.id_no,
            "contactEmail": applicant.email,
            "contactTelNo": applicant.phone,
            "address": applicant.address,
            "briefNote": f"{proc['name']} - {applicant.name}",
            "submissionChannel": channel,
            "resultDelivery": "postal" if (channel == "postal" or rng.random() < 0.15) else "counter",
            "dossierStatus": status,
            "submitDate": iso(now),
            "receiveDate": iso(now) if received and defect != "missing_receive_date" else None,
            "dueDate": iso(add_working_days(now, int(proc["processing_days"]))) if received else None,
            "finishDate": None,
            "releaseDate": None,
            "files": files,
            "fees": fees,
            "results": [],
            "progress": [],
            "version": 1,
            "modifiedAt": iso(now),
        }
        if defect == "unmapped_status":
            entry = self._entry(snapshot, role="desk", action="Tiếp nhận và chuyển hồ sơ liên thông",
                                note=self._note(rng, "@interoperating"), status=status, started=None, finished=now)
        elif channel == "online":
            entry = self._entry(snapshot, role="desk", action="Nộp hồ sơ trực tuyến",
                                note="Người nộp đã nộp hồ sơ qua Cổng Dịch vụ công", status=status, started=None,
                                finished=now, actor=self.submitter(applicant, dossier_no), title="Người nộp hồ sơ",
                                department=self.province["portal_name"])
        elif channel == "postal":
            entry = self._entry(snapshot, role="desk", action="Tiếp nhận hồ sơ qua dịch vụ bưu chính công ích",
                                note="Hồ sơ đầy đủ, hợp lệ; tiếp nhận và hẹn ngày trả kết quả", status=status,
                                started=None, finished=now)
        else:
            entry = self._entry(snapshot, role="desk", action="Tiếp nhận hồ sơ trực tiếp",
                                note="Hồ sơ đầy đủ, hợp lệ; tiếp nhận và hẹn ngày trả kết quả", status=status,
                                started=None, finished=now)
        snapshot["progress"].append(entry)
        return snapshot

    # -- movement --------------------------------------------------------------------------------
    @staticmethod
    def pick_target(rng: random.Random, status: str) -> str:
        options = LEGAL_TRANSITIONS[status]
        return rng.choices([t for t, _ in options], weights=[w for _, w in options])[0]

    def move(self, rng: random.Random, previous: dict[str, Any], target: str, *, now: datetime,
             defect: str | None, next_receipt: Any) -> dict[str, Any]:
        """The snapshot after one legal transition of ``previous`` to ``target``."""
        source = previous["dossierStatus"]
        if target not in dict(LEGAL_TRANSITIONS.get(source, ())):
            raise ValueError(f"illegal transition {source} -> {target} for {previous['dossierNo']}")
        snap = _deep_copy(previous)
        proc = self.procedures.get(snap["serviceCode"]) or self._proc_by_name(snap["serviceName"])
        if source == "receiving":  # new or denied: reception decided now
            snap["receiveDate"] = iso(now)
            if target == "new":
                snap["receiptNo"] = next_receipt()
                snap["dueDate"] = iso(add_working_days(now, int(proc["processing_days"])))
                for fee in snap["fees"]:
                    fee["paid"] = True
        if source == "paying":
            for fee in snap["fees"]:
                fee["paid"] = True
        if target == "releasing":
            snap["finishDate"] = iso(now)
            result = proc["result"]
            doc_id = _uuid(rng)
            snap["results"] = [{
                "docId": doc_id, "docName": result["name"], "partNo": "KQ1",
                "url": f"{self.province['file_base_url']}/{doc_id}.pdf", "resultCode": result["code"],
            }]
        if target in ("denied", "unresolved", "cancelled"):
            snap["finishDate"] = iso(now)
        if target == "done":
            snap["releaseDate"] = iso(now)
        if defect == "missing_receive_date":
            snap["receiveDate"] = None
        if defect == "empty_service_code":
            snap["serviceCode"] = ""
        role, action, note = _STEPS[(source, target)]
        snap["progress"].append(self._entry(snap, role=role, action=action, note=self._note(rng, note), status=target,
                                            started=previous["modifiedAt"], finished=now))
        snap["dossierStatus"] = target
        snap["version"] = previous["version"] + 1
        snap["modifiedAt"] = iso(now)
        return snap

    def _proc_by_name(self, name: str) -> dict[str, Any]:
        for proc in self.procedures.values():
            if proc["name"] == name:
                return proc
        raise KeyError(name)


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj
