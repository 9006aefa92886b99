"""Self-Instruct: question parsing and validation, the per-document state machine, and the generation job
against a real HTTP fake server (failure injection, SIGKILL + resume) and, marked slow, the embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from longalign.data.selfinstruct import (
    TASK_TYPES,
    DocumentJob,
    GenerateConfig,
    answer_problem,
    answer_prompt,
    fit_document,
    generate_long_data,
    generator_from_env,
    parse_questions,
    question_problem,
    question_prompt,
    task_instruction,
    training_prompt,
    validate_questions,
)
from longalign.data.selfinstruct.relevance import RelevanceGate, document_terms
from longalign.llm import ChatResult, LLMUnavailableError
from longalign.rundir import RunDir, read_json, read_jsonl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUESTION_MARK_EN = "Now write five questions about the text above"
QUESTION_MARK_ZH = "现在请针对上面的文本写出五个问题"


# ------------------------------------------------------------------------------------------- parser


class TestParseQuestions:
    def test_colon_numbering(self):
        p = parse_questions("1: What is A?\n2: Why B?\n3: How C?\n4: When D?\n5: Who E?")
        assert p.questions == ["What is A?", "Why B?", "How C?", "When D?", "Who E?"]
        assert p.numbers == [1, 2, 3, 4, 5] and p.issues == [] and p.prose == []

    def test_mixed_numbering_styles(self):
        reply = "1. What is A?\n2) Why B?\nQ3: How C?\n**4.** When D?\n**5:** Who E?"
        assert parse_questions(reply).questions == ["What is A?", "Why B?", "How C?", "When D?", "Who E?"]

    def test_question_prefix_and_bold_text(self):
        reply = 'Question 1: What is A?\n**Q2:** **Why B?**\n3 - How C?\n### 4. "When D?"\n- 5. Who E?'
        assert parse_questions(reply).questions == ["What is A?", "Why B?", "How C?", "When D?", "Who E?"]

    def test_extra_prose_and_fewer_than_five_are_recorded(self):
        p = parse_questions("Sure! Here are questions:\n\n1: What is A?\n2: Why is B\nso slow?\n\nHope it helps.")
        assert p.questions == ["What is A?", "Why is B so slow?"]
        assert p.prose == ["Sure! Here are questions:", "Hope it helps."]
        assert "fewer than 5 questions (2)" in p.issues and "2 line(s) of extra text" in p.issues

    def test_more_than_five_keeps_first_five(self):
        p = parse_questions("\n".join(f"{i}: Question number {i} here?" for i in range(1, 8)))
        assert len(p.questions) == 5 and p.numbers == [1, 2, 3, 4, 5]
        assert "7 questions, kept the first 5" in p.issues

    def test_inline_numbering(self):
        p = parse_questions("1: What is A? 2: Why is B? 3: How does C work?")
        assert p.questions == ["What is A?", "Why is B?", "How does C work?"]
        assert "questions written on one line" in p.issues

    def test_number_on_its_own_line(self):
        assert parse_questions("1:\nWhat is A?\n2:\nWhy B?").questions == ["What is A?", "Why B?"]

    def test_chinese_numbering(self):
        p = parse_questions("问题1：这个模块的作用是什么？\n2、如何使用它？\n（3）为什么需要它？\n四、它有哪些限制？")
        assert p.questions == ["这个模块的作用是什么？", "如何使用它？", "为什么需要它？", "它有哪些限制？"]

    def test_unnumbered_question_lines_are_a_fallback(self):
        p = parse_questions("`How to contribute to NumPy?\nHow to write grant proposals?\nThanks for asking.`")
        assert p.questions == ["How to contribute to NumPy?", "How to write grant proposals?"]
        assert "questions without numbers" in p.issues and p.prose == ["Thanks for asking.`"]

    def test_prose_only_and_empty(self):
        p = parse_questions("In 2019 there were 3 releases.\n1.5 times more users came.")
        assert p.questions == [] and len(p.prose) == 2
        assert parse_questions("").questions == []

    def test_out_of_order_numbering_is_an_issue_not_an_error(self):
        p = parse_questions("1: What is A?\n1: What is B?\n3: What is C?")
        assert p.questions == ["What is A?", "What is B?", "What is C?"]
        assert any(i.startswith("numbering [1, 1, 3]") for i in p.issues)


# --------------------------------------------------------------------------------------- validation


class TestValidation:
    INSTR = task_instruction("general", "en")

    def reason(self, q, accepted=(), lang="en", instr=None):
        return question_problem(q, lang=lang, instruction=instr or self.INSTR, accepted=list(accepted))

    @pytest.mark.parametrize(
        "q",
        ["<question>", "1: <question>", "<Your question here>", "{question}", "Question", "[question]", "...", "问题"],
    )
    def test_template_echoes(self, q):
        assert self.reason(q) in ("template", "too_short")

    def test_instruction_echo(self):
        assert self.reason("Now write five questions about the text above.") == "instruction_echo"
        assert self.reason("Put each question on its own line?") == "instruction_echo"
        assert (
            self.reason(
                "Each question must be answerable from the text, make sense on its own, and differ from the others."
            )
            == "instruction_echo"
        )
        assert (
            self.reason(
                "Ask questions that request specific information stated in the text?",
                instr=task_instruction("extraction", "en"),
            )
            == "instruction_echo"
        )

    def test_duplicates(self):
        assert self.reason("What does the cache store?", ["What does the cache store?"]) == "duplicate"
        assert self.reason("What does the cache store ?", ["what does the cache store?"]) == "duplicate"
        assert self.reason("What does the cache store here?", ["What does the cache store?"]) == "near_duplicate"
        assert self.reason("How is the cache invalidated?", ["What does the cache store?"]) is None

    def test_lengths(self):
        assert self.reason("Why?") == "too_short"
        assert self.reason("What is " + "very " * 100 + "long?") == "too_long"
        assert self.reason("这是什么？", lang="zh") == "too_short"
        assert self.reason("这个模块的主要作用是什么？", lang="zh", instr=task_instruction("general", "zh")) is None

    def test_statement_is_not_a_question(self):
        assert self.reason("The module defines a cache class.") == "not_a_question"
        assert self.reason("Explain how the cache class evicts entries.") is None

    def test_validate_keeps_order_and_records_reasons(self):
        acc, rej = validate_questions(
            ["What is A about?", "<question>", "What is A about?", "How does B work?"],
            lang="en",
            instruction=self.INSTR,
        )
        assert acc == ["What is A about?", "How does B work?"]
        assert rej == [
            {"text": "<question>", "reason": "template"},
            {"text": "What is A about?", "reason": "duplicate"},
        ]

    def test_answer_problems(self):
        assert answer_problem("", "q") == "empty"
        assert answer_problem("  <answer> ", "q") == "template"
        assert answer_problem("What is A?", "What is A?") == "echo"
        assert answer_problem("A is a cache.", "What is A?") is None


class TestPrompts:
    def test_every_task_type_has_en_and_zh_wording(self):
        texts = {task_instruction(t, lang) for t in TASK_TYPES for lang in ("en", "zh")}
        assert len(texts) == 8
        assert all(QUESTION_MARK_EN in task_instruction(t, "en") for t in TASK_TYPES)
        assert all(QUESTION_MARK_ZH in task_instruction(t, "zh") for t in TASK_TYPES)
        with pytest.raises(ValueError, match="'general'"):
            task_instruction("poetry")

    def test_prompt_layout(self):
        p = question_prompt("DOC", "summary", "en")
        assert p.index("DOC") < p.index(QUESTION_MARK_EN)
        assert "previous attempt" not in p
        retry = question_prompt("DOC", "summary", "en", ["duplicate", "template"])
        assert "previous attempt" in retry and "repeated questions" in retry
        assert answer_prompt("DOC", "Why?", "zh").endswith("问题：Why?")
        assert training_prompt("DOC", "Why?") == "DOC\n\nWhy?"

    def test_fit_document_cuts_head_and_tail(self):
        class CharTok:
            def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
                return {"input_ids": [ord(c) for c in text]}

            def decode(self, ids):
                return "".join(chr(i) for i in ids)

        text = "A" * 60 + "B" * 60
        assert fit_document(text, CharTok(), 200) == (text, False)
        cut, was_cut = fit_document(text, CharTok(), 58)
        assert was_cut and cut.startswith("A" * 30) and cut.endswith("B" * 20) and "[...]" in cut

    def test_the_prompt_tokenizer_loads_only_for_a_document_that_may_need_cutting(self, monkeypatch):
        """An openai: generator on short documents never loads a tokenizer (so a wrong endpoint is reported
        at once); a long document loads it and is cut as fit_document cuts it."""
        from longalign.data.selfinstruct.job import _PromptFitter
        from longalign.data.selfinstruct.prompts import instruction_overhead

        class CharTok:
            def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
                return {"input_ids": [ord(c) for c in text]}

            def decode(self, ids):
                return "".join(chr(i) for i in ids)

        loads = []
        monkeypatch.setattr("longalign.models.load_tokenizer", lambda spec: loads.append(spec) or CharTok())
        fitter = _PromptFitter(GenerateConfig(llm="openai:m", max_prompt_tokens=3000))
        short = "A" * (3000 - instruction_overhead(None))  # fits whatever the tokenizer
        assert fitter.fit(short) == (short, False) and loads == []
        long = "A" * 3000 + "B" * 3000
        budget = max(64, 3000 - instruction_overhead(CharTok()))
        assert fitter.fit(long) == fit_document(long, CharTok(), budget) and loads == [None]
        assert fitter.fit(long)[1] is True and loads == [None]  # loaded once


# ----------------------------------------------------------------------------------- state machine


def _result(text, finish="stop"):
    return ChatResult(text=text, prompt_tokens=10, completion_tokens=5, model="m", finish_reason=finish)


GOOD = (
    "1: What is the cache for?\n2: How are entries evicted?\n3: Which options exist?\n"
    "4: Why is locking needed?\n5: When is the file written?"
)


class TestDocumentJob:
    DOC = {"id": "d1", "source": "pydoc", "lang": "en", "text": "A long text about caches.", "n_tokens": 6}

    def job(self, **kw):
        cfg = GenerateConfig(**kw)
        return DocumentJob(self.DOC, cfg, model="openai:m", prompt_doc=self.DOC["text"], prompt_truncated=False)

    def test_happy_path_record(self):
        j = self.job()
        msgs, params = j.next_request()
        assert QUESTION_MARK_EN in msgs[0]["content"] and params.max_tokens == 320
        j.feed(_result(GOOD))
        assert j.stage == "answer" and len(j.questions) == 5
        msgs, params = j.next_request()
        assert msgs[0]["content"].endswith("Question: " + j.question)
        j.feed(_result("Entries are evicted when the cache is full."))
        rec = j.record()
        assert j.status == "done"
        assert rec["messages"][0]["content"] == self.DOC["text"] + "\n\n" + rec["question"]
        assert rec["messages"][1] == {"role": "assistant", "content": "Entries are evicted when the cache is full."}
        assert rec["question"] in rec["questions"] and rec["task_type"] in TASK_TYPES
        assert rec["doc_id"] == "d1" and rec["source"] == "pydoc" and rec["lang"] == "en"
        assert rec["model"] == "openai:m" and rec["rejected"] == []

    def test_choice_is_seeded_per_document(self):
        picks = set()
        for _ in range(3):
            j = self.job()
            j.next_request()
            j.feed(_result(GOOD))
            j.next_request()
            picks.add((j.task_type, j.question))
        assert len(picks) == 1

    def test_bad_attempt_is_retried_with_new_seed_then_new_task_type(self):
        j = self.job()
        seeds, types, prompts = [], [], []
        for reply in ("1: <question>\n2: <question>", "1: What is the cache for?\n2: What is the cache for?\n3: Hi"):
            msgs, params = j.next_request()
            seeds.append(params.seed)
            types.append(j.task_type)
            prompts.append(msgs[0]["content"])
            j.feed(_result(reply))
        msgs, params = j.next_request()
        seeds.append(params.seed)
        types.append(j.task_type)
        assert len(set(seeds)) == 3
        assert types[0] == types[1] and types[2] != types[1]
        assert "template slots" in msgs[0]["content"] or "repeated questions" in msgs[0]["content"]
        j.feed(_result(GOOD))
        j.next_request()
        j.feed(_result("Because two threads write."))
        rec = j.record()
        reasons = Counter(r["reason"] for r in rec["rejected"] if not r["reason"].startswith("attempt"))
        assert reasons == {"template": 2, "duplicate": 1, "too_short": 1}
        assert sum(r["reason"].startswith("attempt rejected") for r in rec["rejected"]) == 2
        assert rec["generation"]["question_attempts"] == 3

    def test_fails_after_max_attempts(self):
        j = self.job(max_question_attempts=2)
        for _ in range(2):
            j.next_request()
            j.feed(_result("I cannot do that."))
        assert j.status == "failed" and "no usable questions after 2 attempts" in j.failure()["reason"]

    def test_request_error_resends_the_same_request_then_fails(self):
        j = self.job(max_request_failures=1)
        first = j.next_request()
        j.feed(LLMUnavailableError("gave up"))
        assert j.status == "active" and j.next_request() is first
        j.feed(LLMUnavailableError("gave up"))
        assert j.status == "failed" and "request failed" in j.error

    def test_empty_answer_tries_another_question(self):
        j = self.job()
        j.next_request()
        j.feed(_result(GOOD))
        j.next_request()
        q1 = j.question
        j.feed(_result("   "))
        _, params = j.next_request()
        assert j.question != q1 and j.status == "active"
        j.feed(_result("An answer.", finish="length"))
        rec = j.record()
        assert rec["rejected"][-1] == {
            "stage": "answer",
            "attempt": 0,
            "question": q1,
            "text": "   ",
            "reason": "empty",
        }
        assert rec["generation"]["answer_finish_reason"] == "length"


# --------------------------------------------------------------------------------- fake-server jobs

TOPICS = ["caching", "parsing", "logging", "hashing", "sorting", "queues", "sockets", "threads", "codecs", "pickling"]


def si_responder(req: dict) -> str:
    """Questions or an answer depending on the prompt; blocks (then abandons the request) while the file named
    by ``SI_GATE_FILE`` exists, so a test can freeze the server's successes before killing a client."""
    gate = os.environ.get("SI_GATE_FILE")
    if gate and os.path.exists(gate):
        while os.path.exists(gate):
            time.sleep(0.01)
        raise RuntimeError("request abandoned while the gate was closed")
    text = next(m["content"] for m in reversed(req["messages"]) if m["role"] == "user")
    topic = text.split("Document about ", 1)[-1].split(".", 1)[0] if "Document about " in text else "the text"
    if QUESTION_MARK_EN in text:
        return (
            f"Here are the questions.\n1: What is the main purpose of {topic}?\n"
            f"2: How does the text describe the history of {topic}?\n3: Which examples of {topic} are given?\n"
            f"4: Why does the author consider {topic} important?\n5: What limitations of {topic} are mentioned?"
        )
    return f"The text explains {topic} with several examples and notes its limits."


