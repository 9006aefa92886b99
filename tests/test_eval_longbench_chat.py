"""LongBench-Chat end to end against the fake HTTP server: loading a synthetic fixture in the benchmark's
format, prediction through an endpoint model, two judge runs averaged with shuffled examples, summary
fields, the benchmark template option, and resume after SIGKILL without re-judging (server request log).

The fixture is made up here (four short cases, two in Chinese); it is not the benchmark's data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longalign.eval import longbench_chat
from longalign.eval.longbench_chat import LongBenchChatConfig, detect_lang, judge_messages, load_longbench_chat
from longalign.rundir import read_jsonl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_llm_server import longbench_chat_cli, messages_key, start_server_process  # noqa: E402

HERE = Path(__file__).resolve()
EXAMPLE_FIRST_SCORE = {"ALPHA": 4, "BETA": 6, "GAMMA": 8}


def make_fixture(folder: Path) -> Path:
    """Four cases in the benchmark's layout: test_cases.json + few_shots.json."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = [
        {
            "idx": 1,
            "prompt": "The committee met on Tuesday and approved the bridge repair. " * 20
            + "\nWhat did the committee approve?",
            "query": "What did the committee approve?",
            "answer": "The bridge repair.",
        },
        {
            "idx": 2,
            "prompt": "The museum opens at nine and closes at five on weekdays. " * 20
            + "\nWhen does the museum close?",
            "query": "When does the museum close?",
            "answer": "At five on weekdays.",
        },
        {
            "idx": 3,
            "prompt": "会议在周二举行，决定修复那座桥。" * 20 + "\n会议决定了什么？",
            "query": "会议决定了什么？",
            "answer": "修复那座桥。",
        },
        {
            "idx": 4,
            "prompt": "图书馆每天早上八点开门。" * 20 + "\n图书馆几点开门？",
            "query": "图书馆几点开门？",
            "answer": "早上八点。",
        },
    ]
    shots = [
        [
            {"answer": f"ALPHA answer {i}", "score": 2},
            {"answer": f"BETA answer {i}", "score": 5},
            {"answer": f"GAMMA answer {i}", "score": 9},
        ]
        for i in range(1, 5)
    ]
    (folder / "test_cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    (folder / "few_shots.json").write_text(json.dumps(shots, ensure_ascii=False), encoding="utf-8")
    return folder


def chat_responder(req: dict) -> str:
    """Answers for the evaluated model; for the judge, a rating that depends on which example comes first."""
    user = req["messages"][-1]["content"]
    if req.get("model", "").startswith("judge"):
        first = min(("ALPHA", "BETA", "GAMMA"), key=lambda name: user.find(name + " answer"))
        return f"The answer is acceptable. Rating: [[{EXAMPLE_FIRST_SCORE[first]}]]"
    return "Model answer: " + user.strip().splitlines()[-1][:40]


def test_detect_lang():
    assert detect_lang("What did the committee approve?") == "en"
    assert detect_lang("会议决定了什么？") == "zh"


def test_load_formats_and_errors(tmp_path):
    folder = make_fixture(tmp_path / "lbc")
    cases = load_longbench_chat(folder)
    assert [c.idx for c in cases] == [1, 2, 3, 4]
    assert [c.lang for c in cases] == ["en", "en", "zh", "zh"]
    assert cases[2].examples[1] == {"answer": "BETA answer 3", "score": 5}
    # jsonl with the same fields and a few_shots list per line
    lines = [
        json.dumps(
            {"idx": c.idx, "prompt": c.prompt, "query": c.query, "answer": c.answer, "few_shots": c.examples},
            ensure_ascii=False,
        )
        for c in cases
    ]
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    again = load_longbench_chat(tmp_path / "cases.jsonl")
    assert [(c.idx, c.query, c.examples) for c in again] == [(c.idx, c.query, c.examples) for c in cases]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"idx": 1, "prompt": "p"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field\(s\) query, answer"):
        load_longbench_chat(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="not bundled"):
        load_longbench_chat(tmp_path / "nothing.json")


def _cfg(folder: Path, url: str, **kw) -> LongBenchChatConfig:
    return LongBenchChatConfig(
        data=str(folder),
        model="openai:model-under-test",
        model_base_url=url,
        judge="openai:judge-x",
        judge_base_url=url,
        max_new_tokens=64,
        progress=False,
        **kw,
    )


def test_two_runs_averaged_with_shuffled_examples(fake_llm, tmp_path):
    fake_llm.set_responder(chat_responder)
    folder = make_fixture(tmp_path / "lbc")
    cfg = _cfg(folder, fake_llm.base_url, price_in_per_mtok=2.0, price_out_per_mtok=4.0)
    result = longbench_chat.run(cfg, tmp_path / "run")
    edir = tmp_path / "run" / "eval" / "longbench_chat"
    preds = read_jsonl(edir / "predictions.jsonl")
    assert sorted(p["idx"] for p in preds) == [1, 2, 3, 4]
    p0 = next(p for p in preds if p["idx"] == 1)
    assert p0["prediction"].startswith("Model answer:") and p0["lang"] == "en" and p0["truncated"] is False
    assert p0["sampling"]["seed"] == 42 and p0["max_length"] == 64000 and p0["model"] == "openai:model-under-test"
    judged = {r["idx"]: r for r in read_jsonl(edir / "judgments.jsonl")}
    assert sorted(judged) == [1, 2, 3, 4]
    names = ["ALPHA", "BETA", "GAMMA"]
    for rec in judged.values():
        assert [r["run"] for r in rec["runs"]] == [0, 1]
        orders = [r["order"] for r in rec["runs"]]
        assert orders[0] != orders[1]  # shuffled differently per run
        expected = [EXAMPLE_FIRST_SCORE[names[o[0]]] for o in orders]
        assert [r["score"] for r in rec["runs"]] == expected
        assert rec["score"] == sum(expected) / 2  # two runs averaged
        assert rec["reference"] and rec["query"] and rec["prediction"] and rec["judge"] == "openai:judge-x"
        assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["reply"] for r in rec["runs"])
    s = json.loads((edir / "summary.json").read_text())
    scores = [judged[i]["score"] for i in judged]
    assert s["mean"] == pytest.approx(sum(scores) / 4)
    assert s["by_lang"]["en"] == pytest.approx((judged[1]["score"] + judged[2]["score"]) / 2)
    assert s["by_lang"]["zh"] == pytest.approx((judged[3]["score"] + judged[4]["score"]) / 2)
    assert (s["n"], s["unparsed"], s["dataset"], s["judge"]) == (4, 0, "lbc", "openai:judge-x")
    tok = s["tokens"]
    assert tok["prompt"] == sum(r["prompt_tokens"] for rec in judged.values() for r in rec["runs"])
    assert s["cost"] == pytest.approx(tok["prompt"] * 2e-6 + tok["completion"] * 4e-6)
    assert result.judging["runs_judged"] == 8
    n_requests = len(fake_llm.requests)
    assert n_requests == 4 + 8
    # a second run does nothing new
    again = longbench_chat.run(cfg, tmp_path / "run")
    assert again.predictions["generated"] == 0 and again.judging["runs_judged"] == 0
    assert len(fake_llm.requests) == n_requests


