"""``lienthong mapping check`` and ``lienthong mapping preview``: try a mapping change before it ships.

The top-level CLI wires these in with :func:`add_mapping_commands`. Sample records live in
``fixtures/samples/<source system>/<source record>.<case>.json`` (for the dossier mapping:
``fixtures/samples/onestop/dossier.*.json``); a sample named ``*.defective-*.json`` is meant to be
rejected by the mapping, every other sample is meant to map cleanly. ``check`` also validates
the code-table files (``mappings/<dir>/code_tables.yaml``) and lists the mappings that use each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from connectors.errors import ConfigurationError, FieldError
from lienthong.mapping import (
    Chain,
    Mapping,
    MappingFileError,
    is_code_table_file,
    list_code_table_files,
    list_mappings,
    load_code_tables,
    load_mapping,
    mappings_dir,
)
from lienthong.mapping.loader import REPO_ROOT

__all__ = ["add_mapping_commands", "cmd_check", "cmd_preview", "sample_files", "samples_dir"]

SAMPLES_DIR_ENV = "LIENTHONG_SAMPLES_DIR"
DEFECTIVE_MARK = ".defective-"

EXIT_OK = 0
EXIT_PROBLEM = 1  # an invalid mapping file, a sample with an unexpected outcome, a record that does not map
EXIT_USAGE = 2  # an unknown mapping name or field, an unreadable input file (argparse also uses 2)


def samples_dir() -> Path:
    """``$LIENTHONG_SAMPLES_DIR``, else ``<repo>/fixtures/samples``."""
    configured = os.environ.get(SAMPLES_DIR_ENV)
    return Path(configured) if configured else REPO_ROOT / "fixtures" / "samples"


def sample_files(mapping: Mapping, root: Path | None = None) -> list[Path]:
    """The mapping's sample records: ``<root>/<source system>/<source record>.*.json``, sorted."""
    folder = (root or samples_dir()) / mapping.source["system"]
    record = mapping.source["record"]
    return sorted(folder.glob(f"{record}.*.json")) + sorted(folder.glob(f"{record}.json"))


def _records(path: Path) -> list[Any]:
    """The records of a JSON file holding one object or an array of them."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else [data]


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _error_lines(errors: list[FieldError], indent: str) -> list[str]:
    return [f"{indent}{e.field}: {e.message} [{e.rule}]" for e in errors]


# ---------------------------------------------------------------------------------------------
# mapping check


def _table_file_path(name: str) -> Path | None:
    """The code-table file a NAME argument means (``onestop__national_portal/code_tables`` or a path), else None."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else mappings_dir() / f"{name.strip('/')}.yaml"
    return path if is_code_table_file(path) else None


def _names_no_file(problem: MappingFileError) -> bool:
    """Whether loading failed because the NAME (a path) names no file: a usage error, not an invalid file."""
    return problem.rule == "not_found" and problem.included_by is None and not is_code_table_file(problem.file)


def _print_invalid(label: str, problem: MappingFileError) -> None:
    _out(f"INVALID  {label}")
    _out(f"  {_relative(problem.file)}:")
    for p in problem.problems:
        _out(f"    {p}")


def cmd_check(args: argparse.Namespace) -> int:
    """Validate mapping files and code-table files, then run each mapping over its sample records."""
    if args.names:
        tables = [path for path in map(_table_file_path, args.names) if path is not None]
        names = [name for name in args.names if _table_file_path(name) is None]
    else:
        names, tables = list_mappings(), list_code_table_files()
    if not names and not tables:
        _out(f"no mapping files in {mappings_dir()}")
        return EXIT_OK
    root = args.samples_dir
    status = EXIT_OK
    users: dict[Path, list[str]] = {}
    for name in names:
        try:
            mapping = load_mapping(name)
        except MappingFileError as problem:
            if _names_no_file(problem):
                _out(f"UNKNOWN  {name}: no such mapping file")
                status = max(status, EXIT_USAGE)
                continue
            _print_invalid(name, problem)
            status = max(status, EXIT_PROBLEM)
            continue
        except ConfigurationError as problem:
            _out(f"UNKNOWN  {name}: {problem}")
            status = max(status, EXIT_USAGE)
            continue
        _out(f"valid    {mapping.name} v{mapping.version}  fingerprint {mapping.fingerprint[:16]}  "
             f"({_relative(Path(mapping.path))})")
        if isinstance(mapping, Chain):
            _out(f"  chain: {' → '.join(f'{s.name} v{s.version}' for s in mapping.stages)}")
        for file in mapping.code_table_files:
            users.setdefault(Path(file).resolve(), []).append(mapping.name)
        if not _check_samples(mapping, root):
            status = max(status, EXIT_PROBLEM)
    for path in tables:
        if not path.is_file():
            _out(f"UNKNOWN  {_relative(path)}: no such code-table file")
            status = max(status, EXIT_USAGE)
            continue
        try:
            loaded = load_code_tables(path)
        except MappingFileError as problem:
            _print_invalid(_relative(path), problem)
            status = max(status, EXIT_PROBLEM)
            continue
        _out(f"valid    code tables {_relative(loaded.path)}: {', '.join(loaded.tables)}")
        if not args.names:
            used_by = users.get(loaded.path, [])
            _out(f"  used by: {', '.join(used_by)}" if used_by else "  used by no valid mapping")
    return status


