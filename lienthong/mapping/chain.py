"""Chains of mappings through the canonical records (Camel's Normalizer).

A *chain file* is a mapping file that lists mappings to run one after the other instead of fields,
e.g. ``mappings/onestop__national_portal/dossier.yaml``::

    name: onestop__national_portal/dossier
    version: 2
    description: ...
    chain:
      - onestop__canonical/dossier
      - canonical__national_portal/dossier
    validate_canonical: false   # optional: check each canonical record against its JSON Schema

:func:`lienthong.mapping.load_mapping` returns a :class:`Chain` for it, which has the interface of
:class:`~lienthong.mapping.engine.Mapping` (``apply``, ``translate``, ``record_key``, ``name``,
``version``, ``fingerprint``, ``target_fields``...), so a flow does not know whether it runs one
mapping or a chain.

Errors: ``apply`` raises :class:`RecordInvalid` with the errors of the first stage that failed.
Each error names the **final** target field the broken value would have filled (``NgayTiepNhan``,
``TaiLieuNop[2].DuongDanTaiTepTin``), found by following the stages' field lineage, so a dead
letter reads as with a direct mapping; the message starts with the stage and the canonical field
(``[onestop__canonical/dossier: received_at] receiveDate is missing; ...``), and canonical paths in
a later stage's message are followed by the source path they came from
(``received_at (onestop receiveDate)``).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from connectors.errors import FieldError
from lienthong.mapping.engine import Mapping, RecordInvalid, compile_path

__all__ = ["Chain", "field_lineage"]

_INDEX = re.compile(r"\[(\*|-?\d*)\]")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*")


def _norm(path: str) -> str:
    """``files[3].name`` / ``files[*].digitized`` → ``files[].name`` / ``files[].digitized``."""
    return _INDEX.sub("[]", path[2:] if path.startswith("$.") else path)


def field_lineage(fields: dict, target_prefix: str = "", source_prefix: str = "") -> list[tuple[str, str, bool]]:
    """``(target, source, primary)`` for every field of a mapping's ``fields`` block, paths normalised
    (``TaiLieuNop[].TenTepDinhKem`` ← ``files[].displayName``); ``primary`` is false for a fallback."""
    found: list[tuple[str, str, bool]] = []
    for target, spec in fields.items():
        here = target_prefix + target
        if "each" in spec:
            source = spec["each"]["from"]
            if source == "$":
                found += field_lineage(spec["each"]["fields"], here + "[].", source_prefix)
            else:
                whole = _norm(source) if source.startswith("$.") else source_prefix + _norm(source)
                found.append((here, whole, True))
                found += field_lineage(spec["each"]["fields"], here + "[].", whole + "[].")
        elif "fields" in spec:
            found += field_lineage(spec["fields"], here + ".", source_prefix)
        elif "from" in spec:
            sources = spec["from"] if isinstance(spec["from"], list) else [spec["from"]]
            for source in sources:
                if source != "$":
                    found.append((here, _norm(source) if source.startswith("$.") else source_prefix + _norm(source), True))
            if "fallback" in spec:
                source = spec["fallback"]["from"]
                found.append((here, _norm(source) if source.startswith("$.") else source_prefix + _norm(source), False))
    return found


def _fill(path: str, indices: list[str]) -> str:
    """Put the indices of a concrete field back into a normalised path (missing ones are [0])."""
    supply = iter(indices)
    return re.sub(r"\[\]", lambda _m: f"[{next(supply, '0')}]", path)


class _Lineage:
    """Where the fields of one stage come from (forward) and go to (backward)."""

    def __init__(self, mapping: Mapping):
        entries = getattr(mapping, "field_lineage", ())
        self.forward: dict[str, str] = {}
        for target, source, primary in entries:
            if primary:
                self.forward.setdefault(target, source)
        ranked = sorted(
            enumerate(entries),
            # a primary source first, then a target with as many list levels as the source, then file order
            key=lambda e: (not e[1][2], e[1][0].count("[]") != e[1][1].count("[]"), e[0]),
        )
        self.backward: dict[str, str] = {}
        for _n, (target, source, _primary) in ranked:
            self.backward.setdefault(source, target)

    def target_of(self, field: str) -> str | None:
        """The target field this stage fills from source field ``field`` (concrete indices kept)."""
        indices = re.findall(r"\[(\d+)\]", field)
        normal = _norm(field)
        target = self.backward.get(normal)
        if target is None and normal.endswith("[]"):  # an element of a list: the list's target element
            target = self.backward.get(normal[:-2])
            target = None if target is None else target + "[]"
        return None if target is None else _fill(target, indices)


class Chain(Mapping):
    """Mappings run one after the other (source → canonical → target), used like one :class:`Mapping`.

    Attributes (besides those of :class:`Mapping`):
        stages: the mappings, in order.
        validate_canonical: whether every intermediate record is checked against its JSON Schema
            (``fixtures/schemas/<system>/<record>.schema.json``); off by default.
    """

    def __init__(self, *, name: str, version: int, description: str, path: Any, stages: list[Mapping],
                 document: dict, validators: list[Any] | None = None):
        first, last = stages[0], stages[-1]
        self.name = name
        self.version = version
        self.description = description
        self.source = first.source
        self.target = last.target
        self.record_key_paths = first.record_key_paths
        self.record_key_path = first.record_key_path
        self.code_table_files = tuple(dict.fromkeys(f for s in stages for f in s.code_table_files))
        self.path = path
        self.stages = tuple(stages)
        content = {"chain": document, "stages": [[s.name, s.fingerprint] for s in stages]}
        canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        self.target_fields = last.target_fields
        self.personal_fields = last.personal_fields
        self.code_tables = {k: v for s in stages for k, v in s.code_tables.items()}
        self.field_lineage = ()
        self.validate_canonical = bool(validators)
        self._validators = tuple(validators or ())
        self._steps = ()
        self._key_getters = tuple(compile_path(p)[0] for p in first.record_key_paths)
        self._no_keys = tuple(f"<no {p}>" for p in first.record_key_paths)
        self._lineages = tuple(_Lineage(s) for s in stages)
        self._applies = tuple(s.apply for s in stages)

    def __repr__(self) -> str:
        return f"<Chain {self.name} v{self.version} {self.fingerprint[:12]}: {' → '.join(s.name for s in self.stages)}>"

    # -- errors ------------------------------------------------------------------------------

    def _final_field(self, n: int, field: str) -> str:
        """The field of the chain's output that stage ``n``'s target field ``field`` feeds."""
        if field.startswith("<"):  # <record>: the record as a whole
            return field
        current = field
        for lineage in self._lineages[n + 1 :]:
            found = lineage.target_of(current)
            if found is None:
                return f"{self.stages[n].target['system']}.{field}"
            current = found
        return current

    def _annotate(self, n: int, message: str) -> str:
        """Follow each of stage ``n``'s source paths in a message by the path it came from."""
        if n == 0:
            return message
        forward = self._lineages[n - 1].forward
        system = self.stages[n - 1].source["system"]

        def origin(match: re.Match) -> str:
            token = match.group(0)
            source = forward.get(_norm(token))
            if source is None:
                return token
            indices = re.findall(r"\[(\d+)\]", token)
            return f"{token} ({system} {_fill(source, indices)})"

        return _TOKEN.sub(origin, message)

    def _reword(self, n: int, errors: list[FieldError]) -> list[FieldError]:
        stage = self.stages[n]
        out = []
        for error in errors:
            where = stage.name if n == len(self.stages) - 1 else f"{stage.name}: {error.field}"
            out.append(FieldError(self._final_field(n, error.field), error.rule,
                                  f"[{where}] {self._annotate(n, error.message)}"))
        return out

    def _schema_errors(self, n: int, record: dict) -> list[FieldError]:
        validator = self._validators[n] if n < len(self._validators) else None
        if validator is None:
            return []
        found = []
        for problem in validator.iter_errors(record):
            field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.absolute_path).lstrip(".")
            found.append(FieldError(field or "<record>", "canonical_schema", problem.message))
        return found

    # -- the Mapping interface ---------------------------------------------------------------

    def apply(self, record: Any) -> dict:
        """Run every stage; the output of the last one.

        Raises:
            RecordInvalid: a stage rejected the record: the errors of that (first failing) stage.
        """
        value = record
        n = 0
        try:
            for n, apply in enumerate(self._applies):
                value = apply(value)
                if self._validators and n < len(self._validators) and self._validators[n] is not None:
                    errors = self._schema_errors(n, value)
                    if errors:
                        raise RecordInvalid(self.record_key(record), errors, mapping=self.stages[n].name)
        except RecordInvalid as invalid:
            raise RecordInvalid(self.record_key(record), self._reword(n, invalid.errors), mapping=self.name) from None
        return value

    def translate_stages(self, record: Any) -> list[tuple[Mapping, dict, list[FieldError]]]:
        """Every stage's ``(mapping, output, errors)``, each stage fed the previous one's output
        (as far as it went), errors as the stage reports them."""
        results = []
        value = record
        for n, stage in enumerate(self.stages):
            output, errors = stage.translate(value)
            if not errors:
                errors = self._schema_errors(n, output)
            results.append((stage, output, errors))
            value = output
        return results

    def translate(self, record: Any) -> tuple[dict, list[FieldError]]:
        """``(output, errors)``: the last stage's output, and the errors of the first stage that failed."""
        results = self.translate_stages(record)
        for n, (_stage, _output, errors) in enumerate(results):
            if errors:
                return results[-1][1], self._reword(n, errors)
        return results[-1][1], []

    def mask_personal(self, output: dict) -> dict:
        return self.stages[-1].mask_personal(output)


