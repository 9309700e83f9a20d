"""The portal stand-in's catalogue side (contract §2.1, §4.5, §4.6): LayDanhSachTTHC, LayThuTuc, LayDVC,
LayDanhMucCoQuan, LayDanhMucLinhVuc, the publish door and the catalogue test doors.

A mixin of :class:`mocks.national_portal.app.NationalPortalMock`. The generated catalogue
(:mod:`mocks.national_portal.catalogue`) is written into the state file the first time anything reads it,
then served and changed from there.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mocks.national_portal import catalogue as cat
from mocks.national_portal.rules import lookup_parameter
from mocks.server import BadJson, Request, Response, StateDB, dumps, json_response, seeded_rng

CATALOGUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalogue (
    idx INTEGER PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    trang_thai INTEGER NOT NULL,
    defect TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    record TEXT NOT NULL,
    changes TEXT NOT NULL DEFAULT '[]'
);
"""

MAX_PUBLISH = 500
AMEND_KINDS = ("name", "fee", "time", "legal")
_FEE_PATH = "CACHTHUCTHUCHIEN[].THOIGIAN[].PHILEPHI"
_AMEND_SUFFIX = re.compile(r" \(sửa đổi, bổ sung lần \d+\)$")

#: LayDVC.APDUNGDVC.MUCDO (I): the old "mức độ" ints and the newer Decree 42/2022 words, mixed on purpose.
OLD_LEVELS = (2, 3, 4)
NEW_LEVELS = ("Một phần", "Toàn trình")


def dvc_level(seed: int | str, code: str) -> int | str:
    """MUCDO of a procedure: 65 % old ints 2/3/4 (weights 20/45/35), 35 % ``"Một phần"``/``"Toàn trình"``."""
    rng = seeded_rng(seed, "dvc", code)
    if rng.random() < 0.65:
        return rng.choices(OLD_LEVELS, weights=(20, 45, 35))[0]
    return rng.choice(NEW_LEVELS)


def _amount_of(text: str) -> int:
    digits = re.sub(r"[^0-9]", "", text.split("/")[0])
    return int(digits) if digits else 0


