"""The one-stop stand-in's procedure catalogue (docs/wire/onestop.md, "Procedure catalogue").

A mixin of :class:`mocks.one_stop.app.OneStopMock`: list, get, upsert (PUT a whole record) and withdraw,
with the one-stop's own camelCase record, validated field by field (422 naming the field).
The catalogue starts empty; every upsert and withdrawal is counted per code for the test doors.
"""

from __future__ import annotations

import json
from typing import Any

from mocks.server import BadJson, Request, Response, dumps, json_response

PROCEDURE_SCHEMA = """
CREATE TABLE IF NOT EXISTS procedures (
    code TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    upserts INTEGER NOT NULL DEFAULT 0,
    withdrawals INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS procedure_ops (
    seq INTEGER PRIMARY KEY,
    code TEXT NOT NULL,
    op TEXT NOT NULL,
    changed INTEGER NOT NULL,
    version INTEGER NOT NULL
);
"""

LEVELS = ("partial", "full")
STATUSES = ("active", "withdrawn")
CHANNELS = ("counter", "online", "postal")
TIME_UNITS = ("workingDay", "day")

_STR, _INT, _NUM, _LIST = "string", "integer", "number", "array"
#: field -> (type, required, nullable, allowed values)
_TOP: dict[str, tuple[str, bool, bool, tuple[str, ...] | None]] = {
    "serviceCode": (_STR, True, False, None), "serviceName": (_STR, True, False, None),
    "domainCode": (_STR, False, True, None), "domainName": (_STR, False, True, None),
    "agencyCode": (_STR, False, True, None), "agencyName": (_STR, False, True, None),
    "level": (_STR, False, True, LEVELS), "channels": (_LIST, False, False, None),
    "components": (_LIST, False, False, None), "steps": (_LIST, False, False, None),
    "results": (_LIST, False, False, None), "legalBasis": (_LIST, False, False, None),
    "status": (_STR, False, False, STATUSES), "version": (_INT, False, True, None),
}
_NESTED: dict[str, dict[str, tuple[str, bool, bool, tuple[str, ...] | None]]] = {
    "channels": {"channel": (_STR, True, False, CHANNELS), "processingDays": (_NUM, False, True, None),
                 "timeUnit": (_STR, False, True, TIME_UNITS), "fees": (_LIST, False, False, None)},
    "fees": {"feeCode": (_STR, False, True, None), "feeName": (_STR, False, True, None),
             "amount": (_INT, True, False, None), "rawText": (_STR, False, True, None)},
    "components": {"case": (_STR, False, True, None), "docCode": (_STR, False, True, None),
                   "docName": (_STR, True, False, None), "templateName": (_STR, False, True, None),
                   "templateUrl": (_STR, False, True, None), "originals": (_INT, False, True, None),
                   "copies": (_INT, False, True, None)},
    "steps": {"case": (_STR, False, True, None), "name": (_STR, True, False, None)},
    "results": {"resultCode": (_STR, False, True, None), "resultName": (_STR, True, False, None)},
    "legalBasis": {"number": (_STR, True, False, None), "title": (_STR, False, True, None),
                   "issuer": (_STR, False, True, None), "issuedDate": (_STR, False, True, None),
                   "effectiveDate": (_STR, False, True, None)},
}
#: A field left out is stored as this (a PUT replaces the whole record).
_DEFAULTS: dict[str, Any] = {"domainCode": None, "domainName": None, "agencyCode": None, "agencyName": None,
                             "level": None, "channels": [], "components": [], "steps": [], "results": [],
                             "legalBasis": [], "status": "active"}


