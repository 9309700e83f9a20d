"""Loading mapping files: find, parse, validate (schema, then meaning), compile, cache.

Every problem with a file is reported as a :class:`MappingFileError` (a ``ConfigurationError``)
naming the file, the path inside it (``fields.TaiLieuNop.each.fields.IsDeleted.transform``) and
the rule, and listing *every* problem found, not just the first.

Code tables that several mappings need live in a *code-table file*
(``mappings/<from>__<to>/code_tables.yaml``: code tables only, validated against the schema's
``$defs/code_tables_file``), named by each mapping in ``code_tables_from``. Such a file is never a
mapping: :func:`list_mappings` leaves out every file whose name ends in ``code_tables.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from connectors.errors import ConfigurationError
from lienthong.mapping.chain import Chain, field_lineage
from lienthong.mapping.engine import (
    CodeTable,
    Condition,
    Mapping,
    PathSyntaxError,
    compile_fields,
    compile_paths,
    compile_pattern,
    parse_path,
    transform_steps,
)
from lienthong.mapping.transforms import TRANSFORMS

if TYPE_CHECKING:
    import jsonschema

__all__ = [
    "CodeTableFile",
    "MappingFileError",
    "MappingProblem",
    "REPO_ROOT",
    "SCHEMA_PATH",
    "is_code_table_file",
    "list_code_table_files",
    "list_mappings",
    "load_code_tables",
    "load_mapping",
    "mappings_dir",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The mapping-file format. It belongs to the engine, so it is read from the repository even when
#: ``LIENTHONG_MAPPINGS_DIR`` points the engine at other mapping files.
SCHEMA_PATH = REPO_ROOT / "mappings" / "schema" / "mapping.schema.json"
MAPPINGS_DIR_ENV = "LIENTHONG_MAPPINGS_DIR"

#: <from>__<to>/<record>, optionally .<variant> (onestop__national_portal/dossier.direct)
_NAME = re.compile(r"[a-z][a-z0-9_]*__[a-z][a-z0-9_]*/[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?")
#: A file whose name ends in this (``code_tables.yaml``, ``dates_code_tables.yaml``) holds code tables only.
CODE_TABLES_SUFFIX = "code_tables.yaml"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class MappingProblem:
    """One broken rule in a mapping file.

    Attributes:
        path: where in the file, dotted (``fields.MaHoSo.transform[1]``); ``""`` for the whole file.
        rule: the rule's short name (``unknown_transform``, ``additionalProperties``, ``yaml``...).
        message: a sentence for the person editing the file.
    """

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"at {self.path}: " if self.path else ""
        return f"{where}{self.message} [{self.rule}]"


class MappingFileError(ConfigurationError):
    """A mapping file, or a code-table file it reads, cannot be used. ``problems`` lists every broken rule found.

    Attributes:
        file: the file with the problems: the mapping file, or the code-table file it names in
            ``code_tables_from``.
        problems: one :class:`MappingProblem` each; ``path`` and ``rule`` repeat the first one's.
        included_by: for a code-table file, the mapping file that was being loaded (else ``None``).
    """

    def __init__(self, file: Path | str, problems: list[MappingProblem], *, included_by: Path | str | None = None):
        self.file = Path(file)
        self.problems = tuple(problems)
        self.path = self.problems[0].path if self.problems else ""
        self.rule = self.problems[0].rule if self.problems else ""
        self.included_by = Path(included_by) if included_by is not None else None
        if is_code_table_file(self.file):
            what = f"code-table file {self.file}"
            if self.included_by is not None:
                what += f" (in code_tables_from of {self.included_by})"
        else:
            what = f"mapping file {self.file}"
        if len(self.problems) == 1:
            text = f"{what}: {self.problems[0]}"
        else:
            lines = "".join(f"\n  {p}" for p in self.problems)
            text = f"{what}: {len(self.problems)} problems:{lines}"
        super().__init__(text)


# ---------------------------------------------------------------------------------------------
# Where mapping files live


def mappings_dir() -> Path:
    """The mappings directory: ``$LIENTHONG_MAPPINGS_DIR``, else ``<repo>/mappings``."""
    configured = os.environ.get(MAPPINGS_DIR_ENV)
    return Path(configured) if configured else REPO_ROOT / "mappings"


def is_code_table_file(path: Path | str) -> bool:
    """Whether a file is a code-table file by its name (``code_tables.yaml``, ``<topic>_code_tables.yaml``)."""
    name = Path(path).name
    return name == CODE_TABLES_SUFFIX or name.endswith("_" + CODE_TABLES_SUFFIX)


def list_mappings() -> list[str]:
    """Names of every mapping file in the mappings directory (``onestop__national_portal/dossier``), sorted.

    Code-table files (``code_tables.yaml``) are not mappings and are left out.
    """
    root = mappings_dir()
    names = [f"{p.parent.name}/{p.stem}" for p in root.glob("*__*/*.yaml") if not is_code_table_file(p)]
    return sorted(n for n in names if _NAME.fullmatch(n))


def list_code_table_files() -> list[Path]:
    """Every code-table file one level under the mappings directory (``<dir>/code_tables.yaml``), sorted."""
    root = mappings_dir()
    return sorted(p for p in root.glob(f"*/*{CODE_TABLES_SUFFIX}") if is_code_table_file(p))


def _not_a_mapping(what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what} is a code-table file, not a mapping: mapping files use its tables by naming it in "
        "code_tables_from (check it with: lienthong mapping check)"
    )


def _resolve(name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, Path) or str(name_or_path).endswith((".yaml", ".yml")):
        if is_code_table_file(name_or_path):
            raise _not_a_mapping(str(name_or_path))
        return Path(name_or_path)
    name = str(name_or_path).strip().strip("/")
    if _NAME.fullmatch(name) and is_code_table_file(f"{name}.yaml"):
        raise _not_a_mapping(repr(name))
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"{name!r} is neither a mapping name (<from>__<to>/<record>, e.g. onestop__national_portal/dossier) "
            "nor a path to a .yaml file"
        )
    path = mappings_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_mappings()) or "none"
        raise ConfigurationError(f"no mapping named {name!r} in {mappings_dir()} (known: {known})")
    return path


# ---------------------------------------------------------------------------------------------
# Loading with a cache keyed by file and modification time

Stamp = tuple[int, int]
#: mapping file -> (its stamp, the stamps of the code-table files it read, the compiled mapping)
_cache: dict[Path, tuple[Stamp, tuple[tuple[Path, Stamp], ...], Mapping]] = {}
_tables_cache: dict[Path, "CodeTableFile"] = {}
_cache_lock = threading.Lock()


def _stamp(path: Path) -> Stamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def load_mapping(name_or_path: str | Path) -> Mapping:
    """Load, validate and compile a mapping file; reuse the compiled mapping while the file is unchanged.

    Args:
        name_or_path: a mapping name (``onestop__national_portal/dossier``, looked up in
            :func:`mappings_dir`) or the path of a ``.yaml`` file.

    Raises:
        MappingFileError: the file is missing, is not YAML, breaks the schema or makes no sense.
        ConfigurationError: the name is malformed or names no mapping.
    """
    path = _resolve(name_or_path).resolve()
    try:
        stat = path.stat()
    except OSError as problem:
        raise MappingFileError(path, [MappingProblem("", "not_found", f"cannot read the file: {problem.strerror}")]) from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp and all(_stamp(p) == s for p, s in cached[1]):
        return cached[2]
    mapping, tables_read = _load_file(path)
    with _cache_lock:
        _cache[path] = (stamp, tuple((f.path, f.stamp) for f in tables_read), mapping)
    return mapping


@dataclass(frozen=True)
class CodeTableFile:
    """A loaded code-table file.

    Attributes:
        path: the file (resolved).
        description: its ``description``, or ``""``.
        tables: its code tables by name, compiled.
        document: its canonical content (part of the fingerprint of every mapping that reads it).
        stamp: the file's (modification time, size) when it was read.
    """

    path: Path
    description: str
    tables: dict[str, CodeTable]
    document: dict
    stamp: Stamp


def load_code_tables(path: Path | str, *, included_by: Path | None = None) -> CodeTableFile:
    """Load and validate a code-table file; reuse it while the file is unchanged.

    Args:
        path: the file.
        included_by: the mapping file naming it (only for messages).

    Raises:
        MappingFileError: the file is missing, is not YAML, breaks the schema's
            ``$defs/code_tables_file`` or lists a key as both mapped and not mapped.
    """
    path = Path(path).resolve()
    stamp = _stamp(path)
    cached = _tables_cache.get(path)
    if cached is not None and cached.stamp == stamp:
        return cached
    document = _read_yaml(path, included_by)
    problems = _schema_problems(document, _tables_validator())
    if not problems:
        problems = _table_conflicts(document["code_tables"])
    if problems:
        raise MappingFileError(path, problems, included_by=included_by)
    tables = {name: CodeTable(name, spec) for name, spec in document["code_tables"].items()}
    loaded = CodeTableFile(path, document.get("description", ""), tables, document, stamp or (0, 0))
    with _cache_lock:
        _tables_cache[path] = loaded
    return loaded


def _read_yaml(path: Path, included_by: Path | None = None) -> dict:
    """The file's YAML document as a dict (text NFC), or a MappingFileError with every YAML-level problem."""
    def error(problems: list[MappingProblem]) -> MappingFileError:
        return MappingFileError(path, problems, included_by=included_by)

    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as problem:
        raise error([MappingProblem("", "not_found", f"cannot read the file: {problem.strerror}")]) from None
    except UnicodeDecodeError as problem:
        raise error([MappingProblem("", "encoding", f"the file is not UTF-8 text ({problem.reason} at byte {problem.start})")]) from None

    try:
        node = yaml.compose(text, Loader=_Loader)
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = getattr(problem, "problem", None) or str(problem)
        raise error([MappingProblem("", "yaml", f"not valid YAML{where}: {reason}")]) from None

    problems = _duplicate_keys(node)
    problems += _non_text_keys(document, "")
    if problems:
        raise error(problems)
    if not isinstance(document, dict):
        shape = "code_tables: ..." if is_code_table_file(path) else "name:, version:, fields: ..."
        raise error([MappingProblem("", "type", f"the file must hold a YAML mapping ({shape})")])
    return _nfc(document)


