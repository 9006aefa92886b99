"""The synthetic ladder (``longalign eval ruler``): exact prompt sizes under two tokenizers, expected values read
back from the prompts by independent parsers, seeded determinism, depth placement, the scorer and the summary on
literal inputs, refusals, a run on a random tiny model, and resume after a kill."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from longalign.eval import ruler
from longalign.eval import ruler_tasks as rt
from longalign.eval.ruler import RulerConfig, effective_length, summarise
from longalign.eval.ruler_tasks import PromptFormat, TaskContext, score_output
from longalign.rundir import RunDir, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = f"random:{ROOT / 'configs' / 'models' / 'tiny-llama'}"

PARAGRAPHS = [
    "The harbour town woke early. Fishing boats left before dawn and came back at noon with their catch. "
    "Market stalls opened along the quay, and the smell of bread drifted from the bakery on the corner.",
    "In winter the wind came from the north.\nIt rattled the shutters and bent the young trees in the square. "
    "Children wore two coats, and the old men played cards inside the café until the light faded.",
    "A railway line reached the town in the last century. It brought visitors in summer and took timber "
    "to the cities. The station still stands, though only two trains stop there each day!",
    "Why do people stay? Some say it is the sea; others say it is the quiet. The school has forty pupils "
    "and one teacher who has taught there for thirty years.",
    "The library keeps records of every storm since the town was founded. Its reading room faces the water, "
    "and on clear days one can see the lighthouse on the far headland.",
]


@pytest.fixture(scope="module")
def haystack_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hay")
    for i, text in enumerate(PARAGRAPHS):
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def smol():
    from longalign.models import load_tokenizer

    return load_tokenizer(None)  # the embedded SmolLM2 tokenizer, with its chat template


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained here on a small text (no chat template: the plain User:/Assistant: layout)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(PARAGRAPHS * 3 + [rt.FILLER, " ".join(rt.WORDS)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("qa")
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": f"Topic_{a}",
                "paragraphs": [
                    {
                        "context": f"Paragraph {a}.{p}: the river crossing number {a * 10 + p} was built of stone "
                        f"by the guild of masons in year {1700 + a * 10 + p}.",
                        "qas": [
                            {
                                "id": f"q{a}{p}",
                                "question": f"Who built river crossing number {a * 10 + p}?",
                                "answers": [{"text": "the guild of masons", "answer_start": 40}],
                            },
                            {"id": f"x{a}{p}", "question": "Unanswerable?", "answers": [], "is_impossible": True},
                        ],
                    }
                    for p in range(3)
                ],
            }
            for a in range(40)
        ],
    }
    hotpot = [
        {
            "_id": f"h{i}",
            "question": f"Which valley holds the village of Erm{i}?",
            "answer": f"Valley {i}",
            "supporting_facts": [[f"Erm{i}", 0], [f"Valley {i}", 1]],
            "context": [
                [f"Erm{i}", [f"Erm{i} is a village. ", "It lies in a valley."]],
                [f"Valley {i}", ["A valley in the hills. ", f"It holds the village of Erm{i}."]],
                [
                    f"Other {i}",
                    [
                        f"An unrelated paragraph about the weather of region {i}. ",
                        "Rain falls often, and the rivers rise in spring when the snow on the hills melts away.",
                    ],
                ],
            ],
            "type": "bridge",
        }
        for i in range(60)
    ] + [
        {
            "_id": "yesno",
            "question": "Is it so?",
            "answer": "yes",
            "supporting_facts": [],
            "context": [["T", ["x."]]],
        }
    ]
    (folder / "squad.json").write_text(json.dumps(squad), encoding="utf-8")
    (folder / "hotpot.json").write_text(json.dumps(hotpot), encoding="utf-8")
    return {"squad": folder / "squad.json", "hotpot": folder / "hotpot.json"}


def make_ctx(tok, haystack_dir, qa_files=None, **kw) -> TaskContext:
    return TaskContext(
        PromptFormat(tok),
        haystack=str(haystack_dir),
        qa_squad=str(qa_files["squad"]) if qa_files else "",
        qa_hotpot=str(qa_files["hotpot"]) if qa_files else "",
        **kw,
    )


def context_of(sample) -> str:
    """The context part of the user turn (between the header and the question)."""
    assert sample.user.startswith(rt.HEADER) and sample.user.endswith(sample.question)
    return sample.user[len(rt.HEADER) : len(sample.user) - len(sample.question)]


# ------------------------------------------------------------------------------------------- exact size
@pytest.mark.parametrize("tok_name", ["smol", "bpe"])
@pytest.mark.parametrize("task", rt.ALL_TASKS)
def test_exact_prompt_tokens(request, tok_name, task, haystack_dir, qa_files):
    tok = request.getfixturevalue(tok_name)
    ctx = make_ctx(tok, haystack_dir, qa_files, seed=3)
    fmt = PromptFormat(tok)
    for length in (1100, 1500) if tok_name == "smol" or task != "cwe" else (2000, 2500):
        for index in (0, 1):
            s = ctx.build(task, length, index)
            ids = tok.encode(fmt.render(s.user, s.answer_prefix), add_special_tokens=False)
            assert len(ids) == s.prompt_tokens == length - s.max_new_tokens == length - rt.TASKS[task].max_new_tokens
            assert s.prompt_ids == ids


def test_template_and_prefix_are_counted(smol, haystack_dir):
    s = make_ctx(smol, haystack_dir).build("niah_single_noise", 600, 0)
    text = (
        smol.apply_chat_template([{"role": "user", "content": s.user}], tokenize=False, add_generation_prompt=True)
        + s.answer_prefix
    )
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n" + s.answer_prefix)
    assert len(smol.encode(text, add_special_tokens=False)) == 600 - 128
    off = make_ctx(smol, haystack_dir, answer_prefix=False).build("niah_single_noise", 600, 0)
    assert off.answer_prefix == "" and off.prompt_tokens == 600 - 128


def test_too_short_length_is_refused(smol, haystack_dir):
    ctx = make_ctx(smol, haystack_dir)
    with pytest.raises(rt.LengthError, match="niah_multiquery at length 200"):
        ctx.build("niah_multiquery", 200, 0)
    with pytest.raises(rt.LengthError, match="cwe at length 300"):
        ctx.build("cwe", 300, 0)


# ------------------------------------------------------------------------------------------- expected values
NEEDLE_RE = re.compile(r"Remember this: a (secret \w+) for (\S+) is (\S+?)\.(?=\s|$)")


def needles(text: str) -> list[tuple[str, str, str]]:
    return NEEDLE_RE.findall(text)


@pytest.mark.parametrize("tok_name", ["smol", "bpe"])
def test_needle_tasks_expect_what_the_prompt_says(request, tok_name, haystack_dir):
    tok = request.getfixturevalue(tok_name)
    ctx = make_ctx(tok, haystack_dir, seed=11)
    value_re = {
        "secret number": r"\d{7}",
        "secret word": r"[a-z]+",
        "secret code": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    }
    for task in [t for t in rt.ALL_TASKS if t.startswith("niah")]:
        for index in range(3):
            s = ctx.build(task, 1200, index)
            question = s.question
            found = needles(context_of(s))
            by_key: dict[str, list[str]] = {}
            for noun, key, value in found:
                assert re.fullmatch(value_re[noun], value), (task, value)
                by_key.setdefault(key, []).append(value)
            asked = [k for k in by_key if k in question]
            expected = [v for k in asked for v in by_key[k]]
            assert sorted(s.expected) == sorted(expected), task
            values = [v for _, _, v in found]
            assert len(set(values)) == len(values)  # every value distinct
            for v in s.expected:
                assert context_of(s).count(f" is {v}.") == 1 and v not in s.answer_prefix and v not in question
            spec = dict(rt.TASKS[task].params)
            if rt.TASKS[task].context == "needles":
                assert len(found) > 5 and len(asked) == 1 and len(by_key[asked[0]]) == 1
                assert all(len(v) == 1 for v in by_key.values())  # a dense haystack: every key once
            else:
                assert len(found) == spec.get("keys", 1) - 1 + spec.get("values", 1)
                assert len(asked) == spec.get("queries", 1) and len(s.expected) == max(
                    spec.get("queries", 1), spec.get("values", 1)
                )
            assert len(s.depths) == len(s.inserts) and all(0 <= d <= 100 for d in s.depths)


def test_vt_chain_names_every_holder(smol, bpe, haystack_dir):
    for tok in (smol, bpe):
        ctx = make_ctx(tok, haystack_dir, seed=5)
        for index in range(4):
            s = ctx.build("vt", 900, index)
            ctxt = context_of(s)
            direct = re.findall(r"Set ([A-Z]{5}) to (\d+)\.", ctxt)
            copies = re.findall(r"Set ([A-Z]{5}) to the value of ([A-Z]{5})\.", ctxt)
            value = re.search(r"hold the value (\d+)\?", s.user).group(1)
            holders = {v for v, x in direct if x == value}
            changed = True
            while changed:  # follow the copies in any order
                before = len(holders)
                holders |= {v for v, src in copies if src in holders}
                changed = len(holders) != before
            assert holders == set(s.expected) and len(holders) == rt.VT_HOPS + 1
            order = [m.group(1) for m in re.finditer(r"Set ([A-Z]{5}) to", ctxt)]
            assert order == s.expected  # the chain is written in order
            assert ctxt.count("Set ") == rt.VT_HOPS + 1


@pytest.mark.parametrize("tok_name, length", [("smol", 1100), ("smol", 4096), ("bpe", 2000)])
def test_cwe_counts(request, haystack_dir, tok_name, length):
    for tok in [request.getfixturevalue(tok_name)]:
        s = make_ctx(tok, haystack_dir, seed=2).build("cwe", length, 1)
        lines = context_of(s).split("\n")
        numbered = [re.fullmatch(r"(\d+)\. (\S+)", line) for line in lines]
        assert all(numbered[:-1])  # the last entry may be cut
        assert [int(m.group(1)) for m in numbered[:-1]] == list(range(1, len(numbered)))
        counts = Counter(m.group(2) for m in numbered[:-1])
        top = [w for w, _ in counts.most_common(10)]
        assert set(top) == set(s.expected)
        freq = s.info["common_frequency"]
        assert all(counts[w] == freq for w in s.expected)
        rest = sorted({c for w, c in counts.items() if w not in s.expected})
        assert rest and max(rest) <= rt.CWE_UNCOMMON_FREQ < freq
        if length >= 4096:
            assert freq == rt.CWE_COMMON_FREQ


def test_fwe_counts(smol, bpe, haystack_dir):
    for tok in (smol, bpe):
        for length in (600, 2000):
            s = make_ctx(tok, haystack_dir, seed=4).build("fwe", length, 0)
            words = context_of(s).split(" ")
            counts = Counter(words[:-1])  # the last word may be cut
            ranked = counts.most_common()
            assert [w for w, _ in ranked[:3]] == s.expected
            assert ranked[0][1] > ranked[1][1] > ranked[2][1] > ranked[3][1]
            assert all(re.fullmatch(r"[a-z]{5}", w) for w in counts)


def test_qa_gold_passages_and_answers(smol, haystack_dir, qa_files):
    ctx = make_ctx(smol, haystack_dir, qa_files, seed=1)
    squad = json.loads(qa_files["squad"].read_text())
    pairs = [(qa["question"], p["context"]) for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
    seen = set()
    for index in range(5):
        s = ctx.build("qa_squad", 1000, index)
        q = s.info["question"]
        gold = [c for question, c in pairs if question == q]
        assert len(gold) == 1 and context_of(s).count(gold[0]) == 1
        assert s.expected == ["the guild of masons"] and s.metric == "any"
        seen.add(q)
    assert len(seen) == 5
    for index in range(3):
        s = ctx.build("qa_hotpot", 1000, index)
        i = re.search(r"Erm(\d+)", s.info["question"]).group(1)
        assert s.expected == [f"Valley {i}"]
        assert f"Document: Erm{i}\nErm{i} is a village. It lies in a valley." in s.user
        assert f"Document: Valley {i}\nA valley in the hills. It holds the village of Erm{i}." in s.user
    data = rt.read_hotpot(qa_files["hotpot"])
    assert "yesno" not in {it.qid for it in data.items}  # yes/no answers cannot be scored by substring


def test_qa_file_errors_name_the_item(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"_id": "a1", "question": "q?", "answer": "x", "context": [["T", ["s."]]]},
                               {"_id": "b2", "question": "q?", "context": []}]), encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.json\[1\] \(_id b2\): missing field\(s\) answer"):
        rt.read_hotpot(bad)
    from longalign.rundir import BadRecords

    skipped = BadRecords("skip")
    assert [it.qid for it in rt.read_hotpot(bad, skipped=skipped).items] == ["a1"]
    assert skipped.total == 1
    sq = tmp_path / "sq.json"
    sq.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": "z9"}]}]}]}))
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id z9\)"):
        rt.read_squad(sq)


# ------------------------------------------------------------------------------------------- determinism, depth
def test_seeded_determinism(smol, haystack_dir):
    for task in ("niah_multikey", "vt", "cwe", "fwe", "niah_multikey_dense"):
        a = make_ctx(smol, haystack_dir, seed=9).build(task, 900, 2)
        b = make_ctx(smol, haystack_dir, seed=9).build(task, 900, 2)
        c = make_ctx(smol, haystack_dir, seed=10).build(task, 900, 2)
        assert (a.user, a.expected, a.depths) == (b.user, b.expected, b.depths)
        assert a.user != c.user and a.expected != c.expected
    # a needle sample keeps its key and value at every length
    short = make_ctx(smol, haystack_dir, seed=9).build("niah_single_docs", 800, 4)
    long = make_ctx(smol, haystack_dir, seed=9).build("niah_single_docs", 2000, 4)
    assert short.inserts == long.inserts and short.expected == long.expected


def _vdc(i: int) -> float:
    """Bit reversal of i (independent of the generator's own function)."""
    bits = bin(i)[2:][::-1]
    return int(bits, 2) / 2 ** len(bits)


def test_depths_follow_a_shifted_van_der_corput_sequence(smol, haystack_dir):
    depths = [rt.first_depth(3, "niah_single_noise", i) for i in range(16)]
    shift = (depths[0] / 100 - 0.5) % 1
    for i, d in enumerate(depths):
        assert d == pytest.approx(100 * ((_vdc(i + 1) + shift) % 1), abs=0.011)
    assert max(depths) - min(depths) > 80  # the first samples of a cell already span the context


SENTENCE_OR_LINE_END = re.compile(r"[.!?](?=\s|$)|\n")


@pytest.mark.parametrize("tok_name", ["smol", "bpe"])
def test_needle_goes_at_the_sentence_end_before_its_depth(request, tok_name, haystack_dir):
    tok = request.getfixturevalue(tok_name)
    for task in ("niah_single_noise", "niah_single_docs"):
        ctx = make_ctx(tok, haystack_dir, seed=3)
        for index in range(6):
            s = ctx.build(task, 1500, index)
            want = rt.first_depth(3, task, index)
            text = context_of(s)
            at = text.index(s.inserts[0])
            stream = text[:at] + text[at + len(s.inserts[0]) :]  # the context without the needle
            ids = tok.encode(stream, add_special_tokens=False)
            target = len(tok.decode(ids[: int(len(ids) * want / 100)]))  # the asked depth, in characters
            ends = [0] + [m.end() for m in SENTENCE_OR_LINE_END.finditer(stream)]
            assert at == max(e for e in ends if e <= target), (task, index, stream[at - 40 : target + 10])
            assert abs(s.depths[0] - 100 * len(tok.encode(stream[:at], add_special_tokens=False)) / len(ids)) < 0.2


# ------------------------------------------------------------------------------------------- scoring, summary
def test_score_output_literals():
    assert score_output("The secret number for quiet-harbor is 1234567.", ["1234567"]) == 1.0
    assert score_output("1234567 and 765432", ["1234567", "7654321"]) == 0.5
    assert score_output("LOTUS, Orchard and salmon", ["lotus", "orchard", "salmon", "tiger"]) == 0.75
    assert score_output("", ["x"]) == 0.0
    assert score_output("It was the Guild of Masons.", ["the guild of masons", "masons guild"], "any") == 1.0
    assert score_output("nobody", ["the guild of masons", "masons guild"], "any") == 0.0
    with pytest.raises(ValueError):
        score_output("x", [])


def _wilson(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return c - h, c + h


def test_summary_on_literal_results():
    recs = []
    scores = {("a", 1024): [1] * 10, ("b", 1024): [1] * 9 + [0], ("a", 2048): [1] * 7 + [0] * 3}
    scores[("b", 2048)] = [0.5] * 10
    for (task, length), vals in scores.items():
        recs += [{"task": task, "length": length, "score": v} for v in vals]
    out = summarise(recs, ["a", "b"], [1024, 2048], 85.6)
    lo, hi = _wilson(7, 10)
    assert out["cells"]["a"]["2048"] == {"score": 70.0, "lo": round(100 * lo, 2), "hi": round(100 * hi, 2), "n": 10}
    assert (round(100 * lo, 2), round(100 * hi, 2)) == (39.68, 89.22)
    assert out["cells"]["a"]["1024"]["hi"] == 100.0 and out["cells"]["a"]["1024"]["lo"] < 100
    assert out["by_length"]["1024"]["score"] == 95.0 and out["by_length"]["2048"]["score"] == 60.0
    lo20, hi20 = _wilson(19, 20)  # equal cells pool to 20 samples
    assert out["by_length"]["1024"]["lo"] == round(100 * lo20, 2) and out["by_length"]["1024"]["n_eff"] == 20
    assert out["effective_length"] == 1024
    assert effective_length({1024: 95.0, 2048: 90.0, 4096: 80.0, 8192: 88.0}, 85.6) == 2048
    assert effective_length({1024: 85.6, 2048: 99.0}, 85.6) is None  # "above" is strict
    assert effective_length({1024: 99.0, 2048: None}, 85.6) == 1024


# ------------------------------------------------------------------------------------------- config, refusals
def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="niah_single_noise") as err:
        RulerConfig(tasks=["niah_single_noise", "needle_typo"])
    assert "needle_typo" in str(err.value) and "fwe" in str(err.value)
    with pytest.raises(ValueError, match="--qa-squad"):
        RulerConfig(tasks=["qa_squad"])


def test_lengths_beyond_the_positions_are_refused_before_loading(tmp_path, monkeypatch):
    import longalign.llm.local_model as local_model

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the lengths were checked")

    monkeypatch.setattr(local_model, "get_local_model", no_load)
    monkeypatch.setattr(ruler, "LocalAnswerer", no_load)
    cfg = RulerConfig(model=TINY, lengths=[1024, 8192], samples=1, progress=False)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"--lengths 8192 needs 8,192 positions but .* has 4,096") as err:
        ruler.run(cfg, tmp_path / "r")
    assert "--rope-scale" in str(err.value) and "up to 4096" in str(err.value)
    assert time.monotonic() - start < 30
    with pytest.raises(ValueError, match=r"openai:m has 2,000 \(--max-positions\)"):
        ruler.run(RulerConfig(model="openai:m", lengths=[4096], max_positions=2000), tmp_path / "r")
    assert not (tmp_path / "r" / "eval").exists()


