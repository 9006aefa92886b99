"""Deprecated spellings still work for one release and say so: ``--out`` (now ``--run``), ``--max-length`` and the
YAML key ``max_length`` (now ``max_len``), the YAML key ``out`` (now ``run``), ``simulate(devices=...)`` (now
``world_size=``), ``TrainConfig(run=...)`` (now ``longalign.train.run(cfg, run_dir)``). The CLI prints one
``deprecated: ...`` line on stderr; the library emits :class:`longalign.config.DeprecatedOption`."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from longalign.batching import simulate
from longalign.cli import build_parser, main
from longalign.config import DeprecatedOption, build_config, from_dict, run_dir_of, to_dict
from longalign.eval.longbench_chat import LongBenchChatConfig
from longalign.train import TrainConfig

SHOTS = [
    [{"answer": f"first {k}", "score": k + 1} for k in range(3)],
    [{"answer": f"second {k}", "score": k + 5} for k in range(3)],
]


def _deprecation_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("deprecated: ")]


def test_out_flag_is_run(fake_llm, tmp_path, capsys):
    fake_llm.set_responder(lambda req: "[[6]]" if "first" in req["messages"][-1]["content"] else "[[3]]")
    path = tmp_path / "few_shots.json"
    path.write_text(json.dumps(SHOTS))
    rc = main(
        [
            "eval",
            "judge-agreement",
            "--few-shots",
            str(path),
            "--judge",
            "openai:j",
            "--judge-base-url",
            fake_llm.base_url,
            "--out",
            str(tmp_path / "run"),
            "--progress",
            "false",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and "Spearman" in captured.out
    assert (tmp_path / "run" / "eval" / "judge_agreement" / "summary.json").is_file()
    assert _deprecation_lines(captured.err) == ["deprecated: --out is deprecated; use --run"]


def test_out_key_in_a_config_file_is_run(fake_llm, tmp_path, capsys):
    fake_llm.set_responder(lambda req: "[[4]]")
    path = tmp_path / "few_shots.json"
    path.write_text(json.dumps(SHOTS))
    cfg_file = tmp_path / "agreement.yaml"
    cfg_file.write_text(f"out: {tmp_path / 'from-yaml'}\njudge: openai:j\njudge_base_url: {fake_llm.base_url}\n")
    rc = main(["eval", "judge-agreement", "--config", str(cfg_file), "--few-shots", str(path), "--progress", "false"])
    captured = capsys.readouterr()
    assert rc == 0 and (tmp_path / "from-yaml" / "eval" / "judge_agreement" / "summary.json").is_file()
    assert _deprecation_lines(captured.err) == [f"deprecated: {cfg_file}: the key 'out' is deprecated; use 'run'"]


def test_max_length_flag_is_max_len(capsys):
    with pytest.warns(DeprecatedOption, match="--max-length is deprecated; use --max-len"):
        args = build_parser().parse_args(["eval", "longbench-chat", "--max-length", "7000"])
    assert build_config(LongBenchChatConfig, args).max_len == 7000
    assert main(["eval", "longbench-chat", "--max-length", "7000"]) == 2  # --data is missing
    err = capsys.readouterr().err
    assert _deprecation_lines(err) == ["deprecated: --max-length is deprecated; use --max-len"]
    assert "data is required" in err


def test_max_length_key_in_yaml_is_max_len(tmp_path):
    cfg_file = tmp_path / "chat.yaml"
    cfg_file.write_text("max_length: 7000\nmax_new_tokens: 32\n")
    with pytest.warns(DeprecatedOption, match="the option 'max_length' is deprecated; use 'max_len'"):
        cfg = build_config(LongBenchChatConfig, {}, config_file=cfg_file)
    assert (cfg.max_len, cfg.max_new_tokens) == (7000, 32)
    with pytest.warns(DeprecatedOption):  # a flag still beats the file
        args = build_parser().parse_args(["eval", "longbench-chat", "--config", str(cfg_file), "--max-len", "5000"])
        assert build_config(LongBenchChatConfig, args).max_len == 5000
    with pytest.warns(DeprecatedOption):
        assert from_dict(LongBenchChatConfig, {"max_length": 100}).max_len == 100
    with pytest.raises(ValueError, match="both max_length and max_len"):
        from_dict(LongBenchChatConfig, {"max_length": 100, "max_len": 200})


def test_simulate_devices_keyword_is_world_size():
    lengths = np.array([5, 12, 3, 7, 30, 2, 9, 4])
    with pytest.warns(DeprecatedOption, match=r"simulate\(devices=...\) is deprecated; use world_size="):
        old = simulate(lengths, max_len=32, devices=2, grad_accum=1)
    new = simulate(lengths, max_len=32, world_size=2, grad_accum=1)
    assert old["config"]["world_size"] == new["config"]["world_size"] == 2 == old["config"]["devices"]
    assert {k: v["total_seconds"] for k, v in old["methods"].items()} == {
        k: v["total_seconds"] for k, v in new["methods"].items()
    }


def test_train_takes_its_run_directory_like_every_stage(tmp_path, capsys):
    assert "run" not in {f.name for f in dataclasses.fields(TrainConfig)}
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(f"run: {tmp_path / 'from-yaml'}\nmethod: sort\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedOption)  # the command line's --run and run: are not deprecated
        args = build_parser().parse_args(["train", "--config", str(cfg_file)])
        cfg = build_config(TrainConfig, args)
        assert run_dir_of(args) == str(tmp_path / "from-yaml") and cfg.method == "sort" and cfg.run is None
        args = build_parser().parse_args(["train", "--config", str(cfg_file), "--run", str(tmp_path / "flag")])
        assert run_dir_of(args) == str(tmp_path / "flag")
        assert "run" not in to_dict(build_config(TrainConfig, args))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--run DIR" in capsys.readouterr().out


def test_train_config_run_keyword_is_the_run_directory():
    message = r"the train option 'run' is deprecated; pass the run directory to longalign.train.run\(cfg, run_dir\)"
    with pytest.warns(DeprecatedOption, match=message):
        cfg = TrainConfig(run="runs/r1", method="sort")
    assert (cfg.run, cfg.method) == ("runs/r1", "sort") and "run" not in to_dict(cfg)
    with pytest.warns(DeprecatedOption, match=message):
        assert from_dict(TrainConfig, {"run": "runs/r2"}).run == "runs/r2"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedOption)
        assert TrainConfig().run is None
