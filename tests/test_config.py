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
    assert (cfg.method, cfg.max_len, cfg.lr, cfg.bf16, cfg.depths, cfg.note) == ("sort", 4096, 0.5, True, [1, 2, 3], None)
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
