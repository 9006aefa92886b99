"""The relevance gate of Self-Instruct: real questions and answers the embedded generator wrote, judged against
their documents; its place in the per-document job; and the counts it leaves in data/quality.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longalign.data.selfinstruct import DocumentJob, GenerateConfig, generate_long_data
from longalign.data.selfinstruct.relevance import (
    RelevanceGate,
    answer_overlap,
    content_terms,
    document_terms,
    quality_lines,
    quality_report,
    question_overlap,
)
from longalign.llm import ChatResult
from longalign.rundir import QUALITY_FILE, RunDir, read_json, read_jsonl

# A short excerpt in the shape of CPython's Lib/compileall.py (docstring, imports, the directory walk).
COMPILEALL = '''"""Module/script to byte-compile all .py files to .pyc files.

When called as a script with arguments, this compiles the directories
given as arguments recursively; the -l option prevents it from
recursing into directories.

Without arguments, it compiles all modules on sys.path, without
recursing into subdirectories.  (Even though it should do so for
packages -- for now, you'll have to deal with packages separately.)

See module py_compile for details of the actual byte-compilation.
"""
import os
import sys
import importlib.util
import py_compile
import struct
import filecmp

from functools import partial
from pathlib import Path

__all__ = ["compile_dir", "compile_file", "compile_path"]

def _walk_dir(dir, maxlevels, quiet=0):
    if quiet < 2 and isinstance(dir, os.PathLike):
        dir = os.fspath(dir)
    if not quiet:
        print('Listing {!r}...'.format(dir))
    try:
        names = os.listdir(dir)
    except OSError:
        if quiet < 2:
            print("Can't list {!r}".format(dir))
        names = []
    names.sort()
    for name in names:
        if name == '__pycache__':
            continue
        fullname = os.path.join(dir, name)
        if not os.path.isdir(fullname):
            yield fullname
        elif (maxlevels > 0 and name != os.curdir and name != os.pardir and
              os.path.isdir(fullname) and not os.path.islink(fullname)):
            yield from _walk_dir(fullname, maxlevels=maxlevels - 1,
                                 quiet=quiet)

def compile_dir(dir, maxlevels=None, ddir=None, force=False,
                rx=None, quiet=0, legacy=False, optimize=-1, workers=1,
                invalidation_mode=None, *, stripdir=None,
                prependdir=None, limit_sl_dest=None, hardlink_dupes=False):
    """Byte-compile all modules in the given directory tree.

    Arguments (only dir is required):

    dir:       the directory to byte-compile
    maxlevels: maximum recursion level (default `sys.getrecursionlimit()`)
    ddir:      the directory that will be prepended to the path to the
               file as it is compiled into each byte-code file.
    force:     if True, force compilation, even if timestamps are up-to-date
    quiet:     full output with False or 0, errors only with 1,
               no output with 2
    legacy:    if True, produce legacy pyc paths instead of PEP 3147 paths
    optimize:  int or list of optimization levels or -1 for level of
               the interpreter. Multiple levels leads to multiple compiled
               files each with one optimization level.
    workers:   maximum number of parallel workers
    """
'''

# Replies of the embedded SmolLM2-135M-Instruct for compileall.py, as quoted in its generated records.
OFF_TOPIC_QUESTION = "How to check if a list is empty in Python?"
WHILE_LOOP_ANSWER = (
    "To check if a list is empty in Python, you can use a while loop. A while loop repeats a block of code as "
    "long as its condition is true, for example `while len(items) > 0: items.pop()`. When the condition becomes "
    "false the loop stops, so the loop body never runs for an empty list."
)
ON_TOPIC_QUESTIONS = [
    "How does compile_dir compile all the files in a directory and its subdirectories?",
    "What does the maxlevels argument of compile_dir control?",
    "What happens to the __pycache__ directory when the directory tree is walked?",
    "What does force=True do when the timestamps of the .pyc files are up-to-date?",
]
GROUNDED_ANSWER = (
    "compile_dir walks the directory tree with _walk_dir, which lists the names in the directory, skips "
    "__pycache__ and recurses into subdirectories until maxlevels reaches zero; each file found is byte-compiled "
    "into a .pyc file, in parallel when workers is more than one."
)


@pytest.fixture(scope="module")
def doc_terms():
    return document_terms(COMPILEALL)


def test_content_terms_drop_stop_and_generic_words_and_stem():
    assert content_terms("What is the main purpose of the text?") == set()  # nothing to judge: passes
    terms = content_terms("Which directories does compile_dir compile?")
    assert {"direct", "compil"} <= terms and "which" not in terms
    assert content_terms("caching") == content_terms("caches") == content_terms("cache")
    assert {"列表", "为空"} <= content_terms("如何判断一个列表是否为空？")


def test_off_topic_question_and_while_loop_answer_are_rejected(doc_terms):
    gate = RelevanceGate()
    q_score = question_overlap(OFF_TOPIC_QUESTION, doc_terms)
    a_score = answer_overlap(WHILE_LOOP_ANSWER, OFF_TOPIC_QUESTION, doc_terms)
    assert q_score is not None and q_score < gate.min_question_overlap
    assert gate.question_problem(OFF_TOPIC_QUESTION, doc_terms) == "off_topic"
    # the answer is judged against the document and its question: the while-loop prose is in neither
    assert a_score is not None and a_score < gate.min_answer_overlap
    assert gate.answer_problem(WHILE_LOOP_ANSWER, OFF_TOPIC_QUESTION, doc_terms) == "ungrounded"


@pytest.mark.parametrize("question", ON_TOPIC_QUESTIONS)
def test_questions_about_compiling_files_and_directories_are_accepted(question, doc_terms):
    assert question_overlap(question, doc_terms) >= RelevanceGate().min_question_overlap
    assert RelevanceGate().question_problem(question, doc_terms) is None


def test_grounded_answer_is_accepted(doc_terms):
    assert RelevanceGate().answer_problem(GROUNDED_ANSWER, ON_TOPIC_QUESTIONS[0], doc_terms) is None


def test_thresholds_of_zero_switch_a_check_off(doc_terms):
    gate = RelevanceGate(min_question_overlap=0, min_answer_overlap=0)
    assert gate.question_problem(OFF_TOPIC_QUESTION, doc_terms) is None
    assert gate.answer_problem(WHILE_LOOP_ANSWER, OFF_TOPIC_QUESTION, doc_terms) is None
    with pytest.raises(ValueError, match="min_question_overlap=1.5"):
        RelevanceGate(min_question_overlap=1.5)


def test_chinese_questions_use_character_pairs():
    doc = document_terms("本模块把目录中的所有源文件编译成字节码文件，并且可以递归进入子目录。")
    gate = RelevanceGate()
    assert gate.question_problem("这个模块如何把目录中的源文件编译成字节码？", doc) is None
    assert gate.question_problem("如何判断一个列表是否为空？", doc) == "off_topic"


def test_near_duplicate_of_an_earlier_record_is_rejected():
    gate = RelevanceGate()
    earlier = ["What does the maxlevels argument of compile_dir control?"]
    assert gate.duplicate_problem("What does the maxlevels argument of compile_dir control ?", earlier)
    assert gate.duplicate_problem("what does the maxlevels argument of compile_dir controls?", earlier)
    assert gate.duplicate_problem("What does the quiet argument of compile_file print?", earlier) is None


# ------------------------------------------------------------------------------------- in the job


def _result(text):
    return ChatResult(text=text, prompt_tokens=10, completion_tokens=5, model="m", finish_reason="stop")


DOC = {"id": "stdlib:compileall.py", "source": "stdlib", "lang": "en", "text": COMPILEALL, "n_tokens": 700}
REPLY = "\n".join(f"{i + 1}: {q}" for i, q in enumerate([OFF_TOPIC_QUESTION, *ON_TOPIC_QUESTIONS]))


def test_job_drops_the_off_topic_question_and_retries_an_ungrounded_answer():
    cfg = GenerateConfig(llm="openai:m")
    job = DocumentJob(DOC, cfg, model="openai:m", prompt_doc=COMPILEALL, prompt_truncated=False, gate=RelevanceGate())
    job.next_request()
    job.feed(_result(REPLY))
    assert job.stage == "answer" and job.questions == ON_TOPIC_QUESTIONS
    job.next_request()
    first = job.question
    job.feed(_result(WHILE_LOOP_ANSWER))
    assert job.status == "active"
    job.next_request()
    assert job.question != first
    job.feed(_result(GROUNDED_ANSWER))
    rec = job.record()
    reasons = [(r["stage"], r["reason"]) for r in rec["rejected"]]
    assert reasons == [("questions", "off_topic"), ("answer", "ungrounded")]


def test_without_the_gate_the_quoted_record_would_pass():
    cfg = GenerateConfig(llm="openai:m", relevance_gate=False)
    job = DocumentJob(DOC, cfg, model="openai:m", prompt_doc=COMPILEALL, prompt_truncated=False, gate=None)
    job.next_request()
    job.feed(_result(REPLY))
    assert OFF_TOPIC_QUESTION in job.questions
    job.question = OFF_TOPIC_QUESTION
    job.remaining.remove(OFF_TOPIC_QUESTION)
    job.next_request()
    job.feed(_result(WHILE_LOOP_ANSWER))
    assert job.status == "done"


class ScriptedClient:
    """Answers in order: question replies for question prompts, answers for answer prompts."""

    model = "scripted"

    def __init__(self, questions: list[str], answers: list[str]):
        self.questions, self.answers = list(questions), list(answers)

    def chat_many(self, requests):
        for i, (messages, _params) in enumerate(requests):
            text = messages[0]["content"]
            yield i, _result(self.answers.pop(0) if "\nQuestion: " in text else self.questions.pop(0))


def test_quality_json_counts_rejections_by_reason(tmp_path):
    run = RunDir(tmp_path)
    other = dict(DOC, id="stdlib:compileall-copy.py")
    # second document: the same five questions again, so the chosen one repeats the first record's
    client = ScriptedClient([REPLY, REPLY], [WHILE_LOOP_ANSWER, GROUNDED_ANSWER, GROUNDED_ANSWER])
    cfg = GenerateConfig(llm="openai:m", max_prompt_tokens=0, window=1)
    summary = generate_long_data(cfg, run, client=client, docs=[DOC, other], progress=False)
    assert summary.written == 2 and summary.failed == 0
    quality = read_json(run.data / QUALITY_FILE)
    assert quality == summary.quality
    assert quality["records"] == 2 and quality["failed_documents"] == 0
    assert quality["questions"]["rejected"] == {"duplicate_across_records": 1, "off_topic": 2}
    assert quality["questions"]["accepted"] == 4 + 3 and quality["questions"]["checked"] == 10
    assert quality["answers"] == {"checked": 3, "accepted": 2, "rejected": {"ungrounded": 1}}
    assert quality["gate"]["min_question_overlap"] == cfg.min_question_overlap
    recs = read_jsonl(run.long)
    assert recs[0]["question"] != recs[1]["question"]
    text = "\n".join(summary.lines())
    assert "off_topic 2" in text and "ungrounded 1" in text and QUALITY_FILE in text


def test_quality_json_with_the_gate_off(tmp_path):
    run = RunDir(tmp_path)
    client = ScriptedClient([REPLY], [WHILE_LOOP_ANSWER])
    cfg = GenerateConfig(llm="openai:m", max_prompt_tokens=0, relevance_gate=False)
    generate_long_data(cfg, run, client=client, docs=[DOC], progress=False)
    quality = json.loads(Path(run.quality).read_text())
    assert quality["gate"] is None and quality["questions"]["rejected"] == {} and quality["answers"]["rejected"] == {}
    assert "relevance gate off" in quality_lines(quality)[0]


def test_quality_report_counts_only_the_latest_failure_of_documents_without_a_record():
    records = [{"doc_id": "a", "questions": ["q1", "q2", "q3"], "rejected": [{"stage": "answer", "reason": "empty"}]}]
    failures = [
        {"doc_id": "a", "rejected": [{"stage": "questions", "level": "question", "reason": "template"}]},
        {"doc_id": "b", "rejected": [{"stage": "questions", "level": "question", "reason": "off_topic"}] * 3},
        {"doc_id": "b", "rejected": [{"stage": "questions", "level": "question", "reason": "off_topic"}]},
    ]
    q = quality_report(records, failures, gate=RelevanceGate())
    assert q["failed_documents"] == 1
    assert q["questions"]["rejected"] == {"off_topic": 1}
    assert q["answers"]["rejected"] == {"empty": 1}


def test_the_quoted_record_is_rejected_against_the_real_compileall_module():
    import compileall

    doc = document_terms(Path(compileall.__file__).read_text(encoding="utf-8"))
    gate = RelevanceGate()
    assert gate.question_problem(OFF_TOPIC_QUESTION, doc) == "off_topic"
    assert gate.answer_problem(WHILE_LOOP_ANSWER, OFF_TOPIC_QUESTION, doc) == "ungrounded"
    assert all(gate.question_problem(q, doc) is None for q in ON_TOPIC_QUESTIONS)


def test_command_line_sets_and_switches_off_the_gate(capsys):
    from longalign.cli import build_parser
    from longalign.config import build_config
    from longalign.data.selfinstruct.job import gate_of

    parse = build_parser().parse_args
    cfg = build_config(GenerateConfig, parse(["data", "generate", "--min-question-overlap", "0.6"]))
    assert gate_of(cfg).min_question_overlap == 0.6 and gate_of(cfg).min_answer_overlap == cfg.min_answer_overlap
    assert gate_of(build_config(GenerateConfig, parse(["data", "generate", "--relevance-gate", "false"]))) is None
    assert gate_of(build_config(GenerateConfig, parse(["data", "generate"]))) == RelevanceGate()
    with pytest.raises(ValueError, match="min_question_overlap"):
        build_config(GenerateConfig, parse(["data", "generate", "--min-question-overlap", "2"]))


def test_lengths_view_tables_quality_json(tmp_path):
    from longalign.views import lengths, readers

    run = RunDir(tmp_path)
    assert readers.load_quality(run) == {} and lengths.quality_headline({}) == []
    client = ScriptedClient([REPLY], [WHILE_LOOP_ANSWER, GROUNDED_ANSWER])
    generate_long_data(GenerateConfig(llm="openai:m", max_prompt_tokens=0), run, client=client, docs=[DOC])
    quality = readers.load_quality(run)
    table = lengths.quality_table(quality)
    assert table.to_dict("records") == [
        {"stage": "questions", "reason": "off_topic", "rejected": 1, "share": 1 / 5},
        {"stage": "answers", "reason": "ungrounded", "rejected": 1, "share": 1 / 2},
    ]
    head = dict((label, value) for label, value, _ in lengths.quality_headline(quality))
    assert head["questions accepted"] == "4 of 5 (80%)" and head["answers accepted"] == "1 of 2 (50%)"
    assert head["relevance gate (question / answer)"] == (
        f"{quality['gate']['min_question_overlap']:g} / {quality['gate']['min_answer_overlap']:g}"
    )


def test_questions_made_only_of_common_words_are_off_topic():
    """Real questions of the embedded model on hmac.py and an encoding table: every content word is one any
    technical text has, so nothing ties them to the document; a question about the text as a whole passes."""
    import hmac

    doc = document_terms(Path(hmac.__file__).read_text(encoding="utf-8"))
    gate = RelevanceGate()
    assert question_overlap("How to add two numbers in Python?", doc) == 0.0
    assert gate.question_problem("How to add two numbers in Python?", doc) == "off_topic"
    assert gate.question_problem("How to check if a number is prime?", doc) == "off_topic"
    assert gate.question_problem("What does the digest method of an HMAC object return?", doc) is None
    assert gate.question_problem("What is the main idea of this text?", doc) is None
