"""Lengths checked against the model before any work: ``longalign.models.model_positions`` / ``check_length`` and
their use by every command that builds long prompts (needle, LongBench-Chat, LongBench; train shares the check)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from longalign.cli import main
from longalign.eval import longbench_chat, needle
from longalign.eval.generate import TEMPLATE_ALLOWANCE, Generation, check_prompt_budget
from longalign.eval.longbench_chat import LongBenchChatConfig
from longalign.eval.needle import NeedleConfig
from longalign.models import (
    LengthBeyondModel,
    check_length,
    embedded_gguf_path,
    gguf_context_length,
    model_positions,
)
from longalign.rundir import read_jsonl

REPO = Path(__file__).resolve().parent.parent
TINY = "random:" + str(REPO / "configs" / "models" / "tiny-llama")


def test_positions_come_from_the_config_alone():
    tiny = json.loads((REPO / "configs/models/tiny-llama/config.json").read_text())["max_position_embeddings"]
    big = json.loads((REPO / "configs/models/llama2-7b-64k/config.json").read_text())["max_position_embeddings"]
    assert model_positions(TINY) == tiny == 4096
    assert model_positions(str(REPO / "configs/models/llama2-7b-64k")) == big == 65536
    assert model_positions("openai:gpt-4o-mini") is None  # an endpoint: unknown, nothing is checked
    assert model_positions("smollm2") == model_positions("local:smollm2") == 8192  # SmolLM2-135M: 8k positions


def test_the_gguf_header_gives_the_embedded_models_positions():
    start = time.monotonic()
    assert gguf_context_length(embedded_gguf_path()) == 8192
    assert time.monotonic() - start < 2.0  # the header only, never the tensors


def test_gguf_reader_walks_every_value_type(tmp_path):
    import struct

    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [
        s("general.name") + struct.pack("<I", 8) + s("x"),
        s("tokenizer.tokens") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("bc"),
        s("tokenizer.scores") + struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 0.1, 0.2, 0.3),
        s("llama.flag") + struct.pack("<I", 7) + b"\x01",
        s("llama.context_length") + struct.pack("<II", 4, 12345),
    ]
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    assert gguf_context_length(path) == 12345
    path.write_bytes(b"NOPE")
    assert gguf_context_length(path) is None


def test_check_length_refuses_with_the_fix():
    assert check_length(4096, asked="--lengths 4096", model=TINY, shorter="use less") == 4096
    assert check_length(10**6, asked="x", positions=0, shorter="") == 0  # unknown: not checked
    with pytest.raises(LengthBeyondModel) as info:
        check_length(
            5000,
            asked="--lengths 5000",
            model=TINY,
            shorter="ask for at most {positions}",
            opt_in="--anyway runs {length}",
        )
    err = info.value
    assert isinstance(err, ValueError) and (err.length, err.positions) == (5000, 4096)
    text = str(err)
    assert "\n" not in text and text.startswith("--lengths 5000 needs 5,000 positions")
    assert "max_position_embeddings=4096" in text and "ask for at most 4096" in text
    assert "--rope-scale 200 --max-position-embeddings 5000" in text and "--anyway runs 5000" in text


class StubGenerator:
    """Answers with a fixed text; its tokenizer counts characters; ``max_positions`` as given."""

    name = "stub"

    def __init__(self, positions):
        self.max_positions = positions
        self.prompts: list[str] = []

    class tokenizer:  # noqa: N801
        @staticmethod
        def encode(text, add_special_tokens=False):
            return [ord(c) for c in text]

        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    def generate(self, batch, params):
        self.prompts += [m[-1]["content"] for m in batch]
        return [Generation("stub answer", 1, 2) for _ in batch]


def test_needle_refuses_before_any_work_unless_told_to_go_past(tmp_path):
    gen = StubGenerator(500)
    with pytest.raises(LengthBeyondModel, match="--lengths 900 needs 900 positions.*--past-positions true"):
        needle.run(
            NeedleConfig(model="stub", lengths=[400, 900], depths=[50], progress=False), tmp_path / "r", generator=gen
        )
    assert gen.prompts == [] and not (tmp_path / "r").exists()
    cfg = NeedleConfig(model="stub", lengths=[400, 900], depths=[50], progress=False, past_positions=True)
    s = needle.run(cfg, tmp_path / "r", generator=gen)
    assert s.scores["n"] == 2 and len(gen.prompts) == 2


def _chat_cases(folder: Path, n_chars: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cases = [{"idx": i, "prompt": "y" * n_chars, "query": "q?", "answer": "a"} for i in (1, 2)]
    (folder / "test_cases.json").write_text(json.dumps(cases))
    shots = [[{"answer": "a", "score": 5}] * 3 for _ in cases]
    (folder / "few_shots.json").write_text(json.dumps(shots))
    return folder


def test_longbench_chat_refuses_or_middle_truncates_to_the_model(tmp_path):
    data = _chat_cases(tmp_path / "lbc", 3000)
    gen = StubGenerator(1000)
    base = dict(data=str(data), model="stub", max_len=2000, max_new_tokens=100, progress=False)
    fits = 1000 - 100 - TEMPLATE_ALLOWANCE
    with pytest.raises(LengthBeyondModel, match=f"lower --max-len to {fits}.*--fit-to-model true"):
        longbench_chat.run(LongBenchChatConfig(**base), tmp_path / "r", generator=gen)
    assert gen.prompts == []
    longbench_chat.run(LongBenchChatConfig(**base, fit_to_model=True), tmp_path / "r", generator=gen)
    preds = read_jsonl(tmp_path / "r" / "eval" / "longbench_chat" / "predictions.jsonl")
    assert [p["max_length"] for p in preds] == [fits, fits] and all(p["truncated"] for p in preds)
    half = fits // 2
    assert gen.prompts == ["y" * (2 * half)] * 2  # middle-truncated: the first and last halves kept


def test_prompt_budget_of_an_endpoint_is_not_checked():
    check_prompt_budget("openai:some-model", 10**6, 1024)  # its positions are unknown here: nothing to refuse


@pytest.mark.parametrize(
    "argv, needle_text",
    [
        (["eval", "needle", "--lengths", "99999"], "--lengths 99999 needs 99,999 positions"),
        (["eval", "needle"], "--length-max 60000 needs 60,000 positions"),
        (["eval", "longbench-chat", "--data", "{chat}"], "--max-len 64000 + 1024 new tokens"),
        (["eval", "longbench", "--data", "hf", "--tasks", "gov_report"], "--max-len 31500 + 512 new tokens"),
        (["eval", "longbench", "--data", "{lb}", "--tasks", "hotpotqa"], "--max-len 31500 + 32 new tokens"),
        (["eval", "ruler", "--lengths", "4096,99999"], "--lengths 99999 needs 99,999 positions"),
        (["eval", "longbench-v2", "--data", "{v2}", "--max-len", "128000"], "--max-len 128000 needs 128,000"),
    ],
    ids=["needle-lengths", "needle-default-grid", "longbench-chat", "longbench-hf", "longbench", "ruler", "lb-v2"],
)
def test_every_evaluation_refuses_the_embedded_model_in_seconds(tmp_path, capsys, argv, needle_text):
    chat = _chat_cases(tmp_path / "chat", 100)
    lb = tmp_path / "hotpotqa.jsonl"
    row = {"input": "q", "context": "c", "answers": ["a"], "dataset": "hotpotqa", "language": "en", "_id": "1"}
    lb.write_text(json.dumps(row) + "\n")
    v2 = tmp_path / "v2.json"
    item = {"_id": "a", "domain": "d", "sub_domain": "s", "difficulty": "easy", "length": "short", "question": "q?"}
    item.update({f"choice_{c}": c.lower() for c in "ABCD"}, answer="A", context="some context")
    v2.write_text(json.dumps([item]))
    argv = [a.format(chat=chat, lb=lb, v2=v2) for a in argv]
    run = tmp_path / "run"
    start = time.monotonic()
    assert main([*argv, "--run", str(run)]) == 2
    assert time.monotonic() - start < 5.0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and needle_text in err
    assert "SmolLM2-135M-Instruct has 8,192" in err and "--rope-scale" in err
    assert not run.exists()  # nothing written
