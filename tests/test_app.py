"""Every dashboard page under streamlit.testing.v1.AppTest: against a fixture runs folder (key values shown, no
exception), against an empty run (a message naming the command, no traceback) and against an empty folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from longalign.rundir import RunDir
from longalign.views import needle, readers, simulator, style, training

ROOT = Path(__file__).resolve().parents[1]
HOME = str(ROOT / "app" / "Home.py")
PAGES = [
    "pages/1_Lengths.py",
    "pages/2_Packing.py",
    "pages/3_Simulator.py",
    "pages/4_Training.py",
    "pages/5_LongBench_Chat.py",
    "pages/6_Needle.py",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_fixture_run) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run = make_fixture_run
    make_run(root, "fixture", 0)
    make_run(root, "fixture-b", 1, model="other-model", skill=5.0)
    return root


@pytest.fixture(scope="module")
def blank_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blank_runs")
    (root / "empty-run").mkdir()
    return root


def open_page(monkeypatch, root: Path, page: str | None) -> AppTest:
    monkeypatch.setenv("LONGALIGN_RUNS", str(root))
    at = AppTest.from_file(HOME, default_timeout=90)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def text_of(at: AppTest) -> str:
    return "\n".join(str(x.value) for x in [*at.markdown, *at.caption, *at.info, *at.title, *at.subheader])


# ---------------------------------------------------------------------------------------------- fixture
def test_home(monkeypatch, runs):
    at = open_page(monkeypatch, runs, None)
    assert at.sidebar.selectbox[0].value == "fixture"
    assert at.sidebar.selectbox[0].options == ["fixture", "fixture-b"]
    overview = at.dataframe[0].value
    assert overview["run"].tolist() == ["fixture", "fixture-b"]
    assert "Run `fixture`" in text_of(at)
    at.sidebar.selectbox[0].set_value("fixture-b").run()
    assert "Run `fixture-b`" in text_of(at) and not at.exception


def test_lengths(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[0])
    m = metrics(at)
    assert m["sequences"] == "300" and m["long / short"] == "200 / 100"
    assert m["tokens"] == style.format_count(readers.load_token_table(RunDir(runs / "fixture"))["length"].sum())
    assert len(charts(at)) == 2
    assert at.dataframe[0].value["kind"].tolist() == ["long", "short"]
    at.radio[0].set_value("lang").run()
    at.toggle[0].set_value(True).run()
    assert not at.exception
    assert set(at.dataframe[1].value["lang"]) == {"en", "zh", "unknown"}


def test_packing(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[1])
    comparison = at.dataframe[0].value
    assert comparison["method"].tolist() == ["naive", "sort", "pack"]
    assert comparison.set_index("method").loc["pack", "padding fraction"] == 0
    assert len(charts(at)) == 8  # methods, fill, mask + strip, and mask + strip for naive and sort
    assert "pack micro-batch" in text_of(at)
    assert "holds sequence" in text_of(at)
    at.number_input(key="batch_pack").set_value(0).run()
    at.selectbox(key="norm").set_value("pack").run()
    assert not at.exception and "pack micro-batch 0" in text_of(at)
    at.selectbox(key="view_m").set_value("naive").run()
    assert not at.exception and "naive micro-batch" in text_of(at)


def test_simulator(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[2])
    recorded = simulator.load_simulation(RunDir(runs / "fixture"))[1]
    assert at.dataframe[-1].value["total_seconds"].tolist() == recorded["total_seconds"].tolist()
    labels = set(metrics(at))
    assert {"naive", "sort", "pack"} <= labels
    assert len(charts(at)) == 2
    at.number_input[0].set_value(2)
    at.button[0].click().run()
    assert not at.exception


def test_training(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[3])
    m = metrics(at)
    assert list(m) == ["naive", "sort", "pack", "pack-loss-pack"]
    summary = training.train_summary(RunDir(runs / "fixture"), readers.load_metrics(RunDir(runs / "fixture")))
    assert m["pack"] == f"{summary.set_index('train').loc['pack', 'tokens/s']:,.0f} tok/s"
    assert len(charts(at)) == 2
    at.multiselect[0].set_value(["pack", "pack-loss-pack"]).run()
    at.radio[0].set_value("loss_token_mean").run()
    assert not at.exception and list(metrics(at)) == ["pack", "pack-loss-pack"]
    at.multiselect[0].set_value([]).run()
    assert "Choose at least one training run." in text_of(at)


def test_longbench_chat(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[4])
    df = readers.load_longbench_chat(RunDir(runs / "fixture"))
    assert metrics(at)["mean score"] == f"{df['score'].mean():.2f}"
    assert metrics(at)["questions"] == "12"
    table = at.dataframe[1].value
    assert len(table) == 12 and "fixture" in table
    assert "#### fixture · score" in text_of(at)
    assert any("judge run 0" in e.label for e in at.expander)
    at.sidebar.selectbox(key="_compare_run_picker").set_value("fixture-b").run()
    assert not at.exception
    table = at.dataframe[1].value
    assert {"fixture", "fixture-b", "Δ"} <= set(table.columns)
    assert "#### fixture-b · score" in text_of(at)
    at.multiselect[0].set_value(["zh"]).run()
    assert set(at.dataframe[1].value["lang"]) == {"zh"}
    at.selectbox[0].set_value(12).run()
    assert not at.exception and "请概括" in text_of(at)


def test_needle(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[5])
    df = readers.load_needle(RunDir(runs / "fixture"))
    assert metrics(at)["probes"] == "30"
    assert metrics(at)["mean judge score"] == f"{df['judge_score'].mean():.2f}"
    assert len(charts(at)) == 1
    at.selectbox(key="needle_len").set_value(16000).run()
    at.selectbox(key="needle_depth").set_value(70.0).run()
    cell = needle.needle_cell(df, 16000, 70.0)
    assert not at.exception
    assert f"Judge score {cell['judge_score']}" in text_of(at)
    assert "<mark>" in text_of(at)
    assert cell["response"] in [i.value for i in at.info]
    at.radio[0].set_value("recall").run()
    assert not at.exception
    assert "mean normalised recall" in metrics(at)
    at.radio[0].set_value("recall_norm").run()
    assert not at.exception and "normalised recall" in text_of(at)


# ---------------------------------------------------------------------------------------------- empty
@pytest.mark.parametrize("page", PAGES)
def test_empty_run_shows_how_to_create(monkeypatch, blank_runs, page):
    at = open_page(monkeypatch, blank_runs, page)
    assert not at.exception and not at.error
    shown = " ".join(i.value for i in at.info)
    assert "longalign " in shown and "not found" in shown
    assert not charts(at)


def test_empty_home_and_no_runs(monkeypatch, blank_runs, tmp_path):
    at = open_page(monkeypatch, blank_runs, None)
    assert at.dataframe[0].value["run"].tolist() == ["empty-run"]
    assert any("no stages" in i.value for i in at.info)
    at = open_page(monkeypatch, tmp_path / "missing", PAGES[0])
    assert any("No run directories" in i.value for i in at.info)


def test_partial_run_training_in_progress(monkeypatch, tmp_path):
    """A metrics file with a torn last line (a writer mid-append) and nothing else: the page still renders."""
    run = RunDir(tmp_path / "live")
    run.metrics("pack").parent.mkdir(parents=True)
    run.metrics("pack").write_text(
        '{"step": 1, "loss": 2.0, "loss_norm": "sequence", "tokens_per_s": 10, "wall_s": 1.0}\n{"step": 2, "lo'
    )
    at = open_page(monkeypatch, tmp_path, PAGES[3])
    assert list(metrics(at)) == ["pack"] and len(charts(at)) == 2
    assert math.isclose(float(metrics(at)["pack"].split()[0]), 10.0)


# ---------------------------------------------------------------------------------------------- CLI
def test_app_command_line():
    from longalign.cli import app as app_cli
    from longalign.cli import build_parser

    args = build_parser().parse_args(["app", "--runs", "myruns", "--port", "8600", "--headless"])
    assert args.func is app_cli._handler and args.runs == "myruns" and args.port == 8600
    cmd = app_cli.build_command(args.runs, args.port, headless=True)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == HOME
    assert cmd[cmd.index("--server.port") + 1] == "8600" and "--server.headless" in cmd
    assert cmd[-3:] == ["--", "--runs", "myruns"]
