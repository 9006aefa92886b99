"""The label strip: one span per token, coloured by its label, with the decoded text escaped."""

from __future__ import annotations

import re

import pytest

from longalign import IGNORE_INDEX
from longalign.tokenize.display import CONTEXT_COLOUR, TARGET_COLOUR, label_strip_html


class PieceTokenizer:
    """decode([i]) -> PIECES[i], as a real tokenizer decodes one token."""

    PIECES = ["<|im_start|>", "user", "\n", "a & b", " <b>", "ok", "<|im_end|>"]

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


def _spans(html_text):
    return re.findall(r'<span style="background:(#[0-9A-F]{6});[^"]*">(.*?)</span>', html_text)


def test_colours_follow_the_labels_and_text_is_escaped():
    ids = [0, 1, 2, 3, 4, 5, 6]
    labels = [IGNORE_INDEX] * 4 + [4, 5, 6]
    out = label_strip_html(PieceTokenizer(), ids, labels)
    spans = _spans(out)
    assert [c for c, _ in spans] == [CONTEXT_COLOUR] * 4 + [TARGET_COLOUR] * 3
    assert [t for _, t in spans] == [
        "&lt;|im_start|&gt;",
        "user",
        "⏎",
        "a &amp; b",
        " &lt;b&gt;",
        "ok",
        "&lt;|im_end|&gt;",
    ]
    assert "<b>" not in out and out.startswith("<div") and out.endswith("</div>")


def test_limit_and_errors():
    ids, labels = [1, 5] * 10, [IGNORE_INDEX, 5] * 10
    assert len(_spans(label_strip_html(PieceTokenizer(), ids, labels, limit=3))) == 3
    assert len(_spans(label_strip_html(PieceTokenizer(), ids, labels, limit=None))) == 20
    with pytest.raises(ValueError, match="3 input_ids but 2 labels"):
        label_strip_html(PieceTokenizer(), [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="limit"):
        label_strip_html(PieceTokenizer(), ids, labels, limit=-1)
