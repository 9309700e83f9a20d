"""The transform registry: the small named Python functions a mapping file may call.

A mapping file names transforms (``transform: portal_datetime``); it never holds code. Each
transform takes one source value that is present (never ``None``) and returns the converted value,
or ``None`` to mean "no value". A value it cannot convert raises :class:`TransformError` with the
rule it broke; the engine turns that into a ``FieldError`` naming the source path and the value.

A transform may take one argument, written ``{name: argument}`` in the file (``{join: "-"}``):
it is registered with ``argument="<what it is>"`` and called as ``function(value, argument)``; the
argument is fixed when the file is loaded, so the mapping file, not Python, holds it.

A transform that reads a list (``first``, ``join``...) is registered with ``reads_list=True``: a
field reading a list (a ``[*]`` path, a list of paths) must name one first, else the file is
refused (rule ``wildcard``). One that gives a list back when given one (``word_bool``) also says
``keeps_list=True``, and the transform after it must read a list too.

Register a new one with :func:`register_transform` and document it in ``mappings/README.md``
(a test checks that the README lists every registered name).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "PORTAL_TIME_ZONE",
    "TRANSFORMS",
    "Transform",
    "TransformError",
    "register_transform",
]

#: The national portal's wire time zone (contract §6.1): every ``yyyyMMddHHmmss`` is local time here.
PORTAL_TIME_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")

# Asia/Ho_Chi_Minh has been a fixed +07:00 since 1975-06-13; from 1976 on, a +07:00 time is already
# local time and needs no zone arithmetic (the fast path of the dossier feed, which sends +07:00).
_SEVEN_HOURS = timedelta(hours=7)
_FIXED_OFFSET_SINCE_YEAR = 1976
_OUT_OF_RANGE = "lies outside the years 1000..9999 that yyyyMMddHHmmss can hold"


class TransformError(ValueError):
    """A transform could not convert a value.

    Attributes:
        rule: the broken rule's name (``type``, ``format``, ``timezone``...).
        detail: what is wrong, phrased to follow "<source path> <value>", without the value itself
            (so that personal data can be left out of the message).
    """

    def __init__(self, rule: str, detail: str):
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True)
class Transform:
    """A registered transform: its name, its function and a one-line description for people.

    Attributes:
        argument: ``None`` for a transform of the value alone; otherwise what its one argument is
            (``"separator text"``), and ``function`` is called as ``function(value, argument)``.
        argument_type: the Python type the argument must have (``str``).
        reads_list: it takes a list (from a ``[*]`` path or a list of paths) and makes one value
            of it (``first``, ``any_true``, ``join``); a field reading a list must name one first.
        keeps_list: given a list, it gives a list (``word_bool``): the next transform must read one.
    """

    name: str
    function: Callable[..., Any]
    description: str
    argument: str | None = None
    argument_type: type = str
    reads_list: bool = False
    keeps_list: bool = False

    def bind(self, argument: Any = None) -> Callable[[Any], Any]:
        """The one-value function the engine calls: ``function`` itself, or with its argument fixed.

        Raises:
            ValueError: an argument is missing, not wanted, or of the wrong type (message for people).
        """
        if self.argument is None:
            if argument is not None:
                raise ValueError(f"transform {self.name} takes no argument; write just {self.name}")
            return self.function
        if argument is None:
            raise ValueError(f"transform {self.name} takes an argument ({self.argument}); "
                             f"write {{{self.name}: <{self.argument}>}}")
        if argument.__class__ is not self.argument_type:
            raise ValueError(f"the argument of transform {self.name} is {self.argument}, "
                             f"not {_kind(argument)}")
        function = self.function
        return lambda value: function(value, argument)


#: Every transform a mapping file may name, by name.
TRANSFORMS: dict[str, Transform] = {}


def register_transform(
    name: str, description: str, *, argument: str | None = None, argument_type: type = str,
    reads_list: bool = False, keeps_list: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``function`` under ``name`` (decorator). Names are unique.

    Args:
        name: the name mapping files use (lower case, ``snake_case``).
        description: one line for people (shown in the README and error messages).
        argument: for a transform that takes one argument (``{join: "-"}`` in a file), what the
            argument is, for messages (``"separator text"``); the function is then called as
            ``function(value, argument)``. ``None`` (default): ``function(value)``.
        argument_type: the type the argument must have in the file (default ``str``).
        reads_list: it reads a list (a ``[*]`` path, a list of paths), so it may come first on a
            field that reads one (default: it takes one value).
        keeps_list: given a list, it gives a list back (default: one value).

    Raises:
        ValueError: the name is already taken.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in TRANSFORMS:
            raise ValueError(f"transform {name!r} is already registered")
        TRANSFORMS[name] = Transform(name, function, description, argument, argument_type, reads_list, keeps_list)
        return function

    return decorate


def _kind(value: Any) -> str:
    """A JSON-ish name for a Python value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _parse_aware(value: Any) -> datetime:
    """Parse ISO 8601 text that carries a UTC offset."""
    if value.__class__ is not str:
        raise TransformError("type", f"is {_kind(value)}, expected ISO 8601 date-time text")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TransformError("format", "is not an ISO 8601 date-time (e.g. 2026-11-02T08:15:00+07:00)") from None
    if moment.tzinfo is None:
        if "T" not in value and " " not in value:
            raise TransformError("format", "is a date without a time; expected e.g. 2026-11-02T08:15:00+07:00")
        raise TransformError(
            "timezone",
            "has no UTC offset, so the moment it names is unknown; "
            "the source must send one (e.g. 2026-11-02T08:15:00+07:00)",
        )
    return moment