def _write_corpus(run: RunDir, n: int) -> list[str]:
    docs = []
    for i in range(n):
        topic = f"{TOPICS[i % len(TOPICS)]} {i}"
        body = f"Document about {topic}. " + " ".join(
            f"Sentence {k} discusses {topic} in some detail." for k in range(20)
        )
        docs.append({"id": f"doc-{i:03d}", "source": "test", "lang": "en", "n_tokens": len(body.split()), "text": body})
    run.data.mkdir(parents=True, exist_ok=True)
    run.corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return [d["id"] for d in docs]


FAST = dict(
    llm="openai:fake-model",
    max_in_flight=8,
    timeout=2.0,
    max_retries=8,
    backoff_base=0.02,
    backoff_max=0.2,
    max_prompt_tokens=0,
    question_max_tokens=200,
    answer_max_tokens=100,
    price_in_per_mtok=1.0,
    price_out_per_mtok=2.0,
    window=64,
    # the fake server's questions differ only in the topic's number, so across 50 documents most are near
    # duplicates of another record's; the relevance gate has its own tests (test_relevance_gate.py)
    relevance_gate=False,
)


def _check_records(run: RunDir, ids: list[str]) -> list[dict]:
    recs = read_jsonl(run.long, strict=True)
    assert sorted(r["doc_id"] for r in recs) == sorted(ids)
    for r in recs:
        assert r["question"] in r["questions"] and len(r["questions"]) == 5
        assert r["messages"][0]["content"].endswith("\n\n" + r["question"])
        assert r["messages"][1]["content"].startswith("The text explains")
        assert r["task_type"] in TASK_TYPES and r["lang"] == "en" and r["model"] == "openai:fake-model"
    return recs


