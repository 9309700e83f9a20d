"""The Message Translator: compiles a validated mapping document into closures and runs them.

Compilation happens once per mapping file (see :mod:`lienthong.mapping.loader`). Each target
field becomes one *step*, a closure ``step(item, root, errors, at) -> value``:

* ``item`` is the object the field's paths are relative to (the record, or one list element);
* ``root`` is the whole source record (paths starting with ``$.``);
* ``errors`` collects every :class:`~connectors.errors.FieldError` of the record;
* ``at`` locates ``item`` for error messages: ``None`` for the record itself, else a tuple
  ``(parent_at, target_list, target_index, source_list, source_index)``. Field names such as
  ``TaiLieuNop[2].TenTepDinhKem`` are only built when an error is reported.

``Mapping.apply`` is then one dict comprehension over the steps: no YAML is looked at per record.
"""

from __future__ import annotations

import copy
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from connectors.errors import FieldError, RecordRejected
from lienthong.mapping.transforms import TRANSFORMS, TransformError, _kind

__all__ = [
    "KEY_SEPARATOR",
    "Mapping",
    "PathSyntaxError",
    "RecordInvalid",
    "compile_fields",
    "compile_path",
    "compile_paths",
    "transform_steps",
]

Step = Callable[[dict, dict, list, Any], Any]
Getter = Callable[[Any, Any], Any]

_NFC = unicodedata.normalize
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\*|-?\d+)\])?")
_VALUE_SHOWN = 60  # longest value quoted in a message, in characters
#: Joins the parts of a composite record key (``record_key: [dossierNo, stepId]``).
KEY_SEPARATOR = "#"
#: Whether fields compiled from now on get the fast paths of their common shapes (and the
#: generated builder writes them out). ``False`` compiles every field to its general step only:
#: the reference the fast paths must agree with, value for value and error for error (the tests
#: compare the two on generated records). Read when a file is compiled, not per record.
FAST_PATHS = True


class RecordInvalid(RecordRejected):
    """A source record breaks the rules of a mapping; ``errors`` lists every broken rule.

    Attributes:
        record_key: the record's source key (``dossierNo``), or ``<no dossierNo>`` when it has none.
        errors: one :class:`~connectors.errors.FieldError` per broken rule, field = target field.
        mapping: the mapping's name (``onestop__national_portal/dossier``).
    """

    def __init__(self, record_key: str, errors: Iterable[FieldError], *, mapping: str = ""):
        super().__init__(record_key, list(errors))
        self.mapping = mapping


class PathSyntaxError(ValueError):
    """A source path in a mapping file is not ``name(.name)*`` with optional ``[n]`` / ``[*]``."""


def compile_pattern(text: str) -> re.Pattern:
    """A field's ``pattern``, compiled with ``\\d`` meaning 0-9 only.

    Python's ``\\d`` is a digit of any script: '٠٤٩١٩٠٠٠١٢٣٤' (Arabic-Indic) would meet ``\\d{12}``
    and be sent as an ID number. ``\\d`` is written as ``[0-9]`` (``0-9`` inside ``[...]``); the
    rest keeps Python's meaning (``\\w`` matches Vietnamese letters).

    Raises:
        re.error: the text is not a regular expression.
    """
    out: list[str] = []
    in_class = False
    n = 0
    while n < len(text):
        char = text[n]
        if char == "\\" and n + 1 < len(text):
            escaped = text[n + 1]
            out.append(("0-9" if in_class else "[0-9]") if escaped == "d" else char + escaped)
            n += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append(char)
            n += 1
            # a "]" right after "[" or "[^" is a literal, not the end of the class
            if text.startswith("^", n):
                out.append("^")
                n += 1
            if text.startswith("]", n):
                out.append("]")
                n += 1
            continue
        out.append(char)
        n += 1
    return re.compile("".join(out))


class _Mismatch(Exception):
    """A path met a value of the wrong kind on its way (a string where an object was expected)."""

    def __init__(self, label: str, value: Any, expected: str):
        super().__init__(label)
        self.label = label
        self.value = value
        self.expected = expected


# ---------------------------------------------------------------------------------------------
# Locations and messages (only used when something is wrong)


def _target_prefix(at: Any) -> str:
    if at is None:
        return ""
    parent, tname, tindex, _sname, _sindex = at
    if tindex is None:  # a nested object (``fields:``), not a list element
        return f"{_target_prefix(parent)}{tname}."
    return f"{_target_prefix(parent)}{tname}[{tindex}]."


def _source_prefix(at: Any) -> str:
    if at is None:
        return ""
    parent, _tname, _tindex, sname, sindex = at
    if sname is None:  # a list built from the record itself (``each: {from: $}``)
        return _source_prefix(parent)
    return f"{_source_prefix(parent)}{sname}[{sindex}]."


def _show(value: Any) -> str:
    """A value quoted for a message, shortened when long."""
    if isinstance(value, str):
        if len(value) > _VALUE_SHOWN:
            value = value[: _VALUE_SHOWN - 1] + "…"
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return _kind(value)
    return repr(value)


def _show_list(values: Iterable[Any]) -> str:
    return ", ".join(v if isinstance(v, str) else _show(v) for v in values)


# ---------------------------------------------------------------------------------------------
# Paths


def parse_path(text: str) -> tuple[bool, list[tuple[str, int | str | None]]]:
    """Split ``$.a.b[2].c[*]`` into ``(from_root, [(name, index), ...])``; index ``"*"`` = every item.

    Raises:
        PathSyntaxError: the text is not a path.
    """
    from_root = False
    rest = text
    if text == "$":
        return True, []
    if text.startswith("$."):
        from_root, rest = True, text[2:]
    segments: list[tuple[str, int | str | None]] = []
    for part in rest.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None:
            raise PathSyntaxError(
                f"{text!r} is not a source path: expected dotted names with optional [n] or [*], "
                "e.g. applicantName, files[*].digitized, progress[-1].status or $.dossierStatus"
            )
        name, index = match.groups()
        segments.append((name, None if index is None else index if index == "*" else int(index)))
    return from_root, segments


