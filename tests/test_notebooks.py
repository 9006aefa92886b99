"""The stage notebooks: each ``notebooks/NN_name.py`` (jupytext percent format) is the source of its paired
``NN_name.ipynb``, and the committed ``.ipynb`` is clean.

* In sync: the same cells (type, source, tags) read through jupytext from both files. An ``.ipynb`` edited
  without its ``.py`` (or the reverse) fails here, naming the first differing cell and the command that
  refreshes it (``jupytext --sync``, see ``notebooks/README.md``).
* Clean: no outputs and no execution counts (outputs in git make every re-run a large diff and can leak
  local paths or keys), exactly the first code cell tagged ``parameters`` (papermill and CI override the toy
  defaults there), and a markdown title first.

Executing the notebooks is a separate, slower check (``pytest notebooks --nbmake``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = (
    "01_data_construction",
    "02_tokenize_and_pack",
    "03_loss_weighting",
    "04_training",
    "05_evaluation",
    "06_ablation",
)
PAIRING = "ipynb,py:percent"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def _show(text: str, width: int = 70) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return repr(first[:width] + ("…" if len(first) > width else ""))


def notebook_drift(ipynb: Path) -> list[str]:
    """What differs between ``ipynb`` and its paired percent-format source (``[]`` when in sync)."""
    source = ipynb.with_suffix(".py")
    if not source.is_file():
        return [
            f"{ipynb.name} has no paired source {source.name}; create it with "
            f"`jupytext --set-formats {PAIRING} notebooks/{ipynb.name}`"
        ]
    nb = jupytext.read(ipynb)
    problems = []
    formats = nb.metadata.get("jupytext", {}).get("formats")
    if formats != PAIRING:
        problems.append(f"{ipynb.name}: metadata jupytext.formats is {formats!r}, expected {PAIRING!r}")
    a, b = _cells(jupytext.read(source)), _cells(nb)
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            what = "cell type" if x[0] != y[0] else "source" if x[1] != y[1] else "tags"
            problems.append(
                f"cell {k} differs in its {what}: {source.name} has {x[0]} {_show(x[1])} (tags {x[2]}), "
                f"{ipynb.name} has {y[0]} {_show(y[1])} (tags {y[2]})"
            )
            break
    if len(a) != len(b):
        problems.append(f"{source.name} has {len(a)} cells, {ipynb.name} has {len(b)}")
    if problems:
        problems.append(
            f"edit {source.name}, then refresh the notebook with `jupytext --to ipynb --update "
            f"notebooks/{source.name}` (or `jupytext --sync`, which takes the newer file as source)"
        )
    return problems


def dirty_cells(nb) -> list[int]:
    """Indices of code cells that hold outputs or an execution count."""
    return [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]


def test_every_stage_has_a_notebook_and_a_source():
    assert [p.stem for p in NOTEBOOKS if p.stem in EXPECTED] == list(EXPECTED)
    sources = {p.stem for p in NB_DIR.glob("[0-9]*.py")}
    assert sources == {p.stem for p in NOTEBOOKS}, "every notebooks/NN_name.py pairs with an .ipynb and back"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    path = request.param
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return path, nb


def test_ipynb_is_in_sync_with_its_source(notebook):
    path, _ = notebook
    problems = notebook_drift(path)
    assert not problems, "\n".join(problems)


def test_no_outputs_or_execution_counts(notebook):
    path, nb = notebook
    dirty = dirty_cells(nb)
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs; clear them with "
        f"`jupyter nbconvert --clear-output --inplace notebooks/{path.name}`"
    )


def test_first_code_cell_is_tagged_parameters(notebook):
    path, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: exactly the first code cell must be tagged 'parameters' (got {tagged})"
    # a parameters cell holds plain assignments only, so papermill can append overrides after it
    source = code[0].source
    compile(source, f"{path.name}:parameters", "exec")
    for line in source.splitlines():
        stripped = line.split("#", 1)[0].strip()
        assert not stripped or "=" in stripped or stripped.startswith(("]", "}", ")", '"', "'")), (
            f"{path.name}: parameters cell line {line!r} is not an assignment"
        )


def test_opens_with_a_markdown_title(notebook):
    path, nb = notebook
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# "), (
        f"{path.name}: the first cell should be a markdown title"
    )


def test_says_what_to_try(notebook):
    """One 'Try this' per notebook: a change to make and what to expect from it."""
    path, nb = notebook
    tries = [c.source for c in nb.cells if c.cell_type == "markdown" and "**Try this:**" in c.source]
    assert len(tries) == 1, f"{path.name}: expected one markdown cell with '**Try this:**', found {len(tries)}"
    text = tries[0].split("**Try this:**", 1)[1]
    assert re.search(r"\bset `[^`]+ = [^`]+`", text), f"{path.name}: 'Try this' should name a setting to change"
    assert re.search(r"\b(then|now|stays|rises|drops|quicker|more|fewer|noise)\b", text), (
        f"{path.name}: 'Try this' should say what to expect"
    )


def offline_problems(source: str) -> list[str]:
    """Why the figures of a notebook source would not draw in an offline HTML export (plotly.js from a CDN)."""
    import plotly.io as pio

    problems = []
    found = re.findall(r"pio\.renderers\.default\s*=\s*[\"']([^\"']+)[\"']", source)
    if not found:
        problems.append("sets no plotly renderer (pio.renderers.default)")
    for spec in found:
        for name in spec.split("+"):
            renderer = pio.renderers[name]
            if getattr(renderer, "connected", False) or getattr(renderer, "include_plotlyjs", None) == "cdn":
                problems.append(f"renderer {name!r} loads plotly.js from a CDN")
    if re.search(r"include_plotlyjs\s*=\s*[\"']cdn[\"']", source):
        problems.append("writes HTML with include_plotlyjs='cdn'")
    return problems


def test_figures_draw_offline_in_an_html_export(notebook):
    path, _ = notebook
    problems = offline_problems(path.with_suffix(".py").read_text(encoding="utf-8"))
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_offline_check_catches_a_cdn_renderer():
    assert offline_problems('pio.renderers.default = "plotly_mimetype+notebook"') == []
    assert offline_problems('pio.renderers.default = "plotly_mimetype+notebook_connected"') == [
        "renderer 'notebook_connected' loads plotly.js from a CDN"
    ]
    assert (
        "include_plotlyjs='cdn'"
        in offline_problems('pio.renderers.default = "notebook"\nfig.write_html(p, include_plotlyjs="cdn")')[0]
    )


# ---------------------------------------------------------------------- the checks above catch real drift


@pytest.fixture
def pair(tmp_path):
    """A copy of notebook 03 and its source, in sync, to mutate."""
    for suffix in (".ipynb", ".py"):
        shutil.copyfile(NB_DIR / f"03_loss_weighting{suffix}", tmp_path / f"03_loss_weighting{suffix}")
    path = tmp_path / "03_loss_weighting.ipynb"
    assert notebook_drift(path) == []
    return path


def test_drift_check_reports_an_ipynb_edited_without_its_source(pair):
    nb = nbformat.read(pair, as_version=4)
    k = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "assert" in c.source)
    nb.cells[k].source = nb.cells[k].source.replace("assert", "# assert", 1)  # someone silences a check
    nbformat.write(nb, pair)
    problems = notebook_drift(pair)
    assert problems and problems[0].startswith(f"cell {k} differs in its source")
    assert "jupytext" in problems[-1]


def test_drift_check_reports_tags_cell_types_and_added_cells(pair):
    original = nbformat.read(pair, as_version=4)
    nb = nbformat.read(pair, as_version=4)
    nb.cells[1].metadata["tags"] = []  # the parameters tag lost
    nbformat.write(nb, pair)
    assert notebook_drift(pair)[0].startswith("cell 1 differs in its tags")
    nb = nbformat.from_dict(original)
    nb.cells[0].cell_type = "raw"
    nbformat.write(nb, pair)
    assert notebook_drift(pair)[0].startswith("cell 0 differs in its cell type")
    nb = nbformat.from_dict(original)
    nb.cells.append(nbformat.v4.new_code_cell("print('added in Jupyter only')"))
    nbformat.write(nb, pair)
    n = len(original.cells)
    assert f"{pair.stem}.py has {n} cells, {pair.name} has {n + 1}" in notebook_drift(pair)
    pair.with_suffix(".py").unlink()
    assert "no paired source" in notebook_drift(pair)[0]


def test_dirty_check_reports_outputs(pair):
    nb = nbformat.read(pair, as_version=4)
    k = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells[k].outputs = [nbformat.v4.new_output("stream", text="hello\n")]
    nb.cells[k].execution_count = 1
    assert dirty_cells(nb) == [k]
    nbformat.write(nb, pair)
    assert notebook_drift(pair) == []  # outputs are not drift; the clean check catches them
