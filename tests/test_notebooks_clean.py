"""The stage notebooks are committed clean: no outputs, no execution counts, a ``parameters`` cell first.

Outputs in git make every re-run a large diff and can leak local paths or keys; the ``parameters`` tag lets
papermill (and CI) override the toy defaults. Executing the notebooks is a separate, slower check
(``pytest notebooks --nbmake``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_data_construction.ipynb", "02_tokenize_and_pack.ipynb", "03_loss_weighting.ipynb",
            "04_training.ipynb", "05_evaluation.ipynb")
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_every_stage_has_a_notebook():
    assert [p.name for p in NOTEBOOKS if p.name in EXPECTED] == list(EXPECTED)


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    path = request.param
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return path, nb


def test_no_outputs_or_execution_counts(notebook):
    path, nb = notebook
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them (scripts/make_notebooks.py rewrites " \
                      "the notebooks clean)"


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
        assert not stripped or "=" in stripped or stripped.startswith(("]", "}", ")", '"', "'")), \
            f"{path.name}: parameters cell line {line!r} is not an assignment"


def test_opens_with_a_markdown_title(notebook):
    path, nb = notebook
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# "), \
        f"{path.name}: the first cell should be a markdown title"