def _render(segments: list[tuple[str, int | str | None]]) -> str:
    return ".".join(name if index is None else f"{name}[{index}]" for name, index in segments)


def _plain_getter(from_root: bool, segments: list[tuple[str, int | str | None]]) -> Getter:
    """A getter for a path without ``[*]``: returns the value, ``None`` when absent."""
    if not segments:
        return (lambda item, root: root) if from_root else (lambda item, root: item)
    if len(segments) == 1 and segments[0][1] is None:
        key = segments[0][0]
        if from_root:
            return lambda item, root: root.get(key)
        return lambda item, root: item.get(key)

    steps = []
    for n, (name, index) in enumerate(segments):
        object_label = _render(segments[:n]) or "the record"
        list_label = _render(segments[:n] + [(name, None)])
        steps.append((name, index, object_label, list_label))

    def get(item: Any, root: Any) -> Any:
        current = root if from_root else item
        for name, index, object_label, list_label in steps:
            if current.__class__ is not dict:
                raise _Mismatch(object_label, current, "an object")
            current = current.get(name)
            if current is None:
                return None
            if index is not None:
                if current.__class__ is not list:
                    raise _Mismatch(list_label, current, "a list")
                try:
                    current = current[index]
                except IndexError:
                    return None
        return current

    return get


def compile_path(text: str, where: Callable[[Any, Any], bool] | None = None) -> tuple[Getter, bool, bool]:
    """Compile a source path into ``(getter, absolute, many)``.

    ``absolute`` is true for ``$`` paths (messages then show them without a list prefix);
    ``many`` is true for a path with ``[*]``, whose getter returns a list (``[]`` when the list is
    absent), filtered by ``where(item, root)`` when given.
    """
    from_root, segments = parse_path(text)
    stars = [n for n, (_name, index) in enumerate(segments) if index == "*"]
    if len(stars) > 1:
        raise PathSyntaxError(f"{text!r} has more than one [*]; a path may fan out over one list only")
    if not stars:
        return _plain_getter(from_root, segments), from_root, False

    star = stars[0]
    head_segments = segments[:star] + [(segments[star][0], None)]
    head = _plain_getter(from_root, head_segments)
    head_label = _render(head_segments)
    tail_segments = segments[star + 1 :]
    tail = _plain_getter(False, tail_segments) if tail_segments else None

    def get_many(item: Any, root: Any) -> list:
        sequence = head(item, root)
        if sequence is None:
            return []
        if sequence.__class__ is not list:
            raise _Mismatch(head_label, sequence, "a list")
        values = []
        for n, element in enumerate(sequence):
            if tail is not None or where is not None:
                if element.__class__ is not dict:
                    raise _Mismatch(f"{head_label}[{n}]", element, "an object")
                if where is not None and not where(element, root):
                    continue
            if tail is None:
                values.append(element)
                continue
            try:
                values.append(tail(element, root))
            except _Mismatch as mismatch:
                inner = "" if mismatch.label == "the record" else f".{mismatch.label}"
                raise _Mismatch(f"{head_label}[{n}]{inner}", mismatch.value, mismatch.expected) from None
        return values

    return get_many, from_root, True


def compile_paths(texts: list[str]) -> Getter:
    """Compile a list of plain paths (``from: [action, note]``) into one getter of a list of values.

    Raises:
        PathSyntaxError: a path is malformed, fans out with ``[*]`` or starts at ``$``.
    """
    getters = []
    for text in texts:
        from_root, segments = parse_path(text)
        if from_root or any(index == "*" for _name, index in segments):
            raise PathSyntaxError(f"{text!r}: a list of paths reads plain values of the item: no [*], no $")
        getters.append(_plain_getter(False, segments))
    getters = tuple(getters)
    return lambda item, root: [get(item, root) for get in getters]


def _full_label(src: tuple, at: Any) -> str:
    """A source label with its list prefix (``files[3].displayName``); a list of paths as ``[a, b]``."""
    label, absolute = src
    if absolute:
        return label
    prefix = _source_prefix(at)
    if label.__class__ is tuple:
        return "[" + ", ".join(prefix + part for part in label) + "]"
    return prefix + label


# ---------------------------------------------------------------------------------------------
# Conditions


class Condition:
    """A compiled ``{path: ..., in: [...] | not_in: [...] | present: bool}`` test on a record."""

    __slots__ = ("test", "path", "getter", "text")

    def __init__(self, spec: dict):
        self.path = spec["path"]
        getter, _absolute, many = compile_path(self.path)
        if many:
            raise PathSyntaxError(f"{self.path!r}: a condition reads one value, not a [*] list")
        self.getter = getter

        def value_of(item: Any, root: Any) -> Any:
            try:
                return getter(item, root)
            except _Mismatch:
                return None

        if "in" in spec or "not_in" in spec:
            negate = "not_in" in spec
            listed = spec["not_in" if negate else "in"]
            keys = frozenset((v.__class__, v) for v in listed)
            self.text = f"{self.path} is {'not ' if negate else ''}one of [{_show_list(listed)}]"
            key = self.path if _SEGMENT.fullmatch(self.path) and "[" not in self.path else None

            if key is not None:

                def test(item: Any, root: Any) -> bool:
                    value = item.get(key)
                    try:
                        return ((value.__class__, value) in keys) is not negate
                    except TypeError:  # a list or an object: never among the listed scalars
                        return negate

            else:

                def test(item: Any, root: Any) -> bool:
                    value = value_of(item, root)
                    try:
                        return ((value.__class__, value) in keys) is not negate
                    except TypeError:
                        return negate

        else:
            wanted = bool(spec["present"])
            self.text = f"{self.path} is {'present' if wanted else 'missing'}"

            def test(item: Any, root: Any) -> bool:
                value = value_of(item, root)
                present = not (value is None or (value.__class__ is str and (not value or value.isspace())))
                return present is wanted

        self.test = test

    def actual(self, item: Any, root: Any) -> str:
        """The tested value, for messages (``dossierStatus is 'processing'``)."""
        try:
            value = self.getter(item, root)
        except _Mismatch:
            value = None
        return f"{self.path} is {_show(value)}"