def test_generate_with_30_percent_failures(fake_llm, tmp_path):
    fake_llm.set_responder(si_responder)
    fake_llm.fail_rate = 0.3
    fake_llm.delay_s = 2.5
    run = RunDir(tmp_path / "run")
    ids = _write_corpus(run, 50)
    cfg = GenerateConfig(base_url=fake_llm.base_url, **FAST)
    start = time.monotonic()
    summary = generate_long_data(cfg, run, progress=False)
    assert summary.written == 50 and summary.failed == 0 and summary.records_total == 50
    _check_records(run, ids)
    outcomes = Counter(r["outcome"] for r in fake_llm.requests)
    assert outcomes["ok"] >= 100 and outcomes["429"] + outcomes["500"] + outcomes["timeout"] > 10
    assert 1 < fake_llm.max_in_flight <= 8
    assert summary.usage["requests"] == 100 and summary.usage["retries"] > 10
    assert summary.usage["cost"] == pytest.approx(
        (summary.usage["prompt_tokens"] * 1.0 + summary.usage["completion_tokens"] * 2.0) / 1e6
    )
    assert time.monotonic() - start < 45
    # a second run finds everything done and sends nothing
    n_requests = len(fake_llm.requests)
    again = generate_long_data(cfg, run, progress=False)
    assert again.written == 0 and again.already_done == 50 and len(fake_llm.requests) == n_requests