def _local_digits(moment: datetime) -> str:
    """``yyyyMMddHHmmss`` of an aware datetime, in the portal's time zone."""
    if moment.utcoffset() != _SEVEN_HOURS or moment.year < _FIXED_OFFSET_SINCE_YEAR:
        try:
            moment = moment.astimezone(PORTAL_TIME_ZONE)
        except OverflowError:
            raise TransformError("format", _OUT_OF_RANGE) from None
        if moment.year < 1000:
            raise TransformError("format", _OUT_OF_RANGE)
    # One integer built from the fields, then str(): ~6x faster than strftime; exact for years 1000..9999.
    return str(
        moment.year * 10_000_000_000
        + moment.month * 100_000_000
        + moment.day * 1_000_000
        + moment.hour * 10_000
        + moment.minute * 100
        + moment.second
    )


@register_transform(
    "portal_datetime",
    "ISO 8601 date-time with offset → yyyyMMddHHmmss in Asia/Ho_Chi_Minh (portal §6.1); "
    "no offset is a 'timezone' error",
)
def portal_datetime(value: Any) -> str:
    return _local_digits(_parse_aware(value))


_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@register_transform(
    "portal_date",
    "ISO 8601 date (2026-11-02) or date-time with offset → yyyyMMdd, the local day in Asia/Ho_Chi_Minh; "
    "a year before 1000, which yyyyMMdd cannot hold, is a 'format' error",
)
def portal_date(value: Any) -> str:
    if value.__class__ is str and len(value) == 10:
        try:  # strptime alone reads "2026-11- 2" and other scripts' digits as a day
            if _ISO_DAY.fullmatch(value) is None:
                raise ValueError(value)
            day = datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            raise TransformError("format", "is not an ISO 8601 date (e.g. 2026-11-02)") from None
        if day.year < 1000:  # strftime would write 7 digits ("0999-01-01" → "9990101")
            raise TransformError("format", _OUT_OF_RANGE.replace("yyyyMMddHHmmss", "yyyyMMdd"))
        return str(day.year * 10_000 + day.month * 100 + day.day)
    return _local_digits(_parse_aware(value))[:8]


_TOO_LONG = "is a whole number too long to write as text"


def _int_text(value: int) -> str:
    """The decimal text of a whole number; one too long for Python to write is a ``type`` error."""
    try:
        return str(value)
    except ValueError:  # more than sys.get_int_max_str_digits() digits
        raise TransformError("type", _TOO_LONG) from None


@register_transform("string", "text stays text, a whole number becomes its decimal text; anything else is a 'type' error")
def string(value: Any) -> str:
    cls = value.__class__
    if cls is str:
        return value
    if cls is int:
        return _int_text(value)
    raise TransformError("type", f"is {_kind(value)}, expected text or a whole number")


@register_transform("strip", "text with surrounding white space removed (empty text then counts as missing)")
def strip(value: Any) -> str | None:
    if value.__class__ is not str:
        raise TransformError("type", f"is {_kind(value)}, expected text")
    return value.strip() or None