def test_unparsed_judge_counted(fake_llm, tmp_path):
    fake_llm.set_responder(lambda req: "I cannot rate this." if req["model"].startswith("judge") else "An answer")
    folder = make_fixture(tmp_path / "lbc")
    cfg = _cfg(folder, fake_llm.base_url, limit=1, judge_runs=1, judge_max_attempts=2, judge_logprobs="off")
    s = longbench_chat.run(cfg, tmp_path / "run").scores
    assert s["mean"] is None and s["unparsed"] == 1 and s["n"] == 1
    rec = read_jsonl(tmp_path / "run" / "eval" / "longbench_chat" / "judgments.jsonl")[0]
    assert rec["runs"][0]["attempts"] == 2 and rec["runs"][0]["replies"] == ["I cannot rate this."] * 2


def test_benchmark_template_file(fake_llm, tmp_path):
    seen = []

    def responder(req):
        if req["model"].startswith("judge"):
            seen.append(req["messages"][-1]["content"])
            return "[[5]]"
        return "An answer"

    fake_llm.set_responder(responder)
    folder = make_fixture(tmp_path / "lbc")
    tpl = tmp_path / "prompt_fs.txt"
    tpl.write_text(
        "[Question]\n{}\n[Ref]\n{}\n" + "[Ans]\n{}\nRating: [[{}]]\n" * 3 + "[Rate]\n{}\nRating: ", encoding="utf-8"
    )
    cfg = _cfg(folder, fake_llm.base_url, limit=1, judge_runs=1, judge_template=str(tpl))
    s = longbench_chat.run(cfg, tmp_path / "run").scores
    assert s["mean"] == 5.0 and any("prompt_fs.txt" in n for n in s["notes"])
    assert seen[0].startswith("[Question]\nWhat did the committee approve?\n[Ref]\nThe bridge repair.\n[Ans]\n")
    assert seen[0].endswith("[Rate]\nAn answer\nRating: ")
    assert len(re.findall(r"Rating: \[\[\d\]\]", seen[0])) == 3


