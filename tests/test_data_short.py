"""Short chat data import (ShareGPT / messages) and the long+short mix."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from longalign.data.mix import MixConfig, mix, mix_files, parse_n_long, provide_mix
from longalign.data.short import SHORT_SAMPLE, ShortConfig, load_short_data, normalize_conversation, raw_turns
from longalign.rundir import RunDir, read_jsonl


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


class TestNormalizeConversation:
    def test_sharegpt_roles_are_mapped(self):
        turns = [("human", "Hi"), ("gpt", "Hello!"), ("user", "2+2?"), ("chatgpt", "4")]
        assert normalize_conversation(turns) == [U("Hi"), A("Hello!"), U("2+2?"), A("4")]

    def test_empty_assistant_reply_removes_its_exchange(self):
        c = Counter()
        turns = [("human", "a"), ("gpt", "  "), ("human", "b"), ("gpt", "B")]
        assert normalize_conversation(turns, counts=c) == [U("b"), A("B")]
        assert c["turn:empty_assistant"] == 2

    def test_only_empty_replies_drops_conversation(self):
        c = Counter()
        assert normalize_conversation([("human", "a"), ("gpt", "")], counts=c) is None
        assert c["conversation:no_exchange_left"] == 1

    def test_trailing_user_turn_dropped(self):
        c = Counter()
        out = normalize_conversation([("human", "a"), ("gpt", "A"), ("human", "unanswered")], counts=c)
        assert out == [U("a"), A("A")]
        assert c["turn:trailing_user"] == 1

    def test_system_dropped_by_default_kept_leading_on_request(self):
        turns = [("system", "Be brief."), ("human", "a"), ("gpt", "A"), ("system", "late")]
        c = Counter()
        assert normalize_conversation(turns, counts=c) == [U("a"), A("A")]
        assert c["turn:system"] == 2
        c = Counter()
        out = normalize_conversation(turns, system_policy="keep-leading", counts=c)
        assert out == [{"role": "system", "content": "Be brief."}, U("a"), A("A")]
        assert c["turn:system"] == 1

    def test_unknown_role_policies(self):
        turns = [("human", "a"), ("tool", "{}"), ("gpt", "A")]
        c = Counter()
        assert normalize_conversation(turns, counts=c) is None
        assert c["conversation:unknown_role"] == 1
        c = Counter()
        assert normalize_conversation(turns, unknown_role_policy="drop-turn", counts=c) == [U("a"), A("A")]
        assert c["turn:unknown_role"] == 1

    def test_same_role_turns_merged_and_leading_assistant_dropped(self):
        c = Counter()
        turns = [("gpt", "Welcome"), ("human", "part 1"), ("human", "part 2"), ("gpt", "ok")]
        assert normalize_conversation(turns, counts=c) == [U("part 1\n\npart 2"), A("ok")]
        assert c["turn:leading_assistant"] == 1 and c["turn:merged_same_role"] == 1

    def test_bad_policy_names_choices(self):
        with pytest.raises(ValueError, match="keep-leading"):
            normalize_conversation([("human", "a"), ("gpt", "b")], system_policy="keep")


class TestRawTurns:
    def test_messages_format(self):
        assert raw_turns({"messages": [U("x"), A("y")]}, "f:1") == [("user", "x"), ("assistant", "y")]

    def test_error_names_location(self):
        with pytest.raises(ValueError, match=r"f\.jsonl:3: no 'conversations'"):
            raw_turns({"text": "x"}, "f.jsonl:3")
        with pytest.raises(ValueError, match=r"f\.jsonl:4: turn 1 text must be a string"):
            raw_turns({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": 3}]}, "f.jsonl:4")


def _sharegpt(*pairs):
    return {"conversations": [{"from": r, "value": v} for r, v in pairs]}


class TestLoadShortData:
    def test_json_list_and_jsonl_with_counts(self, tmp_path):
        sg = tmp_path / "sharegpt_part.json"
        sg.write_text(
            json.dumps(
                [
                    _sharegpt(("human", "Hi"), ("gpt", "Hello")),
                    _sharegpt(("human", "Hi"), ("gpt", "Hello")),  # duplicate
                    _sharegpt(("human", "Q"), ("gpt", "")),  # nothing left
                    _sharegpt(("human", "你好，请介绍一下长文本模型"), ("gpt", "好的")),
                ]
            ),
            encoding="utf-8",
        )
        msgs = tmp_path / "chats.jsonl"
        msgs.write_text(json.dumps({"messages": [U("x?"), A("y"), U("dangling")]}) + "\n", encoding="utf-8")
        records, report = load_short_data(ShortConfig(inputs=[str(sg), str(msgs)]))
        assert report.read == 5 and report.kept == 3
        assert report.dropped_conversations == {"duplicate": 1, "no_exchange_left": 1}
        assert report.dropped_turns == {"empty_assistant": 2, "trailing_user": 1}
        assert report.by_input == {str(sg): 2, str(msgs): 1}
        assert [r["source"] for r in records] == ["sharegpt", "sharegpt", "chats"]
        assert [r["lang"] for r in records] == ["en", "zh", "en"]
        assert all(r["task_type"] == "chat" for r in records)

    def test_bad_json_line_names_file_and_line(self, tmp_path):
        f = tmp_path / "bad.jsonl"
        f.write_text(json.dumps(_sharegpt(("human", "a"), ("gpt", "b"))) + "\n{oops\n", encoding="utf-8")
        with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
            load_short_data(ShortConfig(inputs=[str(f)]))

    def test_bad_record_in_json_list_names_index(self, tmp_path):
        f = tmp_path / "list.json"
        f.write_text(json.dumps([_sharegpt(("human", "a"), ("gpt", "b")), {"foo": 1}]), encoding="utf-8")
        with pytest.raises(ValueError, match=r"list\.json\[1\]: no 'conversations'"):
            load_short_data(ShortConfig(inputs=[str(f)]))

    def test_no_inputs_is_a_clear_error(self):
        with pytest.raises(ValueError, match="--inputs"):
            load_short_data(ShortConfig())

    def test_max_conversations_is_seeded(self, tmp_path):
        f = tmp_path / "c.jsonl"
        f.write_text("".join(json.dumps({"messages": [U(f"q{i}"), A(f"a{i}")]}) + "\n" for i in range(10)))
        a, rep = load_short_data(ShortConfig(inputs=[str(f)], max_conversations=4, seed=1))
        b, _ = load_short_data(ShortConfig(inputs=[str(f)], max_conversations=4, seed=1))
        assert a == b and len(a) == 4 and rep.dropped_conversations == {"over_max_conversations": 6}


class TestMix:
    LONG = [
        {
            "messages": [U(f"doc{i}\n\nq"), A("a")],
            "doc_id": f"d{i}",
            "source": "pydoc",
            "lang": "en",
            "task_type": "general",
        }
        for i in range(6)
    ]
    SHORT = [{"messages": [U(f"s{i}"), A("r")], "source": "sharegpt", "task_type": "chat"} for i in range(4)]

    def test_parse_n_long(self):
        assert parse_n_long("all") is None
        assert parse_n_long("5k") == 5000 and parse_n_long("0k") == 0 and parse_n_long("12") == 12
        with pytest.raises(ValueError, match="0k/5k/10k"):
            parse_n_long("lots")

    def test_all_short_plus_k_long_shuffled_seeded(self):
        out, counts = mix(self.LONG, self.SHORT, n_long=3, seed=7)
        assert counts["long"] == 3 and counts["short"] == 4 and counts["total"] == 7
        assert sum(r["kind"] == "short" for r in out) == 4
        assert len({r["doc_id"] for r in out if r["kind"] == "long"}) == 3
        again, _ = mix(self.LONG, self.SHORT, n_long=3, seed=7)
        assert again == out
        other, _ = mix(self.LONG, self.SHORT, n_long=3, seed=8)
        assert other != out

    def test_zero_and_all(self):
        out, counts = mix(self.LONG, self.SHORT, n_long="0k")
        assert counts["long"] == 0 and len(out) == 4
        out, counts = mix(self.LONG, self.SHORT, n_long="all")
        assert counts["long"] == 6 and len(out) == 10

    def test_too_many_long_is_a_clear_error(self):
        with pytest.raises(ValueError, match="only 6 exist"):
            mix(self.LONG, self.SHORT, n_long="5k")

    def test_mix_files(self, tmp_path):
        lp, sp, out = tmp_path / "long.jsonl", tmp_path / "short.jsonl", tmp_path / "mixed.jsonl"
        lp.write_text("".join(json.dumps(r) + "\n" for r in self.LONG))
        sp.write_text("".join(json.dumps(r) + "\n" for r in self.SHORT))
        counts = mix_files(lp, sp, out, n_long=2, seed=0)
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert counts["total"] == len(lines) == 6
        assert MixConfig().n_long == "all"


def test_provide_mix_copies_a_source_mix_or_falls_back_to_the_sample(tmp_path):
    empty, run = RunDir(tmp_path / "none"), RunDir(tmp_path / "a")
    assert provide_mix(run, empty, seed=0) == SHORT_SAMPLE
    mixed, shorts = read_jsonl(run.mixed), read_jsonl(run.short)
    assert mixed and {r["kind"] for r in mixed} == {"short"} and len(mixed) == len(shorts)
    assert len(shorts) == len(load_short_data(ShortConfig(inputs=[str(SHORT_SAMPLE)]))[0])
    source = RunDir(tmp_path / "src")
    source.data.mkdir(parents=True)
    source.mixed.write_text(json.dumps({"messages": [], "kind": "long"}) + "\n")
    later = RunDir(tmp_path / "b")
    assert provide_mix(later, source) == source.mixed
    assert later.mixed.read_text() == source.mixed.read_text() and not later.short.exists()


class TestOnError:
    """Bad records of a user file: raise naming file:line (and the skip flag), or skip, count and list them."""

    GOOD = [_sharegpt(("human", f"question {i}?"), ("gpt", f"answer {i}")) for i in range(3)]

    def write(self, folder, with_bad: bool, kind: str):
        folder.mkdir(parents=True, exist_ok=True)
        good = [{"messages": [U(f"q{i}?"), A(f"a{i}")]} for i in range(3)] if kind == "messages" else self.GOOD
        if kind == "json":
            items = list(good)
            if with_bad:
                items.insert(1, {"conversations": "not a list"})
            path = folder / "chats.json"
            path.write_text(json.dumps(items), encoding="utf-8")
            return path
        lines = [json.dumps(r) for r in good]
        if with_bad:
            lines.insert(1, "{oops")  # line 2
            lines.insert(3, json.dumps({"messages": [{"content": "no role"}, A("x")]}))  # line 4
        path = folder / "chats.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @pytest.mark.parametrize("kind", ["sharegpt", "messages"])
    def test_raise_names_file_line_and_the_fix(self, tmp_path, kind):
        path = self.write(tmp_path, True, kind)
        with pytest.raises(ValueError, match=r"chats\.jsonl:2: not valid JSON.*--on-error skip"):
            load_short_data(ShortConfig(inputs=[str(path)]))

    @pytest.mark.parametrize("kind", ["sharegpt", "messages"])
    def test_skip_reads_the_clean_file(self, tmp_path, kind):
        bad, clean = self.write(tmp_path / "bad", True, kind), self.write(tmp_path / "clean", False, kind)
        records, report = load_short_data(ShortConfig(inputs=[str(bad)], on_error="skip"))
        expected, clean_report = load_short_data(ShortConfig(inputs=[str(clean)]))
        assert records == expected
        assert (report.read, report.kept) == (clean_report.read, clean_report.kept) == (3, 3)
        assert report.dropped_conversations == clean_report.dropped_conversations
        assert report.skipped["total"] == 2
        assert report.skipped["by_reason"] == {"invalid_json": 1, "missing_field": 1}
        assert [e["at"] for e in report.skipped["first"]] == [f"{bad}:2", f"{bad}:4"]
        text = "\n".join(report.lines())
        assert "skipped 2 bad records (invalid_json 1, missing_field 1)" in text and f"{bad}:4: turn 0" in text

    def test_skip_in_a_json_list(self, tmp_path):
        bad, clean = self.write(tmp_path / "bad", True, "json"), self.write(tmp_path / "clean", False, "json")
        with pytest.raises(ValueError, match=r"chats\.json\[1\]: 'conversations' must be a list.*--on-error skip"):
            load_short_data(ShortConfig(inputs=[str(bad)]))
        records, report = load_short_data(ShortConfig(inputs=[str(bad)], on_error="skip"))
        assert records == load_short_data(ShortConfig(inputs=[str(clean)]))[0]
        assert report.skipped["by_reason"] == {"wrong_shape": 1}
        assert report.skipped["first"][0]["at"] == f"{bad}[1]"

    def test_flag_in_cli_help(self):
        import argparse

        from longalign.config import add_config_args

        parser = argparse.ArgumentParser()
        add_config_args(parser, ShortConfig)
        text = parser.format_help()
        assert "--on-error {raise,skip}" in text
        assert ShortConfig(on_error="skip").on_error == "skip"
        with pytest.raises(ValueError, match="on_error"):
            ShortConfig(on_error="ignore")