# ------------------------------------------------------------------------------------------- runs
def test_run_on_a_random_tiny_model_reuses_prefixes(tmp_path, haystack_dir):
    cfg = RulerConfig(
        model=TINY,
        tasks=["niah_single_noise", "vt", "niah_single_docs", "fwe"],
        lengths=[320, 600],
        samples=2,
        max_new_tokens=4,
        haystack=str(haystack_dir),
        progress=False,
    )
    summary = ruler.run(cfg, tmp_path / "r")
    run = RunDir(tmp_path / "r")
    recs = read_jsonl(run.ruler_results())
    assert len(recs) == 16 and len({r["key"] for r in recs}) == 16
    for r in recs:
        assert r["prompt_tokens"] == r["prompt_tokens_reported"] == r["length"] - 4
        assert r["score"] == score_output(r["output"], r["expected"], r["metric"])
        assert 0 <= r["score"] <= 1 and r["completion_tokens"] <= 4
    # samples sharing the filler (niah_single_noise, vt) or the documents reuse their common prefix
    assert sum(r["reused_prompt_tokens"] for r in recs) > 1000
    prompts = {p["key"]: p for p in read_jsonl(run.ruler_prompts())}
    assert set(prompts) == {r["key"] for r in recs}
    s = json.loads(run.eval_summary("ruler").read_text())
    assert s["lengths"] == [320, 600] and set(s["cells"]) == set(cfg.tasks) and s["n"] == 16
    assert all(c["n"] == 2 for by_len in s["cells"].values() for c in by_len.values())
    assert summary.answered == 16 and "effective context length" in "\n".join(summary.lines())
    info = json.loads(run.run_json.read_text())["stages"]["eval_ruler"]
    assert info["config"]["lengths"] == [320, 600]
    again = ruler.run(cfg, tmp_path / "r")
    assert again.answered == 0 and again.done_before == 16


