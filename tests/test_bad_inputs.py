"""Bad inputs across the whole command line, one table: missing files, empty folders, wrong columns, out-of-range
numbers, unknown names, unreachable and unauthorised endpoints (served on 127.0.0.1).

Every case must exit non-zero within seconds with exactly one line (besides INFO progress logs) that names the
file, flag or variable at fault and says how to fix it, never a traceback, and must write nothing outside its
run folder. The cases run in-process through ``longalign.cli.main`` (the first ones pay the imports); a few run
as real processes as well, where a traceback would show.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, closed_port

from longalign.cli import main

REPO = Path(__file__).resolve().parent.parent
KEY_VAR = "LONGALIGN_TABLE_KEY"  # never set: the unauthorised cases name it
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|DEBUG) ")  # progress logs
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")  # tqdm's bar, one line per refresh when stderr is not a terminal
SECONDS = 10.0  # per case, on a shared 2-core machine; most take well under a second


@dataclass
class Case:
    id: str
    argv: list[str]  # placeholders: {tmp} inputs folder, {run} run folder, {closed} {unauth} {nomodel} {busy} URLs
    names: list[str]  # what the line must name (file, flag, variable, value)
    fix: str  # words of the fix the line must give
    setup: Callable[[Path, Path], None] | None = None  # (inputs folder, run folder)
    run_flag: bool = True  # append --run {run}
    extra: dict = field(default_factory=dict)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def jsonl(path: Path, rows: list) -> None:
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


def corpus(tmp: Path, run: Path) -> None:
    body = " ".join(f"Sentence {k} says something about rivers." for k in range(30))
    jsonl(run / "data" / "corpus.jsonl", [{"id": f"d{i}", "text": body, "lang": "en", "source": "t"} for i in range(3)])


def few_shots(tmp: Path, run: Path) -> None:
    write(tmp / "few_shots.json", json.dumps([[{"answer": f"a{k}", "score": k + 2} for k in range(3)]] * 2))


def chat_copy(tmp: Path, run: Path) -> None:
    cases = [{"idx": i, "prompt": "A short document. What is it?", "query": "What?", "answer": "A"} for i in (1, 2)]
    write(tmp / "lbc" / "test_cases.json", json.dumps(cases))
    write(tmp / "lbc" / "few_shots.json", json.dumps([[{"answer": "x", "score": 5}] * 3] * 2))


def empty_folder(tmp: Path, run: Path) -> None:
    (tmp / "empty").mkdir(parents=True, exist_ok=True)


CASES = [
    # ---- data corpus
    Case("corpus-missing-input", ["data", "corpus", "--input", "{tmp}/nope.jsonl"], ["nope.jsonl"], "--input"),
    Case(
        "corpus-empty-folder",
        ["data", "corpus", "--input", "{tmp}/empty"],
        ["empty", ".txt"],
        "name another folder",
        setup=empty_folder,
    ),
    Case(
        "corpus-line-without-text",
        ["data", "corpus", "--input", "{tmp}/docs.jsonl"],
        ["docs.jsonl:2"],
        "--on-error skip",
        setup=lambda tmp, run: jsonl(tmp / "docs.jsonl", [{"text": "fine"}, {"body": "no text field"}]),
    ),
    Case(
        "corpus-min-over-max",
        ["data", "corpus", "--min-tokens", "5000", "--max-tokens", "100"],
        ["min_tokens", "max_tokens"],
        "--min-tokens",
    ),
    Case("corpus-negative-count", ["data", "corpus", "--n-docs", "-1"], ["n_docs"], ">= 0"),
    Case(
        "corpus-unknown-builtin-source",
        ["data", "corpus", "--builtin-sources", "nosuch"],
        ["nosuch"],
        "one of",
    ),
    # ---- data generate
    Case("generate-no-corpus", ["data", "generate"], ["corpus.jsonl"], "longalign data corpus"),
    Case(
        "generate-unknown-backend",
        ["data", "generate", "--llm", "anthropic:claude"],
        ["anthropic"],
        "openai:<model>",
        setup=corpus,
    ),
    Case(
        "generate-closed-port",
        ["data", "generate", "--llm", "openai:gpt-x", "--base-url", "{closed}"],
        ["{closed}", "gpt-x", "--base-url", "Connection refused"],
        "start the server",
        setup=corpus,
    ),
    Case(
        "generate-unauthorised",
        ["data", "generate", "--llm", "openai:gpt-x", "--base-url", "{unauth}", "--api-key-env", KEY_VAR],
        ["{unauth}", "HTTP 401", KEY_VAR, "--api-key-env"],
        "valid key",
        setup=corpus,
    ),
    Case(
        "generate-unknown-model",
        ["data", "generate", "--llm", "openai:gpt-typo", "--base-url", "{nomodel}"],
        ["{nomodel}", "gpt-typo", "--llm"],
        "check the model name",
        setup=corpus,
    ),
    Case(
        "generate-unknown-task-type",
        ["data", "generate", "--task-types", "poems"],
        ["poems", "task_types"],
        "summary",
    ),
    Case("generate-top-p-out-of-range", ["data", "generate", "--top-p", "1.5"], ["top_p", "1.5"], "<= 1"),
    Case(
        "generate-cap-without-price",
        ["data", "generate", "--max-cost", "1"],
        ["max_cost"],
        "--price-in-per-mtok",
    ),
    # ---- data short / mix
    Case("short-missing-input", ["data", "short", "--inputs", "{tmp}/nope.json"], ["nope.json"], "--inputs"),
    Case(
        "short-wrong-columns",
        ["data", "short", "--inputs", "{tmp}/chats.jsonl"],
        ["chats.jsonl:1"],
        "--on-error skip",
        setup=lambda tmp, run: jsonl(tmp / "chats.jsonl", [{"prompt": "hi", "reply": "hello"}]),
    ),
    Case(
        "short-unknown-choice",
        ["data", "short", "--system-policy", "keep"],
        ["--system-policy", "keep"],
        "keep-leading",
    ),
    Case("mix-nothing-to-mix", ["data", "mix"], ["long.jsonl"], "longalign data generate"),
    Case("mix-bad-count", ["data", "mix", "--n-long", "lots"], ["n_long", "lots"], "'all'"),
    # ---- tokenize
    Case("tokenize-missing-input", ["tokenize", "--input", "{tmp}/nope.jsonl"], ["nope.jsonl"], "--input"),
    Case(
        "tokenize-wrong-columns",
        ["tokenize", "--input", "{tmp}/rows.jsonl"],
        ["rows.jsonl:1", "messages"],
        "--on-error skip",
        setup=lambda tmp, run: jsonl(tmp / "rows.jsonl", [{"text": "no messages here"}]),
    ),
    Case("tokenize-max-len-zero", ["tokenize", "--max-len", "0"], ["max_len"], ">= 2"),
    Case(
        "tokenize-unknown-model",
        ["tokenize", "--input", "{tmp}/conv.jsonl", "--model", "{tmp}/no-such-model"],
        ["no-such-model"],
        "smollm2",
        setup=lambda tmp, run: jsonl(tmp / "conv.jsonl", [{"messages": [{"role": "user", "content": "x"}]}]),
    ),
    # ---- batch
    Case("plan-missing-lengths", ["batch", "plan", "--lengths", "{tmp}/nope.txt"], ["nope.txt"], "--lengths"),
    Case(
        "plan-bad-lengths-line",
        ["batch", "plan", "--lengths", "{tmp}/lengths.txt"],
        ["lengths.txt:2", "abc"],
        "one token count per line",
        setup=lambda tmp, run: write(tmp / "lengths.txt", "12\nabc\n7\n"),
    ),
    Case(
        "plan-max-len-zero",
        ["batch", "plan", "--lengths", "{tmp}/ok.txt", "--max-len", "0"],
        ["max_len"],
        ">= 1",
        setup=lambda tmp, run: write(tmp / "ok.txt", "12\n7\n"),
    ),
    Case("plan-run-without-tokens", ["batch", "plan"], ["tokens"], "longalign tokenize"),
    Case(
        "simulate-unknown-method",
        ["batch", "simulate", "--lengths", "{tmp}/ok.txt", "--methods", "naive,zigzag"],
        ["zigzag"],
        "pack",
        setup=lambda tmp, run: write(tmp / "ok.txt", "12\n7\n"),
    ),
    # ---- train
    Case("train-missing-tokens", ["train", "--tokens", "{tmp}/nope"], ["nope"], "longalign tokenize"),
    Case("train-run-without-tokens", ["train"], ["tokens"], "longalign tokenize"),
    Case("train-negative-learning-rate", ["train", "--learning-rate", "-1"], ["learning_rate"], ">= 0"),
    # ---- eval
    Case(
        "needle-beyond-the-model",
        ["eval", "needle", "--lengths", "99999"],
        ["--lengths 99999", "8,192"],
        "--rope-scale",
    ),
    Case(
        "needle-depth-out-of-range",
        ["eval", "needle", "--lengths", "600", "--depths", "120"],
        ["120"],
        "0..100",
    ),
    Case(
        "needle-missing-haystack",
        ["eval", "needle", "--lengths", "600", "--haystack", "{tmp}/nope"],
        ["nope"],
        "--haystack",
    ),
    Case("lbc-missing-data", ["eval", "longbench-chat", "--data", "{tmp}/nope"], ["nope"], "--data"),
    Case(
        "lbc-empty-folder",
        ["eval", "longbench-chat", "--data", "{tmp}/empty"],
        ["empty"],
        "test_cases.json",
        setup=empty_folder,
    ),
    Case(
        "lbc-wrong-columns",
        ["eval", "longbench-chat", "--data", "{tmp}/cases.jsonl"],
        ["cases.jsonl:1", "query"],
        "--on-error skip",
        setup=lambda tmp, run: jsonl(tmp / "cases.jsonl", [{"idx": 1, "prompt": "p"}]),
    ),
    Case(
        "lbc-model-unauthorised",
        [
            "eval",
            "longbench-chat",
            "--data",
            "{tmp}/lbc",
            "--model",
            "openai:m",
            "--model-base-url",
            "{unauth}",
            "--model-api-key-env",
            KEY_VAR,
        ],
        ["{unauth}", KEY_VAR, "--model-api-key-env"],
        "valid key",
        setup=chat_copy,
    ),
    Case("lb-unknown-task", ["eval", "longbench", "--data", "{tmp}", "--tasks", "trec"], ["trec"], "hotpotqa"),
    Case(
        "lb-empty-folder",
        ["eval", "longbench", "--data", "{tmp}/empty", "--tasks", "hotpotqa"],
        ["empty", "hotpotqa"],
        "--data",
        setup=empty_folder,
    ),
    Case(
        "agreement-missing-file",
        ["eval", "judge-agreement", "--few-shots", "{tmp}/nope.json", "--judge", "openai:j"],
        ["nope.json"],
        "few_shots.json",
    ),
    Case(
        "agreement-judge-without-backend",
        ["eval", "judge-agreement", "--few-shots", "{tmp}/few_shots.json", "--judge", "gpt-4"],
        ["gpt-4"],
        "openai:<model>",
        setup=few_shots,
    ),
    Case(
        "agreement-judge-closed-port",
        ["eval", "judge-agreement", "--few-shots", "{tmp}/few_shots.json", "--judge", "openai:j"]
        + ["--judge-base-url", "{closed}", "--progress", "false"],
        ["{closed}", "--judge-base-url"],
        "start the server",
        setup=few_shots,
    ),
    Case("ruler-unknown-task", ["eval", "ruler", "--tasks", "niah_single"], ["niah_single"], "niah_single_noise"),
    Case(
        "ruler-beyond-the-model",
        ["eval", "ruler", "--lengths", "2048,99999"],
        ["--lengths 99999", "8,192"],
        "--rope-scale",
    ),
    Case("lbv2-missing-data", ["eval", "longbench-v2", "--data", "{tmp}/nope.json"], ["nope.json"], "--data"),
    Case("heldout-missing-data", ["eval", "heldout", "--data", "{tmp}/nope.jsonl"], ["nope.jsonl"], "--data"),
    Case(
        "heldout-empty-file",
        ["eval", "heldout", "--data", "{tmp}/held.jsonl"],
        ["held.jsonl"],
        "--data",
        setup=lambda tmp, run: write(tmp / "held.jsonl", ""),
    ),
    # ---- config files, app, experiment
    Case("config-missing", ["data", "corpus", "--config", "{tmp}/nope.yaml"], ["nope.yaml"], "does not exist"),
    Case(
        "config-unknown-key",
        ["data", "corpus", "--config", "{tmp}/c.yaml"],
        ["c.yaml", "n_documents"],
        "known options",
        setup=lambda tmp, run: write(tmp / "c.yaml", "n_documents: 3\n"),
    ),
    Case(
        "config-invalid-yaml",
        ["data", "corpus", "--config", "{tmp}/bad.yaml"],
        ["bad.yaml:2", "not valid YAML"],
        "fix the file",
        setup=lambda tmp, run: write(tmp / "bad.yaml", "n_docs: 3\n  - oops: [\n"),
    ),
    Case(
        "app-port-in-use",
        ["app", "--runs", "{run}", "--port", "{busy_port}"],
        ["{busy_port}"],
        "--port",
        run_flag=False,
    ),
    Case(
        "ablation-unknown-arm",
        ["experiment", "ablation", "--arms", "pack+bogus", "--out", "{run}", "--workdir", "{run}/work"],
        ["pack+bogus"],
        "naive+token",
        run_flag=False,
    ),
]


@pytest.fixture(scope="module")
def servers():
    from longalign.models import load_tokenizer

    load_tokenizer(None)  # import transformers once, so that no case is timed with the first import
    unauth = FakeLLMServer(require_key="sk-the-right-one").start()
    nomodel = FakeLLMServer(models={"served-model"}).start()
    try:
        yield {
            "closed": f"http://127.0.0.1:{closed_port()}/v1",
            "unauth": unauth.base_url,
            "nomodel": nomodel.base_url,
            "busy_port": str(unauth.port),
        }
    finally:
        unauth.stop()
        nomodel.stop()


def message_lines(err: str) -> list[str]:
    """The lines of stderr that are not progress (INFO logs, progress bars)."""
    return [x for x in err.splitlines() if x.strip() and not LOG_LINE.match(x) and not PROGRESS_BAR.search(x)]


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def _fill(items: list[str], values: dict[str, str]) -> list[str]:
    return [x.format(**values) for x in items]


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, servers, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_VAR, raising=False)
    tmp, run, cwd = tmp_path / "in", tmp_path / "run", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a default path that escaped the run folder would land here
    if case.setup:
        case.setup(tmp, run)
    values = {**servers, "tmp": str(tmp), "run": str(run)}
    argv = _fill(case.argv, values) + (["--run", str(run)] if case.run_flag else [])
    before = {k: v for k, v in _files(tmp_path).items() if not k.startswith(str(run))}
    start = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert rc not in (0, None), f"exit code {rc}; stdout: {out}"
    assert elapsed < SECONDS, f"took {elapsed:.1f} s"
    assert "Traceback" not in out + err
    lines = message_lines(err)
    assert len(lines) == 1, "expected one line, got:\n" + "\n".join(lines)
    line = lines[0]
    for name in _fill(case.names, values):
        assert name in line, f"{name!r} not named in: {line}"
    assert case.fix in line, f"no fix {case.fix!r} in: {line}"
    after = {k: v for k, v in _files(tmp_path).items() if not k.startswith(str(run))}
    assert after == before, f"written outside the run folder: {sorted(set(after) - set(before))}"


SUBPROCESS_CASES = ["generate-closed-port", "corpus-line-without-text", "needle-beyond-the-model"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(case_id, servers, tmp_path):
    """The same refusals from a real ``longalign`` process: one line on stderr, no traceback."""
    case = next(c for c in CASES if c.id == case_id)
    tmp, run = tmp_path / "in", tmp_path / "run"
    tmp.mkdir()
    if case.setup:
        case.setup(tmp, run)
    values = {**servers, "tmp": str(tmp), "run": str(run)}
    argv = _fill(case.argv, values) + ["--run", str(run)]
    env = {k: v for k, v in os.environ.items() if k != KEY_VAR}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "longalign.cli", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1 and case.fix in lines[0], proc.stderr
    assert elapsed < 30, f"{elapsed:.1f} s"  # a fresh interpreter imports torch on a shared machine
