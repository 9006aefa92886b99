"""LongBench v2 (``longalign eval longbench-v2``): the reader on literal files in the released layout (JSON list and
jsonl), the file:item errors and skip mode, answer extraction, middle truncation, logprob and generate modes on a
random tiny model, an endpoint run against the fake HTTP server, and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from longalign.eval import longbench_v2 as lb2
from longalign.eval.longbench_v2 import LongBenchV2Config, extract_choice, read_longbench_v2
from longalign.rundir import BadRecords, RunDir, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = f"random:{ROOT / 'configs' / 'models' / 'tiny-llama'}"


def item(i: int, answer: str = "B", difficulty: str = "easy", length: str = "short", context: str | None = None):
    return {
        "_id": f"66f3{i:04d}",
        "domain": "Single-Document QA" if i % 2 else "Code Repository Understanding",
        "sub_domain": "Academic",
        "difficulty": difficulty,
        "length": length,
        "question": f"Which harbour does report {i} describe?",
        "choice_A": "The northern harbour",
        "choice_B": "The southern harbour",
        "choice_C": "Both harbours",
        "choice_D": "Neither harbour",
        "answer": answer,
        "context": context if context is not None else f"Report {i}. " + "The southern harbour was rebuilt. " * 20,
    }


ITEMS = [
    item(0, "B", "easy", "short"),
    item(1, "A", "hard", "short"),
    item(2, "B", "hard", "medium"),
    item(3, "D", "easy", "long"),
    item(4, "C", "hard", "long"),
]


@pytest.fixture
def data_json(tmp_path) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ITEMS, indent=1), encoding="utf-8")
    return path


def test_reader_on_the_released_layout(data_json, tmp_path):
    items = read_longbench_v2(data_json)
    assert [it.uid for it in items] == [r["_id"] for r in ITEMS]
    first = items[0]
    assert (first.difficulty, first.length, first.answer, first.domain) == ("easy", "short", "B", ITEMS[0]["domain"])
    assert first.choices == ["The northern harbour", "The southern harbour", "Both harbours", "Neither harbour"]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ITEMS), encoding="utf-8")
    assert [it.uid for it in read_longbench_v2(jsonl)] == [it.uid for it in items]
    assert len(read_longbench_v2(data_json, limit=2)) == 2


def test_malformed_item_names_file_and_item(tmp_path):
    broken = [item(0), {k: v for k, v in item(1).items() if k != "choice_C"}, item(2, answer="E"), item(3)]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: item 1 \(_id 66f30001\): missing field\(s\) choice_C") as err:
        read_longbench_v2(path)
    assert "--on-error skip" in str(err.value)
    skipped = BadRecords("skip")
    items = read_longbench_v2(path, skipped=skipped)
    assert [it.uid for it in items] == ["66f30000", "66f30003"]
    info = skipped.to_dict()
    assert info["total"] == 2 and info["by_reason"] == {"bad_answer": 1, "missing_field": 1}
    assert info["first"][1]["at"].endswith("bad.json: item 2 (_id 66f30002)")
    # without an _id the index names the item; jsonl names the line
    noid = tmp_path / "noid.json"
    noid.write_text(json.dumps([item(0), {"question": "q"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"noid\.json: item 1: missing field"):
        read_longbench_v2(noid)
    lines = tmp_path / "bad.jsonl"
    lines.write_text(json.dumps(item(0)) + "\n{not json\n" + json.dumps(item(0)) + "\n", encoding="utf-8")
    skipped = BadRecords("skip")
    assert len(read_longbench_v2(lines, skipped=skipped)) == 1
    assert skipped.by_reason == {"duplicate_id": 1, "invalid_json": 1}
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_longbench_v2(lines)


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("The answer is (C).", "C"),
        ("After reading the report, the answer is (B)", "B"),
        ("answer: D", "D"),
        ("I think (A) fits, but the answer is (D).", "D"),
        ("(B) The southern harbour", "B"),
        ("C. Both harbours", "C"),
        ("A", "A"),
        ("A good question. The report mentions (C) only.", "C"),
        ("A good question without a choice.", None),
        ("Either (A) or (B).", None),
        ("", None),
        ("The answer is based on the text.", None),
    ],
)
def test_extract_choice(reply, letter):
    assert extract_choice(reply) == letter


def test_prepare_middle_truncates_the_context_to_the_window():
    from longalign.eval.ruler_tasks import PromptFormat
    from longalign.models import load_tokenizer

    tok = load_tokenizer(None)
    fmt = PromptFormat(tok)
    long_ctx = "HEADMARK opening words. " + " ".join(f"filler{i}" for i in range(2000)) + " closing words TAILMARK."
    it = lb2._item(item(7, context=long_ctx), 7, "x")
    prep = lb2.prepare(fmt, it, window=600, reserve=1, prefix=lb2.ANSWER_PREFIX)
    assert prep.truncated and prep.context_tokens_raw > 2000
    assert len(prep.ids) <= 599 and prep.ids == tok.encode(fmt.render(prep.user, lb2.ANSWER_PREFIX))
    assert "HEADMARK" in prep.user and "TAILMARK" in prep.user and "filler1000 " not in prep.user
    assert "(D) Neither harbour" in prep.user and prep.user.index("HEADMARK") < prep.user.index("TAILMARK")
    short = lb2.prepare(fmt, lb2._item(item(8), 8, "x"), window=4096, reserve=128, prefix="")
    assert not short.truncated and item(8)["context"] in short.user
    with pytest.raises(ValueError, match="use a larger --max-len"):
        lb2.prepare(fmt, it, window=100, reserve=1, prefix=lb2.ANSWER_PREFIX)


def test_logprob_mode_on_a_random_tiny_model(tmp_path, data_json):
    import torch

    cfg = LongBenchV2Config(model=TINY, data=str(data_json), progress=False)
    summary = lb2.run(cfg, tmp_path / "r")
    recs = read_jsonl(RunDir(tmp_path / "r").longbench_v2_results())
    assert [r["_id"] for r in recs] == [r["_id"] for r in ITEMS] and all(r["mode"] == "logprob" for r in recs)
    # the choice is the letter with the highest next-token probability after the forced prefix
    chooser = lb2.LocalChooser(TINY)
    fmt = chooser.prompt_format()
    for r, raw in zip(recs, ITEMS):
        prep = lb2.prepare(fmt, lb2._item(raw, 0, "x"), 4096, 1, lb2.ANSWER_PREFIX)
        with torch.inference_mode():
            logits = chooser.lm.model(input_ids=torch.tensor([prep.ids])).logits[0, -1]
        letter_ids = [
            tok for tok in (chooser.lm.encode(fmt.render(prep.user, lb2.ANSWER_PREFIX) + x)[-1] for x in "ABCD")
        ]
        best = "ABCD"[int(torch.argmax(logits[letter_ids]))]
        assert r["pred"] == best and math.isclose(sum(r["probs"].values()), 1.0, abs_tol=1e-4)
        assert r["correct"] == (best == raw["answer"]) and r["window"] == 4096
    s = summary.scores
    n_correct = sum(r["correct"] for r in recs)
    assert s["overall"]["n"] == 5 and s["overall"]["score"] == round(100 * n_correct / 5, 2)
    assert set(s["by_difficulty"]) == {"easy", "hard"} and s["by_difficulty"]["hard"]["n"] == 3
    assert set(s["by_length"]) == {"short", "medium", "long"}
    assert lb2.run(cfg, tmp_path / "r").answered == 0  # resumed: nothing redone


def test_generate_mode_against_an_endpoint_and_resume(tmp_path, data_json, fake_llm):
    replies = {"66f30000": "The answer is (B).", "66f30001": "I would say (C).", "66f30002": "B. Southern",
               "66f30003": "Not sure.", "66f30004": "The answer is (C)"}  # fmt: skip

    def responder(req):
        user = req["messages"][0]["content"]
        return next(v for k, v in replies.items() if f"report {int(k[-4:])} describe" in user)

    fake_llm.set_responder(responder)
    cfg = LongBenchV2Config(
        model="openai:m", model_base_url=fake_llm.base_url, data=str(data_json), max_len=3000, progress=False
    )
    summary = lb2.run(cfg, tmp_path / "r")
    recs = {r["_id"]: r for r in read_jsonl(RunDir(tmp_path / "r").longbench_v2_results())}
    assert {k: r["pred"] for k, r in recs.items()} == {
        "66f30000": "B",
        "66f30001": "C",
        "66f30002": "B",
        "66f30003": None,
        "66f30004": "C",
    }
    # answers: B, A, B, D, C -> correct: 0, 2, 4
    s = summary.scores
    assert s["mode"] == "generate" and s["overall"]["score"] == 60.0 and s["unanswered"] == 1
    assert s["by_difficulty"]["easy"]["score"] == 50.0 and s["by_difficulty"]["hard"]["score"] == pytest.approx(66.67)
    assert s["by_length"]["long"]["score"] == 50.0
    n = len(fake_llm.requests)
    again = lb2.run(cfg, tmp_path / "r")
    assert again.answered == 0 and len(fake_llm.requests) == n
    with pytest.raises(ValueError, match="--max-len"):
        lb2.run(LongBenchV2Config(model="openai:m", data=str(data_json)), tmp_path / "other")