# ---------------------------------------------------------------------------------------------
# Field compilation


class CodeTable:
    """A compiled code table: source key → target code, plus keys that are deliberately unmapped."""

    __slots__ = ("name", "values", "not_mapped", "known")

    def __init__(self, name: str, spec: dict):
        self.name = name
        self.values: dict[str, str] = dict(spec.get("values", {}))
        self.not_mapped: dict[str, str] = dict(spec.get("not_mapped", {}))
        self.known = ", ".join(self.values)

    def miss_message(self, label: str, value: str) -> str:
        message = f"{label} {_show(value)} is not in code table {self.name} (known: {self.known})"
        reason = self.not_mapped.get(value)
        if reason:
            message += f"; deliberately not mapped: {reason}"
        return message


def transform_steps(spec: Any) -> list[tuple[str, Any]]:
    """A field's ``transform`` as ``[(name, argument or None), ...]``: a name, ``{name: argument}`` or a list."""
    if spec is None:
        return []
    out = []
    for step in spec if isinstance(spec, list) else [spec]:
        if isinstance(step, dict):
            ((name, argument),) = step.items()
            out.append((name, argument))
        else:
            out.append((step, None))
    return out


class _Spec:
    """What the compiler knows about one field while building its step (compile time only)."""

    def __init__(self, target: str, spec: dict, tables: dict[str, CodeTable]):
        self.target = target
        self.spec = spec
        self.when = Condition(spec["when"]) if "when" in spec else None
        required = spec.get("required", False)
        self.required = required is True
        self.required_if = Condition(required["when"]) if isinstance(required, dict) else None
        self.personal = bool(spec.get("personal", False))
        steps = transform_steps(spec.get("transform"))
        self.transform_names = [name for name, _argument in steps]
        self.transforms = tuple(TRANSFORMS[name].bind(argument) for name, argument in steps)
        self.table = tables[spec["code_table"]] if "code_table" in spec else None
        self.max_length = spec.get("max_length")
        self.pattern = compile_pattern(spec["pattern"]) if "pattern" in spec else None
        self.pattern_text = spec.get("pattern")


def compile_fields(fields: dict[str, dict], tables: dict[str, CodeTable]) -> list[tuple[str, Step]]:
    """Compile a ``fields`` block into ``[(target_name, step), ...]`` in file order.

    Raises:
        PathSyntaxError, ValueError: a path or a default that cannot work (the loader reports these).
    """
    steps = []
    for target, spec in fields.items():
        field = _Spec(target, spec, tables)
        if "each" in spec:
            steps.append((target, _list_step(field, tables)))
        elif "fields" in spec:
            steps.append((target, _object_step(field, tables)))
        elif "const" in spec:
            steps.append((target, _typed(field, _const_step(field))))
        else:
            steps.append((target, _typed(field, _value_step(field))))
    return steps


_INTEGER = re.compile(r"-?[0-9]+")
#: A typed number must fit what peers hold: SQL BIGINT, xsd:long, a finite JSON number.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_BOOLEANS = {"true": True, "false": False}
#: ``type`` of a field → what the engine sends: text (the default), or a JSON integer, number or boolean.
OUTPUT_TYPES = ("text", "integer", "number", "boolean")


def _typed(field: _Spec, step: Step) -> Step:
    """Wrap a scalar step for a field's output ``type`` and ``nullable`` (default: text, never null).

    The field's value is made as always (text, every rule checked), then converted: ``integer``
    (``"12"`` → ``12``), ``number`` (``"1.5"`` → ``1.5``, ``"2"`` → ``2``), ``boolean`` (``"true"``
    → ``true``). No value (``""``) becomes ``null`` when ``nullable: true``; without it, a typed
    field with no value is an error (rule ``type``) unless another rule already refused it.
    """
    kind = field.spec.get("type", "text")
    nullable = field.spec.get("nullable", False) is True
    if kind == "text" and not nullable:
        return step
    target = field.target
    source = field.spec.get("from")
    label = source if isinstance(source, str) else "the value"
    personal = field.personal

    def shown(value: str) -> str:
        """The value for a message: nothing for personal data."""
        return "" if personal else f" {_show(value)}"

    def typed(item: Any, root: Any, errors: list, at: Any) -> Any:
        before = len(errors)
        value = step(item, root, errors, at)
        if value == "":
            if nullable or len(errors) > before:
                return None
            if kind == "text":
                return value
            errors.append(FieldError(_target_prefix(at) + target, "type",
                                     f"{_source_prefix(at)}{label} has no value; {target} needs "
                                     f"{'an' if kind == 'integer' else 'a'} {kind}"))
            return None
        if kind == "text" or len(errors) > before:
            return value
        try:
            return _to_type(kind, value, target)
        except _NotOfType as problem:
            errors.append(FieldError(_target_prefix(at) + target, "type",
                                     f"{_source_prefix(at)}{label}{shown(value)} {problem}"))
            return None

    return typed


class _NotOfType(Exception):
    """A value is not of a field's ``type``; the text ends a sentence on the value ("is not an integer, ...")."""