class CatalogueMixin:
    """Catalogue services and doors; expects the attributes of ``NationalPortalMock``."""

    catalogue_size: int
    seed: int
    seed_file: Any

    # -- storage -----------------------------------------------------------------------------
    def _generated(self) -> cat.Catalogue:
        return cat.cached(self.seed_file, self.seed, self.catalogue_size)

    def _ensure_catalogue(self, db: StateDB) -> None:
        """Write the generated catalogue into the state once (inside the caller's lock)."""
        if db.get_meta("catalogue_size") is not None:
            return
        generated = self._generated()
        db.conn.executemany("INSERT INTO catalogue(idx, code, name, trang_thai, defect, record) VALUES(?, ?, ?, ?, ?, ?)",
                            generated.rows)
        db.set_meta("catalogue_size", len(generated.rows))
        db.set_meta("catalogue_publishes", 0)

    def _refresh_known_codes(self) -> None:
        """The codes DongBoHoSoMC accepts as MaTTHC: every procedure the catalogue holds (withdrawn ones too)."""
        codes = set(self._generated().codes)
        if self.db is not None and self.db.get_meta("catalogue_size") is not None:
            with self.db.lock:
                codes |= {r[0] for r in self.db.conn.execute("SELECT code FROM catalogue")}
        self.rules.catalogues["procedures"] = frozenset(codes) | frozenset(self.catalogue)  # type: ignore[attr-defined]

    def _rows_where(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Any]:
        db = self.require_db()  # type: ignore[attr-defined]
        with db.tx() as conn:
            self._ensure_catalogue(db)
            return conn.execute(f"SELECT * FROM catalogue {where} ORDER BY idx", args).fetchall()  # noqa: S608

    # -- services ----------------------------------------------------------------------------
    def _lay_danh_sach_tthc(self, env: dict[str, Any], session: Any) -> dict[str, Any]:
        rows = self._rows_where("WHERE trang_thai = ?", (cat.PUBLISHED,))
        return {"error_code": 0, "message": "Thành công",
                "result": [{"MATTHC": r["code"], "TENTTHC": r["name"]} for r in rows]}

    def _lay_thu_tuc(self, env: dict[str, Any], session: Any) -> dict[str, Any]:
        code, refused = lookup_parameter(env, "maTTHC", required=True)
        if refused:
            return refused
        rows = self._rows_where("WHERE code = ?", (code,))
        return {"error_code": 0, "message": "Thành công", "result": [json.loads(r["record"]) for r in rows]}

    def _lay_dvc(self, env: dict[str, Any], session: Any) -> dict[str, Any]:
        code, refused = lookup_parameter(env, "maTTHC", required=False)
        if refused:
            return refused
        if code:
            rows = self._rows_where("WHERE trang_thai = ? AND code = ?", (cat.PUBLISHED, code))
        else:
            rows = self._rows_where("WHERE trang_thai = ?", (cat.PUBLISHED,))
        names = {a["MADONVI"]: a["TENDONVI"] for a in self._generated().agencies}
        data = []
        for r in rows:
            record = json.loads(r["record"])
            level = dvc_level(self.seed, r["code"])
            domain = record["LINHVUCTHUCHIEN"][0]["TENLINHVUC"] if record["LINHVUCTHUCHIEN"] else ""
            data.append({
                "MADVC": f"{r['code']}.01", "TENDVC": r["name"], "MATTHC": r["code"], "TENTTHC": r["name"],
                "TENCOQUANBANHANH": names.get(record["MACOQUANCONGBO"], record["MACOQUANCONGBO"]),
                "TENLINHVUC": domain,
                "APDUNGDVC": [{"MACOQUANTHUCHIEN": a["MADONVI"], "MUCDO": level} for a in record["COQUANTHUCHIEN"]],
            })
        return {"error_code": 0, "message": "Thành công", "result": {"data": data}}

    def _lay_danh_muc_co_quan(self, env: dict[str, Any], session: Any) -> dict[str, Any]:
        return {"error_code": 0, "message": "Thành công", "result": [dict(a) for a in self._generated().agencies]}

    def _lay_danh_muc_linh_vuc(self, env: dict[str, Any], session: Any) -> dict[str, Any]:
        return {"error_code": 0, "message": "Thành công", "result": [dict(d) for d in self._generated().domains]}

    def catalogue_services(self) -> dict[str, dict[str, Any]]:
        return {
            "integration": {"LayThuTuc": self._lay_thu_tuc, "LayDVC": self._lay_dvc},
            "share": {"LayDanhSachTTHC": self._lay_danh_sach_tthc, "LayDanhMucCoQuan": self._lay_danh_muc_co_quan,
                      "LayDanhMucLinhVuc": self._lay_danh_muc_linh_vuc},
        }

    # -- publishing --------------------------------------------------------------------------
    def publish(self, add: int = 0, amend: int = 0, withdraw: int = 0, seed: int = 0) -> dict[str, Any]:
        """Publish changes to the national catalogue (in-process form of ``POST /_admin/catalogue/publish``)."""
        db = self.require_db()  # type: ignore[attr-defined]
        generated = self._generated()
        world = cat.world_of(self.seed_data)  # type: ignore[attr-defined]
        with db.tx() as conn:
            self._ensure_catalogue(db)
            number = int(db.get_meta("catalogue_publishes", "0") or 0) + 1
            db.set_meta("catalogue_publishes", number)
            rng = seeded_rng(self.seed, "publish", seed, number)
            used = {r[0] for r in conn.execute("SELECT code FROM catalogue")}
            next_idx = int(conn.execute("SELECT COALESCE(MAX(idx), -1) + 1 FROM catalogue").fetchone()[0])
            combos = cat._names(world, self.seed)
            change = {"publish": number, "seed": seed}
            added = []
            for _ in range(add):
                code = cat.new_code(rng, used)
                used.add(code)
                name, dom, cap = rng.choice(combos)
                record = cat.make_procedure(world, self.seed, next_idx, code, name, dom, cap, salt=f"publish/{seed}")
                conn.execute("INSERT INTO catalogue(idx, code, name, trang_thai, defect, record, changes) "
                             "VALUES(?, ?, ?, ?, NULL, ?, ?)",
                             (next_idx, code, name, cat.PUBLISHED, dumps(record),
                              dumps([{**change, "kind": "added", "fields": []}])))
                added.append(code)
                next_idx += 1
            seeds = set(generated.seed_codes)
            candidates = [r for r in conn.execute(
                "SELECT * FROM catalogue WHERE trang_thai = ? AND defect IS NULL ORDER BY idx", (cat.PUBLISHED,))
                if r["code"] not in seeds and r["code"] not in added]
            to_amend = rng.sample(candidates, k=min(amend, len(candidates)))
            chosen = {r["code"] for r in to_amend}
            rest = [r for r in candidates if r["code"] not in chosen]
            to_withdraw = rng.sample(rest, k=min(withdraw, len(rest)))
            amended = []
            for row in to_amend:
                record = json.loads(row["record"])
                fields = self._amend(rng, record, row["version"] + 1)
                changes = json.loads(row["changes"]) + [{**change, "kind": "amended", "fields": fields}]
                conn.execute("UPDATE catalogue SET name = ?, version = version + 1, record = ?, changes = ? WHERE idx = ?",
                             (record["TENTTHC"] if row["defect"] != "empty_code" else row["name"], dumps(record),
                              dumps(changes), row["idx"]))
                amended.append({"code": row["code"], "fields": fields})
            withdrawn = []
            for row in to_withdraw:
                record = json.loads(row["record"])
                record["TRANGTHAI"] = cat.WITHDRAWN
                changes = json.loads(row["changes"]) + [{**change, "kind": "withdrawn", "fields": ["TRANGTHAI"]}]
                conn.execute("UPDATE catalogue SET trang_thai = ?, version = version + 1, record = ?, changes = ? "
                             "WHERE idx = ?", (cat.WITHDRAWN, dumps(record), dumps(changes), row["idx"]))
                withdrawn.append(row["code"])
        if added:
            self._refresh_known_codes()
        return {"added": added, "amended": amended, "withdrawn": withdrawn}

    @staticmethod
    def _amend(rng: Any, record: dict[str, Any], version: int) -> list[str]:
        """Change 1–2 realistic parts of ``record`` in place; return the changed field paths."""
        fields: list[str] = []
        for kind in sorted(rng.sample(AMEND_KINDS, k=rng.choice((1, 1, 2))), key=AMEND_KINDS.index):
            if kind == "name":
                base = _AMEND_SUFFIX.sub("", record["TENTTHC"])
                record["TENTTHC"] = f"{base} (sửa đổi, bổ sung lần {version - 1})"
                fields.append("TENTTHC")
            elif kind == "fee":
                ways = record["CACHTHUCTHUCHIEN"]
                existing = [w["THOIGIAN"][0]["PHILEPHI"] for w in ways if w["THOIGIAN"][0]["PHILEPHI"]]
                if existing:
                    old = _amount_of(existing[0][0]["SOTIEN"])
                    new = old + rng.choice((10000, 20000, 50000, 100000))
                    text = f"{new:,}".replace(",", ".") + " đồng"
                    for fees in existing:
                        fees[0]["SOTIEN"] = text
                    fields.append(f"{_FEE_PATH}[].SOTIEN")
                else:
                    new = rng.choice((20000, 50000, 100000))
                    for w in ways:
                        w["THOIGIAN"][0]["PHILEPHI"].append({
                            "MAPHILEPHI": "LP-01", "SOTIEN": f"{new:,}".replace(",", ".") + " đồng", "DONVI": "Đồng",
                            "MOTA": "Lệ phí", "TENTEP": "", "URL": ""})
                    fields.append(_FEE_PATH)
            elif kind == "time":
                for w in record["CACHTHUCTHUCHIEN"]:
                    t = w["THOIGIAN"][0]
                    old = int(t["THOIGIANGIAIQUYET"] or 0)
                    new = old - 2 if old > 3 else old + 2
                    t["THOIGIANGIAIQUYET"] = str(new)
                    t["MOTA"] = t["MOTA"].replace(f"{old} ", f"{new} ", 1)
                fields += ["CACHTHUCTHUCHIEN[].THOIGIAN[].THOIGIANGIAIQUYET", "CACHTHUCTHUCHIEN[].THOIGIAN[].MOTA"]
            else:
                n = rng.randint(10, 299)
                day = f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/2026"
                record["CANCUPHAPLY"].append({
                    "SOVANBAN": f"{n}/2026/NĐ-CP",
                    "TENVANBAN": "Nghị định sửa đổi, bổ sung một số điều của các nghị định quy định thủ tục hành chính",
                    "COQUANBANHANH": "Chính phủ", "NGAYBANHANH": day, "NGAYHIEULUC": day,
                    "DIACHITRUYCAP": f"https://vbpl.vn/van-ban/{n}-2026-nd-cp"})
                fields.append("CANCUPHAPLY")
        return fields

    def _publish(self, request: Request) -> Response:
        try:
            body = request.json_object()
        except BadJson as exc:
            return json_response(400, {"error": "bad_request", "message": f"body must be a JSON object: {exc}"})
        unknown = set(body) - {"add", "amend", "withdraw", "seed"}
        if unknown:
            return json_response(400, {"error": "bad_request", "message": f"unknown field(s): {', '.join(sorted(unknown))}"})
        values = {}
        for name in ("add", "amend", "withdraw", "seed"):
            value = body.get(name, 0)
            high = 2**31 if name == "seed" else MAX_PUBLISH
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                return json_response(400, {"error": "bad_request", "message": f"{name} must be an integer between 0 and {high}"})
            values[name] = value
        return json_response(200, self.publish(**values))

    # -- test doors --------------------------------------------------------------------------
    def catalogue_state(self) -> dict[str, Any]:
        db = self.require_db()  # type: ignore[attr-defined]
        generated = self._generated()
        with db.tx() as conn:
            self._ensure_catalogue(db)
            counts = {r[0]: r[1] for r in conn.execute("SELECT trang_thai, COUNT(*) FROM catalogue GROUP BY trang_thai")}
            malformed = [{"code": r["code"], "defect": r["defect"], "index": r["idx"], "published": r["trang_thai"] == cat.PUBLISHED}
                         for r in conn.execute("SELECT code, defect, idx, trang_thai FROM catalogue WHERE defect IS NOT NULL ORDER BY idx")]
            publishes = int(db.get_meta("catalogue_publishes", "0") or 0)
        return {
            "seed": self.seed,
            "counts": {"procedures": sum(counts.values()), "published": counts.get(cat.PUBLISHED, 0),
                       "withdrawn": sum(n for k, n in counts.items() if k != cat.PUBLISHED),
                       "malformed": len(malformed), "agencies": len(generated.agencies),
                       "domains": len(generated.domains), "publishes": publishes},
            "malformed": malformed,
            "defectKinds": list(cat.DEFECT_KINDS),
            "seedProcedures": list(generated.seed_codes),
        }

    def _state_catalogue(self, request: Request) -> Response:
        return json_response(200, self.catalogue_state())

    def _state_procedure(self, request: Request) -> Response:
        code = request.params["code"]
        rows = self._rows_where("WHERE code = ?", (code,))
        if not rows:
            return json_response(404, {"error": "not_found", "message": f"procedure {code} not in the catalogue"})
        r = rows[0]
        return json_response(200, {"code": r["code"], "index": r["idx"], "published": r["trang_thai"] == cat.PUBLISHED,
                                   "version": r["version"], "defect": r["defect"], "record": json.loads(r["record"]),
                                   "changes": json.loads(r["changes"])})

    def reset_catalogue(self, db: StateDB) -> None:
        """Back to the generated catalogue (inside the caller's transaction)."""
        db.conn.execute("DELETE FROM catalogue")
        db.conn.execute("DELETE FROM meta WHERE key IN ('catalogue_size', 'catalogue_publishes')")
