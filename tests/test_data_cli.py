"""``longalign data corpus|generate|short|mix``: help text, configs, overrides, errors, and end-to-end runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from longalign.cli import build_parser, main
from longalign.config import build_config, load_yaml
from longalign.data.corpus import CorpusConfig
from longalign.data.mix import MixConfig
from longalign.data.selfinstruct import GenerateConfig
from longalign.data.short import ShortConfig
from longalign.rundir import RunDir, read_json, read_jsonl

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs" / "data").glob("*.yaml"))
CLASSES = {"corpus": CorpusConfig, "generate": GenerateConfig, "short": ShortConfig, "mix": MixConfig}


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv) + ["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("step", sorted(CLASSES))
def test_help_explains_every_option(capsys, step):
    text = _help(capsys, "data", step)
    for f in dataclasses.fields(CLASSES[step]):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "--run DIR" in text and "--config FILE" in text


def test_data_help_lists_steps(capsys):
    text = _help(capsys, "data")
    for step in CLASSES:
        assert step in text


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse(path):
    cls = CLASSES[path.stem.split("_")[0]]
    cfg = build_config(cls, config_file=path)
    assert dataclasses.is_dataclass(cfg)
    assert path.read_text().startswith("# ")  # first line shows the command that runs it
    assert set(load_yaml(path)) <= {f.name for f in dataclasses.fields(cls)}


def test_yaml_then_flag_precedence(tmp_path):
    cfg_file = tmp_path / "g.yaml"
    cfg_file.write_text("max_in_flight: 3\nllm: openai:m\nprice_in_per_mtok: 0.5\n")
    args = build_parser().parse_args(["data", "generate", "--config", str(cfg_file), "--max-in-flight", "5"])
    cfg = build_config(GenerateConfig, args)
    assert (cfg.max_in_flight, cfg.llm, cfg.price_in_per_mtok, cfg.answer_max_tokens) == (5, "openai:m", 0.5, 1024)


def test_unknown_yaml_key_is_an_error(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("n_documents: 3\n")
    assert main(["data", "corpus", "--run", str(tmp_path / "r"), "--config", str(cfg_file)]) == 2
    assert "unknown option(s) n_documents" in capsys.readouterr().err


def test_bad_choice_names_accepted_values(capsys):
    with pytest.raises(SystemExit):
        main(["data", "short", "--system-policy", "keep"])
    assert "keep-leading" in capsys.readouterr().err


def test_corpus_bad_json_line_names_file_and_line(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    assert main(["data", "corpus", "--run", str(tmp_path / "r"), "--input", str(docs)]) == 2
    assert f"{docs}:2: not valid JSON" in capsys.readouterr().err


def test_generate_without_corpus_says_how_to_build_it(tmp_path, capsys):
    assert main(["data", "generate", "--run", str(tmp_path / "r")]) == 2
    assert "longalign data corpus" in capsys.readouterr().err


def test_corpus_from_jsonl_end_to_end(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    lines = [{"id": f"d{i}", "text": ("word " * (50 * (i + 1))).strip(), "source": "web"} for i in range(6)]
    lines.append({"id": "zh", "text": "长文本对齐的数据构造方法。" * 10})
    docs.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    run = RunDir(tmp_path / "r")
    rc = main(
        [
            "data",
            "corpus",
            "--run",
            str(run.root),
            "--input",
            str(docs),
            "--min-tokens",
            "100",
            "--max-tokens",
            "250",
            "--n-docs",
            "0",
        ]
    )
    assert rc == 0
    out = read_jsonl(run.corpus)
    assert sorted(d["id"] for d in out) == ["d1", "d2", "d3", "d4", "zh"]
    assert {d["id"]: d["lang"] for d in out}["zh"] == "zh"
    assert all(100 <= d["n_tokens"] <= 250 for d in out)
    stage = read_json(run.run_json)["stages"]["data.corpus"]
    assert stage["config"]["min_tokens"] == 100 and stage["summary"]["written"] == 5
    assert "wrote 5 documents" in capsys.readouterr().out


def test_short_and_mix_end_to_end(tmp_path, capsys):
    run = RunDir(tmp_path / "r")
    sg = tmp_path / "sharegpt.json"
    sg.write_text(
        json.dumps(
            [
                {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}" if i else ""}]}
                for i in range(5)
            ]
        ),
        encoding="utf-8",
    )
    assert main(["data", "short", "--run", str(run.root), "--inputs", str(sg)]) == 0
    assert len(read_jsonl(run.short)) == 4
    assert '"no_exchange_left": 1' in capsys.readouterr().out
    run.long.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": f"doc {i}\n\nq"}, {"role": "assistant", "content": "a"}],
                    "doc_id": f"d{i}",
                    "source": "pydoc",
                    "lang": "en",
                    "task_type": "summary",
                }
            )
            + "\n"
            for i in range(3)
        )
    )
    assert main(["data", "mix", "--run", str(run.root), "--n-long", "2", "--seed", "1"]) == 0
    mixed = read_jsonl(run.mixed)
    assert len(mixed) == 6 and sum(r["kind"] == "long" for r in mixed) == 2
    assert read_json(run.run_json)["stages"]["data.mix"]["summary"]["long"] == 2
    assert main(["data", "mix", "--run", str(run.root), "--n-long", "5k"]) == 2
    assert "only 3 exist" in capsys.readouterr().err