def _to_type(kind: str, value: str, target: str) -> Any:
    """``value`` (text, not empty) as what a field of ``type: kind`` sends (not ``text``).

    Raises:
        _NotOfType: it is not one, or too large for one.
    """
    if kind == "boolean":
        if value in _BOOLEANS:
            return _BOOLEANS[value]
    elif (_INTEGER if kind == "integer" else _NUMBER).fullmatch(value):
        # int() of more than 4300 digits raises ValueError: a longer value cannot fit anyway
        number = None if len(value.lstrip("-0")) > 400 else int(value) if "." not in value else float(value)
        fits = number is not None and (
            _INT64_MIN <= number <= _INT64_MAX if number.__class__ is int else math.isfinite(number))
        if fits:
            return number
        raise _NotOfType(f"is too large for {target}: {'an integer' if kind == 'integer' else 'a number'} a peer "
                         "can hold lies between -2^63 and 2^63-1 (a 64-bit integer, a finite number)")
    raise _NotOfType(f"is not {'an' if kind == 'integer' else 'a'} {kind}, which {target} must be")


def _constant_type_problem(field: _Spec, value: str) -> str | None:
    """Why a constant output (a ``const``, a converted ``default``) is not what the field's ``type``
    sends, ending a sentence on the value; ``None`` when it is. Checked when the file is compiled:
    such a value would make every record it is used for an error, blaming the record."""
    kind = field.spec.get("type", "text")
    if kind == "text":
        return None
    if value == "":
        if field.spec.get("nullable", False) is True:
            return None
        return (f"gives no value, and {field.target} needs {'an' if kind == 'integer' else 'a'} {kind} "
                "(nullable: true sends null)")
    try:
        _to_type(kind, value, field.target)
    except _NotOfType as problem:
        return str(problem)
    return None


def _object_step(field: _Spec, tables: dict[str, CodeTable]) -> Step:
    """The step of an object target field (``fields:``): its fields read the same source item."""
    target = field.target
    substeps = tuple(compile_fields(field.spec["fields"], tables))
    when = field.when.test if field.when is not None else None

    def step(item: Any, root: Any, errors: list, at: Any) -> dict:
        if when is not None and not when(item, root):
            return {}
        inner = (at, target, None, None, None)
        return {name: sub(item, root, errors, inner) for name, sub in substeps}

    return step


def _const_step(field: _Spec) -> Step:
    """The step of a const field.

    Raises:
        ValueError: the const is not what the field's ``type`` sends (the loader reports it).
    """
    value = _NFC("NFC", field.spec["const"])
    problem = _constant_type_problem(field, value)
    if problem is not None:
        raise ValueError(f"const {_show(value)} {problem}")
    when = field.when.test if field.when is not None else None
    if when is None:
        return lambda item, root, errors, at: value
    return lambda item, root, errors, at: value if when(item, root) else ""


