"""Fixtures for the stand-in peers' tests: real servers on ephemeral loopback ports."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mocks.national_portal import DEFAULT_ACCOUNT, NationalPortalMock
from mocks.one_stop import DEFAULT_API_KEY, OneStopMock

TIMEOUT = 5


class OneStopCalls:
    """Raw HTTP access to a one-stop mock (tests see the wire, not a client library)."""

    def __init__(self, mock: OneStopMock):
        self.mock = mock
        self.url = mock.url
        self.headers = {"X-Api-Key": DEFAULT_API_KEY}

    def get(self, path: str, *, key: bool = True, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params or None, headers=self.headers if key else {},
                            timeout=TIMEOUT)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=TIMEOUT)

    def state(self) -> dict[str, Any]:
        return self.get("/_state", key=False).json()

    def dossiers(self) -> list[dict[str, Any]]:
        return self.get("/_state/dossiers", key=False).json()["dossiers"]

    def events(self) -> list[dict[str, Any]]:
        return self.get("/_state/events", key=False).json()["events"]

    def advance(self, new: int = 0, changes: int = 0) -> dict[str, Any]:
        response = self.post("/_admin/advance", {"new": new, "changes": changes})
        assert response.status_code == 200, response.text
        return response.json()

    def feed(self, limit: int = 100) -> list[dict[str, Any]]:
        """Every event, read page by page through the public feed."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["after"] = cursor
            page = self.get("/api/v1/dossiers/changes", **params).json()
            items.extend(page["items"])
            cursor = page["nextCursor"]
            if not page["hasMore"]:
                return items


