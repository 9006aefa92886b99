"""``longalign eval`` command line: subcommands, shipped configs parse, flags override YAML, a run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longalign.cli import build_parser, main
from longalign.config import build_config, run_dir_of
from longalign.eval.agreement import AgreementConfig
from longalign.eval.longbench import LongBenchConfig
from longalign.eval.longbench_chat import LongBenchChatConfig
from longalign.eval.needle import NeedleConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"
CLASSES = {
    "longbench_chat": LongBenchChatConfig,
    "longbench_chat_local_judge": LongBenchChatConfig,
    "needle": NeedleConfig,
    "needle_small": NeedleConfig,
    "longbench": LongBenchConfig,
    "judge_agreement": AgreementConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(path):
    build_config(CLASSES[path.stem], {}, config_file=path)
    assert run_dir_of({"config": str(path)})  # names its run directory
    first = path.read_text().splitlines()[0]
    assert first.startswith("# longalign eval ")  # first line shows the command


def test_paper_defaults_in_configs():
    n = build_config(NeedleConfig, {}, config_file=CONFIGS / "needle.yaml")
    assert (n.length_min, n.length_max, n.length_num, n.depth_min, n.depth_max, n.depth_num, n.buffer) == (
        1000,
        60000,
        10,
        10,
        90,
        10,
        200,
    )
    c = build_config(LongBenchChatConfig, {}, config_file=CONFIGS / "longbench_chat.yaml")
    assert (c.max_len, c.max_new_tokens, c.seed, c.judge_runs, c.judge_max_attempts) == (64000, 1024, 42, 2, 5)


def test_flags_override_yaml():
    args = build_parser().parse_args(
        [
            "eval",
            "needle",
            "--config",
            str(CONFIGS / "needle_small.yaml"),
            "--lengths",
            "600,900",
            "--judge",
            "local:smollm2",
        ]
    )
    cfg = build_config(NeedleConfig, args)
    assert cfg.lengths == [600, 900] and cfg.depths == [10.0, 50.0, 90.0] and cfg.judge == "local:smollm2"


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "longbench-chat", "--data", str(tmp_path / "missing"), "--run", str(tmp_path)]) == 2
    assert "not bundled" in capsys.readouterr().err
    assert main(["eval", "judge-agreement", "--few-shots", "x.json", "--judge", "gpt-4"]) == 2
    assert "openai:<model>" in capsys.readouterr().err


def test_agreement_cli_with_fake_server(fake_llm, tmp_path, capsys):
    fake_llm.set_responder(lambda req: "[[6]]" if "first" in req["messages"][-1]["content"] else "[[3]]")
    shots = [
        [{"answer": f"first {k}", "score": k + 1} for k in range(3)],
        [{"answer": f"second {k}", "score": k + 5} for k in range(3)],
    ]
    path = tmp_path / "few_shots.json"
    path.write_text(json.dumps(shots))
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
            "--run",
            str(tmp_path / "run"),
            "--progress",
            "false",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "Spearman" in out and "paper gpt4_few_shot: Spearman 0.844, Kendall 0.716" in out
    summary = json.loads((tmp_path / "run" / "eval" / "judge_agreement" / "summary.json").read_text())
    assert summary["n"] == 6 and summary["spearman"] is not None
