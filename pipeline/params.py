"""Parameters declared once, as typed dataclasses with help, used the way DIALS uses PHIL.

A step declares its parameters as nested dataclasses::

    @dataclass
    class Filter:
        d_min: float | None = param(None, "High-resolution limit (Å); None = no limit.")
        d_max: float | None = param(None, "Low-resolution limit (Å); None = no limit.")

    @dataclass
    class Params:
        filter: Filter = scope(Filter, "Spot filtering.")
        method: Literal["fft3d", "fft1d"] = param("fft3d", "Indexing method.")

and that one declaration drives everything else, following DIALS' libtbx.phil conventions
(Grosse-Kunstleve et al., "PHIL", cctbx newsletter 2005; dials.util.options):

- ``parse_parameters``: ``key=value`` arguments, where a key may be shortened to any unique
  dot-suffix of its full name (``d_max=20`` sets ``spotfinder.filter.d_max``); PHIL files with
  nested ``scope { ... }`` blocks; other arguments are returned as positional files.
- ``format_parameters``: PHIL text with values and help, for ``-c``, ``-h`` and logs.
- ``parameters_to_dict`` / ``parameters_from_dict``: JSON-ready records of a run's parameters.

Supported annotations: ``bool``, ``int``, ``float``, ``str`` (also for paths), ``Literal[...]``
(a choice; ``choices=`` does the same for a ``str``), ``X | None`` (``None``, ``Auto`` or an empty
value give None), unions such as ``float | Literal["auto"]``, ``tuple[float, float, float]``,
``tuple[int, ...]`` and ``list[...]`` of any of these scalars (items separated by commas or
spaces; a list of choices is a multiple choice, like DIALS' ``choice(multi=True)``).

A ``scope(..., multiple=True)`` is a list of blocks (DIALS' ``.multiple = True``): each
``name { ... }`` block in a PHIL file adds one entry; a ``key=value`` assignment fills the last
entry, or starts a new one if that entry already has this key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import itertools
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pipeline.errors import InputFileError, ParameterError

__all__ = [
    "param",
    "scope",
    "Definition",
    "parameter_definitions",
    "parse_parameters",
    "format_parameters",
    "parameters_to_dict",
    "parameters_from_dict",
    "replace_parameter",
    "parse_value",
    "format_value",
    "describe_type",
]

P = TypeVar("P")

_NONE_WORDS = ("none", "auto", "")
_TRUE_WORDS = ("true", "yes", "1")
_FALSE_WORDS = ("false", "no", "0")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_HELP_WIDTH = 96
# Text files larger than this are never data for a step's parameters; don't read them to sniff.
_MAX_PHIL_BYTES = 1 << 20
_SNIFF_BYTES = 4096
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|#[^\n]*)*")
_VALUE_END = re.compile(r"[\r\n;}#]")
_AFTER_QUOTED_VALUE = re.compile(r"[ \t]*(?:[\r\n;}#]|$)")


# ---------------------------------------------------------------------------------------------
# Declaring parameters


def param(default: Any, help: str, *, choices: typing.Sequence[Any] | None = None,
          type: Any = None, expert_level: int = 0) -> Any:
    """A parameter field: its default, one or two sentences of help (say when None means Auto),
    optionally the allowed ``choices``, a ``type`` replacing the annotation, and an expert level
    (parameters above the level asked for with ``-e`` are hidden from ``-c`` listings)."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "type": type,
                "expert_level": expert_level}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def scope(cls: type, help: str = "", *, multiple: bool = False, expert_level: int = 0) -> Any:
    """A nested block of parameters (a dataclass); with ``multiple=True`` a list of such blocks."""
    metadata = {"help": help, "scope": cls, "multiple": multiple, "expert_level": expert_level}
    return dataclasses.field(default_factory=list if multiple else cls, metadata=metadata)