def _load_file(path: Path) -> tuple[Mapping, list[Any]]:
    document = _read_yaml(path)
    if "chain" in document:
        return _load_chain(document, path)
    problems = _schema_problems(document, _validator())
    if problems:
        raise MappingFileError(path, problems)
    shared, tables, problems = _shared_tables(document, path)
    problems += _meaning_problems(document, path, tables)
    if problems:
        raise MappingFileError(path, problems)
    return _compile(document, path, shared), [file for _ref, file in shared]


def _shared_tables(document: dict, file: Path) -> tuple[list[tuple[str, CodeTableFile]], dict, list[MappingProblem]]:
    """Read the code-table files of ``code_tables_from``; merge their tables with the file's own.

    Returns ``([(file name as written, loaded file)], {table name: table spec}, problems)``.

    Raises:
        MappingFileError: a code-table file itself is broken (it is named, not the mapping file).
    """
    problems: list[MappingProblem] = []
    refs = document.get("code_tables_from", [])
    listed = isinstance(refs, list)
    shared: list[tuple[str, CodeTableFile]] = []
    origin: dict[str, str] = {}
    tables: dict[str, dict] = {}
    for n, ref in enumerate(refs if listed else [refs]):
        at = f"code_tables_from[{n}]" if listed else "code_tables_from"
        target = (file.parent / ref).resolve()
        if not target.is_file():
            problems.append(MappingProblem(at, "code_tables_from", f"no code-table file {ref!r} (looked for {target})"))
            continue
        loaded = load_code_tables(target, included_by=file)
        shared.append((ref, loaded))
        for name in loaded.tables:
            if name in origin:
                problems.append(MappingProblem(
                    at, "duplicate_code_table",
                    f"code table {name!r} is defined in both {origin[name]} and {ref}; define it in one place"))
                continue
            origin[name] = ref
            tables[name] = loaded.document["code_tables"][name]
    for name, spec in document.get("code_tables", {}).items():
        if name in origin:
            problems.append(MappingProblem(
                f"code_tables.{name}", "duplicate_code_table",
                f"code table {name!r} is also defined in {origin[name]} (code_tables_from); define it in one place"))
            continue
        tables[name] = spec
    return shared, tables, problems