def _value_step(field: _Spec) -> Step:
    """The step of a scalar target field: from → default → transforms → code table → checks."""
    target = field.target
    source = field.spec["from"]
    when = field.when.test if field.when is not None else None
    where = Condition(field.spec["where"]).test if "where" in field.spec else None
    several = isinstance(source, list)  # from: [action, note] -> a list of their values
    if several:
        get, absolute, label = compile_paths(source), False, tuple(source)
    else:
        get, absolute, _many = compile_path(source, where)
        label = source[2:] if absolute and source != "$" else source
    primary = (label, absolute)
    fallback = field.spec.get("fallback")
    fallback_get = fallback_when = fallback_source = fallback_condition = None
    if fallback is not None:
        fallback_get, fallback_absolute, _many = compile_path(fallback["from"])
        fallback_label = fallback["from"][2:] if fallback_absolute else fallback["from"]
        fallback_source = (fallback_label, fallback_absolute)
        fallback_condition = Condition(fallback["when"]) if "when" in fallback else None
        fallback_when = fallback_condition.test if fallback_condition is not None else None
    required = field.required
    required_if = field.required_if
    transforms = field.transforms
    transform_names = field.transform_names
    table = field.table
    table_values = table.values if table is not None else None
    max_length = field.max_length
    pattern = field.pattern
    pattern_text = field.pattern_text  # as written in the file (compile_pattern rewrites \d)
    personal = field.personal

    def source_prefix(at: Any) -> str:
        return "" if absolute else _source_prefix(at)

    def fail(errors: list, at: Any, rule: str, message: Callable[[str], str], src: tuple = primary) -> str:
        """Record an error; ``message`` receives the full source label (``files[3].displayName``)."""
        errors.append(FieldError(_target_prefix(at) + target, rule, message(_full_label(src, at))))
        return ""

    def shown(value: Any) -> str:
        """The value for a message: nothing for personal data, nor for a list or an object (the
        message names their kind already)."""
        return "" if personal or value.__class__ in (list, dict) else f" {_show(value)}"

    def finish(value: Any, item: Any, root: Any, errors: list, at: Any, src: tuple = primary) -> str:
        """Transforms, code table and checks on a present value read from ``src``."""
        for name, transform in zip(transform_names, transforms):
            try:
                value = transform(value)
            except TransformError as problem:
                v, detail, used = value, problem.detail, name
                return fail(errors, at, problem.rule,
                            lambda s: f"{s}{shown(v)} {detail} (transform {used})", src)
            if value is None:
                return absent(None, item, root, errors, at)
        if transforms and value.__class__ is str and (not value or value.isspace()):
            # a list item first/last picked, say: blank text is no value, as it is from a path
            return absent(value, item, root, errors, at)
        if table_values is not None:
            if value.__class__ is not str:
                v = value
                return fail(errors, at, "type",
                            lambda s: f"{s} is {_kind(v)}{shown(v)}, expected text for code table {table.name}", src)
            code = table_values.get(value)
            if code is None:
                code = table_values.get(_NFC("NFC", value))
                if code is None:
                    v = value
                    return fail(errors, at, "code_table", lambda s: table.miss_message(s, v) if not personal
                                else f"{s} is not in code table {table.name}", src)
            value = code
        elif value.__class__ is str:
            if not value.isascii():
                value = _NFC("NFC", value)
        else:
            v = value
            hint = "; add transform: string" if v.__class__ is int else ""
            return fail(errors, at, "type", lambda s: f"{s} is {_kind(v)}{shown(v)}, expected text{hint}", src)
        if max_length is not None and len(value) > max_length:
            n = len(value)
            fail(errors, at, "max_length",
                 lambda s: f"{s} is {n} characters long; {target} allows at most {max_length} "
                           "(values are never truncated)", src)
        if pattern is not None and pattern.fullmatch(value) is None:
            v = value
            fail(errors, at, "format",
                 lambda s: f"{s}{shown(v)} does not have the required form {pattern_text}", src)
        return value

    default_output = ""

    def absent(raw: Any, item: Any, root: Any, errors: list, at: Any, tried_fallback: bool = False) -> str:
        """A missing or blank value: a 'required' error, the default, or "" (the portal's "no value")."""
        if required or (required_if is not None and required_if.test(item, root)):
            state = "missing" if raw is None else "empty"
            if fallback_source is not None:
                other = fallback_source[0] if fallback_source[1] else _source_prefix(at) + fallback_source[0]
                if tried_fallback:
                    state += f" and so is its fallback {other}"
                elif fallback_condition is not None:
                    state += (f" (its fallback {other} only stands in when {fallback_condition.text}; "
                              f"{fallback_condition.actual(item, root)})")
            # "receiveDate is missing", or for a list of paths "every one of [action, note] is missing or blank"
            subject = (lambda s: f"every one of {s} is missing or blank") if several else (lambda s: f"{s} is {state}")
            if required:
                return fail(errors, at, "required", lambda s: f"{subject(s)}; {target} is required")
            because = f"{required_if.text} ({required_if.actual(item, root)})"
            return fail(errors, at, "required", lambda s: f"{subject(s)}; {target} is required when {because}")
        return default_output

    # A default is a source value: it goes through the same transforms and code table. It is
    # constant, so it is converted once, here (a default that cannot convert is a file error).
    if "default" in field.spec:
        default_errors: list[FieldError] = []
        default_output = finish(field.spec["default"], {}, {}, default_errors, None)
        if default_errors:
            raise ValueError(f"default {_show(field.spec['default'])} does not convert: {default_errors[0].message}")
        problem = _constant_type_problem(field, default_output)
        if problem is not None:
            made = "" if default_output == field.spec["default"] else \
                f" (made {_show(default_output)} by its transforms and code table)"
            raise ValueError(f"default {_show(field.spec['default'])}{made} {problem}")

    def general(value: Any, item: Any, root: Any, errors: list, at: Any) -> str:
        """Any fetched value, every rule: the fast paths below fall back to this."""
        if value is None or (value.__class__ is str and (not value or value.isspace())):
            if fallback_get is not None and (fallback_when is None or fallback_when(item, root)):
                try:
                    other = fallback_get(item, root)
                except _Mismatch as m:
                    prefix = "" if fallback_source[1] else _source_prefix(at)
                    errors.append(FieldError(_target_prefix(at) + target, "type",
                                             f"{prefix}{m.label} is {_kind(m.value)}, expected {m.expected}"))
                    return ""
                if other is None or (other.__class__ is str and (not other or other.isspace())):
                    return absent(value, item, root, errors, at, tried_fallback=True)
                return finish(other, item, root, errors, at, fallback_source)
            return absent(value, item, root, errors, at)
        return finish(value, item, root, errors, at)

    # The common shapes get a fast path for the common, valid value; anything unusual (missing,
    # blank, wrong type, a value that breaks a rule) goes through ``general``, which reports it.
    key = source if not several and _SEGMENT.fullmatch(source) and "[" not in source else None
    no_checks = max_length is None and pattern is None
    # A missing value of an optional field without a fallback is simply the default ("" unless
    # the file says otherwise): the fast paths answer it without the general path.
    plain_optional = not required and required_if is None and fallback_get is None
    if not FAST_PATHS:
        key = None

    if key is not None and when is None and not transforms and table_values is None:

        def step(item: Any, root: Any, errors: list, at: Any) -> str:
            value = item.get(key)
            if value.__class__ is str and value and not value.isspace():
                if not value.isascii():
                    value = _NFC("NFC", value)
                if no_checks or ((max_length is None or len(value) <= max_length)
                                 and (pattern is None or pattern.fullmatch(value) is not None)):
                    return value
            elif plain_optional and (value is None or value == ""):
                return default_output
            return general(value, item, root, errors, at)

        step.inline = {"kind": "plain", "read": (key,), "max_length": max_length, "pattern": pattern,  # type: ignore[attr-defined]
                       "optional": plain_optional, "default": default_output}
        return step

    if key is not None and when is None and not transforms and no_checks:

        def step(item: Any, root: Any, errors: list, at: Any) -> str:
            value = item.get(key)
            if value.__class__ is str:
                code = table_values.get(value)
                if code is not None:
                    return code
                if not value and plain_optional:
                    return default_output
            elif value is None and plain_optional:
                return default_output
            return general(value, item, root, errors, at)

        step.inline = {"kind": "table", "read": (key,), "table": table_values,  # type: ignore[attr-defined]
                       "optional": plain_optional, "default": default_output}
        return step

    if key is not None and when is None and transforms and table_values is None and no_checks:
        chain = tuple(transforms)

        def step(item: Any, root: Any, errors: list, at: Any) -> str:
            value = item.get(key)
            if value is None or value == "":
                if plain_optional:
                    return default_output
            elif not (value.__class__ is str and value.isspace()):
                output = value
                try:
                    for transform in chain:  # a transform giving None: the general way says what that means
                        output = transform(output)
                        if output is None:
                            break
                except TransformError:
                    return general(value, item, root, errors, at)
                if output.__class__ is str and output and not output.isspace():  # blank: no value, the general way
                    return output if output.isascii() else _NFC("NFC", output)
            return general(value, item, root, errors, at)

        step.inline = {"kind": "transform", "read": (key,), "transforms": chain,  # type: ignore[attr-defined]
                       "optional": plain_optional, "default": default_output}
        return step

    def step(item: Any, root: Any, errors: list, at: Any) -> str:
        if when is not None and not when(item, root):
            return ""
        try:
            value = get(item, root)
        except _Mismatch as m:
            errors.append(FieldError(_target_prefix(at) + target, "type",
                                     f"{source_prefix(at)}{m.label} is {_kind(m.value)}, expected {m.expected}"))
            return ""
        if value is None and plain_optional:
            return default_output
        return general(value, item, root, errors, at)

    # ``outer.inner`` (the canonical records' ``applicant.name``): read both levels inline; an
    # outer value that is not an object goes the general way, which reports it.
    pair = None
    if FAST_PATHS and key is None and not several and not absolute and where is None and when is None:
        _root, segments = parse_path(source)
        if len(segments) == 2 and segments[0][1] is None and segments[1][1] is None:
            pair = (segments[0][0], segments[1][0])
    if pair is None:
        return step
    slow = step
    outer_key, inner_key = pair
    single = transforms[0] if len(transforms) == 1 else None

    def fast(item: Any, root: Any, errors: list, at: Any) -> str:
        outer = item.get(outer_key)
        if outer.__class__ is not dict:
            return slow(item, root, errors, at)
        value = outer.get(inner_key)
        if value is None:
            return default_output if plain_optional else general(value, item, root, errors, at)
        if no_checks and value.__class__ is str and value and not value.isspace():
            if not transforms:
                if table_values is None:
                    return value if value.isascii() else _NFC("NFC", value)
                code = table_values.get(value)
                if code is not None:
                    return code
            elif single is not None and table_values is None:
                try:
                    output = single(value)
                except TransformError:
                    return general(value, item, root, errors, at)
                if output.__class__ is str and output and not output.isspace():
                    return output if output.isascii() else _NFC("NFC", output)
        return general(value, item, root, errors, at)

    if not transforms and table_values is None:
        fast.inline = {"kind": "plain", "read": pair, "max_length": max_length,  # type: ignore[attr-defined]
                       "pattern": pattern, "optional": plain_optional, "default": default_output}
    elif not transforms and no_checks:
        fast.inline = {"kind": "table", "read": pair, "table": table_values,  # type: ignore[attr-defined]
                       "optional": plain_optional, "default": default_output}
    elif single is not None and table_values is None and no_checks:
        fast.inline = {"kind": "transform", "read": pair, "transforms": (single,),  # type: ignore[attr-defined]
                       "optional": plain_optional, "default": default_output}
    return fast