def _check_samples(mapping: Mapping, root: Path | None) -> bool:
    files = sample_files(mapping, root)
    if not files:
        where = (root or samples_dir()) / mapping.source["system"]
        _out(f"  no sample records ({where}/{mapping.source['record']}.*.json)")
        return True
    expected = unexpected = 0
    for path in files:
        defective = DEFECTIVE_MARK in path.name
        try:
            records = _records(path)
        except (OSError, ValueError) as problem:
            _out(f"  UNREADABLE  {path.name}: {problem}")
            unexpected += 1
            continue
        for n, record in enumerate(records):
            label = path.name if len(records) == 1 else f"{path.name}[{n}]"
            _output, errors = mapping.translate(record)
            if errors and defective:
                expected += 1
                _out(f"  OK       {label}  rejected as meant ({mapping.record_key(record)}):")
            elif errors:
                unexpected += 1
                _out(f"  FAILED   {label}  a valid sample was rejected ({mapping.record_key(record)}):")
            elif defective:
                unexpected += 1
                _out(f"  FAILED   {label}  a defective sample was accepted")
            else:
                expected += 1
                _out(f"  OK       {label}")
            for line in _error_lines(errors, "             "):
                _out(line)
    verdict = "all as meant" if not unexpected else f"{unexpected} NOT as meant"
    _out(f"  samples: {expected + unexpected}, {verdict}")
    return unexpected == 0


# ---------------------------------------------------------------------------------------------
# mapping preview


def _field_filter(fields: list[str], mapping: Mapping) -> list[str] | None:
    wanted = [f.strip() for item in fields for f in item.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in mapping.target_fields]
    if unknown:
        raise ValueError(f"unknown target field(s) {', '.join(unknown)}; {mapping.name} has: "
                         f"{', '.join(mapping.target_fields)}")
    return wanted or None


def _error_in(error: FieldError, fields: list[str]) -> bool:
    return any(error.field == f or error.field.startswith((f + "[", f + ".")) for f in fields)


def cmd_preview(args: argparse.Namespace) -> int:
    """Map records (a file, or the samples) and print outputs and errors as one JSON array."""
    try:
        mapping = load_mapping(args.name)
    except MappingFileError as problem:
        _err(str(problem))
        return EXIT_USAGE if _names_no_file(problem) else EXIT_PROBLEM
    except ConfigurationError as problem:
        _err(str(problem))
        return EXIT_USAGE
    try:
        fields = _field_filter(args.field or [], mapping)
    except ValueError as problem:
        _err(str(problem))
        return EXIT_USAGE

    if args.input is not None:
        files = [args.input]
    else:
        files = sample_files(mapping, args.samples_dir)
        if not files:
            _err(f"no sample records for {mapping.name}; give one with --input FILE.json")
            return EXIT_USAGE
    entries = []
    for path in files:
        try:
            records = _records(path)
        except (OSError, ValueError) as problem:
            _err(f"cannot read {path}: {problem}")
            return EXIT_USAGE
        for n, record in enumerate(records):
            output, all_errors = mapping.translate(record)
            if not args.show_personal:
                output = mapping.mask_personal(output)
            errors = all_errors
            if fields is not None:
                output = {f: output[f] for f in fields if f in output}
                errors = [e for e in all_errors if _error_in(e, fields)]
            entry = {
                "input": path.name if len(records) == 1 else f"{path.name}[{n}]",
                "record_key": mapping.record_key(record),
                "ok": not all_errors,
                "errors": [e.as_dict() for e in errors],
            }
            if len(errors) < len(all_errors):
                entry["errors_in_other_fields"] = len(all_errors) - len(errors)
            if isinstance(mapping, Chain):
                # the intermediate (canonical) records, as far as each stage went
                entry["intermediate"] = {
                    stage.name: stage.mask_personal(out) if not args.show_personal else out
                    for stage, out, _errors in mapping.translate_stages(record)[:-1]
                }
            entry["output"] = output
            entries.append(entry)
    _out(json.dumps({"mapping": mapping.name, "version": mapping.version, "fingerprint": mapping.fingerprint,
                     "records": entries}, ensure_ascii=False, indent=2))
    return EXIT_OK if all(e["ok"] for e in entries) else EXIT_PROBLEM