def test_failing_document_is_logged_and_job_continues(fake_llm, tmp_path):
    run = RunDir(tmp_path / "run")
    ids = _write_corpus(run, 3)

    def responder(req):
        text = req["messages"][-1]["content"]
        if "Document about parsing 1." in text:
            return "I would rather not."
        return si_responder(req)

    fake_llm.set_responder(responder)
    cfg = GenerateConfig(base_url=fake_llm.base_url, **{**FAST, "max_question_attempts": 3})
    summary = generate_long_data(cfg, run, progress=False)
    assert summary.written == 2 and summary.failed == 1 and summary.failed_ids == ["doc-001"]
    failed = read_jsonl(run.data / "failed.jsonl")
    assert failed[0]["doc_id"] == "doc-001" and "no usable questions after 3 attempts" in failed[0]["reason"]
    assert len(failed[0]["rejected"]) == 3
    assert sorted(r["doc_id"] for r in read_jsonl(run.long)) == [ids[0], ids[2]]


def test_generate_cli_sigkill_and_resume(tmp_path):
    """Job and server are separate processes; the job is SIGKILLed mid-run, the re-run completes exactly."""
    sys.path.insert(0, str(HERE))
    from fake_llm_server import start_server_process

    run = RunDir(tmp_path / "run")
    ids = _write_corpus(run, 50)
    gate = tmp_path / "gate"
    server_log = tmp_path / "server.jsonl"
    env = {**os.environ, "SI_GATE_FILE": str(gate), "PYTHONUNBUFFERED": "1"}
    old_env = os.environ.get("SI_GATE_FILE")
    os.environ["SI_GATE_FILE"] = str(gate)  # inherited by the server process
    try:
        server, base_url = start_server_process(
            tmp_path,
            fail_rate=0.3,
            responder=f"{__file__}:si_responder",
            latency=0.05,
            delay=2.5,
            seed=3,
            log_path=server_log,
        )
    finally:
        if old_env is None:
            os.environ.pop("SI_GATE_FILE", None)
        else:
            os.environ["SI_GATE_FILE"] = old_env
    cmd = [
        sys.executable,
        "-m",
        "longalign.cli",
        "data",
        "generate",
        "--run",
        str(run.root),
        "--llm",
        "openai:fake-model",
        "--base-url",
        base_url,
        "--max-in-flight",
        "4",
        "--timeout",
        "2",
        "--max-retries",
        "8",
        "--backoff-base",
        "0.02",
        "--backoff-max",
        "0.2",
        "--max-prompt-tokens",
        "0",
        "--answer-max-tokens",
        "100",
        "--window",
        "64",
        "--relevance-gate",
        "false",
        "--no-progress",
    ]
    try:
        start = time.monotonic()
        job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while time.monotonic() - start < 60:
            n = len(read_jsonl(run.long))
            if n >= 8 or job.poll() is not None:
                break
            time.sleep(0.02)
        gate.write_text("closed")  # the server stops answering; what it already answered reaches the job
        time.sleep(1.0)
        assert job.poll() is None, "the job finished before it could be killed: " + job.stdout.read().decode()
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        gate.unlink()
        n_before = len(read_jsonl(run.long))
        assert 8 <= n_before < 50
        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "50 records" in rerun.stdout and f"{n_before} already there" in rerun.stdout
        assert time.monotonic() - start < 90  # ~20-40 s on a busy 2-core machine
    finally:
        server.terminate()
        server.wait(10)
    recs = _check_records(run, ids)
    assert len(recs) == 50 and len({r["doc_id"] for r in recs}) == 50
    # no request (same messages) reached the server again after it had been answered successfully
    log_entries = [json.loads(x) for x in server_log.read_text().splitlines()]
    answered: set[str] = set()
    for e in log_entries:
        assert e["key"] not in answered, f"request {e['key'][:12]} sent again after a success"
        if e["outcome"] == "ok":
            answered.add(e["key"])
    assert len(answered) == 100
    assert sum(e["outcome"] != "ok" for e in log_entries) > 10