def test_resume_after_sigkill_never_rejudges(tmp_path):
    folder = make_fixture(tmp_path / "lbc")
    log_path = tmp_path / "server.jsonl"
    server, url = start_server_process(tmp_path, responder=f"{HERE}:chat_responder", latency=0.25, log_path=log_path)
    out = tmp_path / "run"
    runs_path = out / "eval" / "longbench_chat" / "judge_runs.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": "test", "OMP_NUM_THREADS": "1"}
    cmd = longbench_chat_cli(folder, out, url)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(read_jsonl(runs_path)) < 3 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = read_jsonl(runs_path)
        assert 3 <= len(done_before) < 8
        n_log_before = len(read_jsonl(log_path))
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "mean" in res.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
    cases = {c.idx: c for c in load_longbench_chat(folder)}
    preds = {p["idx"]: p for p in read_jsonl(out / "eval" / "longbench_chat" / "predictions.jsonl")}
    assert sorted(preds) == [1, 2, 3, 4]  # no duplicate predictions
    done_keys = {
        messages_key(judge_messages(cases[r["idx"]], preds[r["idx"]]["prediction"], r["order"])) for r in done_before
    }
    after = read_jsonl(log_path)[n_log_before:]
    assert after, "the second run must have judged the remaining runs"
    assert not done_keys & {e["key"] for e in after}  # finished runs never re-asked
    runs = read_jsonl(runs_path)
    assert sorted((r["idx"], r["run"]) for r in runs) == [(i, r) for i in range(1, 5) for r in range(2)]
    judged = read_jsonl(out / "eval" / "longbench_chat" / "judgments.jsonl")
    assert sorted(r["idx"] for r in judged) == [1, 2, 3, 4]
    summary = json.loads((out / "eval" / "longbench_chat" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["mean"] is not None


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
    """Bad lines of a jsonl copy: raise naming file:line (and the skip flag), or skip, count and list them."""

    def write(self, folder: Path, with_bad: bool) -> Path:
        cases = load_longbench_chat(make_fixture(folder / "src"))
        lines = [
            json.dumps(
                {"idx": c.idx, "prompt": c.prompt, "query": c.query, "answer": c.answer, "few_shots": c.examples},
                ensure_ascii=False,
            )
            for c in cases
        ]
        if with_bad:
            lines.insert(1, '{"idx": 9, "prompt": ')  # line 2: invalid JSON
            lines.insert(3, json.dumps({"idx": 7, "prompt": "p", "query": "q"}))  # line 4: no answer
        path = folder / "cases.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def test_raise_names_file_line_and_the_fix(self, tmp_path):
        path = self.write(tmp_path, True)
        with pytest.raises(ValueError, match=r"cases\.jsonl:2: not valid JSON.*--on-error skip"):
            load_longbench_chat(path)

    def test_skip_reads_the_clean_file_and_lists_the_lines(self, tmp_path):
        bad, clean = self.write(tmp_path / "bad", True), self.write(tmp_path / "clean", False)
        gen = _StubGenerator()
        cfg = dict(model="stub", judge="", progress=False)
        skip_cfg = LongBenchChatConfig(data=str(bad), on_error="skip", **cfg)
        s = longbench_chat.run(skip_cfg, tmp_path / "r1", generator=gen)
        c = longbench_chat.run(LongBenchChatConfig(data=str(clean), **cfg), tmp_path / "r2", generator=gen)
        strip = ("latency", "time", "seconds")
        rows = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(s.predictions_path)]
        assert rows == [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(c.predictions_path)]
        assert len(rows) == 4 and s.predictions == c.predictions
        assert s.skipped["total"] == 2 and s.skipped["by_reason"] == {"invalid_json": 1, "missing_field": 1}
        assert [e["at"] for e in s.skipped["first"]] == [f"{bad}:2", f"{bad}:4"]
        text = "\n".join(s.lines())
        assert "skipped 2 bad records" in text and f"{bad}:4: missing field(s) answer" in text
        assert c.skipped["total"] == 0 and "skipped" not in "\n".join(c.lines())