# ---------------------------------------------------------------------------------------------
# YAML-level checks


def _duplicate_keys(node: Any, path: str = "") -> list[MappingProblem]:
    """Keys given twice in one YAML mapping (YAML would silently keep only the last one), also
    two keys that are one text in two Unicode forms (NFC and NFD ``Ngày``: the file is read as NFC)."""
    problems: list[MappingProblem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, tuple[int, str]] = {}
        for key_node, value_node in node.value:
            written = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key = unicodedata.normalize("NFC", written) if written is not None else None
            child = f"{path}.{key}" if path else str(key)
            if key is not None and key in seen:
                rule = "duplicate_field" if path.endswith("fields") else "duplicate_key"
                what = "target field" if rule == "duplicate_field" else "key"
                line, first = seen[key]
                lines = f"lines {line + 1} and {key_node.start_mark.line + 1}"
                problems.append(MappingProblem(
                    child, rule,
                    f"{what} {key!r} is given twice ({lines}); YAML would silently keep only the second"
                    if first == written else
                    f"{what} {key!r} is given twice ({lines}), in two Unicode forms (NFC and NFD) of the same "
                    "text; the file is read as NFC, which would silently keep only the second",
                ))
            elif key is not None:
                seen[key] = (key_node.start_mark.line, written)
            problems += _duplicate_keys(value_node, child)
    elif isinstance(node, yaml.SequenceNode):
        for n, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{n}]")
    return problems