class Invalid(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _check_object(obj: Any, spec: dict[str, tuple[str, bool, bool, tuple[str, ...] | None]], path: str) -> None:
    if not isinstance(obj, dict):
        raise Invalid(path or "<record>", f"{path or 'the body'} must be an object, not {_type_name(obj)}")
    for name in obj:
        if name not in spec:
            field = f"{path}.{name}" if path else name
            raise Invalid(field, f"{field} is not a field of a procedure record")
    for name, (kind, required, nullable, allowed) in spec.items():
        field = f"{path}.{name}" if path else name
        if name not in obj:
            if required:
                raise Invalid(field, f"{field} is required")
            continue
        value = obj[name]
        if value is None:
            if nullable and not required:
                continue
            raise Invalid(field, f"{field} must not be null")
        ok = {_STR: isinstance(value, str), _LIST: isinstance(value, list),
              _INT: isinstance(value, int) and not isinstance(value, bool),
              _NUM: isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
        if not ok:
            raise Invalid(field, f"{field} must be {'an' if kind in (_INT, _LIST) else 'a'} {kind}, not {_type_name(value)}")
        if kind == _STR and required and not value.strip():
            raise Invalid(field, f"{field} must not be blank")
        if allowed is not None and value not in allowed:
            raise Invalid(field, f"{field} must be one of {', '.join(allowed)}, not {value!r}")
        if kind in (_INT, _NUM) and value < 0:
            raise Invalid(field, f"{field} must not be negative")
        if kind == _LIST:
            for i, item in enumerate(value):
                _check_object(item, _NESTED[name], f"{field}[{i}]")


def validate(code: str, body: Any) -> dict[str, Any]:
    """The record to store for ``PUT /api/v1/procedures/{code}``; raises :class:`Invalid`."""
    _check_object(body, _TOP, "")
    if body["serviceCode"] != code:
        raise Invalid("serviceCode", f"serviceCode {body['serviceCode']!r} does not match the path ({code!r})")
    record = {**_DEFAULTS, **{k: v for k, v in body.items() if k != "version"}}
    return {k: record[k] for k in ("serviceCode", "serviceName", *_DEFAULTS)}


class ProceduresMixin:
    """Catalogue endpoints and doors; expects the attributes of ``OneStopMock``."""

    def _procedure_routes(self, router: Any) -> None:
        router.add("GET", "/api/v1/procedures", self._procedures, operation="procedures")
        router.add("GET", "/api/v1/procedures/{code}", self._procedure, operation="procedure")
        router.add("PUT", "/api/v1/procedures/{code}", self._upsert_procedure, operation="upsert_procedure")
        router.add("POST", "/api/v1/procedures/{code}/withdraw", self._withdraw_procedure,
                   operation="withdraw_procedure")
        router.add("GET", "/_state/procedures", self._state_procedures)

    @staticmethod
    def _stored(row: Any) -> dict[str, Any]:
        return {**json.loads(row["record"]), "status": row["status"], "version": row["version"]}

    def _procedures(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        from mocks.one_stop.app import _bad_request, _int_arg

        try:
            page = _int_arg(request, "page", 1, 1, None)
            size = _int_arg(request, "size", 100, 1, 500)
        except ValueError as exc:
            return _bad_request("page must be an integer >= 1" if str(exc) == "page"
                                else "size must be an integer between 1 and 500")
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            total = int(db.conn.execute("SELECT COUNT(*) FROM procedures").fetchone()[0])
            rows = db.conn.execute("SELECT * FROM procedures ORDER BY idx LIMIT ? OFFSET ?",
                                   (size, (page - 1) * size)).fetchall()
        return json_response(200, {"items": [self._stored(r) for r in rows], "page": page, "size": size, "total": total})

    def _procedure(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        code = request.params["code"]
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            row = db.conn.execute("SELECT * FROM procedures WHERE code = ?", (code,)).fetchone()
        if row is None:
            return json_response(404, {"error": "not_found", "message": f"procedure {code} not found"})
        return json_response(200, self._stored(row))

    def _upsert_procedure(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        code = request.params["code"]
        try:
            body = request.json()
        except BadJson as exc:
            return json_response(400, {"error": "bad_request", "message": f"body is not JSON: {exc}"})
        try:
            record = validate(code, body)
        except Invalid as exc:
            return json_response(422, {"error": "validation_failed", "field": exc.field, "message": exc.message})
        status = record.pop("status")
        db = self.require_db()  # type: ignore[attr-defined]
        with db.tx() as conn:
            row = conn.execute("SELECT * FROM procedures WHERE code = ?", (code,)).fetchone()
            if row is None:
                idx = int(conn.execute("SELECT COALESCE(MAX(idx), 0) + 1 FROM procedures").fetchone()[0])
                version, changed = 1, True
                conn.execute("INSERT INTO procedures(code, idx, status, version, upserts, record) VALUES(?, ?, ?, 1, 1, ?)",
                             (code, idx, status, dumps(record)))
            else:
                changed = json.loads(row["record"]) != record or row["status"] != status
                version = row["version"] + (1 if changed else 0)
                conn.execute("UPDATE procedures SET status = ?, version = ?, upserts = upserts + 1, record = ? "
                             "WHERE code = ?", (status, version, dumps(record), code))
            conn.execute("INSERT INTO procedure_ops(code, op, changed, version) VALUES(?, 'upsert', ?, ?)",
                         (code, int(changed), version))
            stored = conn.execute("SELECT * FROM procedures WHERE code = ?", (code,)).fetchone()
        return json_response(201 if row is None else 200, self._stored(stored))

    def _withdraw_procedure(self, request: Request) -> Response:
        refused = self._authorised(request)  # type: ignore[attr-defined]
        if refused:
            return refused
        code = request.params["code"]
        db = self.require_db()  # type: ignore[attr-defined]
        with db.tx() as conn:
            row = conn.execute("SELECT * FROM procedures WHERE code = ?", (code,)).fetchone()
            if row is None:
                return json_response(404, {"error": "not_found", "message": f"procedure {code} not found"})
            changed = row["status"] != "withdrawn"
            version = row["version"] + (1 if changed else 0)
            conn.execute("UPDATE procedures SET status = 'withdrawn', version = ?, withdrawals = withdrawals + 1 "
                         "WHERE code = ?", (version, code))
            conn.execute("INSERT INTO procedure_ops(code, op, changed, version) VALUES(?, 'withdraw', ?, ?)",
                         (code, int(changed), version))
            stored = conn.execute("SELECT * FROM procedures WHERE code = ?", (code,)).fetchone()
        return json_response(200, self._stored(stored))

    def procedures_state(self) -> dict[str, Any]:
        db = self.require_db()  # type: ignore[attr-defined]
        with db.lock:
            rows = db.conn.execute("SELECT * FROM procedures ORDER BY idx").fetchall()
            ops = db.conn.execute("SELECT * FROM procedure_ops ORDER BY seq").fetchall()
        return {
            "procedures": [self._stored(r) for r in rows],
            "upserts": {r["code"]: r["upserts"] for r in rows if r["upserts"]},
            "withdrawals": {r["code"]: r["withdrawals"] for r in rows if r["withdrawals"]},
            "counts": {"procedures": len(rows), "active": sum(1 for r in rows if r["status"] == "active"),
                       "withdrawn": sum(1 for r in rows if r["status"] == "withdrawn"),
                       "upserts": sum(r["upserts"] for r in rows), "withdrawals": sum(r["withdrawals"] for r in rows)},
            "log": [{"seq": o["seq"], "serviceCode": o["code"], "op": o["op"], "changed": bool(o["changed"]),
                     "version": o["version"]} for o in ops],
        }

    def _state_procedures(self, request: Request) -> Response:
        return json_response(200, self.procedures_state())
