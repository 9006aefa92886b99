"""Typed stage configs: dataclasses whose fields carry help text, loaded from YAML plus CLI overrides.

Precedence, lowest to highest: dataclass defaults < ``--config FILE`` (YAML) < explicit command-line flags.
A field declared with :func:`option` becomes the flag ``--field-name`` with its help text and choices, so
``longalign <stage> --help`` documents every option and the YAML keys are the field names.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", choices: Sequence[Any] | None = None,
           default_factory: Any = dataclasses.MISSING, cli: bool = True):
    """A dataclass field with help text (shown by ``--help``) and optional accepted values."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a ValueError naming the accepted values when ``value`` is not one of ``choices``."""
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not accepted; use one of {accepted}")


def validate(cfg: Any) -> Any:
    """Check every field that declares choices; returns ``cfg``."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices:
            check_choice(f.name, getattr(cfg, f.name), choices)
    return cfg


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


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, with_config_file: bool = True) -> None:
    """Add ``--config FILE`` and one ``--field-name`` flag per field of dataclass ``cls``.

    Flags default to ``argparse.SUPPRESS`` so that only flags the user typed override the YAML file.
    """
    if with_config_file:
        parser.add_argument("--config", metavar="FILE", default=None,
                            help="YAML file with option values (keys are the option names with underscores); "
                                 "flags given on the command line override it")
    hints = _resolved_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp = _base_type(hints.get(f.name, str))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f.name}
        choices = f.metadata.get("choices")
        if choices:
            kwargs["choices"] = choices
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["type"] = _parse_bool
            kwargs["nargs"] = "?"
            kwargs["const"] = True  # a bare --flag means true; --flag false turns it off
            kwargs["metavar"] = "BOOL"
        elif origin in (list, tuple):
            args = typing.get_args(tp)
            kwargs["type"] = _parse_list(args[0] if args and args[0] is not Ellipsis else str)
            kwargs["metavar"] = "A,B,..."
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        parser.add_argument(flag, **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a clear error names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values at the top level")
    return data


def from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with the list of known ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(names))}")
    return validate(cls(**values))


def build_config(cls: type[T], args: argparse.Namespace | dict[str, Any] | None = None,
                 config_file: str | Path | None = None, **overrides: Any) -> T:
    """Defaults < YAML file < explicit flags in ``args`` < keyword ``overrides``."""
    values: dict[str, Any] = {}
    ns = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    config_file = config_file or ns.get("config")
    if config_file:
        values.update(load_yaml(config_file))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in ns.items() if k in names})
    values.update(overrides)
    return from_dict(cls, values, source=str(config_file or cls.__name__))


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON/YAML-friendly dict of a config dataclass (paths become strings)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = str(v) if isinstance(v, Path) else v
    return out
