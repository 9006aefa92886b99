"""longalign.views.style: colours and number formats."""

from __future__ import annotations

from longalign.views import style


def test_format_count():
    assert [style.format_count(x) for x in (999, 12345, 1_636_644, 2.5e9)] == ["999", "12.3k", "1.64M", "2.5B"]
    assert style.format_count(float("nan")) == "—"
    assert [style.format_tokens(x) for x in (500, 8192, 65536)] == ["500", "8k", "64k"]


def test_colors_are_distinct():
    c = style.colors_for(["naive", "pack", "pack-loss-pack", "x", "sort"])
    assert c["naive"] == style.METHOD_COLORS["naive"] and len(set(c.values())) == 5
