"""Judged LongBench on a synthetic fixture in LongBench's jsonl format, against the fake HTTP server."""

from __future__ import annotations

import json

import pytest

from longalign.eval import longbench
from longalign.eval.longbench import LongBenchConfig, build_prompt, judge_messages, load_longbench, to_0_100
from longalign.rundir import read_jsonl


def write_fixture(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "hotpotqa": [
            {
                "input": f"Which city hosts landmark {i}?",
                "context": f"Passage: landmark {i} is in Lyon.",
                "answers": ["Lyon"],
                "length": 9,
                "dataset": "hotpotqa",
                "language": "en",
                "_id": f"h{i}",
            }
            for i in range(3)
        ],
        "qasper": [
            {
                "input": "What corpus was used?",
                "context": "We train on the XYZ corpus.",
                "answers": ["XYZ", "the XYZ corpus"],
                "length": 6,
                "dataset": "qasper",
                "language": "en",
                "_id": "q0",
            }
        ],
        "gov_report": [
            {
                "input": "",
                "context": "The agency reviewed spending in 2020 and found waste.",
                "answers": ["The agency found waste in 2020 spending."],
                "length": 10,
                "dataset": "gov_report",
                "language": "en",
                "_id": "g0",
            }
        ],
    }
    for task, recs in rows.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return folder


def test_load_and_prompts(tmp_path):
    folder = write_fixture(tmp_path / "lb")
    samples = load_longbench(str(folder), ["hotpotqa", "qasper", "gov_report", "musique"], limit_per_task=2)
    assert [s.key for s in samples] == ["hotpotqa:h0", "hotpotqa:h1", "qasper:q0", "gov_report:g0"]
    assert samples[0].category == "multi_doc_qa" and samples[2].category == "single_doc_qa"
    p = build_prompt(samples[0])
    assert "landmark 0 is in Lyon" in p and p.rstrip().endswith("Answer:") and "Which city hosts landmark 0?" in p
    assert (
        build_prompt(samples[0], {"hotpotqa": "C={context} Q={input}"})
        == "C=Passage: landmark 0 is in Lyon. Q=Which city hosts landmark 0?"
    )
    qa = judge_messages(samples[2], "XYZ")[1]["content"]
    assert "- XYZ\n- the XYZ corpus" in qa and "[[rating]]" in qa and "3:" in qa and "4:" not in qa
    summ = judge_messages(samples[3], "Waste was found.")[1]["content"]
    assert "5:" in summ and "reference summary" in summ.lower()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"dataset": "hotpotqa", "input": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'context'"):
        load_longbench(str(tmp_path / "bad.jsonl"), ["hotpotqa"])
    with pytest.raises(ValueError, match="not accepted"):
        load_longbench(str(folder), ["trec"])


def test_normalisation():
    assert [to_0_100(r, 3) for r in (1, 2, 3)] == [0.0, 50.0, 100.0]
    assert [to_0_100(r, 5) for r in (1, 3, 5)] == [0.0, 50.0, 100.0]


