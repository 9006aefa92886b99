"""The conda environment, the package metadata and the shipped configs agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in meta["dependencies"]}
    for extra in ("deepspeed", "notebooks", "test", "bench"):
        wanted.update({_name(r): r.replace(" ", "") for r in meta["optional-dependencies"][extra]})
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-e")}
    assert listed == wanted


def test_every_shipped_yaml_parses():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert files, "configs/ ships YAML files"
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict), path


def test_cli_help_lists_every_stage():
    from longalign.cli import build_parser

    text = build_parser().format_help()
    for command in ("data", "tokenize", "batch", "train", "eval", "demo", "app"):
        assert command in text


@pytest.mark.parametrize("command", ["data", "tokenize", "batch", "train", "eval", "demo", "app"])
def test_every_option_has_help(command):
    from longalign.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    stack = [sub]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.dest == "help":
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
                continue
            assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help text"