@dataclass(frozen=True)
class Definition:
    """One parameter: its full PHIL path, the attribute path into the dataclasses, its type,
    default, help, expert level (the highest along its path) and the multiple scopes on its path
    (index into ``attrs`` → block class)."""

    path: tuple[str, ...]
    attrs: tuple[str, ...]
    type: Any
    default: Any
    help: str
    expert_level: int
    multiple_scopes: tuple[tuple[int, type], ...] = ()

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class _Field:
    attr: str
    name: str  # the PHIL name: the attribute without a trailing underscore (import_ → import)
    type: Any
    help: str
    expert_level: int
    scope: type | None
    multiple: bool


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[_Field, ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass; declare parameters as dataclasses")
    hints = typing.get_type_hints(cls, include_extras=False)
    fields = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with param(...) or scope(...)")
        tp = meta.get("type") or hints[f.name]
        if meta.get("choices"):
            tp = _with_choices(tp, meta["choices"])
        fields.append(_Field(f.name, f.name.rstrip("_"), tp, meta["help"], meta["expert_level"],
                             meta.get("scope"), meta.get("multiple", False)))
    return tuple(fields)


def _with_choices(tp: Any, choices: tuple[Any, ...]) -> Any:
    """The annotation with its str (or list of str) replaced by a Literal of the choices."""
    choice = Literal[choices]  # type: ignore[valid-type]
    if _is_union(tp):
        return Union[tuple(_with_choices(m, choices) if m is not type(None) else m for m in get_args(tp))]
    if get_origin(tp) in (list, tuple):
        return list[choice]  # type: ignore[valid-type]
    return choice


@functools.lru_cache(maxsize=None)
def parameter_definitions(cls: type) -> tuple[Definition, ...]:
    """Every parameter of ``cls`` (recursively), in declaration order. Checks each default."""
    definitions: list[Definition] = []

    def walk(scope_cls: type, path: tuple[str, ...], attrs: tuple[str, ...], level: int,
             multiples: tuple[tuple[int, type], ...]) -> None:
        defaults = scope_cls()
        for f in _fields(scope_cls):
            p, a, lev = path + (f.name,), attrs + (f.attr,), max(level, f.expert_level)
            if f.scope is not None:
                m = multiples + ((len(attrs), f.scope),) if f.multiple else multiples
                walk(f.scope, p, a, lev, m)
                continue
            default = getattr(defaults, f.attr)
            try:
                _from_native(default, f.type)
            except ValueError:
                raise TypeError(f"{'.'.join(p)}: default {default!r} is not {describe_type(f.type)}") from None
            definitions.append(Definition(p, a, f.type, default, f.help, lev, multiples))

    walk(cls, (), (), 0, ())
    return tuple(definitions)


# ---------------------------------------------------------------------------------------------
# Types: parsing text, checking native values, describing and formatting


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _union_order(member: Any) -> int:
    # A literal word ("auto") beats None's synonyms, which beat free text.
    return 0 if get_origin(member) is Literal else 1 if member is type(None) else 2 if member is not str else 3


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[,\s]+", text.strip()) if w]


def _selected(words: list[str]) -> list[str]:
    """DIALS lists choices as ``a *b c``: if any word is starred, only starred words count."""
    starred = [w[1:] for w in words if w.startswith("*")]
    return starred or words


def _match_choice(word: str, choices: tuple[Any, ...]) -> Any:
    for choice in choices:
        if str(choice).lower() == word.lower():
            return choice
    raise ValueError(word)


def parse_value(text: str, tp: Any, quoted: bool = False) -> Any:
    """Convert the text of a value to ``tp``; raise ValueError if it is not valid.
    A ``quoted`` value is never read as None."""
    if _is_union(tp):
        for member in sorted(get_args(tp), key=_union_order):
            try:
                return parse_value(text, member, quoted)
            except ValueError:
                pass
        raise ValueError(text)
    if tp is type(None):
        if not quoted and text.strip().lower() in _NONE_WORDS:
            return None
        raise ValueError(text)
    origin = get_origin(tp)
    if origin is Literal:
        words = _selected(_words(text))
        if len(words) != 1:
            raise ValueError(text)
        return _match_choice(words[0], get_args(tp))
    if tp is bool:
        word = text.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise ValueError(text)
    if tp is int:
        return int(text.strip())
    if tp is float:
        return float(text.strip())
    if tp is str or tp is Any:
        return text
    if origin in (list, tuple):
        args = get_args(tp)
        words = _words(text)
        if not quoted and len(words) == 1 and words[0].lower() == "none":
            words = []
        item_type = args[0] if args else Any
        if get_origin(item_type) is Literal:
            words = _selected(words)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(words) != len(args):
                raise ValueError(text)
            return tuple(parse_value(w, t) for w, t in zip(words, args))
        items = [parse_value(w, item_type) for w in words]
        return tuple(items) if origin is tuple else items
    raise TypeError(f"unsupported parameter type {tp!r}")


def _from_native(value: Any, tp: Any) -> Any:
    """Check a Python value (a default, or one read back from JSON) against ``tp``."""
    if _is_union(tp):
        for member in sorted(get_args(tp), key=_union_order):
            try:
                return _from_native(value, member)
            except ValueError:
                pass
        raise ValueError(value)
    origin = get_origin(tp)
    if tp is type(None):
        ok = value is None
    elif origin is Literal:
        ok = value in get_args(tp)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Any:
        ok = True
    elif origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(value)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(value)
            return tuple(_from_native(v, t) for v, t in zip(value, args))
        items = [_from_native(v, args[0] if args else Any) for v in value]
        return tuple(items) if origin is tuple else items
    else:
        raise TypeError(f"unsupported parameter type {tp!r}")
    if not ok:
        raise ValueError(value)
    return value


def describe_type(tp: Any) -> str:
    """What a value of ``tp`` must look like, for error messages and help."""
    if _is_union(tp):
        return " or ".join(describe_type(m) for m in sorted(get_args(tp), key=lambda m: m is type(None)))
    origin = get_origin(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        choices = get_args(tp)
        return str(choices[0]) if len(choices) == 1 else "one of " + ", ".join(map(str, choices))
    simple = {bool: "True/False", int: "an integer", float: "a number", str: "text", Any: "text"}
    if tp in simple:
        return simple[tp]
    if origin in (list, tuple):
        args = get_args(tp)
        item = args[0] if args else Any
        if get_origin(item) is Literal:
            return "any of " + ", ".join(map(str, get_args(item))) + " (separated by commas)"
        plural = {int: "integers", float: "numbers"}.get(item, "values")
        count = f"{len(args)} " if origin is tuple and args and args[-1] is not Ellipsis else ""
        return f"{count}{plural} separated by commas"
    return repr(tp)


def _choices_of(tp: Any) -> tuple[tuple[Any, ...], bool] | None:
    """(choices, multiple) if ``tp`` is a choice, an optional choice or a list of choices."""
    members = [m for m in get_args(tp) if m is not type(None)] if _is_union(tp) else [tp]
    if len(members) != 1:
        return None
    origin = get_origin(members[0])
    if origin is Literal:
        return get_args(members[0]), False
    if origin in (list, tuple) and get_args(members[0]) and get_origin(get_args(members[0])[0]) is Literal:
        return get_args(get_args(members[0])[0]), True
    return None


def _format_scalar(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def format_value(value: Any, tp: Any) -> str:
    """PHIL text for ``value`` that :func:`parse_value` reads back to the same value."""
    choices = _choices_of(tp)
    if choices is not None and value is not None:
        options, multiple = choices
        if multiple and not value:
            return "None"
        chosen = set(value) if multiple else {value}
        return " ".join(("*" if c in chosen else "") + str(c) for c in options)
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_scalar(v) for v in value) if value else "None"
    if isinstance(value, str):
        needs_quotes = (not value or re.search(r"[\s{}=;#\"']", value) is not None
                        or (value.lower() in _NONE_WORDS and _accepts_none(tp)))
        if needs_quotes:
            quote = "'" if '"' in value else '"'
            return f"{quote}{value}{quote}"
    return _format_scalar(value)


def _accepts_none(tp: Any) -> bool:
    return _is_union(tp) and type(None) in get_args(tp)


# ---------------------------------------------------------------------------------------------
# PHIL text


@dataclass(frozen=True)
class _Assignment:
    """``key = value`` as written: the key's names (enclosing blocks first), for each name the
    block instance that opened it (None for names written in a dotted key), and where it came from."""

    key: tuple[str, ...]
    blocks: tuple[int | None, ...]
    value: str
    quoted: bool
    source: str


def _parse_phil(text: str, source: str, block_ids: typing.Iterator[int]) -> list[_Assignment]:
    """Parse PHIL text: ``a { b.c = 1; d = "x y" }``, ``#`` comments, one assignment per line or
    per ``;``. Raise ParameterError at the first syntax error, naming file and line."""
    assignments: list[_Assignment] = []
    stack: list[tuple[tuple[str, ...], tuple[int | None, ...], int]] = []  # open blocks
    pos, n = 0, len(text)

    def line() -> int:
        return text.count("\n", 0, pos) + 1

    def fail(problem: str, at_line: int | None = None) -> typing.NoReturn:
        raise ParameterError(f"{source}, line {at_line or line()}: {problem}")

    def skip_space_and_comments() -> None:
        nonlocal pos
        while pos < n:
            if text[pos] in " \t\r\n;":
                pos += 1
            elif text[pos] == "#":
                end = text.find("\n", pos)
                pos = n if end < 0 else end
            else:
                return

    while True:
        skip_space_and_comments()
        if pos >= n:
            if stack:
                fail(f"block '{'.'.join(stack[-1][0])}' is not closed with '}}'", stack[-1][2])
            return assignments
        if text[pos] == "}":
            if not stack:
                fail("'}' without a matching '{'")
            stack.pop()
            pos += 1
            continue
        match = _NAME.match(text, pos)
        if not match:
            fail(f"expected a parameter or block name, found {text[pos:pos + 20].splitlines()[0]!r}")
        names = tuple(match.group().split("."))
        pos = match.end()
        prefix, prefix_blocks = (stack[-1][0], stack[-1][1]) if stack else ((), ())
        skip_space_and_comments()
        if pos < n and text[pos] == "{":
            block = next(block_ids)
            stack.append((prefix + names, prefix_blocks + (block,) * len(names), line()))
            pos += 1
        elif pos < n and text[pos] == "=":
            pos += 1
            while pos < n and text[pos] in " \t":
                pos += 1
            quoted = pos < n and text[pos] in "\"'"
            if quoted:
                closing = text.find(text[pos], pos + 1)
                if closing < 0:
                    fail(f"{'.'.join(names)}: the quoted value has no closing {text[pos]}")
                value, pos = text[pos + 1:closing], closing + 1
                if not _AFTER_QUOTED_VALUE.match(text, pos):
                    fail(f"{'.'.join(names)}: unexpected text after the quoted value")
            else:
                end = _VALUE_END.search(text, pos)
                stop = n if end is None else end.start()
                value, pos = text[pos:stop].strip(), stop
            assignments.append(_Assignment(prefix + names, prefix_blocks + (None,) * len(names),
                                           value, quoted, f"{source}, line {line()}"))
        else:
            fail(f"expected '=' or '{{' after '{match.group()}'")


def _phil_file_assignments(path: Path, block_ids: typing.Iterator[int]) -> list[_Assignment] | None:
    """The assignments of a PHIL file: any file ending .phil (errors if it is not valid), or any
    other small text file that parses as PHIL (None if it does not: it is a data file)."""
    if path.suffix == ".phil":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(f"{path}: cannot read this PHIL file ({exc})") from None
        return _parse_phil(text, str(path), block_ids)
    try:
        if path.stat().st_size > _MAX_PHIL_BYTES:
            return None
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            # Images, JSON and msgpack files start with a brace or binary bytes: reject them unread.
            head_text = head.decode("utf-8", errors="replace")
            if b"\0" in head or not _NAME.match(_LEADING_COMMENTS.sub("", head_text)):
                return None
            text = (head + handle.read()).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        assignments = _parse_phil(text, str(path), block_ids)
    except ParameterError:
        return None
    return assignments or None


# ---------------------------------------------------------------------------------------------
# Matching keys and applying values


def _resolve(assignment: _Assignment, definitions: tuple[Definition, ...]) -> Definition:
    """The parameter a key names: its full name, or a unique dot-suffix of one (DIALS' rule)."""
    key = assignment.key
    name = ".".join(key)
    matches = [d for d in definitions if d.path[-len(key):] == key]
    exact = [d for d in matches if d.path == key]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    where = f" ({assignment.source})"
    if matches:
        raise ParameterError(
            f"{name}={assignment.value}{where}: ambiguous parameter name, it matches "
            + ", ".join(d.name for d in matches) + "; give more of the name to choose one")
    members = [d.name for d in definitions if any(d.path[i:i + len(key)] == key for i in range(len(d.path)))]
    if members:
        raise ParameterError(
            f"{name}{where} is a block of parameters, not a parameter; set one of its members, e.g. "
            + ", ".join(members[:5]))
    suggestions = _closest_names(key, definitions)
    hint = ("did you mean " + " or ".join(suggestions) + "?") if suggestions else \
        "list the valid parameters with -c"
    raise ParameterError(f"{name}={assignment.value}{where}: unknown parameter; {hint}")


def _closest_names(key: tuple[str, ...], definitions: tuple[Definition, ...]) -> list[str]:
    """Full names of the parameters whose full name, last name or same-length ending is closest."""
    by_text: dict[str, list[str]] = {}
    for d in definitions:
        for text in (d.name, d.path[-1], ".".join(d.path[-len(key):])):
            by_text.setdefault(text, []).append(d.name)
    close = difflib.get_close_matches(".".join(key), list(by_text), n=5, cutoff=0.6)
    names = list(dict.fromkeys(full for text in close for full in by_text[text]))
    return names[:5]


class _Applier:
    """Sets resolved assignments on a parameter instance, growing multiple scopes as needed."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.entry_of_block: dict[tuple[int, int], int] = {}
        self.explicit: set[tuple[int, tuple[str, ...]]] = set()

    def apply(self, assignment: _Assignment, definition: Definition) -> None:
        try:
            value = parse_value(assignment.value, definition.type, assignment.quoted)
        except ValueError:
            raise ParameterError(
                f"{definition.name}={assignment.value} ({assignment.source}): invalid value; "
                f"expected {describe_type(definition.type)}") from None
        multiple = dict(definition.multiple_scopes)
        written_from = len(definition.path) - len(assignment.key)
        obj, entries_passed = self.root, []
        for i, attr in enumerate(definition.attrs[:-1]):
            obj = getattr(obj, attr)
            if i in multiple:
                block = assignment.blocks[i - written_from] if i >= written_from else None
                obj = self._entry(obj, multiple[i], block, definition.attrs[i + 1:])
                entries_passed.append((obj, definition.attrs[i + 1:]))
        setattr(obj, definition.attrs[-1], value)
        self.explicit.update((id(entry), rest) for entry, rest in entries_passed)

    def _entry(self, entries: list, cls: type, block: int | None, rest: tuple[str, ...]) -> Any:
        if block is not None:
            index = self.entry_of_block.get((id(entries), block))
            if index is None:
                entries.append(cls())
                index = self.entry_of_block[(id(entries), block)] = len(entries) - 1
            return entries[index]
        if not entries or (id(entries[-1]), rest) in self.explicit:
            entries.append(cls())
        return entries[-1]


def _existing_path(arg: str) -> Path | None:
    try:
        path = Path(arg)
        return path if path.exists() else None
    except (OSError, ValueError):  # e.g. a key=value longer than a file name may be
        return None


def parse_parameters(params_cls: type[P], args: typing.Sequence[str]) -> tuple[P, list[str]]:
    """Parse command-line arguments into a ``params_cls`` instance, in order (later wins).

    ``key=value`` sets a parameter (the key may be any unique dot-suffix of the full name);
    a ``*.phil`` file, or any existing text file that parses as PHIL, is read as parameters;
    every other argument is returned, in order, as a positional (file) argument.
    """
    definitions = parameter_definitions(params_cls)
    instance = params_cls()
    applier = _Applier(instance)
    block_ids = itertools.count()
    positional: list[str] = []
    for arg in args:
        path = _existing_path(arg)
        if path is None and arg.endswith(".phil"):
            raise InputFileError(f"{arg}: PHIL file not found; check the path")
        assignments = _phil_file_assignments(path, block_ids) if path is not None and path.is_file() else None
        if path is None and "=" in arg:
            key, value = arg.split("=", 1)
            if not _NAME.fullmatch(key.strip()):
                raise ParameterError(f"{arg}: '{key}' is not a parameter name; write key=value, e.g. d_min=2.5")
            names = tuple(key.strip().split("."))
            assignments = [_Assignment(names, (None,) * len(names), value.strip(), False, "command line")]
        if assignments is None:
            positional.append(arg)
            continue
        for assignment in assignments:
            applier.apply(assignment, _resolve(assignment, definitions))
    return instance, positional


# ---------------------------------------------------------------------------------------------
# Listing and recording


def format_parameters(params: Any, show_help: bool = True, only_changed: bool = False,
                      expert_level: int | None = None) -> str:
    """PHIL text of every parameter with its value (an instance's, or a class's defaults) and, with
    ``show_help``, its help and type as comments; ``only_changed`` keeps only values that differ
    from the defaults; ``expert_level`` hides parameters declared with a higher level."""
    cls = params if isinstance(params, type) else type(params)
    instance = cls() if isinstance(params, type) else params
    lines = _format_scope(instance, cls() if only_changed else None, show_help, expert_level)
    return "\n".join(lines) + "\n" if lines else ""


def _help_lines(text: str) -> list[str]:
    return textwrap.wrap(text, _HELP_WIDTH, initial_indent="# ", subsequent_indent="# ") if text else []


def _format_scope(obj: Any, defaults: Any | None, show_help: bool, expert_level: int | None) -> list[str]:
    """Lines for one scope; ``defaults`` (the same scope at default values) means only changes."""
    lines: list[str] = []
    for f in _fields(type(obj)):
        if expert_level is not None and f.expert_level > expert_level:
            continue
        value = getattr(obj, f.attr)
        help_lines = _help_lines(f.help) if show_help else []
        if f.scope is None:
            if defaults is not None and value == getattr(defaults, f.attr):
                continue
            text = format_value(value, f.type)
            if show_help:
                # A choice's options are visible in its value (a *b c) unless nothing is chosen.
                shows_options = _choices_of(f.type) is not None and text != "None"
                help_lines = _help_lines(f.help + ("" if shows_options else f" [{describe_type(f.type)}]"))
            lines += help_lines + [f"{f.name} = {text}"]
        elif f.multiple:
            if not value and defaults is None and show_help:
                template = _block(f.name, _format_scope(f.scope(), None, show_help, expert_level))
                note = f"{f.name} may be given several times; none given. Each block looks like this:"
                lines += help_lines + _help_lines(note) + ["# " + t for t in template]
            for entry in value:
                lines += help_lines + _block(f.name, _format_scope(entry, None, show_help, expert_level))
        else:
            inner = _format_scope(value, None if defaults is None else getattr(defaults, f.attr),
                                  show_help, expert_level)
            if inner:
                lines += help_lines + _block(f.name, inner)
    return lines


def _block(name: str, inner: list[str]) -> list[str]:
    return [f"{name} {{"] + ["  " + line for line in inner] + ["}"]


def parameters_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of PHIL names → values (tuples as lists, multiple scopes as lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.attr)) for f in _fields(type(value))}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(params)


def parameters_from_dict(params_cls: type[P], data: dict[str, Any]) -> P:
    """Rebuild parameters from :func:`parameters_to_dict` output; missing keys keep defaults."""

    def build(cls: type, values: dict[str, Any], path: str) -> Any:
        if not isinstance(values, dict):
            raise ParameterError(f"{path or 'parameters'}: expected a block of parameters, got {values!r}")
        fields = {f.name: f for f in _fields(cls)}
        kwargs = {}
        for name, value in values.items():
            f = fields.get(name)
            full = f"{path}.{name}" if path else name
            if f is None:
                raise ParameterError(f"{full}: unknown parameter in the recorded parameters")
            if f.scope is not None and f.multiple:
                if not isinstance(value, list):
                    raise ParameterError(f"{full}: expected a list of blocks, got {value!r}")
                kwargs[f.attr] = [build(f.scope, v, full) for v in value]
            elif f.scope is not None:
                kwargs[f.attr] = build(f.scope, value, full)
            else:
                try:
                    kwargs[f.attr] = _from_native(value, f.type)
                except ValueError:
                    raise ParameterError(f"{full}={value!r}: invalid value; expected {describe_type(f.type)}") from None
        return cls(**kwargs)

    return build(params_cls, data, "")


def replace_parameter(params: P, dotted_name: str, value: Any) -> P:
    """A copy of ``params`` with the parameter at the full dotted name set to ``value`` (no
    validation beyond the name: the value must already have the declared type)."""
    head, _, rest = dotted_name.partition(".")
    if not any(f.name == head for f in dataclasses.fields(params)):
        raise ParameterError(f"{dotted_name}: {type(params).__name__} has no parameter or scope '{head}'")
    if not rest:
        return dataclasses.replace(params, **{head: value})
    return dataclasses.replace(params, **{head: replace_parameter(getattr(params, head), rest, value)})