def test_batched_answers_equal_one_by_one_on_a_random_tiny_model(tmp_path, haystack_dir):
    from longalign.llm.local_model import release_local_models

    cfg = RulerConfig(
        model=TINY,
        tasks=["niah_single_noise", "vt", "niah_single_docs"],
        lengths=[320, 600],
        samples=2,
        max_new_tokens=6,
        haystack=str(haystack_dir),
        progress=False,
        dtype="float32",
    )
    ruler.run(cfg, tmp_path / "one")
    release_local_models()
    batched = ruler.run(replace(cfg, batch_size=5), tmp_path / "batched")
    one = {r["key"]: r for r in read_jsonl(RunDir(tmp_path / "one").ruler_results())}
    many = {r["key"]: r for r in read_jsonl(RunDir(tmp_path / "batched").ruler_results())}
    assert set(one) == set(many) and len(many) == 12 and batched.answered == 12
    # 12 samples with one answer budget in groups of up to 5: 5, 5, 2
    assert sorted(r["batch"] for r in many.values()) == [2, 2] + [5] * 10
    for key, r in many.items():
        assert r["prompt_tokens"] == one[key]["prompt_tokens"]
        assert r["output"] == one[key]["output"] and r["score"] == one[key]["score"]
    # each prompt of a batch still starts from the kept prefix it shares with the one before
    assert sum(r["reused_prompt_tokens"] for r in many.values()) > 1000
    assert sum(r["reused_prompt_tokens"] for r in many.values()) == sum(r["reused_prompt_tokens"] for r in one.values())