def compile_builder(steps: list[tuple[str, Step]]) -> Callable[[Any, Any, list, Any], dict]:
    """One function ``build(item, root, errors, at) -> dict`` running ``steps`` in order.

    The happy path of the common step shapes (a plain text value, a code-table value, one
    transform, read from ``key`` or ``outer.inner``; their ``inline`` description) is written out
    in the generated function, so a record costs one call instead of one per field; anything
    else — a missing required value, a value that breaks a rule, non-ASCII text to normalise —
    calls the step itself, which reads the value again and does everything (errors included)
    exactly as without this function.
    """
    env: dict[str, Any] = {"TransformError": TransformError, "NFC": _NFC}
    lines = ["def build(item, root, errors, at):"]
    outputs = []
    for n, (name, step) in enumerate(steps):
        env[f"S{n}"] = step
        out, call = f"o{n}", f"S{n}(item, root, errors, at)"
        outputs.append(f"{name!r}: {out}")
        spec = getattr(step, "inline", None) if FAST_PATHS else None
        if spec is None:
            lines.append(f"    {out} = {call}")
            continue
        env[f"D{n}"] = spec["default"]
        read = spec["read"]
        if len(read) == 1:
            env[f"K{n}"] = read[0]
            lines.append(f"    v = item.get(K{n})")
            pad = "    "
        else:
            env[f"K{n}"], env[f"J{n}"] = read
            lines += [f"    w = item.get(K{n})", "    if w.__class__ is not dict:", f"        {out} = {call}",
                      "    else:", f"        v = w.get(J{n})"]
            pad = "        "
        optional = spec["optional"]
        body = []
        if spec["kind"] == "plain":
            checks = []
            if spec["max_length"] is not None:
                checks.append(f"len(v) <= {int(spec['max_length'])}")
            if spec["pattern"] is not None:
                env[f"P{n}"] = spec["pattern"].fullmatch
                checks.append(f"P{n}(v) is not None")
            body += ["if v.__class__ is str and v and not v.isspace():",
                     "    if not v.isascii():", "        v = NFC('NFC', v)"]
            if checks:
                body += [f"    {out} = v if {' and '.join(checks)} else {call}"]
            else:
                body += [f"    {out} = v"]
            if optional:
                body += ["elif v is None:", f"    {out} = D{n}"]
            body += ["else:", f"    {out} = {call}"]
        elif spec["kind"] == "table":
            env[f"T{n}"] = spec["table"].get
            body += [f"{out} = T{n}(v) if v.__class__ is str else None", f"if {out} is None:",
                     f"    {out} = D{n} if v is None and {bool(optional)} else {call}"]
        else:  # transforms, one after the other; one giving None or failing: the general way
            calls = []
            for t, transform in enumerate(spec["transforms"]):
                env[f"F{n}_{t}"] = transform
                calls += ([f"        {out} = F{n}_{t}(v)"] if t == 0 else
                          [f"        if {out} is not None:", f"            {out} = F{n}_{t}({out})"])
            body += ["if v is not None and (v.__class__ is not str or (v and not v.isspace())):",
                     "    try:", *calls, "    except TransformError:", f"        {out} = None",
                     f"    if {out}.__class__ is not str or not {out} or {out}.isspace():", f"        {out} = {call}",
                     f"    elif not {out}.isascii():", f"        {out} = NFC('NFC', {out})"]
            if optional:
                body += ["elif v is None:", f"    {out} = D{n}"]
            body += ["else:", f"    {out} = {call}"]
        lines += [pad + line for line in body]
    lines.append("    return {" + ", ".join(outputs) + "}")
    exec("\n".join(lines), env)  # noqa: S102 - generated from compiled steps, no file content is code
    return env["build"]


