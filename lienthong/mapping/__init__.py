"""The mapping engine (Camel's Message Translator): mapping files are data, run by one engine.

A mapping file (``mappings/<from>__<to>/<record>.yaml``, format in ``mappings/README.md`` and
``mappings/schema/mapping.schema.json``) says how each target field is filled from a source
record: a source path, a constant or a default, named transforms, a code table, and the rules
(``required``, ``max_length``, ``pattern``). Code tables several mappings need live in a
code-table file (``mappings/<from>__<to>/code_tables.yaml``) that each names in
``code_tables_from``. The engine validates the files when it loads them, compiles them once into
closures, and maps records with :meth:`Mapping.apply`, which raises :class:`RecordInvalid`
listing every broken rule of the record.

Example::

    from lienthong.mapping import load_mapping

    dossier = load_mapping("onestop__national_portal/dossier")
    record = dossier.apply(onestop_dossier)          # -> DongBoHoSoMC data item
    key = dossier.record_key(onestop_dossier)        # -> "000.00.01.H49-261102-0001"

    progress = load_mapping("onestop__national_portal/progress")
    progress.record_key({**entry, "dossierNo": "000.00.01.H49-261029-0012"})  # -> "000.00.01.H49-261029-0012#2"
"""

from __future__ import annotations

from lienthong.mapping.chain import Chain
from lienthong.mapping.engine import KEY_SEPARATOR, Mapping, RecordInvalid
from lienthong.mapping.loader import (
    CodeTableFile,
    MappingFileError,
    MappingProblem,
    is_code_table_file,
    list_code_table_files,
    list_mappings,
    load_code_tables,
    load_mapping,
    mappings_dir,
)
from lienthong.mapping.transforms import TRANSFORMS, TransformError, register_transform

__all__ = [
    "KEY_SEPARATOR",
    "TRANSFORMS",
    "Chain",
    "CodeTableFile",
    "Mapping",
    "MappingFileError",
    "MappingProblem",
    "RecordInvalid",
    "TransformError",
    "is_code_table_file",
    "list_code_table_files",
    "list_mappings",
    "load_code_tables",
    "load_mapping",
    "mappings_dir",
    "register_transform",
]
