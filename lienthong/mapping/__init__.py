"""The mapping engine (Camel's Message Translator): mapping files are data, run by one engine.

A mapping file (``mappings/<from>__<to>/<record>.yaml``, format in ``mappings/README.md`` and
``mappings/schema/mapping.schema.json``) says how each target field is filled from a source
record: a source path, a constant or a default, named transforms, a code table, and the rules
(``required``, ``max_length``, ``pattern``). The engine validates the file when it loads it,
compiles it once into closures, and maps records with :meth:`Mapping.apply`, which raises
:class:`RecordInvalid` listing every broken rule of the record.

Example::

    from lienthong.mapping import load_mapping

    dossier = load_mapping("onestop__national_portal/dossier")
    record = dossier.apply(onestop_dossier)          # -> DongBoHoSoMC data item
    key = dossier.record_key(onestop_dossier)        # -> "000.00.01.H49-261102-0001"
"""

from __future__ import annotations

from lienthong.mapping.engine import Mapping, RecordInvalid
from lienthong.mapping.loader import (
    MappingFileError,
    MappingProblem,
    list_mappings,
    load_mapping,
    mappings_dir,
)
from lienthong.mapping.transforms import TRANSFORMS, TransformError, register_transform

__all__ = [
    "TRANSFORMS",
    "Mapping",
    "MappingFileError",
    "MappingProblem",
    "RecordInvalid",
    "TransformError",
    "list_mappings",
    "load_mapping",
    "mappings_dir",
    "register_transform",
]
