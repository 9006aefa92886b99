"""Typed stage configs: dataclasses whose fields carry help text, loaded from YAML plus CLI overrides.

Precedence, lowest to highest: dataclass defaults < ``--config FILE`` (YAML) < explicit command-line flags.
A field declared with :func:`option` becomes the flag ``--field-name`` with its help text, accepted values and
range, so ``longalign <stage> --help`` documents every option and the YAML keys are the field names.

Option groups. Options shared by several stages (an LLM endpoint, a judge, answer generation) are declared once,
in a dataclass deriving from :class:`Options`, and composed into the stage configs by inheritance, so flags and
YAML keys stay flat (``--judge-base-url``, ``judge_base_url:``). A stage that needs another default writes
``name: type = redefault(value)`` (help, choices and range come from the group); :func:`option_of` reuses an
option under another name (``judge_base_url`` from ``EndpointOptions.base_url``). ``--help`` lists each group
under its own heading. Choices and ranges are checked in ``__post_init__`` (:class:`Options`), so a bad config
fails when it is built, from YAML, flags or Python alike.

Deprecated spellings. ``option(..., aliases=("old_name",))`` keeps ``--old-name`` and the YAML key ``old_name``
working; each use emits a :class:`DeprecatedOption` warning, which ``longalign`` prints as one line on stderr.

Run directory. Stages take it as an argument (``run(cfg, run_dir)``), not as a config field; commands add
``--run DIR`` with :func:`add_run_arg`, and a config file may name it with the key ``run:``
(:func:`run_dir_of`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a config class: a dataclass

RUN_KEY = "run"
_RUN_DEFAULT = "_run_default"  # argparse namespace attributes set by add_run_arg
_RUN_ALIASES = "_run_aliases"


class DeprecatedOption(FutureWarning):
    """A deprecated spelling of an option (flag, YAML key or keyword) was used; it still works for one release."""


def deprecated(message: str, *, stacklevel: int = 3) -> None:
    """Emit a :class:`DeprecatedOption` warning (the CLI prints it as one line on stderr)."""
    warnings.warn(message, DeprecatedOption, stacklevel=stacklevel)


# ---------------------------------------------------------------------------------------------- declaring


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    choices: Sequence[Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
    cli: bool = True,
    *,
    aliases: Sequence[str] = (),
    minimum: float | None = None,
    maximum: float | None = None,
):
    """A dataclass field with help text (shown by ``--help``), optional accepted values (for a list field: of
    each item), an inclusive range, and deprecated alias names."""
    meta = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "cli": cli,
        "aliases": tuple(aliases),
        "minimum": minimum,
        "maximum": maximum,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def redefault(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, note: str = ""):
    """Redeclare an option of a base group with another default; help, choices, range and aliases stay the
    group's (``note`` is appended to the help)."""
    meta = {"inherit": True, "note": note}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_of(group: type, name: str, *, default: Any = dataclasses.MISSING, subject: str = ""):
    """Option ``name`` of ``group`` under another field name: same help (prefixed with ``subject``), choices and
    range; the default is the group's unless given."""
    meta = dict(field_meta(group, name))
    meta["aliases"] = ()
    if subject:
        meta["help"] = f"{subject}: {meta.get('help', '')}"
    if default is not dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    f = {g.name: g for g in dataclasses.fields(group)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=meta)
    return dataclasses.field(default=f.default, metadata=meta)


def field_meta(cls: type, name: str) -> dict[str, Any]:
    """The metadata of option ``name`` of dataclass ``cls``, following :func:`redefault` to the declaring group."""
    note = None
    for klass in cls.__mro__:
        fields = klass.__dict__.get("__dataclass_fields__")
        if not fields or name not in fields:
            continue
        meta = fields[name].metadata
        if meta.get("inherit"):
            if note is None:
                note = meta.get("note") or ""
            continue
        out = dict(meta)
        if note:
            out["help"] = f"{out.get('help', '')} ({note})" if out.get("help") else note
        return out
    return {}


def _owner(cls: type, name: str) -> type:
    """The class that first declares field ``name`` (a group, or ``cls`` itself)."""
    for klass in reversed(cls.__mro__):
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