class PortalCalls:
    """Raw HTTP access to a national portal mock: log-in, envelope, service calls."""

    def __init__(self, mock: NationalPortalMock, username: str = DEFAULT_ACCOUNT.username,
                 password: str = DEFAULT_ACCOUNT.password, unit: str = DEFAULT_ACCOUNT.unit,
                 dstcode: str | None = "DVCQG"):
        self.mock = mock
        self.url = mock.url
        self.username, self.password, self.unit = username, password, unit
        self.headers = {"dstcode": dstcode} if dstcode else {}
        self.session: str | None = None

    def login(self) -> dict[str, Any]:
        answer = requests.post(self.url + "/auth", json={"username": self.username, "password": self.password},
                               headers=self.headers, timeout=TIMEOUT).json()
        self.session = answer.get("session")
        return answer

    def raw(self, service: str, *, endpoint: str = "integration", headers: dict[str, str] | None = None,
            **fields: Any) -> requests.Response:
        envelope = {"session": self.session, "madonvi": self.unit, "service": service, **fields}
        return requests.post(f"{self.url}/{endpoint}", json=envelope,
                             headers=self.headers if headers is None else headers, timeout=TIMEOUT)

    def call(self, service: str, **kwargs: Any) -> dict[str, Any]:
        response = self.raw(service, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def sync(self, records: list[dict[str, Any]], *, updating: bool = False) -> dict[str, Any]:
        return self.call("DongBoHoSoMC", isUpdating="True" if updating else "False", data=records)

    def progress(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        return self.call("CapNhatTienDoHoSoMC", data=entries)

    def lookup(self, ma_ho_so: str) -> dict[str, Any]:
        return self.call("TraCuuHoSo", mahoso=ma_ho_so)

    def state(self) -> dict[str, Any]:
        return requests.get(self.url + "/_state", timeout=TIMEOUT).json()

    def held(self) -> list[dict[str, Any]]:
        """The records the portal holds (as last applied), in creation order."""
        return requests.get(self.url + "/_state/dossiers", timeout=TIMEOUT).json()["dossiers"]

    def detail(self, ma_ho_so: str) -> requests.Response:
        return requests.get(f"{self.url}/_state/dossiers/{ma_ho_so}", timeout=TIMEOUT)

    def calls(self) -> dict[str, Any]:
        return requests.get(self.url + "/_state/calls", timeout=TIMEOUT).json()

    def admin(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.url + "/_admin/" + path, json=body, timeout=TIMEOUT)


BASE_RECORD: dict[str, Any] = {
    "MaHoSo": "000.00.01.H49-261102-0001",
    "MaTTHC": "2.000488.000.00.00.H49",
    "TenTTHC": "Cấp Phiếu lý lịch tư pháp cho công dân Việt Nam, người nước ngoài đang cư trú tại Việt Nam",
    "MaLinhVuc": "G09-TP06",
    "TenLinhVuc": "Lý lịch tư pháp",
    "KenhThucHien": "1",
    "SoBienNhan": "01-2026-000001",
    "ChuHoSo": "Nguyễn Thị Thu Hương",
    "SoGiayToChuHoSo": "049186001234",
    "LoaiDoiTuong": "1",
    "MaDoiTuong": "",
    "TrichYeuHoSo": "Cấp Phiếu lý lịch tư pháp số 1 - Nguyễn Thị Thu Hương",
    "NgayTiepNhan": "20261102081500",
    "NgayHenTra": "20261116081500",
    "TrangThaiHoSo": "2",
    "NgayTra": "",
    "HinhThuc": "0",
    "NgayKetThucXuLy": "",
    "DonViXuLy": "Sở Tư pháp tỉnh Quảng Nam",
    "NgayNopHoSo": "20261102081500",
    "DinhDanhCHS": [{"LoaiDinhDanh": "1", "SoDinhDanh": "049186001234"}],
    "TaiLieuNop": [{
        "TepDinhKemId": "f-1", "TenTepDinhKem": "Tờ khai yêu cầu cấp Phiếu lý lịch tư pháp.pdf", "IsDeleted": "False",
        "MaThanhPhanHoSo": "", "DuongDanTaiTepTin": "https://dichvucong.quangnam.gov.vn/dvc/tep/f-1.pdf",
    }],
    "DanhSachLePhi": [{"TenPhiLePhi": "Phí cung cấp thông tin lý lịch tư pháp", "MaPhiLePhi": "1",
                       "HinhThucThu": "1", "Gia": "200000", "LoaiPhiLePhi": "1"}],
    "DanhSachGiayToKetQua": [],
}


BASE_ENTRY: dict[str, str] = {
    "MaHoSo": "000.00.01.H49-261102-0001",
    "NguoiXuLy": "Trần Thị Mỹ Duyên",
    "ChucDanh": "Cán bộ một cửa",
    "ThoiDiemXuLy": "20261102081500",
    "PhongBanXuLy": "Bộ phận Tiếp nhận và Trả kết quả",
    "NoiDungXuLy": "Tiếp nhận hồ sơ trực tiếp-Hồ sơ đầy đủ, hợp lệ; tiếp nhận và hẹn ngày trả kết quả",
    "TrangThai": "2",
    "NgayBatDau": "20261102081500",
    "NgayKetThucTheoQuyDinh": "20261116081500",
}


def make_entry(ma_ho_so: str = BASE_ENTRY["MaHoSo"], **overrides: Any) -> dict[str, Any]:
    """A valid CapNhatTienDoHoSoMC progress record (keyword arguments override fields)."""
    entry: dict[str, Any] = dict(BASE_ENTRY)
    entry["MaHoSo"] = ma_ho_so
    entry.update(overrides)
    return entry


def make_record(ma_ho_so: str = BASE_RECORD["MaHoSo"], **overrides: Any) -> dict[str, Any]:
    record = copy.deepcopy(BASE_RECORD)
    record["MaHoSo"] = ma_ho_so
    record.update(overrides)
    return record


@pytest.fixture
def onestop(tmp_path: Path) -> Iterator[OneStopMock]:
    mock = OneStopMock(tmp_path / "onestop-state", port=0)
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def os_calls(onestop: OneStopMock) -> OneStopCalls:
    return OneStopCalls(onestop)


@pytest.fixture
def onestop_factory(tmp_path: Path) -> Iterator[Callable[..., OneStopCalls]]:
    started: list[OneStopMock] = []

    def make(name: str = "w", **kwargs: Any) -> OneStopCalls:
        mock = OneStopMock(kwargs.pop("state_dir", tmp_path / name), port=0, **kwargs)
        mock.start()
        started.append(mock)
        return OneStopCalls(mock)

    yield make
    for mock in started:
        mock.stop()


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[NationalPortalMock]:
    mock = NationalPortalMock(tmp_path / "portal-state", port=0)
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def pc(portal: NationalPortalMock) -> PortalCalls:
    calls = PortalCalls(portal)
    assert calls.login()["error_code"] == 0
    return calls


@pytest.fixture
def portal_factory(tmp_path: Path) -> Iterator[Callable[..., NationalPortalMock]]:
    started: list[NationalPortalMock] = []

    def make(**kwargs: Any) -> NationalPortalMock:
        kwargs.setdefault("state_dir", tmp_path / "portal-factory")
        mock = NationalPortalMock(kwargs.pop("state_dir"), port=0, **kwargs)
        mock.start()
        started.append(mock)
        return mock

    yield make
    for mock in started:
        mock.stop()


@pytest.fixture
def record() -> Callable[..., dict[str, Any]]:
    """Factory of a valid DongBoHoSoMC record (keyword arguments override fields)."""
    return make_record


@pytest.fixture
def entry() -> Callable[..., dict[str, Any]]:
    """Factory of a valid CapNhatTienDoHoSoMC progress record (keyword arguments override fields)."""
    return make_entry


@pytest.fixture
def portal_calls() -> type[PortalCalls]:
    return PortalCalls
