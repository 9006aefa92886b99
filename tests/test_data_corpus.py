"""Corpus reading, language detection, length filtering and length-weighted sampling."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from longalign.data.corpus import (
    BUILTIN_SOURCES,
    CorpusConfig,
    build_corpus,
    builtin_documents,
    count_tokens,
    detect_lang,
    length_bucket,
    read_corpus,
    read_folder_documents,
    read_jsonl_documents,
    sample_by_length,
    select_documents,
)


class WordTokenizer:
    """One token per whitespace-separated word: exact, predictable counts for filter tests."""

    def __call__(self, texts, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [[0] * len(t.split()) for t in texts]}


def words(n: int, word: str = "lorem") -> str:
    return " ".join([word] * n)


class TestDetectLang:
    @pytest.mark.parametrize(
        "text,lang",
        [
            ("The quick brown fox jumps over the lazy dog.", "en"),
            ("长文本对齐需要高质量的指令数据，以及高效的训练方法。", "zh"),
            ("这个函数 load_tokenizer() 返回 tokenizer 对象，用来计算长度。", "zh"),
            ("これは日本語の文章です。ひらがなとカタカナ。", "ja"),
            ("한국어 문장입니다", "ko"),
            ("Привет, как дела? Это русский текст.", "ru"),
            ("12345 67890 !!! ???", "unknown"),
            ("", "unknown"),
        ],
    )
    def test_scripts(self, text, lang):
        assert detect_lang(text) == lang


class TestReaders:
    def test_jsonl_fields_and_default_ids(self, tmp_path):
        f = tmp_path / "docs.jsonl"
        f.write_text(
            json.dumps({"text": "a b", "id": 7, "source": "web", "lang": "en", "url": "u"})
            + "\n\n"
            + json.dumps({"text": "c"})
            + "\n",
            encoding="utf-8",
        )
        docs = read_jsonl_documents(f)
        assert [(d["id"], d["source"], d["lang"]) for d in docs] == [("7", "web", "en"), ("docs:3", "docs", None)]
        assert docs[0]["url"] == "u"

    def test_bad_json_names_file_and_line(self, tmp_path):
        f = tmp_path / "docs.jsonl"
        f.write_text('{"text": "ok"}\n{"text": "broken\n', encoding="utf-8")
        with pytest.raises(ValueError, match=r"docs\.jsonl:2: not valid JSON"):
            read_jsonl_documents(f)

    def test_missing_text_names_file_and_line(self, tmp_path):
        f = tmp_path / "docs.jsonl"
        f.write_text('{"text": "ok"}\n{"body": "x"}\n', encoding="utf-8")
        with pytest.raises(ValueError, match=r"docs\.jsonl:2: missing 'text' string \(keys present: body\)"):
            read_jsonl_documents(f)

    def test_duplicate_id_names_both_lines(self, tmp_path):
        f = tmp_path / "docs.jsonl"
        f.write_text('{"text": "a", "id": "x"}\n{"text": "b", "id": "x"}\n', encoding="utf-8")
        with pytest.raises(ValueError, match=r"docs\.jsonl:2: id 'x' already used on line 1"):
            read_jsonl_documents(f)

    def test_folder(self, tmp_path):
        (tmp_path / "sub").mkdir()
        (tmp_path / "b.md").write_text("# B", encoding="utf-8")
        (tmp_path / "sub" / "a.txt").write_text("A", encoding="utf-8")
        (tmp_path / "skip.py").write_text("x", encoding="utf-8")
        assert [d["id"] for d in read_folder_documents(tmp_path)] == ["b.md", "sub/a.txt"]

    def test_builtin_sources_exist_and_are_tagged(self):
        docs = builtin_documents(BUILTIN_SOURCES)
        by = Counter(d["source"] for d in docs)
        assert by["stdlib-code"] > 100 and by["pydoc"] > 20 and by["package-docs"] > 5 and by["license"] > 5
        assert len({d["id"] for d in docs}) == len(docs)

    def test_unknown_builtin_source(self):
        with pytest.raises(ValueError, match="'stdlib-code'"):
            builtin_documents(["wikipedia"])


class TestSampling:
    def test_length_bucket(self):
        edges = [10, 20]
        assert [length_bucket(n, edges) for n in (0, 9, 10, 19, 20, 999)] == [0, 0, 1, 1, 2, 2]

    def test_longer_documents_are_upsampled(self):
        docs = [{"id": i, "n_tokens": 5 if i < 500 else 50} for i in range(1000)]
        picked = sample_by_length(docs, 100, [10], [1.0, 4.0], seed=0)
        long_share = sum(d["n_tokens"] == 50 for d in picked) / 100
        assert 0.7 < long_share < 0.9  # 4:1 weights -> ~80% with half the pool long
        assert picked == sample_by_length(docs, 100, [10], [1.0, 4.0], seed=0)
        assert len({d["id"] for d in picked}) == 100

    def test_bucket_checks(self):
        with pytest.raises(ValueError, match="one more than bucket_edges"):
            sample_by_length([], 1, [10, 20], [1.0, 2.0], 0)


class TestBuildCorpus:
    def make_docs(self):
        lens = [3, 8, 12, 20, 30, 45, 60, 80, 100, 150]
        return [{"id": f"d{n}", "source": "s", "lang": None, "text": words(n)} for n in lens] + [
            {"id": "dup", "source": "s", "lang": None, "text": words(30)},
            {"id": "zh", "source": "s", "lang": None, "text": " ".join(["长文本"] * 12)},
        ]

    def test_filter_by_tokens_dedupe_and_write(self, tmp_path):
        out = tmp_path / "corpus.jsonl"
        cfg = CorpusConfig(min_tokens=10, max_tokens=100, n_docs=0, bucket_edges=[50], bucket_weights=[1, 2])
        docs, summary = build_corpus(cfg, out, tokenizer=WordTokenizer(), docs=self.make_docs())
        assert sorted(d["id"] for d in docs) == ["d100", "d12", "d20", "d30", "d45", "d60", "d80", "zh"]
        assert summary["dropped"] == {"duplicate": 1, "too_long": 1, "too_short": 2}
        assert summary["by_lang"] == {"en": 7, "zh": 1}
        assert summary["by_bucket"] == {"0-50": 5, "50+": 3}
        lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert [set(r) >= {"id", "source", "lang", "n_tokens", "text"} for r in lines] == [True] * 8
        assert read_corpus(out) == lines

    def test_sampled_subset_is_seeded_and_filtered(self):
        cfg = CorpusConfig(
            min_tokens=10, max_tokens=100, n_docs=3, bucket_edges=[50], bucket_weights=[1, 2], batch_size=2, seed=3
        )
        a, summary = build_corpus(cfg, tokenizer=WordTokenizer(), docs=self.make_docs())
        b, _ = build_corpus(cfg, tokenizer=WordTokenizer(), docs=self.make_docs())
        assert [d["id"] for d in a] == [d["id"] for d in b] and len(a) == 3
        assert all(10 <= d["n_tokens"] <= 100 for d in a)

    def test_language_filter(self):
        cfg = CorpusConfig(min_tokens=1, max_tokens=1000, n_docs=0, langs=["zh"])
        docs, summary = build_corpus(cfg, tokenizer=WordTokenizer(), docs=self.make_docs())
        assert [d["id"] for d in docs] == ["zh"] and summary["dropped"]["language"] == 10

    def test_bad_ranges(self):
        with pytest.raises(ValueError, match="min_tokens"):
            build_corpus(CorpusConfig(min_tokens=10, max_tokens=5), docs=[], tokenizer=WordTokenizer())

    def test_missing_input(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="neither 'builtin'"):
            build_corpus(CorpusConfig(input=str(tmp_path / "nope.jsonl")), tokenizer=WordTokenizer())

    def test_corpus_read_error_names_line(self, tmp_path):
        f = tmp_path / "corpus.jsonl"
        f.write_text('{"id": "a", "text": "x"}\n{"id": "b"}\n', encoding="utf-8")
        with pytest.raises(ValueError, match=r"corpus\.jsonl:2: a corpus record needs 'id' and 'text'"):
            read_corpus(f)


def test_builtin_corpus_with_real_tokenizer(tmp_path):
    """The default path end to end: built-in texts measured with the embedded tokenizer."""
    from longalign.models import load_tokenizer

    tok = load_tokenizer(None)
    cfg = CorpusConfig(n_docs=5, min_tokens=800, max_tokens=2000, builtin_sources=["pydoc", "license"])
    docs, summary = build_corpus(cfg, tmp_path / "c.jsonl", tokenizer=tok)
    assert len(docs) == 5 and summary["written"] == 5
    for d in docs:
        assert 800 <= d["n_tokens"] <= 2000
        assert d["n_tokens"] == len(tok(d["text"], add_special_tokens=False)["input_ids"])
        assert d["source"] in ("pydoc", "license")
    assert count_tokens(["a b c", ""], tok) == [len(tok("a b c", add_special_tokens=False)["input_ids"]), 0]


def test_select_documents_keeps_the_order_and_fills_missing_ids_with_the_shortest():
    docs = [
        {"id": "a", "n_tokens": 900},
        {"id": "b", "n_tokens": 300},
        {"id": "c", "n_tokens": 100},
        {"id": "d", "n_tokens": 200},
    ]
    assert [d["id"] for d in select_documents(docs, ["b", "a"])] == ["b", "a"]
    # missing ids take the shortest documents not asked for, in length order
    assert [d["id"] for d in select_documents(docs, ["gone", "c", "also-gone"])] == ["d", "c", "b"]
    with pytest.raises(ValueError, match="ask for fewer ids"):
        select_documents(docs[:1], ["x", "y"])


class TestOnError:
    """Bad lines of a user file: raise naming file:line (and the skip flag), or skip, count and list them."""

    GOOD = [{"id": f"d{i}", "text": words(5 + i), "source": "s"} for i in range(4)]
    BAD = ["{not json", json.dumps({"id": "x", "body": "no text"})]  # lines 2 and 4 of the file

    def write(self, folder, with_bad: bool):
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(d) for d in self.GOOD]
        if with_bad:
            lines.insert(1, self.BAD[0])
            lines.insert(3, self.BAD[1])
        path = folder / "docs.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def test_raise_names_file_line_and_the_fix(self, tmp_path):
        path = self.write(tmp_path / "bad", True)
        with pytest.raises(ValueError, match=r"docs.jsonl:2: not valid JSON.*--on-error skip"):
            read_jsonl_documents(path)
        with pytest.raises(ValueError, match=r"docs.jsonl:2: not valid JSON.*--on-error skip"):
            build_corpus(CorpusConfig(input=str(path), min_tokens=0, n_docs=0), tokenizer=WordTokenizer())

    def test_skip_reads_the_clean_file(self, tmp_path):
        from longalign.rundir import BadRecords

        bad_path, clean_path = self.write(tmp_path / "bad", True), self.write(tmp_path / "clean", False)
        skipped = BadRecords("skip")
        assert read_jsonl_documents(bad_path, skipped=skipped) == read_jsonl_documents(clean_path)
        assert skipped.to_dict()["by_reason"] == {"invalid_json": 1, "missing_field": 1}
        assert [e["at"] for e in skipped.to_dict()["first"]] == [f"{bad_path}:2", f"{bad_path}:4"]

    def test_skip_in_the_stage_summary(self, tmp_path):
        from longalign.data.corpus import run
        from longalign.rundir import read_jsonl

        bad_path, clean_path = self.write(tmp_path / "bad", True), self.write(tmp_path / "clean", False)
        kw = dict(min_tokens=0, n_docs=0)
        s = run(CorpusConfig(input=str(bad_path), on_error="skip", **kw), tmp_path / "run1", tokenizer=WordTokenizer())
        c = run(CorpusConfig(input=str(clean_path), **kw), tmp_path / "run2", tokenizer=WordTokenizer())
        assert read_jsonl(s.path) == read_jsonl(c.path)
        assert (s.read, s.written, s.tokens) == (c.read, c.written, c.tokens)
        assert s.skipped["total"] == 2 and s.skipped["by_reason"] == {"invalid_json": 1, "missing_field": 1}
        assert c.skipped["total"] == 0
        text = "\n".join(s.lines())
        assert "skipped 2 bad records (invalid_json 1, missing_field 1)" in text
        assert f"{bad_path}:2:" in text and f"{bad_path}:4:" in text

    def test_folder_skips_a_file_that_is_not_utf8(self, tmp_path):
        from longalign.rundir import BadRecords

        for folder in ("bad", "clean"):
            (tmp_path / folder).mkdir()
            (tmp_path / folder / "a.txt").write_text("alpha text", encoding="utf-8")
            (tmp_path / folder / "c.md").write_text("gamma text", encoding="utf-8")
        (tmp_path / "bad" / "b.txt").write_bytes(b"\xff\xfe broken")
        with pytest.raises(ValueError, match=r"b.txt: not UTF-8.*--on-error skip"):
            read_folder_documents(tmp_path / "bad")
        skipped = BadRecords("skip")
        docs = read_folder_documents(tmp_path / "bad", skipped=skipped)
        clean = read_folder_documents(tmp_path / "clean")
        strip = [{k: v for k, v in d.items() if k != "source"} for d in docs]  # source = folder name
        assert strip == [{k: v for k, v in d.items() if k != "source"} for d in clean]
        assert skipped.to_dict()["by_reason"] == {"not_utf8": 1}
        assert skipped.to_dict()["first"][0]["at"] == str(tmp_path / "bad" / "b.txt")