def test_ladder_benchmark_times_batched_answers_beside_one_by_one(tmp_path, monkeypatch):
    import importlib.util

    path = ROOT / "benchmarks" / "ladder_throughput.py"
    spec = importlib.util.spec_from_file_location("ladder_throughput_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ladder.json"
    code = bench.main(
        [
            "--model", TINY, "--tasks", "niah_single_noise,vt", "--lengths", "320", "--samples", "2",
            "--max-new-tokens", "4", "--batch-size", "4", "--dtype", "float32", "--out", str(out),
        ]
    )  # fmt: skip
    res = json.loads(out.read_text())
    assert code == 0 and res["identical_outputs"] and res["batch_size"] == 4
    assert [r["samples"] for r in res["batched"]["runs"]] == [4]
    assert res["batched_speedup_over_reuse"] > 0 and res["batched_outputs_differing"] == 0
    assert set(res["mean_score"]) == {"no_reuse", "reuse", "batched"}


def test_answer_groups_keep_the_order_and_one_budget_per_group():
    from types import SimpleNamespace

    samples = [SimpleNamespace(key=str(i), max_new_tokens=b) for i, b in enumerate([8, 8, 8, 16, 16, 8])]
    groups = ruler.answer_groups(samples, 2)
    assert [[s.key for s in g] for g in groups] == [["0", "1"], ["2"], ["3", "4"], ["5"]]
    assert [[s.key for s in g] for g in ruler.answer_groups(samples, 1)] == [[str(i)] for i in range(6)]


class FlakyAnswerer:
    """Answers with the first expected value; raises KeyboardInterrupt on answer number ``die_at``."""

    kind = "local"
    max_positions = 4096
    name = "fake-model"

    def __init__(self, tok, die_at: int | None = None):
        self.tok = tok
        self.die_at = die_at
        self.keys: list[str] = []

    def prompt_format(self):
        return PromptFormat(self.tok)

    def answer(self, sample, params):
        if self.die_at is not None and len(self.keys) + 1 == self.die_at:
            raise KeyboardInterrupt
        self.keys.append(sample.key)
        return ruler.Answer(sample.expected[0], sample.prompt_tokens, 3, "stop")


def test_resume_after_an_interrupt_redoes_nothing(tmp_path, smol, haystack_dir):
    cfg = RulerConfig(
        tasks=["niah_single_noise", "niah_multivalue", "fwe"],
        lengths=[500, 800],
        samples=3,
        haystack=str(haystack_dir),
        progress=False,
    )
    first = FlakyAnswerer(smol, die_at=8)
    with pytest.raises(KeyboardInterrupt):
        ruler.run(cfg, tmp_path / "r", answerer=first)
    done = {r["key"] for r in read_jsonl(RunDir(tmp_path / "r").ruler_results())}
    assert done == set(first.keys) and len(done) == 7
    second = FlakyAnswerer(smol)
    summary = ruler.run(cfg, tmp_path / "r", answerer=second)
    assert not done & set(second.keys) and len(second.keys) == 18 - 7
    recs = read_jsonl(RunDir(tmp_path / "r").ruler_results())
    assert len(recs) == 18 and len({r["key"] for r in recs}) == 18
    # the answer is the first expected value: 1 for single values, 1/4 for the four values of multivalue
    s = summary.scores
    assert s["cells"]["niah_single_noise"]["500"]["score"] == 100.0
    assert s["cells"]["niah_multivalue"]["800"]["score"] == 25.0
    # another seed is another setup: nothing is reused from this one
    third = FlakyAnswerer(smol)
    ruler.run(RulerConfig(**{**cfg.__dict__, "seed": 7}), tmp_path / "r", answerer=third)
    assert len(third.keys) == 18


@pytest.mark.slow
def test_resume_after_sigkill_of_the_command(tmp_path, fake_llm, haystack_dir):
    """The real command against the fake HTTP server, killed mid-run with SIGKILL, then run again: no sample
    whose result was written is requested again."""
    from fake_llm_server import messages_key

    fake_llm.latency_s = 0.4
    fake_llm.set_responder(lambda req: "The answer is 1234567.")
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "longalign.cli", "eval", "ruler", "--model", "openai:m", "--model-base-url",
           fake_llm.base_url, "--tasks", "niah_single_noise,vt", "--lengths", "400,700", "--samples", "3",
           "--progress", "false", "--run", str(run)]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "x"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = RunDir(run).ruler_results()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_jsonl(results)) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = read_jsonl(results)
    assert 3 <= len(done) < 12
    time.sleep(0.5)  # let a request in flight at the kill finish on the server side
    prompts = {p["key"]: p for p in read_jsonl(RunDir(run).ruler_prompts())}
    done_keys = {
        messages_key(
            [
                {"role": "user", "content": prompts[r["key"]]["user"]},
                {"role": "assistant", "content": prompts[r["key"]]["answer_prefix"]},
            ]  # fmt: skip
        )
        for r in done
    }
    fake_llm.reset_log()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    again = {r["key"] for r in fake_llm.requests}
    assert not again & done_keys
    recs = read_jsonl(results)
    assert len({r["key"] for r in recs}) == 12 and len(recs) == 12
    assert "effective context length" in out.stdout


