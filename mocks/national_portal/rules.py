"""Record validation of the national portal stand-in, driven by a rules file.

The rules live in ``fixtures/schemas/national_portal/<service>.rules.json`` (JSON Schema-like: an
ordered list of fields with ``type``, ``required``, ``enum``, ``format``, ``maxLength``,
``catalogue`` and ``items`` for arrays of objects). :class:`RecordRules` checks one record and
returns its *first* failure as a :class:`RuleError` naming the record, the field and the rule in
Vietnamese, the way the portal answers (contract §8, §9; the exact wording is inferred).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mocks.server import FIXTURES_DIR

__all__ = ["RecordRules", "RuleError", "json_type_name", "lookup_parameter", "progress_label", "record_label"]

RULES_DIR = FIXTURES_DIR / "schemas" / "national_portal"

_TYPE_NAMES = {
    "string": "chuỗi (string)",
    "number": "số (number)",
    "boolean": "giá trị logic (boolean)",
    "null": "null",
    "object": "đối tượng (object)",
    "array": "mảng (array)",
}


def json_type_name(value: Any) -> str:
    """The JSON type of ``value`` in the words the messages use."""
    if value is None:
        kind = "null"
    elif isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, (int, float)):
        kind = "number"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, list):
        kind = "array"
    else:
        kind = "object"
    return _TYPE_NAMES[kind]


def lookup_parameter(env: Mapping[str, Any], name: str, *, required: bool) -> tuple[str, dict[str, Any] | None]:
    """The string look-up key ``name`` of an envelope (``mahoso``, ``maTTHC``), or the refusal to answer.

    Missing, or blank when ``required``: ``Thiếu tham số <name>``. Present but not a string:
    ``Tham số <name> phải là chuỗi (string), không phải <type>``, never read as "no filter".
    Returns ``(value, None)`` (``""`` for an absent optional key) or ``("", refusal)``.
    """
    if name not in env:
        value: Any = ""
    else:
        value = env[name]
        if not isinstance(value, str):
            return "", {"error_code": -1,
                        "message": f"Tham số {name} phải là chuỗi (string), không phải {json_type_name(value)}"}
    if required and not value.strip():
        return "", {"error_code": -1, "message": f"Thiếu tham số {name}"}
    return value, None


def record_label(record: Any, position: int) -> str:
    """How messages name a record: ``Hồ sơ <MaHoSo>``, or its position when it has no usable code."""
    code = record.get("MaHoSo") if isinstance(record, dict) else None
    if isinstance(code, str) and code.strip():
        return f"Hồ sơ {code}"
    return f"Hồ sơ thứ {position} trong data"


def progress_label(record: Any, index: int) -> str:
    """How CapNhatTienDoHoSoMC messages name an entry: its place in ``data`` (0-based) and its dossier."""
    code = record.get("MaHoSo") if isinstance(record, dict) else None
    if isinstance(code, str) and code.strip():
        return f"Bản ghi tiến độ data[{index}] của hồ sơ {code}"
    return f"Bản ghi tiến độ data[{index}]"


@dataclass(frozen=True)
class RuleError:
    """One broken rule: the field (dotted path), the rule name and the portal's message."""

    field: str
    rule: str
    message: str


def _real_datetime(text: str) -> bool:
    try:
        datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    return True