# --------------------------------------------------------------------------------------------- validating


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a ValueError naming the accepted values when ``value`` is not one of ``choices``."""
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not accepted; use one of {accepted}")


def check_range(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> None:
    """Raise a ValueError when a number lies outside ``[minimum, maximum]`` (None = unbounded)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} is not accepted; use a value >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value!r} is not accepted; use a value <= {maximum}")


def validate(cfg: Any) -> Any:
    """Check every field that declares choices (each item of a list) or a range; returns ``cfg``."""
    for f in dataclasses.fields(cfg):
        meta = field_meta(type(cfg), f.name)
        value = getattr(cfg, f.name)
        choices = meta.get("choices")
        if choices:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                check_choice(f.name, item, choices)
        check_range(f.name, value, meta.get("minimum"), meta.get("maximum"))
    return cfg


class Options:
    """Base of option groups and stage configs (with ``@dataclass``): validates choices and ranges when built.

    A subclass with further checks defines ``__post_init__`` and calls ``super().__post_init__()`` first.
    """

    def __post_init__(self) -> None:
        validate(self)


# ------------------------------------------------------------------------------------------------ parsing


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None to the underlying type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_list(item_type):
    def parse(text: str):
        return [item_type(x) for x in str(text).replace(",", " ").split()]

    return parse


