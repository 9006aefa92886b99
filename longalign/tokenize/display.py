"""The label mask of one tokenized row as an HTML strip: one box per token, green where the loss is taken.

Each token is decoded on its own, so a multi-byte character split over two tokens shows as two partial
pieces (the tokenizer's replacement character), which is what the model sees. The strip is plain inline
HTML (no scripts, no stylesheet), so it renders in Jupyter, Streamlit's ``st.html`` and a saved page alike.
Each token costs about 105 bytes of markup, hence the default ``limit`` of 400 tokens (~42 kB); a whole 64k-token
row would be ~7 MB, more than a notebook output or a browser tab handles comfortably.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from longalign import IGNORE_INDEX

TARGET_COLOUR = "#C7E9C0"  # label is a target: the model is trained to write this token
CONTEXT_COLOUR = "#EEEEEE"  # label -100: context, no loss
NEWLINE_MARK = "⏎"


def label_strip_html(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], limit: int | None = 400) -> str:
    """HTML of the first ``limit`` tokens of a row (all of them for ``None``), each on a green background
    when its label is a target and grey when it is ``-100``; newlines show as ``⏎`` so the strip stays on
    few lines, and the decoded text is HTML-escaped."""
    ids, labs = list(input_ids), list(labels)
    if len(ids) != len(labs):
        raise ValueError(f"{len(ids)} input_ids but {len(labs)} labels; pass one row's input_ids and labels")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    spans = []
    for token, label in list(zip(ids, labs))[:limit]:
        piece = html.escape(tokenizer.decode([int(token)]), quote=False).replace("\n", NEWLINE_MARK)
        colour = TARGET_COLOUR if label != IGNORE_INDEX else CONTEXT_COLOUR
        spans.append(
            f'<span style="background:{colour};border:1px solid #fff;font-family:monospace;'
            f'font-size:12px">{piece}</span>'
        )
    return "<div style='line-height:1.9'>" + "".join(spans) + "</div>"