class RecordRules:
    """Validator for the records of one service.

    Args:
        service: the service name (selects ``<service>.rules.json``).
        catalogues: named value sets for ``catalogue`` rules, e.g. ``{"procedures": {...codes}}``.
        rules_file: an explicit rules file instead of the default location.
    """

    def __init__(self, service: str, catalogues: Mapping[str, Collection[str]], rules_file: str | Path | None = None):
        path = Path(rules_file) if rules_file else RULES_DIR / f"{service}.rules.json"
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
        self.path = path
        self.service = spec.get("service", service)
        self.fields: list[dict[str, Any]] = spec["fields"]
        self.formats = {
            name: (re.compile(fmt["pattern"]), bool(fmt.get("calendar")))
            for name, fmt in (spec.get("formats") or {}).items()
        }
        self.catalogues = {name: frozenset(values) for name, values in catalogues.items()}
        for f in self._walk(self.fields):
            if f.get("format") and f["format"] not in self.formats:
                raise ValueError(f"{path}: field {f['name']} uses unknown format {f['format']}")
            if f.get("catalogue") and f["catalogue"] not in self.catalogues:
                raise ValueError(f"{path}: field {f['name']} uses unknown catalogue {f['catalogue']}")

    def _walk(self, fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for f in fields:
            out.append(f)
            out.extend(self._walk((f.get("items") or {}).get("fields") or []))
        return out

    def field_names(self) -> list[str]:
        return [f["name"] for f in self.fields]

    # -- checking ----------------------------------------------------------------------------
    def check(self, record: Any, position: int, label: str | None = None) -> RuleError | None:
        """The first broken rule of ``record`` (the ``position``-th element of ``data``, 1-based).

        ``label`` is how the messages name the record (default: :func:`record_label`).
        """
        label = label if label is not None else record_label(record, position)
        if not isinstance(record, dict):
            return RuleError(f"data[{position - 1}]", "type",
                             f"{label}: phần tử data[{position - 1}] phải là đối tượng (object), "
                             f"không phải {json_type_name(record)}")
        return self._check_fields(record, self.fields, label, prefix="")

    def _check_fields(self, obj: dict[str, Any], fields: list[dict[str, Any]], label: str,
                      prefix: str) -> RuleError | None:
        for spec in fields:
            error = self._check_field(obj, spec, label, prefix)
            if error:
                return error
        return None

    def _check_field(self, obj: dict[str, Any], spec: dict[str, Any], label: str, prefix: str) -> RuleError | None:
        name = spec["name"]
        path = prefix + name
        kind = spec.get("type", "string")
        if name not in obj:
            if spec.get("required"):
                return RuleError(path, "required", f"{label}: thiếu trường bắt buộc {path}")
            return None
        value = obj[name]

        if kind == "array":
            if not isinstance(value, list):
                return RuleError(path, "type", f"{label}: trường {path} phải là mảng (array) các đối tượng, "
                                               f"không phải {json_type_name(value)}")
            items = spec.get("items") or {}
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    return RuleError(f"{path}[{i}]", "type", f"{label}: phần tử {path}[{i}] phải là đối tượng "
                                                             f"(object), không phải {json_type_name(item)}")
                error = self._check_fields(item, items.get("fields") or [], label, prefix=f"{path}[{i}].")
                if error:
                    return error
            return None

        if kind == "integerOrString":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                return RuleError(path, "type", f"{label}: trường {path} phải là số nguyên hoặc chuỗi, "
                                               f"không phải {json_type_name(value)}")
            return None

        # string
        if not isinstance(value, str):
            return RuleError(path, "type", f"{label}: trường {path} phải là chuỗi (string), "
                                           f"không phải {json_type_name(value)}")
        if not value.strip():
            if spec.get("required"):
                return RuleError(path, "required", f"{label}: trường {path} không được để trống")
            return None  # an empty optional value means "no value" (contract §6.1)
        if "enum" in spec and value not in spec["enum"]:
            allowed = spec.get("enumText") or ", ".join(spec["enum"])
            return RuleError(path, "enum", f"{label}: trường {path} có giá trị \"{value}\" không hợp lệ "
                                           f"(chỉ nhận {allowed})")
        if spec.get("format"):
            pattern, calendar = self.formats[spec["format"]]
            if not pattern.fullmatch(value):  # the whole value: `$` also matches before a final "\n"
                return RuleError(path, "format", f"{label}: trường {path} không đúng định dạng {spec['format']}")
            if calendar and not _real_datetime(value):
                return RuleError(path, "calendar", f"{label}: trường {path} có giá trị \"{value}\" không phải "
                                                   f"ngày giờ có thật (định dạng {spec['format']})")
        if "maxLength" in spec:
            length = len(unicodedata.normalize("NFC", value))
            if length > spec["maxLength"]:
                return RuleError(path, "maxLength", f"{label}: trường {path} dài {length} ký tự, vượt quá độ dài "
                                                    f"tối đa {spec['maxLength']} ký tự")
        if spec.get("catalogue"):
            if value not in self.catalogues[spec["catalogue"]]:
                return RuleError(path, "catalogue", f"{label}: mã thủ tục {path} \"{value}\" không có trong Cơ sở "
                                                    f"dữ liệu quốc gia về thủ tục hành chính")
        return None
