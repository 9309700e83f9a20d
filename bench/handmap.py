"""Hand-written Python doing what the YAML mappings do — the benchmark's references.

:func:`map_dossier` and :func:`map_progress` fill the same portal fields, with the same checks
(required values, patterns, lengths, code tables, and the types the chain's transforms check: a
fee's amount a whole number of đồng, yes/no flags true or false, ids text or whole numbers), as ``onestop__national_portal/dossier`` and
``.../progress``, written the way a careful integrator would write them by hand: the reference
the mapping engine is measured against (scenario 4). The harness checks that they give exactly
the engine's output on every template before timing anything.

:func:`naive_dossier` / :func:`naive_progress` are the same fields written the way simple
integrations do it: the code tables built afresh for every record (the "naive way" of scenario 1).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["map_dossier", "map_progress", "naive_dossier", "naive_progress"]

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
STATUS = {"receiving": "1", "new": "2", "denied": "3", "processing": "4", "waiting": "5", "paying": "6",
          "cancelled": "7", "unresolved": "8", "releasing": "9", "done": "10"}
APPLICANT = {"citizen": "1", "business": "2", "agency": "3", "organization": "4"}
CHANNEL = {"counter": "1", "online": "2", "postal": "3"}
DELIVERY = {"counter": "0", "postal": "1"}
FEE_KIND = {"fee": "1", "charge": "2"}
ID_KIND = {"cccd": "1", "cmnd": "2"}
MA_HO_SO = re.compile(r"\d{3}\.\d{2}\.\d{2}\.H\d{2}-\d{6}-\d{4}")
MA_TTHC = re.compile(r"[123]\.\d{6}\.000\.00\.00\.H\d{2}")
SO_DINH_DANH = re.compile(r"\d{9}|\d{12}")


class Invalid(ValueError):
    pass


def _text(value: Any) -> str:
    return "" if value is None else unicodedata.normalize("NFC", value)


def _required(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{name} is required")
    return unicodedata.normalize("NFC", value)


def _date(value: Any) -> str:
    if not value:
        return ""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise Invalid(f"{value} has no UTC offset")
    return moment.astimezone(TZ).strftime("%Y%m%d%H%M%S")


def _string(value: Any, name: str) -> str:
    """An id or part number: text, or a whole number written in decimal; missing is empty."""
    if value is None:
        return ""
    if value.__class__ is str:
        return value
    if value.__class__ is int:
        return str(value)
    raise Invalid(f"{name}: expected text or a whole number")


def _flag(value: Any, name: str, default: bool | None = None) -> bool | None:
    """A yes/no: true, false, or missing (then ``default``)."""
    if value is None:
        return default
    if value is True or value is False:
        return value
    raise Invalid(f"{name}: expected true or false")


def _amount(value: Any, name: str) -> str:
    """A whole number of đồng, zero or more."""
    if value.__class__ is not int:
        raise Invalid(f"{name}: expected a whole number of đồng")
    if value < 0:
        raise Invalid(f"{name}: negative")
    return str(value)


def _code(table: dict[str, str], value: Any, name: str) -> str:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise Invalid(f"{name}: {value!r} is not in the code table") from None


def map_dossier(d: dict[str, Any], tables: tuple[dict[str, str], ...] | None = None) -> dict[str, Any]:
    status_t, applicant_t, channel_t, delivery_t, fee_t, id_t = tables or (
        STATUS, APPLICANT, CHANNEL, DELIVERY, FEE_KIND, ID_KIND)
    ma = _required(d.get("dossierNo"), "MaHoSo")
    if not MA_HO_SO.fullmatch(ma):
        raise Invalid("MaHoSo: pattern")
    ma_tthc = _required(d.get("serviceCode"), "MaTTHC")
    if not MA_TTHC.fullmatch(ma_tthc):
        raise Invalid("MaTTHC: pattern")
    brief = _required(d.get("briefNote"), "TrichYeuHoSo")
    if len(brief) > 1000:
        raise Invalid("TrichYeuHoSo: too long")
    status = d.get("dossierStatus")
    received = d.get("receiveDate") or (d.get("submitDate") if status == "receiving" else None)
    if not received:
        raise Invalid("NgayTiepNhan is required")
    ids = []
    if d.get("applicantIdType") != "mst":
        number = _required(d.get("applicantIdNo"), "SoDinhDanh")
        if not SO_DINH_DANH.fullmatch(number):
            raise Invalid("SoDinhDanh: pattern")
        ids.append({"LoaiDinhDanh": _code(id_t, d.get("applicantIdType"), "LoaiDinhDanh"), "SoDinhDanh": number})
    denied = [p.get("finishedAt") for p in d.get("progress") or [] if p.get("status") == "denied"]
    files = []
    digitized = False
    for f in d.get("files") or []:
        file_id = _required(_string(f.get("fileId"), "TepDinhKemId"), "TepDinhKemId")
        name = _required(f.get("displayName"), "TenTepDinhKem")
        if len(name) > 4000:
            raise Invalid("TenTepDinhKem: too long")
        removed = _flag(f.get("removed"), "IsDeleted", False)
        part = _string(f.get("partNo"), "MaThanhPhanHoSo")
        url = f.get("url")
        if not url and not removed:
            raise Invalid("DuongDanTaiTepTin is required")
        scanned = _flag(f.get("digitized"), "DuocSoHoa", False)
        digitized = digitized or scanned
        files.append({
            "TepDinhKemId": file_id,
            "TenTepDinhKem": name,
            "IsDeleted": "True" if removed else "False",
            "MaThanhPhanHoSo": part,
            "DuongDanTaiTepTin": _text(url),
            "DuocSoHoa": "1" if scanned else "0",
        })
    fees = []
    paid_online = False
    for f in d.get("fees") or []:
        if f.get("paid") is not True:
            continue
        fees.append({
            "TenPhiLePhi": _required(f.get("feeName"), "TenPhiLePhi"),
            "MaPhiLePhi": _required(_string(f.get("feeCode"), "MaPhiLePhi"), "MaPhiLePhi"),
            "Gia": _amount(f.get("amount"), "Gia"),
            "LoaiPhiLePhi": _code(fee_t, f.get("feeKind"), "LoaiPhiLePhi"),
        })
        paid_online = _flag(f.get("paidOnline"), "DuocThanhToanTrucTuyen") is True or paid_online
    results = []
    for r in d.get("results") or []:
        doc_id = _required(_string(r.get("docId"), "GiayToId"), "GiayToId")
        name = _required(r.get("docName"), "TenGiayTo")
        if len(name) > 2000:
            raise Invalid("TenGiayTo: too long")
        results.append({
            "GiayToId": doc_id,
            "TenGiayTo": name,
            "MaThanhPhanHoSo": _string(r.get("partNo"), "MaThanhPhanHoSo"),
            "DuongDanTepTinKetQua": _required(r.get("url"), "DuongDanTepTinKetQua"),
            "MaGiayToKetQua": _text(r.get("resultCode")),
        })
    return {
        "MaHoSo": ma,
        "SoBienNhan": _text(d.get("receiptNo")),
        "MaTTHC": ma_tthc,
        "TenTTHC": _required(d.get("serviceName"), "TenTTHC"),
        "MaLinhVuc": _required(d.get("domainCode"), "MaLinhVuc"),
        "TenLinhVuc": _required(d.get("domainName"), "TenLinhVuc"),
        "KenhThucHien": _code(channel_t, d.get("submissionChannel"), "KenhThucHien"),
        "ChuHoSo": _text(d.get("applicantName")),
        "SoGiayToChuHoSo": _text(d.get("applicantIdNo")),
        "LoaiDoiTuong": _code(applicant_t, d.get("applicantType"), "LoaiDoiTuong"),
        "Email": _text(d.get("contactEmail")),
        "SoDienThoai": _text(d.get("contactTelNo")),
        "DinhDanhCHS": ids,
        "TrichYeuHoSo": brief,
        "TrangThaiHoSo": _code(status_t, status, "TrangThaiHoSo"),
        "NgayNopHoSo": _date(d.get("submitDate")),
        "NgayTiepNhan": _date(received),
        "NgayHenTra": _date(d.get("dueDate")),
        "NgayKetThucXuLy": _date(d.get("releaseDate")),
        "NgayTra": _date(d.get("finishDate")),
        "NgayTuChoi": _date(denied[-1]) if denied else "",
        "HinhThuc": _code(delivery_t, d.get("resultDelivery"), "HinhThuc"),
        "DonViXuLy": _required(d.get("handlingUnitName"), "DonViXuLy"),
        "HoSoCoThanhPhanSoHoa": "1" if digitized else "0",
        "DuocThanhToanTrucTuyen": "1" if paid_online else "0",
        "TaiLieuNop": files,
        "DanhSachLePhi": fees,
        "DanhSachGiayToKetQua": results,
    }


def map_progress(e: dict[str, Any], status_table: dict[str, str] | None = None) -> dict[str, Any]:
    ma = _required(e.get("dossierNo"), "MaHoSo")
    if not MA_HO_SO.fullmatch(ma):
        raise Invalid("MaHoSo: pattern")
    actor = _required(e.get("actor"), "NguoiXuLy")
    if len(actor) > 50:
        raise Invalid("NguoiXuLy: too long")
    when = e.get("finishedAt") or e.get("startedAt")
    if not when:
        raise Invalid("ThoiDiemXuLy is required")
    content = "-".join(p for p in (e.get("action"), e.get("note")) if p and p.strip())
    content = _required(content, "NoiDungXuLy")
    if len(content) > 2000:
        raise Invalid("NoiDungXuLy: too long")
    return {
        "MaHoSo": ma,
        "NguoiXuLy": actor,
        "ChucDanh": _text(e.get("actorTitle")),
        "ThoiDiemXuLy": _date(when),
        "PhongBanXuLy": _text(e.get("department")),
        "NoiDungXuLy": content,
        "TrangThai": _code(status_table or STATUS, e.get("status"), "TrangThai"),
        "NgayBatDau": _date(e.get("startedAt")),
        "NgayKetThucTheoQuyDinh": _date(e.get("dueAt")),
    }


def naive_dossier(d: dict[str, Any]) -> dict[str, Any]:
    """Simple integrations rebuild their code tables for every record."""
    tables = ({"receiving": "1", "new": "2", "denied": "3", "processing": "4", "waiting": "5", "paying": "6",
               "cancelled": "7", "unresolved": "8", "releasing": "9", "done": "10"},
              {"citizen": "1", "business": "2", "agency": "3", "organization": "4"},
              {"counter": "1", "online": "2", "postal": "3"}, {"counter": "0", "postal": "1"},
              {"fee": "1", "charge": "2"}, {"cccd": "1", "cmnd": "2"})
    return map_dossier(d, tables)


def naive_progress(e: dict[str, Any]) -> dict[str, Any]:
    return map_progress(e, {"receiving": "1", "new": "2", "denied": "3", "processing": "4", "waiting": "5",
                            "paying": "6", "cancelled": "7", "unresolved": "8", "releasing": "9", "done": "10"})