@register_transform("vnd_amount", "a whole, non-negative number of đồng → its decimal text (e.g. 50000 → \"50000\")")
def vnd_amount(value: Any) -> str:
    if value.__class__ is not int:
        raise TransformError("type", f"is {_kind(value)}, expected a whole number of đồng")
    if value < 0:
        raise TransformError("format", "is negative; an amount of đồng is zero or more")
    return _int_text(value)


@register_transform("bool_flag", "true/false → \"1\"/\"0\" (the portal's flag fields)")
def bool_flag(value: Any) -> str:
    if value is True:
        return "1"
    if value is False:
        return "0"
    raise TransformError("type", f"is {_kind(value)}, expected true or false")


@register_transform("bool_text", "true/false → \"True\"/\"False\" (e.g. IsDeleted)")
def bool_text(value: Any) -> str:
    if value is True:
        return "True"
    if value is False:
        return "False"
    raise TransformError("type", f"is {_kind(value)}, expected true or false")


@register_transform("any_true", "a list of true/false/null (from a [*] path) → true when any item is true",
                    reads_list=True)
def any_true(value: Any) -> bool:
    if value.__class__ is not list:
        raise TransformError("type", f"is {_kind(value)}, expected a list (use a [*] path)")
    for item in value:
        if item is True:
            return True
        if item is not False and item is not None:
            raise TransformError("type", f"holds {_kind(item)}, expected only true, false or null")
    return False


@register_transform("last", "a list (from a [*] path) → its last item, or no value when the list is empty",
                    reads_list=True)
def last(value: Any) -> Any:
    if value.__class__ is not list:
        raise TransformError("type", f"is {_kind(value)}, expected a list (use a [*] path)")
    return value[-1] if value else None


@register_transform("first", "a list (from a [*] path) → its first item, or no value when the list is empty",
                    reads_list=True)
def first(value: Any) -> Any:
    if value.__class__ is not list:
        raise TransformError("type", f"is {_kind(value)}, expected a list (use a [*] path)")
    return value[0] if value else None


@register_transform(
    "join",
    "a list of values (from a list of paths, or a [*] path) → its non-blank texts joined by the "
    "separator; no value when every one is missing or blank",
    argument="separator text",
    reads_list=True,
)
def join(value: Any, separator: str) -> str | None:
    if value.__class__ is not list:
        raise TransformError("type", f"is {_kind(value)}, expected a list (use a list of paths or a [*] path)")
    parts = []
    for item in value:
        if item is None:
            continue
        if item.__class__ is not str:
            raise TransformError("type", f"holds {_kind(item)}, expected only text")
        if item and not item.isspace():
            parts.append(item)
    return separator.join(parts) if parts else None


@register_transform(
    "sort_unique",
    "a list of texts (from a [*] path) → the same texts sorted, each once (NFC), for a list whose order means "
    "nothing (a set of codes), then join; missing items are left out, a non-text item is a 'type' error",
    reads_list=True,
    keeps_list=True,
)
def sort_unique(value: Any) -> list[str]:
    if value.__class__ is not list:
        raise TransformError("type", f"is {_kind(value)}, expected a list (use a [*] path)")
    texts = set()
    for item in value:
        if item is None:
            continue
        if item.__class__ is not str:
            raise TransformError("type", f"holds {_kind(item)}, expected only text")
        texts.add(item if item.isascii() else unicodedata.normalize("NFC", item))
    return sorted(texts)


# --- canonical records (mappings/README.md, "The canonical model") ------------------------------


#: The date-time form of the canonical records (fixtures/schemas/canonical/*.schema.json): Python
#: reads more as ISO 8601 ("+07", "20261102T081500+0700", "08:15:00,5"), which the schema refuses.
_CANONICAL_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?"
                                 r"(?:Z|[+-][0-9]{2}:?[0-9]{2})")


@register_transform(
    "iso_datetime",
    "ISO 8601 date-time with offset → the same text, checked (canonical records); "
    "no offset is a 'timezone' error, as for portal_datetime",
)
def iso_datetime(value: Any) -> str:
    moment = _parse_aware(value)
    if _CANONICAL_DATETIME.fullmatch(value) is None:
        raise TransformError("format", "is not in the canonical records' form yyyy-MM-ddTHH:mm[:ss[.f]] with Z or "
                                       "an offset ±HH:mm (e.g. 2026-11-02T08:15:00+07:00)")
    if not 1 < moment.year < 9999:  # near the ends of datetime's range an offset can push it out
        try:
            moment.astimezone(timezone.utc)
            moment.astimezone(PORTAL_TIME_ZONE)
        except OverflowError:
            raise TransformError("format", "names a moment outside the years 1..9999 in UTC or in "
                                           "Asia/Ho_Chi_Minh, which the bus and its peers cannot hold") from None
    return value


