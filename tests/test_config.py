from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from longalign.config import add_config_args, build_config, check_choice, option


@dataclass
class Demo:
    method: str = option("pack", help="batching method", choices=("naive", "sort", "pack"))
    max_len: int = option(1024, help="maximum tokens")
    lr: float = option(2e-5, help="learning rate")
    bf16: bool = option(False, help="bfloat16")
    depths: list[int] = option(default_factory=lambda: [10, 50], help="depth percents")
    note: str | None = option(None, help="free text")


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_args(p, Demo)
    return p.parse_args(argv)


def test_defaults_yaml_and_flags_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("max_len: 4096\nlr: 0.001\nmethod: sort\n")
    cfg = build_config(Demo, _parse(["--config", str(cfg_file), "--lr", "0.5", "--bf16", "yes", "--depths", "1,2,3"]))
    assert (cfg.method, cfg.max_len, cfg.lr, cfg.bf16, cfg.depths, cfg.note) == (
        "sort",
        4096,
        0.5,
        True,
        [1, 2, 3],
        None,
    )
    assert build_config(Demo, _parse([])) == Demo()
    assert build_config(Demo, _parse(["--bf16"])).bf16 is True
    assert build_config(Demo, _parse(["--bf16", "false"])).bf16 is False


def test_unknown_yaml_key_names_the_file_and_known_options(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("max_lenn: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown option\(s\) max_lenn; known options: .*max_len"):
        build_config(Demo, _parse(["--config", str(cfg_file)]))


def test_bad_choice_names_accepted_values(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: packed\n")
    with pytest.raises(ValueError, match="method='packed' is not accepted; use one of 'naive', 'sort', 'pack'"):
        build_config(Demo, _parse(["--config", str(cfg_file)]))
    with pytest.raises(SystemExit):
        _parse(["--method", "packed"])
    check_choice("method", "pack", ("pack",))


# ------------------------------------------------------------------------------ option groups, ranges, aliases

from longalign.config import (  # noqa: E402
    DeprecatedOption,
    Options,
    add_run_arg,
    field_meta,
    option_of,
    redefault,
    run_dir_of,
    validate,
)


@dataclass
class Sampling(Options):
    """Sampling."""

    temperature: float = option(0.7, help="sampling temperature", minimum=0)
    max_len: int = option(512, help="prompt budget", minimum=1, aliases=("max_length",))


@dataclass
class Stage(Sampling):
    """A stage."""

    kinds: list[str] = option(default_factory=lambda: ["a"], help="kinds", choices=("a", "b"))
    judge_temperature: float = option_of(Sampling, "temperature", default=0.0, subject="judge")
    max_len: int = redefault(64, note="stage default")


def test_groups_redefault_and_option_of():
    assert Stage().max_len == 64 and Sampling().max_len == 512
    assert field_meta(Stage, "max_len")["help"] == "prompt budget (stage default)"
    assert field_meta(Stage, "max_len")["minimum"] == 1 and field_meta(Stage, "max_len")["aliases"] == ("max_length",)
    assert field_meta(Stage, "judge_temperature")["help"] == "judge: sampling temperature"
    p = argparse.ArgumentParser()
    add_config_args(p, Stage)
    text = p.format_help()
    assert "Sampling:" in text
    assert text.index("\n  --kinds") < text.index("\nSampling:") < text.index("\n  --temperature")
    assert "--max-length" not in text  # deprecated spellings stay hidden


def test_ranges_and_list_choices_fail_when_built():
    with pytest.raises(ValueError, match="temperature=-1 is not accepted; use a value >= 0"):
        Stage(temperature=-1)
    with pytest.raises(ValueError, match="kinds='c' is not accepted; use one of 'a', 'b'"):
        Stage(kinds=["a", "c"])
    cfg = Stage()
    cfg.max_len = 0  # changed after it was built
    with pytest.raises(ValueError, match="max_len=0"):
        validate(cfg)


def test_alias_flag_and_key_are_deprecated_spellings(tmp_path):
    p = argparse.ArgumentParser()
    add_config_args(p, Stage)
    with pytest.warns(DeprecatedOption, match="--max-length is deprecated; use --max-len"):
        assert build_config(Stage, p.parse_args(["--max-length", "9"])).max_len == 9
    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("max_length: 7\n")
    with pytest.warns(DeprecatedOption, match="'max_length' is deprecated; use 'max_len'"):
        assert build_config(Stage, p.parse_args(["--config", str(cfg_file)])).max_len == 7


def test_run_dir_precedence(tmp_path):
    p = argparse.ArgumentParser()
    add_run_arg(p, default="runs/x", aliases=("out",))
    add_config_args(p, Stage)
    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("run: from-file\ntemperature: 0.5\n")
    assert run_dir_of(p.parse_args([])) == "runs/x"
    assert run_dir_of(p.parse_args(["--config", str(cfg_file)])) == "from-file"
    assert run_dir_of(p.parse_args(["--config", str(cfg_file), "--run", "flag"])) == "flag"
    assert build_config(Stage, p.parse_args(["--config", str(cfg_file)])).temperature == 0.5  # run: is no option
    with pytest.warns(DeprecatedOption, match="--out is deprecated; use --run"):
        assert run_dir_of(p.parse_args(["--out", "old"])) == "old"