# --------------------------------------------------------------------------------------- embedded model


@pytest.mark.slow
def test_generate_with_embedded_model_on_builtin_documents(tmp_path):
    run = tmp_path / "run"
    # one thread: on a shared, oversubscribed machine two OpenMP threads were ~10x slower than one
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    corpus = subprocess.run(
        [
            sys.executable,
            "-m",
            "longalign.cli",
            "data",
            "corpus",
            "--run",
            str(run),
            "--n-docs",
            "3",
            "--min-tokens",
            "900",
            "--max-tokens",
            "1600",
            "--builtin-sources",
            "pydoc,package-docs",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert corpus.returncode == 0, corpus.stderr
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "longalign.cli",
            "data",
            "generate",
            "--run",
            str(run),
            "--question-max-tokens",
            "200",
            "--answer-max-tokens",
            "160",
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    # the relevance gate is on: the 135M generator often asks about something else entirely ("How can we make
    # our web applications more accessible to the elderly?" for multiprocess), so a document may fail (exit 1)
    assert gen.returncode in (0, 1), gen.stdout + gen.stderr
    docs = {d["id"]: d for d in read_jsonl(RunDir(run).corpus)}
    recs = read_jsonl(RunDir(run).long, strict=True)
    failed = {f["doc_id"] for f in read_jsonl(RunDir(run).failed)}
    assert {r["doc_id"] for r in recs} | failed == set(docs) and (gen.returncode == 1) == bool(failed)
    gate = RelevanceGate()
    for r in recs:
        doc = docs[r["doc_id"]]
        assert r["messages"][0] == {"role": "user", "content": doc["text"] + "\n\n" + r["question"]}
        assert r["messages"][1]["role"] == "assistant" and r["messages"][1]["content"].strip()
        assert r["model"] == "local:smollm2" and r["task_type"] in TASK_TYPES
        assert 3 <= len(r["questions"]) <= 5 and r["question"] in r["questions"]
        instr = task_instruction(r["task_type"], r["lang"])
        terms = document_terms(doc["text"])
        for k, q in enumerate(r["questions"]):
            assert question_problem(q, lang=r["lang"], instruction=instr, accepted=r["questions"][:k]) is None
            assert gate.question_problem(q, terms) is None
        assert gate.answer_problem(r["messages"][1]["content"], r["question"], terms) is None
    quality = read_json(RunDir(run).quality)
    assert quality["records"] == len(recs) and quality["failed_documents"] == len(failed)
    assert quality["questions"]["accepted"] == sum(len(r["questions"]) for r in recs)
    assert "questions:" in gen.stdout and "answers:" in gen.stdout


def test_generator_from_env():
    assert generator_from_env({}) == ("local:smollm2", None)
    assert generator_from_env({"OPENAI_MODEL": "m"}) == ("local:smollm2", None)  # no endpoint: stay local
    url = "http://127.0.0.1:8000/v1"
    assert generator_from_env({"OPENAI_BASE_URL": url}) == ("openai:gpt-4o-mini", url)
    assert generator_from_env({"OPENAI_BASE_URL": url, "OPENAI_MODEL": "qwen"}) == ("openai:qwen", url)


# ------------------------------------------------------------------------------- local-model order


class _OneAtATimeClient:
    """A client that, like a local model, answers one request at a time; records the order of requests."""

    model = "local:fake"
    concurrency = 1

    def __init__(self):
        self.order = []

    def chat_many(self, requests):
        for i, (messages, _params) in enumerate(requests):
            text = messages[0]["content"]
            topic = text.split("Document about ", 1)[1].split(".", 1)[0]
            kind = "answer" if "\nQuestion: " in text else "questions"
            self.order.append((topic, kind))
            yield i, _result(si_responder({"messages": messages}))


def test_local_model_finishes_each_document_before_the_next(tmp_path):
    """Window 1 for a one-at-a-time client: a document's answer request directly follows its question request,
    so the local model's prefix cache still holds the document when the answer is asked."""
    run = RunDir(tmp_path)
    _write_corpus(run, 3)
    client = _OneAtATimeClient()
    cfg = GenerateConfig(llm="local:fake", max_prompt_tokens=0, relevance_gate=False)
    summary = generate_long_data(cfg, run, client=client, progress=False)
    assert summary.written == 3
    assert client.order == [(t, k) for t in ("caching 0", "parsing 1", "logging 2") for k in ("questions", "answer")]


def test_prefix_reuse_reaches_the_local_backend(tmp_path):
    from longalign.data.selfinstruct import make_generator_client

    for reuse in (True, False):
        client = make_generator_client(GenerateConfig(llm="local:smollm2", prefix_reuse=reuse), RunDir(tmp_path))
        assert client.backend.prefix_reuse is reuse and client.concurrency == 1
        client.close()