def _list_step(field: _Spec, tables: dict[str, CodeTable]) -> Step:
    """The step of a list target field (``each``): one object per (kept) source item."""
    target = field.target
    each = field.spec["each"]
    source = each["from"]
    when = field.when.test if field.when is not None else None
    where = Condition(each["where"]).test if "where" in each else None
    substeps = compile_fields(each["fields"], tables)
    required = field.required
    required_if = field.required_if
    if "[*]." in source:  # outer[*].inner: the inner lists of every outer item, one after the other
        return _flat_list_step(field, source, substeps, when, where, required, required_if)
    from_record = source == "$"
    get, absolute, _many = compile_path(source)
    label = source[2:] if absolute and not from_record else source

    def source_label(at: Any) -> str:
        return label if absolute else _source_prefix(at) + label

    def fail(errors: list, at: Any, rule: str, message: str) -> list:
        errors.append(FieldError(_target_prefix(at) + target, rule, message))
        return []

    build = compile_builder(substeps)

    if from_record:

        def step(item: Any, root: Any, errors: list, at: Any) -> list:
            if when is not None and not when(item, root):
                return []
            if where is not None and not where(root, root):
                return []
            return [build(root, root, errors, (at, target, 0, None, 0))]

        return step

    def step(item: Any, root: Any, errors: list, at: Any) -> list:
        if when is not None and not when(item, root):
            return []
        try:
            sequence = get(item, root)
        except _Mismatch as m:
            prefix = "" if absolute else _source_prefix(at)
            return fail(errors, at, "type", f"{prefix}{m.label} is {_kind(m.value)}, expected {m.expected}")
        if sequence is None:
            if required or (required_if is not None and required_if.test(item, root)):
                return fail(errors, at, "required", f"{source_label(at)} is missing; {target} is required")
            return []
        if sequence.__class__ is not list:
            return fail(errors, at, "type", f"{source_label(at)} is {_kind(sequence)}, expected a list")
        out = []
        for n, element in enumerate(sequence):
            if element.__class__ is not dict:
                errors.append(FieldError(f"{_target_prefix(at)}{target}[{len(out)}]", "type",
                                         f"{source_label(at)}[{n}] is {_kind(element)}, expected an object"))
                continue
            if where is not None and not where(element, root):
                continue
            out.append(build(element, root, errors, (at, target, len(out), source, n)))
        return out

    return step


def _flat_list_step(field: _Spec, source: str, substeps: list, when: Any, where: Any,
                    required: bool = False, required_if: Condition | None = None) -> Step:
    """``each: {from: outer[*].inner}``: one object per item of every outer item's inner list, in order.

    Inside, paths read the inner item; ``_outer.x`` reads ``x`` of the outer item it belongs to
    (``THANHPHANHOSO[*].GIAYTO`` with ``case: {from: _outer.TRUONGHOP}``). Several levels work the
    same way (``channels[*].times[*].fees``, ``_outer._outer.channel``).

    ``required`` (or ``required: {when: ...}`` that holds): the list is missing, an error (rule
    ``required``), when no inner list is there to go through: the outer list is missing, or none
    of its items has the inner list. An inner list that is there but empty meets it, as a plain
    ``each`` list that is there but empty does.
    """
    target = field.target
    parts = source.split("[*].")
    getters = [compile_path(part)[0] for part in parts]
    within = "[*].".join(parts[:-1])  # the outer items holding the inner lists (channels[*].times)

    def fail(errors: list, at: Any, message: str, rule: str = "type") -> None:
        errors.append(FieldError(_target_prefix(at) + target, rule, message))

    def step(item: Any, root: Any, errors: list, at: Any) -> list:
        if when is not None and not when(item, root):
            return []
        out: list = []
        prefix = _source_prefix(at)
        before = len(errors)
        # [the outer list is there, an inner list is there]: for required
        found = [False, False]

        def walk(level: int, holder: Any, label: str, outer: Any) -> None:
            try:
                sequence = getters[level](holder, root)
            except _Mismatch as m:
                head = f"{label}." if label else ""
                fail(errors, at, f"{prefix}{head}{m.label} is {_kind(m.value)}, expected {m.expected}")
                return
            here = f"{label}.{parts[level]}" if label else parts[level]
            if sequence is None:
                return
            if sequence.__class__ is not list:
                fail(errors, at, f"{prefix}{here} is {_kind(sequence)}, expected a list")
                return
            last = level == len(parts) - 1
            found[0] = True
            found[1] = found[1] or last
            for n, element in enumerate(sequence):
                if element.__class__ is not dict:
                    fail(errors, at, f"{prefix}{here}[{n}] is {_kind(element)}, expected an object")
                    continue
                if outer is not None:
                    element = {**element, "_outer": outer}
                if not last:
                    walk(level + 1, element, f"{here}[{n}]", element)
                    continue
                if where is not None and not where(element, root):
                    continue
                position = (at, target, len(out), here, n)
                out.append({name: sub(element, root, errors, position) for name, sub in substeps})

        walk(0, item, "", None)
        if not found[1] and len(errors) == before and (
                required or (required_if is not None and required_if.test(item, root))):
            state = (f"no item of {prefix}{within} has {parts[-1]}" if found[0]
                     else f"{prefix}{parts[0]} is missing")
            when_text = "" if required else f" when {required_if.text} ({required_if.actual(item, root)})"
            fail(errors, at, f"{prefix}{source} is missing ({state}); {target} is required{when_text}", "required")
        return out

    return step