@register_transform("bool_word", "true/false → \"true\"/\"false\" (the canonical records' yes/no text)")
def bool_word(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise TransformError("type", f"is {_kind(value)}, expected true or false")


_WORDS = {"true": True, "false": False, "": None}


@register_transform(
    "word_bool",
    "\"true\"/\"false\" → true/false (reads a canonical yes/no); a list of them (from a [*] path) → "
    "a list of true/false/null, for any_true",
    reads_list=True,
    keeps_list=True,
)
def word_bool(value: Any) -> Any:
    if value.__class__ is list:
        try:
            return [None if item is None else _WORDS[item] for item in value]
        except (KeyError, TypeError):
            raise TransformError("type", "holds a value other than \"true\", \"false\" or \"\"") from None
    try:
        return _WORDS[value]
    except (KeyError, TypeError):
        raise TransformError("type", f"is {_kind(value)}, expected \"true\" or \"false\"") from None


@register_transform(
    "lenient_text",
    "text stays text, a whole number becomes its decimal text, anything else is no value — for "
    "informational fields no target needs, which must never refuse a record",
)
def lenient_text(value: Any) -> str | None:
    cls = value.__class__
    if cls is str:
        return value
    if cls is int:
        try:
            return str(value)
        except ValueError:  # too long to write: no value, like anything else it cannot read
            return None
    return None


_VND_NONE = frozenset({"", "0", "không", "miễn phí", "không thu", "không có"})
_VND_TEXT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{3})+|[0-9]+)\s*(?:đồng|vnđ|vnd|đ)?(?:\s*/\s*\S.*)?", re.IGNORECASE)
#: A second amount after the first: a number with a unit ("…/bản chính; 10.000 đồng/bản sao"), one
#: written with thousands dots ("…; 10.000/bản sao"), or of 4 digits or more ("…; 5000/bản sao")
#: unless it is part of a legal basis or a date: after "85/" or "01/" ("Thông tư 85/2019/TT-BTC",
#: "áp dụng từ 01/01/2025"), before "/QĐ"-like letters ("Quyết định 1234/QĐ-UBND") or after
#: "năm". A short number is part of the unit ("20.000 đồng/01 bản").
_VND_SECOND = re.compile(r"[0-9][0-9.]*\s*(?:đồng|vnđ|vnd|đ)(?!\w)", re.IGNORECASE)
_VND_NUMBER = re.compile(r"[0-9][0-9.]*")
_VND_THOUSANDS = re.compile(r"[0-9]{1,3}(?:\.[0-9]{3})+")
_VND_REFERENCE_BEFORE = re.compile(r"(?:[0-9][/.\-]|năm)\s*$", re.IGNORECASE)
_VND_REFERENCE_AFTER = re.compile(r"\s*/\s*[A-ZĐ]")


def _another_amount(text: str, start: int) -> bool:
    """A number after ``start`` that can only be another amount (see ``_VND_SECOND``'s note)."""
    for number in _VND_NUMBER.finditer(text, start):
        token = number.group()
        if _VND_THOUSANDS.fullmatch(token):
            return True
        if len(token) >= 4 and token.isdigit() and not (
                _VND_REFERENCE_BEFORE.search(text, 0, number.start())
                or _VND_REFERENCE_AFTER.match(text, number.end())):
            return True
    return False
#: More digits than any fee has (10^18 đồng), and beyond what a 64-bit integer column holds.
_VND_MAX_DIGITS = 18


@register_transform("vnd_from_text", "a published amount as free text → whole đồng as decimal text "
                    "(\"50.000\", \"50.000 đồng\", \"20.000 đồng/bản\", \"50000\" → \"50000\"; "
                    "\"Không\", \"0\", \"Miễn phí\", \"\" → \"0\"; two amounts (\"20.000/bản chính; "
                    "10.000/bản sao\") or anything else → rule format)")