def test_judged_run(fake_llm, tmp_path):
    ratings = {"Lyon": "[[3]]", "XYZ": "[[2]]", "Waste": "[[4]]"}

    def responder(req):
        user = req["messages"][-1]["content"]
        if req["model"] == "judge":
            answer = user.split("[Assistant's")[1]
            return next(v for k, v in ratings.items() if k in answer)
        if "Lyon" in user:
            return "Lyon"
        return "XYZ" if "XYZ" in user else "Waste was found."

    fake_llm.set_responder(responder)
    folder = write_fixture(tmp_path / "lb")
    cfg = LongBenchConfig(
        data=str(folder),
        tasks=["hotpotqa", "qasper", "gov_report"],
        model="openai:m",
        model_base_url=fake_llm.base_url,
        judge="openai:judge",
        judge_base_url=fake_llm.base_url,
        progress=False,
    )
    s = longbench.run(cfg, tmp_path / "run").scores
    assert s["tasks"]["hotpotqa"] == {
        "score_0_100": 100.0,
        "n": 3,
        "unparsed": 0,
        "category": "multi_doc_qa",
        "mean_rating": 3.0,
        "scale": "1-3",
    }
    assert s["tasks"]["qasper"]["score_0_100"] == 50.0 and s["tasks"]["gov_report"]["score_0_100"] == 75.0
    assert s["categories"] == {
        "single_doc_qa": {"score_0_100": 50.0, "tasks": ["qasper"]},
        "multi_doc_qa": {"score_0_100": 100.0, "tasks": ["hotpotqa"]},
        "summarization": {"score_0_100": 75.0, "tasks": ["gov_report"]},
    }
    assert s["overall"] == 75.0
    preds = read_jsonl(tmp_path / "run" / "eval" / "longbench" / "predictions.jsonl")
    budgets = {p["dataset"]: p["sampling"]["max_tokens"] for p in preds}
    assert budgets == {"hotpotqa": 32, "qasper": 128, "gov_report": 512}  # LongBench's per-task budgets
    n = len(fake_llm.requests)
    longbench.run(cfg, tmp_path / "run")  # resumes: nothing new
    assert len(fake_llm.requests) == n


class _StubGenerator:
    """Answers every prompt with a fixed text; the tokenizer counts characters."""

    name = "stub"
    max_positions = None

    class tokenizer:  # noqa: N801
        @staticmethod
        def encode(text, add_special_tokens=False):
            return list(range(len(text)))

        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return "x" * len(ids)

    def generate(self, batch, params):
        from longalign.eval.generate import Generation

        return [Generation("stub answer", 1, 2) for _ in batch]


class TestOnError:
    """Bad lines of a LongBench copy: raise naming file:line (and the skip flag), or skip, count and list them."""

    def write(self, folder, with_bad: bool):
        write_fixture(folder)
        f = folder / "hotpotqa.jsonl"
        lines = f.read_text().splitlines()
        if with_bad:
            lines.insert(1, "[1, 2")  # line 2: invalid JSON
            lines.insert(3, json.dumps(["a", "list"]))  # line 4: not an object
        f.write_text("\n".join(lines) + "\n")
        return folder

    def test_raise_names_file_line_and_the_fix(self, tmp_path):
        folder = self.write(tmp_path / "lb", True)
        with pytest.raises(ValueError, match=r"hotpotqa\.jsonl:2: not valid JSON.*--on-error skip"):
            load_longbench(str(folder), ["hotpotqa"])

    def test_skip_reads_the_clean_copy(self, tmp_path):
        from longalign.rundir import BadRecords

        bad, clean = self.write(tmp_path / "bad", True), self.write(tmp_path / "clean", False)
        skipped = BadRecords("skip")
        got = load_longbench(str(bad), ["hotpotqa", "qasper"], limit_per_task=3, skipped=skipped)
        assert got == load_longbench(str(clean), ["hotpotqa", "qasper"], limit_per_task=3)
        d = skipped.to_dict()
        assert d["by_reason"] == {"invalid_json": 1, "wrong_shape": 1}
        assert [e["at"] for e in d["first"]] == [f"{bad / 'hotpotqa.jsonl'}:2", f"{bad / 'hotpotqa.jsonl'}:4"]

    def test_skip_in_the_stage_summary(self, tmp_path):
        bad = self.write(tmp_path / "bad", True)
        cfg = LongBenchConfig(
            data=str(bad), tasks=["hotpotqa"], model="stub", judge="", progress=False, on_error="skip"
        )
        s = longbench.run(cfg, tmp_path / "run", generator=_StubGenerator())
        assert s.predictions == 3 and s.skipped["total"] == 2
        text = "\n".join(s.lines())
        assert "skipped 2 bad records (invalid_json 1, wrong_shape 1)" in text and "hotpotqa.jsonl:4:" in text