# ---------------------------------------------------------------------------------------------
# The compiled mapping


def _mask(value: Any) -> Any:
    """Hide personal data: keep the last 3 characters of longer values, nothing of short ones.

    A number (a ``type: integer`` ID number) is masked as its text; a boolean becomes ``"***"``
    (its masked text would tell ``True`` from ``False`` by its length)."""
    if value.__class__ is bool:
        return "***"
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value:
        return value
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 3) + value[-3:]


class Mapping:
    """One compiled mapping file: translates source records into target records.

    Attributes:
        name: ``<from>__<to>/<record>``, e.g. ``onestop__national_portal/dossier``.
        version: the file's ``version`` (an integer, raised by whoever changes the mapping).
        fingerprint: sha256 hex of the file's canonical content (provenance of every output).
        target_fields: the target record's top-level field names, in file order.
        personal_fields: target fields that carry personal data (``DinhDanhCHS[].SoDinhDanh``).
        source, target: the file's ``source`` / ``target`` blocks (``system``, ``record``...).
        record_key_paths: source path(s) of the record key: ``("dossierNo",)``, or several for a
            composite key (``("dossierNo", "stepId")``), whose values are joined with ``#``.
        record_key_path: the same as one text (``dossierNo``; ``dossierNo#stepId`` for a composite key).
        code_tables: every code table the mapping can use, its own and those of its code-table files.
        code_table_files: the code-table files it reads (``code_tables_from``), resolved.
        path: the mapping file.
    """

    def __init__(
        self,
        *,
        name: str,
        version: int,
        description: str,
        source: dict,
        target: dict,
        record_key_path: str | list[str] | tuple[str, ...],
        path: Any,
        fingerprint: str,
        steps: list[tuple[str, Step]],
        personal_fields: tuple[str, ...],
        code_tables: dict[str, CodeTable],
        code_table_files: tuple[Any, ...] = (),
    ):
        self.name = name
        self.version = version
        self.description = description
        self.source = source
        self.target = target
        paths = (record_key_path,) if isinstance(record_key_path, str) else tuple(record_key_path)
        self.record_key_paths = paths
        self.record_key_path = KEY_SEPARATOR.join(paths)
        self.code_table_files = tuple(code_table_files)
        self.path = path
        self.fingerprint = fingerprint
        self.target_fields = tuple(n for n, _ in steps)
        self.personal_fields = personal_fields
        self.code_tables = code_tables
        self._steps = tuple(steps)
        self._build = compile_builder(self._steps)
        self._key_getters = tuple(compile_path(p)[0] for p in paths)
        self._no_keys = tuple(f"<no {p}>" for p in paths)

    def __repr__(self) -> str:
        return f"<Mapping {self.name} v{self.version} {self.fingerprint[:12]}>"

    def record_key(self, record: Any) -> str:
        """The record's business key as text: ``000.00.01.H49-261102-0001``, or ``<no dossierNo>``
        when it has none. A composite key joins its parts with ``#`` (``000.00.01.H49-261029-0012#2``),
        each missing part shown as ``<no stepId>``."""
        parts = [self._key_part(record, get, no_key) for get, no_key in zip(self._key_getters, self._no_keys)]
        return parts[0] if len(parts) == 1 else KEY_SEPARATOR.join(parts)

    @staticmethod
    def _key_part(record: Any, get: Getter, no_key: str) -> str:
        if record.__class__ is not dict:
            return no_key
        try:
            key = get(record, record)
        except _Mismatch:
            return no_key
        if key is None or key.__class__ is bool or not isinstance(key, (str, int)):
            return no_key
        key = str(key)
        return _NFC("NFC", key) if key.strip() else no_key

    def translate(self, record: Any) -> tuple[dict, list[FieldError]]:
        """Map a record as far as it goes: ``(output, errors)``; the output is only valid without errors."""
        errors: list[FieldError] = []
        if record.__class__ is not dict:
            if not isinstance(record, dict):
                errors.append(FieldError("<record>", "type", f"the record is {_kind(record)}, expected an object"))
                return {}, errors
            record = dict(record)
        output = self._build(record, record, errors, None)
        return output, errors

    def apply(self, record: Any) -> dict:
        """Map one source record to a target record.

        Raises:
            RecordInvalid: the record broke one or more rules; ``errors`` lists all of them.
        """
        errors: list[FieldError] = []
        if record.__class__ is dict:
            output = self._build(record, record, errors, None)
        else:
            output, errors = self.translate(record)
        if errors:
            raise RecordInvalid(self.record_key(record), errors, mapping=self.name)
        return output

    def mask_personal(self, output: dict) -> dict:
        """A copy of a mapped record with the personal-data fields masked (for views and previews)."""
        masked = copy.deepcopy(output)
        for dotted in self.personal_fields:
            parts = dotted.split(".")
            _mask_in(masked, parts)
        return masked


def _mask_in(node: Any, parts: list[str]) -> None:
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        for element in node.get(head[:-2]) or []:
            _mask_in(element, rest)
    elif not rest:
        if head in node:
            node[head] = _mask(node[head])
    else:
        _mask_in(node.get(head), rest)
