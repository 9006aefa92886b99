"""Choosing which dashboard pages the screenshot tool shoots (no browser needed)."""

from __future__ import annotations

import pytest

from longalign.recipes import screenshots
from longalign.recipes.screenshots.__main__ import main


def test_an_empty_list_selects_every_page_and_names_keep_the_dashboards_order():
    assert screenshots.select_pages("") == screenshots.PAGES
    assert [n for _, n, _ in screenshots.select_pages("needle, ladder,home")] == ["home", "needle", "ladder"]


def test_an_unknown_page_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown page.*laddr.*valid: home, lengths"):
        screenshots.select_pages("ladder,laddr")


def test_the_command_refuses_an_unknown_page_before_starting_a_server(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    assert main(["--runs", str(tmp_path), "--run", "demo", "--pages", "nope"]) == 2
    assert "--pages: unknown page(s) nope" in capsys.readouterr().err
