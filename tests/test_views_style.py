"""longalign.views.style: colours and number formats."""

from __future__ import annotations

from longalign.views import style


def test_format_count():
    assert [style.format_count(x) for x in (999, 12345, 1_636_644, 2.5e9)] == ["999", "12.3k", "1.64M", "2.5B"]
    assert style.format_count(float("nan")) == "—"
    assert [style.format_tokens(x) for x in (500, 8192, 65536, 1500, 0)] == ["500", "8k", "64k", "1,500", "0"]


def test_colors_are_distinct():
    c = style.colors_for(["naive", "pack", "pack-loss-pack", "x", "sort"])
    assert c["naive"] == style.METHOD_COLORS["naive"] and len(set(c.values())) == 5


def test_signed_differences_and_their_colour():
    assert [style.signed(x) for x in (0.2, -0.4, 0.0, -0.001, float("nan"))] == ["+0.20", "−0.40", "0.00", "0.00", "—"]
    assert style.signed(-0.3999, 3) == "−0.400"
    assert style.change_color(-0.2, "higher").startswith(f"color: {style.WORSE_COLOR};")  # a lower score is worse
    assert style.change_color(-0.2, "lower").startswith(f"color: {style.BETTER_COLOR};")  # a lower loss is better
    assert style.change_color(0.3, None) == "" and style.change_color(0.0, "higher") == ""


def test_format_seconds():
    assert [style.format_seconds(x) for x in (0.4, 3.61, 100.5, 1530.2, 40000, 0.0031)] == [
        "0.40 s",
        "3.61 s",
        "100 s",
        "1,530 s",
        "11.1 h",
        "3.1e-03 s",
    ]