def test_cli_refusals_and_an_endpoint_run(tmp_path, fake_llm, capsys, monkeypatch):
    from longalign.cli import main

    assert main(["eval", "ruler", "--tasks", "niah_single,vt", "--run", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "tasks='niah_single' is not accepted" in err and "'niah_single_noise'" in err and "'qa_hotpot'" in err
    assert main(["eval", "ruler", "--model", TINY, "--lengths", "2048,8192", "--run", str(tmp_path / "x")]) == 2
    assert "--rope-scale" in capsys.readouterr().err
    monkeypatch.setenv("OPENAI_API_KEY", "x")

    def responder(req):  # a model that finds the asked key's needle
        user = req["messages"][0]["content"]
        key = re.search(r"What is the secret number for (\S+) in the text above\?$", user).group(1)
        return "It is " + re.search(rf"for {re.escape(key)} is (\d{{7}})\.", user).group(1)

    fake_llm.set_responder(responder)
    argv = ["eval", "ruler", "--model", "openai:m", "--model-base-url", fake_llm.base_url, "--tasks",
            "niah_single_noise,niah_multikey_dense", "--lengths", "400,800", "--samples", "2", "--progress", "false",
            "--run", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "niah_single_noise" in out and "effective context length: 800" in out
    sent = fake_llm.requests
    assert len(sent) == 8 and all(r["prefill"] for r in sent)  # the answer prefix went as a message to continue
    s = json.loads((tmp_path / "r" / "eval" / "ruler" / "summary.json").read_text())
    assert s["cells"]["niah_single_noise"]["800"]["score"] == 100.0
    assert any("local tokenizer" in n for n in s["notes"])


def test_the_numeric_path_is_part_of_the_setup():
    """A local model's decoding path (``--dtype``) makes a result what it is: answers on another path are neither
    resumed nor summarised; an endpoint has no path."""
    cfg = RulerConfig(model=TINY, dtype="float32")
    assert ruler.requested_precision(cfg) == "float32"
    assert ruler.requested_precision(RulerConfig(model="openai:m")) is None
    on_float32 = ruler.setup_of(cfg, "vt", "m", "float32")
    assert on_float32 != ruler.setup_of(cfg, "vt", "m", "int4") and on_float32 != ruler.setup_of(cfg, "vt", "m")
    assert on_float32 == ruler.setup_of(RulerConfig(model=TINY, dtype="float32"), "vt", "m", "float32")


class AllValuesAnswerer(FlakyAnswerer):
    """Answers with every expected value."""

    name = "fake-tuned"

    def answer(self, sample, params):
        self.keys.append(sample.key)
        return ruler.Answer(", ".join(sample.expected), sample.prompt_tokens, 3, "stop")


def test_compare_gives_the_paired_difference_per_cell_and_writes_it(tmp_path, smol, haystack_dir, capsys):
    cfg = RulerConfig(
        tasks=["niah_single_noise", "niah_multivalue"],
        lengths=[500, 800],
        samples=3,
        haystack=str(haystack_dir),
        progress=False,
    )
    ruler.run(cfg, tmp_path / "base", answerer=FlakyAnswerer(smol))  # first value only: multivalue scores 25
    summary = ruler.run(
        RulerConfig(**{**cfg.__dict__, "compare": str(tmp_path / "base")}),
        tmp_path / "tuned",
        answerer=AllValuesAnswerer(smol),
    )
    c = summary.comparison
    assert c["other"] == str(tmp_path / "base") and c["other_model"] == "fake-model" and c["model"] == "fake-tuned"
    mv = c["cells"]["niah_multivalue"]["800"]
    assert (mv["diff"], mv["n"], mv["paired"], mv["higher"]) == (75.0, 3, True, 3) and mv["lo"] < 75.0 < mv["hi"]
    assert c["cells"]["niah_single_noise"]["500"]["diff"] == 0.0
    assert c["overall"]["diff"] == pytest.approx(37.5) and c["overall"]["n"] == 12
    assert (
        json.loads((tmp_path / "tuned/eval/ruler/compare.json").read_text())["overall"]["diff"] == c["overall"]["diff"]
    )
    text = "\n".join(summary.lines())
    assert c["overall"]["lo"] > 0 and "over 12 paired samples: resolved" in text
    assert f"+75.0 [{mv['lo']:+.0f},{mv['hi']:+.0f}]" in text and "difference to" in text


def test_compare_with_a_run_without_a_ladder_is_refused_before_any_answer(tmp_path, smol, haystack_dir):
    cfg = RulerConfig(
        tasks=["niah_single_noise"],
        lengths=[500],
        samples=2,
        haystack=str(haystack_dir),
        progress=False,
        compare=str(tmp_path / "nothing"),
    )
    answerer = FlakyAnswerer(smol)
    with pytest.raises(FileNotFoundError, match="nothing/eval/ruler/summary.json does not exist"):
        ruler.run(cfg, tmp_path / "r", answerer=answerer)
    assert answerer.keys == []