def _resolved_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - forward refs that cannot be resolved
        return {f.name: f.type for f in dataclasses.fields(cls)}


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2): what is wrong with which flag,
    and where the full list of options is, instead of the usage block. Subcommands inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DeprecatedFlag(argparse.Action):
    """A deprecated flag: stores into the new option's ``dest`` and emits a one-line note."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{option_string} is deprecated; use {self.new}", stacklevel=2)
        setattr(namespace, self.dest, values)


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, with_config_file: bool = True) -> None:
    """Add ``--config FILE`` and one ``--field-name`` flag per field of dataclass ``cls``; fields of option groups
    go under a heading per group (the first line of the group's docstring).

    Flags default to ``argparse.SUPPRESS`` so that only flags the user typed override the YAML file.
    """
    if with_config_file:
        parser.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML file with option values (keys are the option names with underscores); "
            "flags given on the command line override it",
        )
    hints = _resolved_hints(cls)
    mro = cls.__mro__
    owners = {f.name: _owner(cls, f.name) for f in dataclasses.fields(cls)}
    titles = {
        o: (o.__doc__.strip().splitlines()[0].rstrip(".") if o is not cls and o.__doc__ else None)
        for o in owners.values()
    }
    rank = {t: min(mro.index(o) for o in titles if titles[o] == t) for t in titles.values()}
    groups: dict[str, Any] = {}
    # the stage's own options first, then one heading per group title (nearest base first; inside a heading,
    # the base group's options before its extensions')
    for f in sorted(
        dataclasses.fields(cls),
        key=lambda f: (rank[titles[owners[f.name]]] if titles[owners[f.name]] else 0, -mro.index(owners[f.name])),
    ):
        meta = field_meta(cls, f.name)
        if not meta.get("cli", True):
            continue
        title = titles[owners[f.name]]
        if title is None:
            target: Any = parser
        else:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        tp = _base_type(hints.get(f.name, str))
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        help_text = meta.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f.name}
        choices = meta.get("choices")
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["type"] = _parse_bool
            kwargs["nargs"] = "?"
            kwargs["const"] = True  # a bare --flag means true; --flag false turns it off
            kwargs["metavar"] = "BOOL"
        elif origin in (list, tuple):
            args = typing.get_args(tp)
            kwargs["type"] = _parse_list(args[0] if args and args[0] is not Ellipsis else str)
            kwargs["metavar"] = "A,B,..."  # choices of a list are checked per item when the config is built
        elif tp in (int, float, str):
            kwargs["type"] = tp
            if choices:
                kwargs["choices"] = choices
        else:
            kwargs["type"] = str
        flag = "--" + f.name.replace("_", "-")
        target.add_argument(flag, **kwargs)
        for alias in meta.get("aliases", ()):
            alias_kwargs = {k: v for k, v in kwargs.items() if k != "help"}
            target.add_argument(
                "--" + alias.replace("_", "-"), action=_DeprecatedFlag, new=flag, help=argparse.SUPPRESS, **alias_kwargs
            )


def add_run_arg(
    parser: argparse.ArgumentParser, *, default: str | None = None, help: str = "", aliases: Sequence[str] = ()
) -> None:
    """Add ``--run DIR`` (plus deprecated ``aliases`` such as ``out``); read it back with :func:`run_dir_of`."""
    text = help or "run directory the command reads and writes"
    text += (
        f" (default: {default}; a config file may set it with 'run:')"
        if default
        else " (a config file may set it with 'run:')"
    )
    parser.add_argument("--run", metavar="DIR", dest=RUN_KEY, default=argparse.SUPPRESS, help=text)
    for alias in aliases:
        parser.add_argument(
            "--" + alias.replace("_", "-"),
            metavar="DIR",
            dest=RUN_KEY,
            action=_DeprecatedFlag,
            new="--run",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    parser.set_defaults(**{_RUN_DEFAULT: default, _RUN_ALIASES: tuple(aliases)})


def _namespace(args: argparse.Namespace | Mapping[str, Any] | None) -> dict[str, Any]:
    return vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})


def run_dir_of(args: argparse.Namespace | Mapping[str, Any] | None) -> str | None:
    """The run directory of a command: ``--run`` (or a deprecated alias), else the config file's ``run:`` key
    (or a deprecated alias key), else the command's default (None when it has none)."""
    ns = _namespace(args)
    if ns.get(RUN_KEY):
        return str(ns[RUN_KEY])
    if ns.get("config"):
        data = load_yaml(ns["config"])
        if data.get(RUN_KEY):
            return str(data[RUN_KEY])
        for alias in ns.get(_RUN_ALIASES, ()):
            if data.get(alias):
                deprecated(f"{ns['config']}: the key '{alias}' is deprecated; use 'run'")
                return str(data[alias])
    return ns.get(_RUN_DEFAULT)


# ---------------------------------------------------------------------------------------------- building


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a clear error names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(
            f"{where}: not valid YAML ({problem}); fix the file: a mapping of option names (with underscores) to values"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values at the top level")
    return data


def _rename_aliases(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Replace deprecated keys by the option they alias (one note each); both given is an error."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        for alias in field_meta(cls, f.name).get("aliases", ()):
            if alias not in out:
                continue
            if f.name in out:
                raise ValueError(
                    f"{source}: both {alias} and {f.name} are given; keep only {f.name} "
                    f"({alias} is its deprecated name)"
                )
            deprecated(f"{source}: the option '{alias}' is deprecated; use '{f.name}'", stacklevel=4)
            out[f.name] = out.pop(alias)
    return out


def from_dict(cls: type[T], values: Mapping[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with the list of known ones (a deprecated init-only
    parameter of ``cls``, a ``dataclasses.InitVar``, is accepted and warns in ``__post_init__``)."""
    values = _rename_aliases(cls, dict(values), source)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - set(inspect.signature(cls).parameters))
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(names))}")
    return validate(cls(**values))


def build_config(
    cls: type[T],
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    **overrides: Any,
) -> T:
    """Defaults < YAML file < explicit flags in ``args`` < keyword ``overrides``.

    A config file's ``run:`` key (and the command's deprecated aliases of it) names the run directory
    (:func:`run_dir_of`); it is not an option of ``cls`` unless ``cls`` has a ``run`` field.
    """
    values: dict[str, Any] = {}
    ns = _namespace(args)
    config_file = config_file or ns.get("config")
    names = {f.name for f in dataclasses.fields(cls)}
    source = str(config_file or cls.__name__)
    if config_file:
        data = load_yaml(config_file)
        for key in (RUN_KEY, *ns.get(_RUN_ALIASES, ())):
            if key not in names:
                data.pop(key, None)
        values.update(_rename_aliases(cls, data, source))
    values.update({k: v for k, v in ns.items() if k in names})
    values.update(overrides)
    return from_dict(cls, values, source=source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON/YAML-friendly dict of a config dataclass (paths become strings)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = str(v) if isinstance(v, Path) else v
    return out