# ---------------------------------------------------------------------------------------------
# wiring


def add_mapping_commands(subparsers: Any) -> None:
    """Register ``mapping check`` and ``mapping preview`` on the top-level CLI's ``subparsers``."""
    mapping = subparsers.add_parser(
        "mapping",
        help="check and preview the YAML mapping files",
        description="Work with the mapping files (mappings/<from>__<to>/<record>.yaml, "
                    "overridable with $LIENTHONG_MAPPINGS_DIR).",
    )
    commands = mapping.add_subparsers(dest="mapping_command", metavar="COMMAND", required=True)

    samples_help = ("where sample records are: <DIR>/<source system>/<source record>.*.json "
                    f"(default: ${SAMPLES_DIR_ENV}, else fixtures/samples in the repository)")

    check = commands.add_parser(
        "check",
        help="validate mapping files and run them over their sample records",
        description="Load and validate every mapping file (or the NAMEs given) against the schema and "
                    "the engine's rules, then map each sample record of the mapping's source and print "
                    "OK or the field errors for each. Samples named *.defective-*.json must be "
                    "rejected; every other sample must map cleanly. Code-table files "
                    "(<dir>/code_tables.yaml) are validated too, each listed with the mappings that "
                    "use it.",
        epilog="Exit status: 0 when every file is valid and every sample behaves as meant; 1 when a "
               "file (a mapping or a code-table file) is invalid, a valid sample is rejected or a "
               "defective one is accepted; 2 when a NAME names no mapping (an unknown name, or a path "
               "to no file).",
    )
    check.add_argument("names", nargs="*", metavar="NAME",
                       help="a mapping name such as onestop__national_portal/dossier, a code-table file "
                            "such as onestop__national_portal/code_tables, or a path to a .yaml file "
                            "(default: every mapping and code-table file in the mappings directory)")
    check.add_argument("--samples-dir", type=Path, metavar="DIR", help=samples_help)
    check.set_defaults(func=cmd_check)

    preview = commands.add_parser(
        "preview",
        help="map records with a mapping and print the output next to the errors",
        description="Map the records of FILE.json (one JSON object or an array of them; default: the "
                    "mapping's sample records) and print one JSON document listing, per record, its "
                    "key, whether it maps cleanly (ok), its field errors and the mapped output (as far "
                    "as it goes when there are errors). Personal-data fields are masked unless "
                    "--show-personal is given.",
        epilog="Exit status: 0 when every record maps cleanly; 1 when some record has errors or the "
               "mapping file is invalid; 2 when NAME (an unknown name, or a path to no file), a --field "
               "or the input cannot be used.",
    )
    preview.add_argument("name", metavar="NAME",
                         help="a mapping name such as onestop__national_portal/dossier, or a path to a .yaml file")
    preview.add_argument("--input", type=Path, metavar="FILE.json",
                         help="records to map: a JSON object or an array of objects (default: the samples)")
    preview.add_argument("--field", action="append", metavar="F",
                         help="show only this target field and its errors (ok still judges the whole "
                              "record); repeat it or separate names with commas "
                              "(e.g. --field TrangThaiHoSo,TaiLieuNop)")
    preview.add_argument("--show-personal", action="store_true",
                         help="show personal-data fields (ID numbers, phone, e-mail) unmasked")
    preview.add_argument("--samples-dir", type=Path, metavar="DIR", help=samples_help)
    preview.set_defaults(func=cmd_preview)