def vnd_from_text(value: Any) -> str:
    if value.__class__ is int:
        return vnd_amount(value)
    if value.__class__ is not str:
        raise TransformError("type", f"is {_kind(value)}, expected an amount of đồng as text")
    text = unicodedata.normalize("NFC", value).strip()
    if text.lower() in _VND_NONE:
        return "0"
    match = _VND_TEXT.fullmatch(text)
    if match is None:
        raise TransformError("format", "is not an amount of đồng (\"50.000\", \"50.000 đồng\", \"Không\"…)")
    # "20.000 đồng/bản chính; 10.000 đồng/bản sao", "20.000/bản chính; 10.000/bản sao"
    if _VND_SECOND.search(text, match.end(1)) or _another_amount(text, match.end(1)):
        raise TransformError("format", "holds more than one amount of đồng; which one is the fee is for a person "
                                       "to say")
    digits = match.group(1).replace(".", "").lstrip("0") or "0"
    if len(digits) > _VND_MAX_DIGITS:
        raise TransformError("format", f"is more than {_VND_MAX_DIGITS} digits of đồng, more than any fee")
    return digits


_LEVEL_WORDS = {"một phần": 3, "toàn trình": 4}


def _level_rank(value: Any) -> int:
    if value.__class__ is int:
        return value
    if value.__class__ is str:
        text = unicodedata.normalize("NFC", value).strip()
        if text.isascii() and text.isdigit():
            return int(text)
        rank = _LEVEL_WORDS.get(text.lower())
        if rank is not None:
            return rank
    raise TransformError("format", "is not a service level (2, 3, 4, \"Một phần\" or \"Toàn trình\")")


@register_transform("max_level", "a list of online service levels (from a [*] path), old ints 2/3/4 or the words "
                    "\"Một phần\"/\"Toàn trình\" → the highest as text (\"4\", \"Toàn trình\"; \"Một phần\" ranks as 3, "
                    "\"Toàn trình\" as 4; a tie keeps the first), no value when empty — for a code table",
                    reads_list=True)
def max_level(value: Any) -> Any:
    if value.__class__ is not list:
        raise TransformError("type", f"is {_kind(value)}, expected a list of service levels")
    best, best_rank = None, -1
    for item in value:
        if item is None or (item.__class__ is str and not item.strip()):
            continue
        rank = _level_rank(item)
        if rank > best_rank:
            best, best_rank = item, rank
    if best is None:
        return None
    return str(best) if best.__class__ is int else unicodedata.normalize("NFC", best).strip()


# --- payment receipts ----------------------------------------------------------------------------

_DOSSIER_UNIT = re.compile(r"(\d{3}\.\d{2}\.\d{2}\.H\d{2})-\d{6}-\d{4,5}", re.ASCII)


@register_transform(
    "datetime_from_portal",
    "yyyyMMddHHmmss in Asia/Ho_Chi_Minh (the portal's and payment platform's form, §6.1) → ISO 8601 with "
    "+07:00 (\"20261102081500\" → \"2026-11-02T08:15:00+07:00\"); not 14 digits of a real time → rule format",
)
def datetime_from_portal(value: Any) -> str:
    if value.__class__ is not str:
        raise TransformError("type", f"is {_kind(value)}, expected yyyyMMddHHmmss text")
    if len(value) != 14 or not (value.isascii() and value.isdigit()):
        raise TransformError("format", "is not yyyyMMddHHmmss (14 digits)")
    try:
        moment = datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=PORTAL_TIME_ZONE)
    except ValueError:
        raise TransformError("format", "is not a real date and time (yyyyMMddHHmmss)") from None
    return moment.isoformat()


@register_transform(
    "unit_of_dossier_code",
    "a dossier code {unit}-{yyMMdd}-{NNNN} (contract §6.2) → its unit code (\"000.00.01.H49-261102-0001\" → "
    "\"000.00.01.H49\"); another form → rule format",
)
def unit_of_dossier_code(value: Any) -> str:
    if value.__class__ is not str:
        raise TransformError("type", f"is {_kind(value)}, expected a dossier code")
    match = _DOSSIER_UNIT.fullmatch(value)
    if match is None:
        raise TransformError("format", "is not a dossier code {unit}-{yyMMdd}-{NNNN} (e.g. 000.00.01.H49-261102-0001)")
    return match.group(1)