def _non_text_keys(value: Any, path: str) -> list[MappingProblem]:
    """Keys YAML read as something other than text (``yes``, ``on``, ``1``...)."""
    problems: list[MappingProblem] = []
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                problems.append(MappingProblem(
                    child, "key_type",
                    f"key {key!r} was read as {type(key).__name__}, not text: YAML turns bare yes/no/on/off/"
                    "true/false and numbers into other types; quote the key",
                ))
            problems += _non_text_keys(item, child)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            problems += _non_text_keys(item, f"{path}[{n}]")
    return problems


def _nfc(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {_nfc(k): _nfc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nfc(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Schema


@lru_cache(maxsize=1)
def _schema() -> dict:
    try:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as problem:
        raise ConfigurationError(f"the mapping-file schema {SCHEMA_PATH} cannot be read: {problem}") from None
    _validator_class(schema).check_schema(schema)
    return schema


def _validator_class(schema: dict) -> Any:
    """The JSON Schema validator class for ``schema`` (jsonschema is imported here, when a file is
    first validated, not by every importer of the mapping package: a CLI command that maps nothing)."""
    import jsonschema

    return jsonschema.validators.validator_for(schema)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = _schema()
    return _validator_class(schema)(schema)


@lru_cache(maxsize=1)
def _tables_validator() -> jsonschema.protocols.Validator:
    """Validates a code-table file against ``$defs/code_tables_file`` of the same schema."""
    schema = _schema()
    root = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/code_tables_file"}
    return _validator_class(schema)(root)


def _dotted(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problems(document: dict, validator: jsonschema.protocols.Validator) -> list[MappingProblem]:
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: (list(map(str, e.absolute_path)), e.validator)):
        path = _dotted(error.absolute_path)
        rule = str(error.validator)
        custom = error.schema.get(f"x-message-{rule}") if isinstance(error.schema, dict) else None
        if rule == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            pattern_props = error.schema.get("patternProperties", {})
            for extra in error.instance:
                if extra in allowed or any(re.search(p, extra) for p in pattern_props):
                    continue
                hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
                problems.append(MappingProblem(f"{path}.{extra}" if path else extra, rule, f"unknown key {extra!r}{hint}"))
            continue
        message = custom or error.message
        problems.append(MappingProblem(path, rule, message))
    return problems


# ---------------------------------------------------------------------------------------------
# Meaning (what the schema cannot say)


def _table_conflicts(tables: dict, at: str = "code_tables") -> list[MappingProblem]:
    """Keys listed both as mapped (values) and as deliberately not mapped; blank keys.

    A blank key (``""``, white space) could never be looked up: blank text is no value, so the field
    is missing (``required``, its ``default``) before any code table is read.
    """
    problems = [
        MappingProblem(f"{at}.{table_name}.{part}", "code_table_key",
                       f"key {key!r} is blank, and blank text is no value: it never reaches a code table "
                       "(the field is missing; give the field a default, or make it required)")
        for table_name, table in tables.items()
        for part in ("values", "not_mapped")
        for key in table.get(part, {})
        if not key.strip()
    ]
    return problems + [
        MappingProblem(f"{at}.{table_name}.not_mapped.{key}", "conflict",
                       f"{key!r} is both mapped (values) and listed as not mapped")
        for table_name, table in tables.items()
        for key in sorted(set(table.get("values", {})) & set(table.get("not_mapped", {})))
    ]


def _meaning_problems(document: dict, file: Path, tables: dict) -> list[MappingProblem]:
    """What the schema cannot say. ``tables``: every code table the mapping can use, by name."""
    problems: list[MappingProblem] = []
    add = lambda path, rule, message: problems.append(MappingProblem(path, rule, message))  # noqa: E731

    name = document["name"]
    expected = f"{file.parent.name}/{file.stem}"
    if name != expected:
        add("name", "name", f"name {name!r} does not match the file's place {expected!r} (<directory>/<file name>)")
    source_system, _, target_system = name.split("/")[0].partition("__")
    if document["source"]["system"] != source_system:
        add("source.system", "name", f"source system {document['source']['system']!r} does not match {source_system!r} in the name {name!r}")
    if document["target"]["system"] != target_system:
        add("target.system", "name", f"target system {document['target']['system']!r} does not match {target_system!r} in the name {name!r}")

    keys = document["record_key"]
    for n, key in enumerate(keys if isinstance(keys, list) else [keys]):
        at = f"record_key[{n}]" if isinstance(keys, list) else "record_key"
        try:
            if "*" in key or not parse_path(key)[1]:
                add(at, "path", "a record key part is one value: a path without [*], not $")
        except PathSyntaxError as problem:
            add(at, "path", str(problem))

    problems += _table_conflicts(document.get("code_tables", {}))
    _field_problems(document["fields"], "fields", tables, add)
    return problems


_VALUE_ONLY = ("transform", "code_table", "default", "fallback", "max_length", "pattern", "where", "personal", "type",
               "nullable")


def _field_problems(fields: dict, at: str, tables: dict, add: Any) -> None:
    for target, spec in fields.items():
        here = f"{at}.{target}"
        if "each" in spec:
            for key in _VALUE_ONLY:
                if key in spec:
                    add(f"{here}.{key}", "conflict", f"{key} applies to one value; on a list field, put it on the fields under each")
            each = spec["each"]
            _path_problem(each["from"], f"{here}.each.from", add, allow_root=True)
            if "where" in each:
                _condition_problem(each["where"], f"{here}.each.where", add)
            _field_problems(each["fields"], f"{here}.each.fields", tables, add)
        elif "fields" in spec:
            for key in _VALUE_ONLY + ("required",):
                if key in spec:
                    add(f"{here}.{key}", "conflict", f"{key} applies to one value; on an object field, put it on the fields under fields")
            _field_problems(spec["fields"], f"{here}.fields", tables, add)
        elif "const" in spec:
            conflicts = [key for key in ("from", "transform", "code_table", "default", "fallback", "where", "required")
                         if key in spec]
            for key in conflicts:
                add(f"{here}.{key}", "conflict", f"a const field sends its value as written; {key} does not apply")
            if not conflicts:
                _const_problems(target, spec, here, add)
        else:
            several = isinstance(spec["from"], list)  # from: [action, note]
            if several:
                _paths_problem(spec["from"], f"{here}.from", add)
                many = True
            else:
                many = _path_problem(spec["from"], f"{here}.from", add, allow_root=False)
            steps = transform_steps(spec.get("transform"))
            names = [name for name, _argument in steps]
            transforms_ok = True
            for n, (transform, argument) in enumerate(steps):
                where = f"{here}.transform" + (f"[{n}]" if isinstance(spec["transform"], list) else "")
                if transform not in TRANSFORMS:
                    transforms_ok = False
                    add(where, "unknown_transform",
                        f"no transform named {transform!r} (known: {', '.join(sorted(TRANSFORMS))})")
                    continue
                try:
                    TRANSFORMS[transform].bind(argument)
                except ValueError as problem:
                    transforms_ok = False
                    add(where, "transform_argument", str(problem))
            if "code_table" in spec and spec["code_table"] not in tables:
                add(f"{here}.code_table", "unknown_code_table",
                    f"no code table named {spec['code_table']!r} under code_tables or in the code_tables_from "
                    f"files (defined: {', '.join(tables) or 'none'})")
            if several and not names:
                add(f"{here}.transform", "wildcard",
                    f"{spec['from']!r} reads several values; name a transform that makes one value of them (join)")
            elif many and not names:
                add(f"{here}.transform", "wildcard",
                    f"{spec['from']!r} reads a list ([*]); name a transform that makes one value of it (any_true, first, last)")
            elif (several or many) and all(name in TRANSFORMS for name in names):
                _list_transform_problem(spec, names, several, here, add)
            if "where" in spec and (several or not many):
                add(f"{here}.where", "wildcard", "where filters the items of a [*] path; this field's from has no [*]")
            if "where" in spec:
                _condition_problem(spec["where"], f"{here}.where", add)
            if "fallback" in spec:
                if _path_problem(spec["fallback"]["from"], f"{here}.fallback.from", add, allow_root=False) or many:
                    add(f"{here}.fallback", "wildcard",
                        "a fallback stands in for one missing value: neither path may use [*] or be a list of paths")
                if "when" in spec["fallback"]:
                    _condition_problem(spec["fallback"]["when"], f"{here}.fallback.when", add)
            if "default" in spec and spec.get("required") not in (None, False):
                add(f"{here}.default", "conflict", "a required field has no default: a missing value is an error")
            elif "default" in spec and transforms_ok and spec.get("code_table", "") in {"", *tables}:
                _default_problem(target, spec, f"{here}.default", tables, add)
        if "pattern" in spec and ("from" in spec or "const" in spec):
            try:
                compile_pattern(spec["pattern"])
            except re.error as problem:
                add(f"{here}.pattern", "pattern", f"not a regular expression: {problem}")
        if "when" in spec:
            _condition_problem(spec["when"], f"{here}.when", add)
        if isinstance(spec.get("required"), dict):
            _condition_problem(spec["required"]["when"], f"{here}.required.when", add)


def _list_transform_problem(spec: dict, names: list[str], several: bool, here: str, add: Any) -> None:
    """A field reading a list (a ``[*]`` path, a list of paths): its first transform must read a
    list (``reads_list`` in the registry), and so must the one after a transform that gives a list
    back (``keeps_list``: ``word_bool``); the last one must make one value. Otherwise every record
    would be refused ("x[*].y is a list, expected text"), even one without the list."""
    listed = isinstance(spec["transform"], list)
    reads = f"{spec['from']!r} reads several values" if several else f"{spec['from']!r} reads a list ([*])"
    readers = ", ".join(sorted(name for name, transform in TRANSFORMS.items()
                               if transform.reads_list and not transform.keeps_list))
    for n, name in enumerate(names):
        transform = TRANSFORMS[name]
        if not transform.reads_list:
            given = reads if n == 0 else f"{names[n - 1]} gives a list"
            add(f"{here}.transform" + (f"[{n}]" if listed else ""), "wildcard",
                f"{given}, and {name} takes one value; put a transform that makes one value of the list "
                f"before it (one that reads a list: {readers})")
            return
        if not transform.keeps_list:
            return
    add(f"{here}.transform", "wildcard",
        f"{names[-1]} gives a list; end with a transform that makes one value of it (one that reads a list: {readers})")


def _default_problem(target: str, spec: dict, at: str, tables: dict, add: Any) -> None:
    """A default is converted once, when the file is compiled: it must survive its own transforms,
    code table and checks, and be what the field's ``type`` sends."""
    used = {spec["code_table"]: CodeTable(spec["code_table"], tables[spec["code_table"]])} if "code_table" in spec else {}
    try:
        compile_fields({target: spec}, used)
    except (PathSyntaxError, re.error):
        pass  # reported by the path and pattern checks
    except ValueError as problem:
        add(at, "default", str(problem))


def _const_problems(target: str, spec: dict, here: str, add: Any) -> None:
    """A const is sent as written, for every record: it must meet its own field's rules, checked
    once, here (else every record would be refused, blaming the record)."""
    value = unicodedata.normalize("NFC", spec["const"])
    if "max_length" in spec and len(value) > spec["max_length"]:
        add(f"{here}.max_length", "max_length", f"the const is {len(value)} characters long; {target} allows at "
                                                f"most {spec['max_length']} (values are never truncated)")
    if "pattern" in spec:
        try:
            if compile_pattern(spec["pattern"]).fullmatch(value) is None:
                add(f"{here}.pattern", "format", f"the const {value!r} does not have the required form {spec['pattern']}")
        except re.error:
            return  # reported as a bad regular expression (pattern)
    try:
        compile_fields({target: spec}, {})
    except (PathSyntaxError, re.error):
        pass  # reported by the condition and pattern checks
    except ValueError as problem:
        add(f"{here}.const", "type", str(problem))


def _path_problem(text: str, at: str, add: Any, *, allow_root: bool) -> bool:
    """Report a bad source path; return whether it fans out with ``[*]``."""
    if text == "$" and not allow_root:
        add(at, "path", "$ is the whole record, not a value; name a field")
        return False
    try:
        _from_root, segments = parse_path(text)
    except PathSyntaxError as problem:
        add(at, "path", str(problem))
        return False
    stars = sum(1 for _name, index in segments if index == "*")
    if stars and allow_root and not text.endswith("]") and text.count("[*].") == stars and not text.startswith("$"):
        pass  # each over outer[*].inner: the inner lists of every outer item, one after the other
    elif stars and allow_root:
        add(at, "path", f"{text!r}: each reads a list by its path; [*] is not needed here "
                        "(to go through a list of lists, write outer[*].inner)")
    elif stars > 1:
        add(at, "path", f"{text!r} has more than one [*]; a path may fan out over one list only")
    return stars == 1


def _paths_problem(texts: list[str], at: str, add: Any) -> None:
    """Report the bad parts of a list of paths (``from: [action, note]``)."""
    for n, text in enumerate(texts):
        try:
            compile_paths([text])
        except PathSyntaxError as problem:
            add(f"{at}[{n}]", "path", str(problem))


def _condition_problem(spec: dict, at: str, add: Any) -> None:
    try:
        Condition(spec)
    except PathSyntaxError as problem:
        add(f"{at}.path", "path", str(problem))


# ---------------------------------------------------------------------------------------------
# Compilation


def _fingerprint(document: dict) -> str:
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _personal(fields: dict, prefix: str = "") -> list[str]:
    found = []
    for target, spec in fields.items():
        if "each" in spec:
            found += _personal(spec["each"]["fields"], f"{prefix}{target}[].")
        elif "fields" in spec:
            found += _personal(spec["fields"], f"{prefix}{target}.")
        elif spec.get("personal"):
            found.append(prefix + target)
    return found


def _compile(document: dict, path: Path, shared: list[tuple[str, CodeTableFile]]) -> Mapping:
    tables = {name: table for _ref, file in shared for name, table in file.tables.items()}
    tables.update({name: CodeTable(name, spec) for name, spec in document.get("code_tables", {}).items()})
    steps = compile_fields(document["fields"], tables)  # the checks above leave nothing that fails here
    # The fingerprint covers the code-table files too: changing a shared table changes every mapping using it.
    content = document if not shared else {
        "mapping": document,
        "code_tables_from": {ref: file.document for ref, file in shared},
    }
    mapping = Mapping(
        name=document["name"],
        version=document["version"],
        description=document["description"],
        source=document["source"],
        target=document["target"],
        record_key_path=document["record_key"],
        path=path,
        fingerprint=_fingerprint(content),
        steps=steps,
        personal_fields=tuple(_personal(document["fields"])),
        code_tables=tables,
        code_table_files=tuple(file.path for _ref, file in shared),
    )
    mapping.field_lineage = tuple(field_lineage(document["fields"]))
    return mapping


# ---------------------------------------------------------------------------------------------
# Chain files (lienthong.mapping.chain)

_CHAIN_KEYS = {"name", "version", "description", "chain", "validate_canonical"}


@dataclass(frozen=True)
class _Read:
    """A file a chain depends on, with its stamp when it was read (for the cache)."""

    path: Path
    stamp: Stamp


def _canonical_validator(system: str, record: str) -> Any:
    """The JSON Schema validator of an intermediate record, or None when there is no schema."""
    schema_path = REPO_ROOT / "fixtures" / "schemas" / system / f"{record}.schema.json"
    if not schema_path.is_file():
        return None
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    return _validator_class(schema)(schema)


def _load_chain(document: dict, path: Path) -> tuple[Chain, list[_Read]]:
    problems: list[MappingProblem] = []
    add = lambda at, rule, message: problems.append(MappingProblem(at, rule, message))  # noqa: E731
    for key in sorted(set(document) - _CHAIN_KEYS):
        add(key, "unknown_key", f"a chain file takes {', '.join(sorted(_CHAIN_KEYS))}; not {key!r}")
    name = document.get("name")
    expected = f"{path.parent.name}/{path.stem}"
    if name != expected:
        add("name", "name", f"name {name!r} does not match the file's place {expected!r} (<directory>/<file name>)")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        add("version", "type", "version is a whole number, 1 or more")
    if not isinstance(document.get("description"), str):
        add("description", "type", "description is text")
    if not isinstance(document.get("validate_canonical", False), bool):
        add("validate_canonical", "type", "validate_canonical is true or false")
    steps = document.get("chain")
    stages: list[Mapping] = []
    if not isinstance(steps, list) or len(steps) < 2 or not all(isinstance(s, str) for s in steps):
        add("chain", "type", "chain lists at least two mapping names, e.g. [onestop__canonical/dossier, "
                             "canonical__national_portal/dossier]")
    else:
        for n, step in enumerate(steps):
            if step == expected:
                add(f"chain[{n}]", "chain", "a chain cannot contain itself")
                continue
            # a stage given as a file is found beside the chain file, wherever the bus runs from
            ref: str | Path = path.parent / step if step.endswith((".yaml", ".yml")) and \
                not Path(step).is_absolute() else step
            try:
                # A stage that is a chain is refused before it is loaded: loading it would load its
                # own stages, and two chains naming each other would never end (RecursionError).
                if "chain" in _read_yaml(_resolve(ref).resolve()):
                    add(f"chain[{n}]", "chain", f"{step} is a chain itself; list its mappings instead")
                    continue
                stage = load_mapping(ref)
            except MappingFileError as problem:
                add(f"chain[{n}]", "chain", f"{step} is not a valid mapping: {problem.problems[0]}")
                continue
            except ConfigurationError as problem:
                add(f"chain[{n}]", "chain", str(problem))
                continue
            if isinstance(stage, Chain):
                add(f"chain[{n}]", "chain", f"{step} is a chain itself; list its mappings instead")
                continue
            if stages and (stages[-1].target["system"], stages[-1].target["record"]) != (
                stage.source["system"], stage.source["record"]
            ):
                add(f"chain[{n}]", "chain",
                    f"{step} reads {stage.source['system']}/{stage.source['record']}, but {stages[-1].name} "
                    f"makes {stages[-1].target['system']}/{stages[-1].target['record']}")
            stages.append(stage)
    if not problems and isinstance(name, str):
        source_system, _, target_system = name.split("/")[0].partition("__")
        if stages[0].source["system"] != source_system:
            add("chain[0]", "name", f"the chain starts at {stages[0].source['system']!r}, not {source_system!r} as its name says")
        if stages[-1].target["system"] != target_system:
            add(f"chain[{len(stages) - 1}]", "name",
                f"the chain ends at {stages[-1].target['system']!r}, not {target_system!r} as its name says")
    if problems:
        raise MappingFileError(path, problems)
    validators = None
    if document.get("validate_canonical", False):
        validators = [_canonical_validator(s.target["system"], s.target["record"]) for s in stages[:-1]]
    chain = Chain(name=name, version=version, description=document["description"], path=path,
                  stages=stages, document=document, validators=validators)
    reads = []
    for stage in stages:
        for file in (Path(stage.path), *map(Path, stage.code_table_files)):
            reads.append(_Read(file.resolve(), _stamp(file.resolve()) or (0, 0)))
    return chain, reads

