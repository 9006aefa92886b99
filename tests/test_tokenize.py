"""Tests of longalign.tokenize / longalign.tokenize.formats: exact label positions for every chat format,
truncation policies, bad rows (file:line), skip mode, atomic output, multiprocessing and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from installed import require  # the tests folder is on sys.path (conftest.py)
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from longalign import IGNORE_INDEX
from longalign.tokenize.encode import (
    META_FILE,
    TokenizeConfig,
    load_tokens,
    tokenize_conversation,
    tokenize_file,
    truncate,
)
from longalign.tokenize.formats import Rendered, RowError, render_chatglm3, render_llama2, validate_messages

REPO = Path(__file__).resolve().parents[1]
X = IGNORE_INDEX


def word_tokenizer(words, specials, *, bos=None, eos=None, chat_template=None):
    """A real fast tokenizer with one token per whitespace-separated word (ids in list order)."""
    vocab = {w: i for i, w in enumerate(["[UNK]", "<pad>", *specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="[UNK]", pad_token="<pad>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


WORDS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "Be", "brief", "Hi", "Hello", "Bye", "Ciao", "Again", "Sure"]


@pytest.fixture(scope="module")
def llama_tok():
    # ids: [UNK]=0 <pad>=1 <s>=2 </s>=3 [INST]=4 [/INST]=5 <<SYS>>=6 <</SYS>>=7 Be=8 brief=9 Hi=10 Hello=11
    #      Bye=12 Ciao=13 Again=14 Sure=15
    return word_tokenizer(WORDS, ["<s>", "</s>"], bos="<s>", eos="</s>")


@pytest.fixture(scope="module")
def glm_tok():
    # ids: [UNK]=0 <pad>=1 [gMASK]=2 sop=3 <|system|>=4 <|user|>=5 <|assistant|>=6 </s>=7 then WORDS from 8:
    #      Be=12 brief=13 Hi=14 Hello=15 Bye=16 Ciao=17 Again=18 Sure=19
    return word_tokenizer(WORDS, ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "</s>"], eos="</s>")


@pytest.fixture(scope="module")
def smol_tok():
    from longalign.models import load_tokenizer

    require("embedded model")
    return load_tokenizer()


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def labelled(row):
    """Positions that carry loss."""
    return [int(i) for i in np.flatnonzero(row.labels != X)]


# --------------------------------------------------------------------------------------------------------
# chat template (embedded SmolLM2 tokenizer)
# --------------------------------------------------------------------------------------------------------


class TestTemplate:
    CONV = msgs(
        ("user", "Hi there"),
        ("assistant", "Hello!"),
        ("user", "Bye"),
        ("assistant", ""),
        ("user", "again"),
        ("assistant", "See you"),
        ("user", "left without reply"),
    )

    def test_multi_turn_positions(self, smol_tok):
        row = tokenize_conversation(self.CONV, smol_tok)
        # ids equal the tokenizer's own chat template up to the last reply (the trailing prompt is dropped)
        ref = smol_tok.apply_chat_template(self.CONV[:6], tokenize=True)
        ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        assert row.input_ids.tolist() == list(ref)
        assert len(row.input_ids) == 63
        # "Hello" "!" <|im_end|> at 32..34 and "See" " you" <|im_end|> at 59..61; the empty reply (46..47)
        # and its <|im_end|> carry no loss; the "\n" after <|im_end|> is not a target
        assert labelled(row) == [32, 33, 34, 59, 60, 61]
        assert row.labels[[32, 33, 34, 59, 60, 61]].tolist() == [19556, 17, 2, 7574, 346, 2]
        assert row.input_ids[46:48].tolist() == [198, 2]
        assert row.n_target == 6 and row.n_target_before == 6
        assert not row.truncated and not row.boundary_mismatch
        assert row.input_ids.dtype == np.int32 and row.labels.dtype == np.int32

    def test_labels_equal_ids_where_set(self, smol_tok):
        row = tokenize_conversation(self.CONV, smol_tok)
        mask = row.labels != X
        assert np.array_equal(row.labels[mask], row.input_ids[mask])

    def test_system_message_is_context(self, smol_tok):
        conv = msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Yo"))
        row = tokenize_conversation(conv, smol_tok)
        text = smol_tok.decode(row.input_ids)
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
        assert smol_tok.decode(row.labels[row.labels != X]) == "Yo<|im_end|>"

    def test_offsets_alone_give_the_same_labels(self, smol_tok):
        a = tokenize_conversation(self.CONV, smol_tok)
        b = tokenize_conversation(self.CONV, smol_tok, verify=False)
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.labels, b.labels)

    def test_tokenizer_without_offsets_uses_pieces(self, smol_tok):
        from longalign.tokenize.encode import _Encoder
        from longalign.tokenize.formats import validate_messages

        enc = _Encoder(smol_tok, "template", verify=True)
        enc.backend = None  # the path taken by tokenizers without a Rust backend (no offsets)
        row = enc.tokenize(validate_messages(self.CONV), 10_000, "right")
        ref = tokenize_conversation(self.CONV, smol_tok)
        assert np.array_equal(row.input_ids, ref.input_ids) and np.array_equal(row.labels, ref.labels)
        assert not row.boundary_mismatch

    def test_only_empty_replies_has_no_target(self, smol_tok):
        row = tokenize_conversation(msgs(("user", "Hi"), ("assistant", "  ")), smol_tok)
        assert row.n_target == 0 and len(row.input_ids) > 0

    def test_boundary_merge_is_detected_and_labelled_by_offsets(self):
        # "assistant:" and the reply share one whitespace-delimited word, so one token spans the boundary
        tmpl = (
            "{% for m in messages %}{{ m['role'] + ':' + m['content'] + ' <eot> ' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
        )
        tok = word_tokenizer(
            ["user:Hi", "assistant:Hello", "assistant:", "Hello", "more"], ["<eot>"], eos="<eot>", chat_template=tmpl
        )
        row = tokenize_conversation(msgs(("user", "Hi"), ("assistant", "Hello more")), tok)
        # ids: [UNK]=0 <pad>=1 <eot>=2 user:Hi=3 assistant:Hello=4 assistant:=5 Hello=6 more=7
        assert row.input_ids.tolist() == [3, 2, 4, 7, 2]
        assert row.boundary_mismatch
        assert row.labels.tolist() == [X, X, X, 7, 2]  # the merged token starts in the prompt: no loss
        fast = tokenize_conversation(msgs(("user", "Hi"), ("assistant", "Hello more")), tok, verify=False)
        assert fast.labels.tolist() == [X, X, X, 7, 2] and not fast.boundary_mismatch

    def test_first_special_after_reply_closes_it(self):
        tmpl = (
            "{% for m in messages %}{{ '<r> ' + m['role'] + ' ' + m['content'] + ' <end> ' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<r> assistant ' }}{% endif %}"
        )
        tok = word_tokenizer(["user", "assistant", "Hi", "Hello"], ["<r>", "<end>"], eos="<end>", chat_template=tmpl)
        row = tokenize_conversation(
            msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Hi"), ("assistant", "Hello")), tok
        )
        # <r>=2 <end>=3 user=4 assistant=5 Hi=6 Hello=7
        assert row.input_ids.tolist() == [2, 4, 6, 3, 2, 5, 7, 3, 2, 4, 6, 3, 2, 5, 7, 3]
        assert labelled(row) == [6, 7, 14, 15]
        assert not row.boundary_mismatch


# --------------------------------------------------------------------------------------------------------
# Llama-2-chat
# --------------------------------------------------------------------------------------------------------


class TestLlama2:
    def test_render_text(self):
        r = render_llama2(
            msgs(
                ("system", "Be brief"), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao")
            ),
            "<s>",
            "</s>",
        )
        assert r.text == (
            "<s>[INST] <<SYS>>\nBe brief\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST] Ciao </s>"
        )
        assert [r.text[a:b] for a, b in r.spans] == [" Hello </s>", " Ciao </s>"]

    def test_multi_turn_positions(self, llama_tok):
        row = tokenize_conversation(
            msgs(
                ("system", "Be brief"), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao")
            ),
            llama_tok,
            chat_format="llama2",
        )
        #            <s> [INST] <<SYS>> Be brief <</SYS>> Hi [/INST] Hello </s> <s> [INST] Bye [/INST] Ciao </s>
        assert row.input_ids.tolist() == [2, 4, 6, 8, 9, 7, 10, 5, 11, 3, 2, 4, 12, 5, 13, 3]
        assert row.labels.tolist() == [X, X, X, X, X, X, X, X, 11, 3, X, X, X, X, 13, 3]
        assert not row.boundary_mismatch

    def test_empty_reply_masked_with_its_eos(self, llama_tok):
        row = tokenize_conversation(
            msgs(("user", "Hi"), ("assistant", ""), ("user", "Bye"), ("assistant", "Ciao")),
            llama_tok,
            chat_format="llama2",
        )
        assert row.input_ids.tolist() == [2, 4, 10, 5, 3, 2, 4, 12, 5, 13, 3]
        assert row.labels.tolist() == [X, X, X, X, X, X, X, X, X, 13, 3]

    def test_trailing_user_turn_dropped(self, llama_tok):
        row = tokenize_conversation(
            msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Again")), llama_tok, chat_format="llama2"
        )
        assert row.input_ids.tolist() == [2, 4, 10, 5, 11, 3]

    def test_roles_must_alternate(self, llama_tok):
        with pytest.raises(RowError, match=r"message 4 is 'user' where the llama2 format needs 'assistant'"):
            tokenize_conversation(
                msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("user", "Bye"), ("assistant", "Ciao")),
                llama_tok,
                chat_format="llama2",
            )


# --------------------------------------------------------------------------------------------------------
# ChatGLM3
# --------------------------------------------------------------------------------------------------------


class TestChatGLM3:
    def test_render_text(self):
        r = render_chatglm3(
            msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao")), "</s>"
        )
        assert r.text == "[gMASK]sop<|user|>\n Hi<|assistant|>\n Hello<|user|>\n Bye<|assistant|>\n Ciao</s>"
        assert [r.text[a:b] for a, b in r.spans] == ["\n Hello<|user|>", "\n Ciao</s>"]

    def test_multi_turn_positions(self, glm_tok):
        row = tokenize_conversation(
            msgs(
                ("system", "Be brief"), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao")
            ),
            glm_tok,
            chat_format="chatglm3",
        )
        #  [gMASK] sop <|system|> Be brief <|user|> Hi <|assistant|> Hello <|user|> Bye <|assistant|> Ciao </s>
        assert row.input_ids.tolist() == [2, 3, 4, 12, 13, 5, 14, 6, 15, 5, 16, 6, 17, 7]
        # each reply and the token that closes it (the next <|user|>, or </s> at the end)
        assert row.labels.tolist() == [X, X, X, X, X, X, X, X, 15, 5, X, X, 17, 7]

    def test_empty_reply_masked_with_its_closing(self, glm_tok):
        row = tokenize_conversation(
            msgs(("user", "Hi"), ("assistant", ""), ("user", "Bye"), ("assistant", "Ciao")),
            glm_tok,
            chat_format="chatglm3",
        )
        assert row.input_ids.tolist() == [2, 3, 5, 14, 6, 5, 16, 6, 17, 7]
        assert row.labels.tolist() == [X, X, X, X, X, X, X, X, 17, 7]


# --------------------------------------------------------------------------------------------------------
# truncation
# --------------------------------------------------------------------------------------------------------


class TestTruncation:
    IDS = np.arange(12, dtype=np.int32)
    LAB = np.where(np.arange(12) % 3 == 0, np.arange(12), X).astype(np.int32)

    @pytest.mark.parametrize(
        "policy,kept",
        [
            ("right", [0, 1, 2, 3, 4]),
            ("left", [7, 8, 9, 10, 11]),
            ("middle", [0, 1, 2, 10, 11]),
        ],
    )
    def test_kept_positions(self, policy, kept):
        ids, lab, cut = truncate(self.IDS, self.LAB, 5, policy)
        assert ids.tolist() == kept and cut
        assert lab.tolist() == self.LAB[kept].tolist()

    def test_middle_even(self):
        ids, _, _ = truncate(self.IDS, self.LAB, 6, "middle")
        assert ids.tolist() == [0, 1, 2, 9, 10, 11]

    def test_short_rows_untouched(self):
        ids, lab, cut = truncate(self.IDS, self.LAB, 12, "middle")
        assert ids is self.IDS and not cut

    def test_unknown_policy(self):
        with pytest.raises(ValueError, match="use one of right, left, middle"):
            truncate(self.IDS, self.LAB, 5, "centre")

    @pytest.mark.parametrize(
        "policy,ids,labels",
        [
            # full: <s> [INST] Hi [/INST] Hello </s> <s> [INST] Bye [/INST] Ciao </s>
            ("right", [2, 4, 10, 5, 11, 3, 2], [X, X, X, X, 11, 3, X]),
            ("left", [3, 2, 4, 12, 5, 13, 3], [3, X, X, X, X, 13, 3]),
            ("middle", [2, 4, 10, 5, 5, 13, 3], [X, X, X, X, X, 13, 3]),
        ],
    )
    def test_conversation(self, llama_tok, policy, ids, labels):
        row = tokenize_conversation(
            msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Ciao")),
            llama_tok,
            chat_format="llama2",
            max_len=7,
            truncation=policy,
        )
        assert row.input_ids.tolist() == ids and row.labels.tolist() == labels
        assert row.truncated and row.n_target_before == 4


# --------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------


class TestValidation:
    @pytest.mark.parametrize(
        "messages,match",
        [
            (None, 'no "messages" field'),
            ("Hi", '"messages" is a str, not a list'),
            ([], '"messages" is empty'),
            ([{"role": "human", "content": "Hi"}], "message 1 has role 'human'.*map human to user"),
            ([{"role": "user", "content": ["a", "b"]}], "message 1 \\(user\\) has list content, not text"),
            ([{"role": "user", "content": None}], "has null content"),
            ([{"role": "user"}], 'has no "content"'),
            ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}], "system message after"),
            (["Hi"], "message 1 is a str, not an object"),
        ],
    )
    def test_bad_messages(self, messages, match):
        with pytest.raises(RowError, match=match):
            validate_messages(messages)

    def test_pieces(self):
        r = Rendered("abcdef", [(1, 3), (4, 6)])
        assert r.pieces() == [("a", False), ("bc", True), ("d", False), ("ef", True)]


# --------------------------------------------------------------------------------------------------------
# the file stage
# --------------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


GOOD = [
    {"messages": msgs(("user", "Hi"), ("assistant", "Hello")), "source": "short", "lang": "en", "task_type": "chat"},
    {"messages": msgs(("user", "Bye Bye Bye Bye Bye Bye"), ("assistant", "Ciao")), "source": "long"},
    {"messages": msgs(("user", "Hi"), ("assistant", ""))},
    {
        "messages": msgs(
            ("system", "Be brief"), ("user", "Hi"), ("assistant", "Sure"), ("user", "Again"), ("assistant", "Hello")
        ),
        "source": "short",
        "lang": None,
        "task_type": "chat",
    },
]


def cfg(**kw) -> TokenizeConfig:
    base = dict(format="llama2", max_len=9, truncation="right")
    base.update(kw)
    return TokenizeConfig(**base)


class TestTokenizeFile:
    def test_output_schema_and_counts(self, tmp_path, llama_tok):
        src = write_jsonl(tmp_path / "mixed.jsonl", GOOD)
        res = tokenize_file(src, tmp_path / "tokens", cfg(), tokenizer=llama_tok, show_progress=False)
        ds, meta = load_tokens(tmp_path / "tokens")
        # row 2 (line 2) is 12 tokens: <s> [INST] Bye x6 [/INST] Ciao </s> -> cut to 9, losing its reply;
        # row 3 has only an empty reply: both dropped and counted
        assert ds["line"] == [1, 4]
        assert res.n_rows == 2 and res.n_input_rows == 4 and res.n_dropped == 2
        assert res.n_no_target == 1 and res.n_no_target_after_truncation == 1
        assert res.n_truncated == 1 and res.n_truncated_total == 2 and res.n_skipped == 0
        assert ds[0]["input_ids"] == [2, 4, 10, 5, 11, 3] and ds[0]["labels"] == [X, X, X, X, 11, 3]
        # <s> [INST] <<SYS>> Be brief <</SYS>> Hi [/INST] Sure | </s> <s> ... cut after 9
        assert ds[1]["input_ids"] == [2, 4, 6, 8, 9, 7, 10, 5, 15]
        assert ds[1]["labels"] == [X] * 8 + [15]
        assert ds["length"] == [6, 9] and ds["n_target"] == [2, 1]
        assert ds["source"] == ["short", "short"] and ds["lang"] == ["en", ""] and ds["task_type"] == ["chat", "chat"]
        assert str(ds.features["input_ids"].feature.dtype) == "int32"
        assert str(ds.features["length"].dtype) == "int32"
        for key in (
            "tokenizer",
            "vocab_size",
            "chat_format",
            "max_len",
            "truncation",
            "n_rows",
            "n_truncated",
            "eos_token_id",
            "pad_token_id",
        ):
            assert key in meta
        assert meta["chat_format"] == "llama2" and meta["max_len"] == 9 and meta["n_rows"] == 2
        assert meta["n_truncated"] == 1 and meta["eos_token_id"] == 3 and meta["pad_token_id"] == 1
        assert meta["vocab_size"] == 16
        assert not (tmp_path / "tokens_skipped.jsonl").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl", "tokens"]  # no temp folders left

    def test_keep_rows_without_target(self, tmp_path, llama_tok):
        src = write_jsonl(tmp_path / "mixed.jsonl", GOOD)
        res = tokenize_file(
            src, tmp_path / "tokens", cfg(drop_no_target=False), tokenizer=llama_tok, show_progress=False
        )
        ds, _ = load_tokens(tmp_path / "tokens")
        assert ds["line"] == [1, 2, 3, 4] and ds["n_target"] == [2, 0, 0, 1]
        assert res.n_dropped == 0 and res.n_no_target == 1 and res.n_no_target_after_truncation == 1

    def test_two_processes_same_output(self, tmp_path, llama_tok):
        rows = [GOOD[i % 4] for i in range(40)]
        src = write_jsonl(tmp_path / "mixed.jsonl", rows)
        tokenize_file(src, tmp_path / "a", cfg(num_proc=1), tokenizer=llama_tok, show_progress=False)
        tokenize_file(src, tmp_path / "b", cfg(num_proc=2, chunk_size=3), tokenizer=llama_tok, show_progress=False)
        a, _ = load_tokens(tmp_path / "a")
        b, _ = load_tokens(tmp_path / "b")
        assert a.to_dict() == b.to_dict() and len(a) == 20

    def test_bad_rows_raise_with_file_and_line(self, tmp_path, llama_tok):
        cases = {
            '{"messages": [': "not valid JSON",
            '{"text": "no messages"}': 'no "messages" field',
            '{"messages": [{"role": "gpt", "content": "x"}]}': "role 'gpt'",
            '{"messages": [{"role": "user", "content": {"a": 1}}]}': "dict content, not text",
            "[1, 2]": "a JSON list, not an object",
        }
        for bad, match in cases.items():
            src = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], "", bad])
            with pytest.raises(ValueError) as info:
                tokenize_file(src, tmp_path / "tokens", cfg(), tokenizer=llama_tok, show_progress=False)
            msg = str(info.value)
            assert msg.startswith(f"{src}:3: ") and match in msg and "--on-error skip" in msg
        assert not (tmp_path / "tokens").exists()

    def test_format_error_names_line(self, tmp_path, llama_tok):
        src = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], {"messages": msgs(("assistant", "Hi"))}])
        with pytest.raises(ValueError, match=rf"{src}:2: message 1 is 'assistant' where the llama2 format"):
            tokenize_file(src, tmp_path / "tokens", cfg(num_proc=2), tokenizer=llama_tok, show_progress=False)

    def test_skip_mode(self, tmp_path, llama_tok):
        src = write_jsonl(
            tmp_path / "mixed.jsonl",
            [GOOD[0], "{oops", {"messages": msgs(("bot", "x"))}, {"messages": msgs(("assistant", "Hi"))}, GOOD[3]],
        )
        res = tokenize_file(src, tmp_path / "tokens", cfg(on_error="skip"), tokenizer=llama_tok, show_progress=False)
        assert res.n_skipped == 3 and res.n_rows == 2 and res.n_input_rows == 5
        skipped = [json.loads(x) for x in (tmp_path / "tokens_skipped.jsonl").read_text().splitlines()]
        assert [s["line"] for s in skipped] == [2, 3, 4]
        assert skipped[0]["text"] == "{oops\n" and "not valid JSON" in skipped[0]["error"]
        assert "role 'bot'" in skipped[1]["error"]
        assert skipped[2]["text"].startswith('{"messages": [{"role": "assistant"')
        _, meta = load_tokens(tmp_path / "tokens")
        assert meta["n_skipped"] == 3 and meta["skipped_path"] == str(tmp_path / "tokens_skipped.jsonl")
        # a clean re-run removes the stale list of skipped lines
        write_jsonl(src, [GOOD[0]])
        tokenize_file(src, tmp_path / "tokens", cfg(on_error="skip"), tokenizer=llama_tok, show_progress=False)
        assert not (tmp_path / "tokens_skipped.jsonl").exists()

    def test_failure_keeps_previous_output(self, tmp_path, llama_tok):
        out = tmp_path / "tokens"
        good = write_jsonl(tmp_path / "good.jsonl", GOOD)
        tokenize_file(good, out, cfg(), tokenizer=llama_tok, show_progress=False)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0]] * 50 + ["nope"])
        with pytest.raises(ValueError, match=r"bad.jsonl:51:"):
            tokenize_file(bad, out, cfg(num_proc=2, chunk_size=4), tokenizer=llama_tok, show_progress=False)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "tokens"]

    def test_refuses_to_replace_other_folder(self, tmp_path, llama_tok):
        (tmp_path / "tokens").mkdir()
        (tmp_path / "tokens" / "notes.txt").write_text("mine")
        src = write_jsonl(tmp_path / "mixed.jsonl", GOOD)
        with pytest.raises(ValueError, match="not a tokens folder"):
            tokenize_file(src, tmp_path / "tokens", cfg(), tokenizer=llama_tok, show_progress=False)
        assert (tmp_path / "tokens" / "notes.txt").read_text() == "mine"

    def test_missing_input(self, tmp_path, llama_tok):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            tokenize_file(tmp_path / "none.jsonl", tmp_path / "tokens", cfg(), tokenizer=llama_tok)

    def test_empty_input(self, tmp_path, llama_tok):
        src = write_jsonl(tmp_path / "mixed.jsonl", [])
        res = tokenize_file(src, tmp_path / "tokens", cfg(), tokenizer=llama_tok, show_progress=False)
        ds, meta = load_tokens(tmp_path / "tokens")
        assert len(ds) == 0 and res.n_rows == 0 and meta["n_rows"] == 0


class TestLoadTokens:
    def test_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist.*longalign tokenize"):
            load_tokens(tmp_path / "tokens")

    def test_not_tokens_folder(self, tmp_path):
        (tmp_path / "x").mkdir()
        with pytest.raises(ValueError, match=f"not a tokens folder \\(no {META_FILE}\\)"):
            load_tokens(tmp_path / "x")


# --------------------------------------------------------------------------------------------------------
# config and command line
# --------------------------------------------------------------------------------------------------------


class TestConfig:
    def test_choices_validated(self):
        with pytest.raises(ValueError, match="truncation='centre' is not accepted"):
            TokenizeConfig(truncation="centre").validate()
        with pytest.raises(ValueError, match="format='chatml' is not accepted"):
            TokenizeConfig(format="chatml").validate()

    def test_shipped_yaml_files_parse(self):
        from longalign.config import build_config

        files = sorted((REPO / "configs" / "tokenize").glob("*.yaml"))
        assert files
        for f in files:
            assert f.read_text().startswith("# longalign tokenize --config ")
            build_config(TokenizeConfig, {}, config_file=f).validate()


def test_cli_run_directory(tmp_path, smol_tok, capsys):
    from longalign.cli import main
    from longalign.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.data.mkdir(parents=True)
    write_jsonl(run.mixed, [GOOD[0], GOOD[3], "{bad"])
    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text("max_len: 4096\non_error: skip\n")
    code = main(["tokenize", "--run", str(run.root), "--config", str(cfg_file), "--max-len", "64", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rows       2 written of 3 read" in out and "skipped    1 bad rows" in out
    ds, meta = load_tokens(run.tokens)
    assert len(ds) == 2 and meta["max_len"] == 64 and meta["chat_format"] == "template"
    assert meta["tokenizer"] == "SmolLM2-135M-Instruct" and meta["eos_token_id"] == 2
    assert smol_tok.decode([t for t in ds[0]["labels"] if t != X]) == "Hello<|im_end|>"
    info = json.loads(run.run_json.read_text())
    assert info["stages"]["tokenize"]["config"]["max_len"] == 64
    assert info["stages"]["tokenize"]["summary"]["n_skipped"] == 1
    assert (run.root / "tokens_skipped.jsonl").is_file()


def test_cli_needs_paths(capsys):
    from longalign.cli import main

    assert main(["tokenize"]) == 2
    assert "--run RUN" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# invariants over random conversations
# --------------------------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TEXT = st.lists(st.sampled_from(["Hi", "Hello", "Bye", "Ciao", "Again", "Sure"]), max_size=4).map(" ".join)
EXCHANGES = st.lists(st.tuples(TEXT.filter(bool), TEXT), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(exchanges=EXCHANGES, fmt=st.sampled_from(["llama2", "chatglm3"]))
def test_targets_are_exactly_the_replies(llama_tok, glm_tok, exchanges, fmt):
    tok = llama_tok if fmt == "llama2" else glm_tok
    conv = [m for u, a in exchanges for m in (("user", u), ("assistant", a))]
    row = tokenize_conversation(msgs(*conv), tok, chat_format=fmt)
    ids = tok.convert_tokens_to_ids
    expected = []  # reply words then the closing token, for every non-empty reply, in order
    for k, (_, a) in enumerate(exchanges):
        if a:
            last = k == len(exchanges) - 1
            close = "</s>" if fmt == "llama2" or last else "<|user|>"
            expected += [ids(w) for w in a.split()] + [ids(close)]
    assert row.labels[row.labels != X].tolist() == expected
    mask = row.labels != X
    assert np.array_equal(row.labels[mask], row.input_ids[mask])
    assert not row.boundary_mismatch


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 40), max_len=st.integers(2, 45), policy=st.sampled_from(["right", "left", "middle"]))
def test_truncation_keeps_a_subsequence(n, max_len, policy):
    ids = np.arange(n, dtype=np.int32) + 100
    labels = ids.copy()
    out, lab, cut = truncate(ids, labels, max_len, policy)
    assert len(out) == min(n, max_len) and cut == (n > max_len)
    assert np.array_equal(out, lab) and np.all(np.diff(out) > 0)
    if cut and policy != "left":
        assert out[0] == 100
    if cut and policy != "right":
        assert out[-1] == 100 + n - 1
