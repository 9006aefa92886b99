"""Every dashboard page under streamlit.testing.v1.AppTest: against a fixture runs folder (key values shown, no
exception), against an empty run (a message naming the command, no traceback) and against an empty folder.

Each page is also read the way a user reads it (:func:`reader_text`: headings, text, metric labels and values,
table headers and the cells as displayed, chart titles, axis titles, labels and hover texts): no raw statistics
key (``padding_fraction``, ``total_seconds``, ...) and no number with seven or more decimals may appear there,
and a metric without a signed change carries no arrow. Expected figures are computed in this file from the run's
own files (the batching stage's JSON, the plan files, tokens/), never through the view functions the pages call.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from longalign.batching.figures import FIGURES

ROOT = Path(__file__).resolve().parents[1]
HOME = str(ROOT / "app" / "Home.py")
PAGES = [
    "pages/1_Lengths.py",
    "pages/2_Packing.py",
    "pages/3_Simulator.py",
    "pages/4_Training.py",
    "pages/5_LongBench_Chat.py",
    "pages/6_Needle.py",
    "pages/7_Ladder.py",
]
# keys of the stages' JSON files that must never reach a reader as they are
RAW_KEYS = {f.key for f in FIGURES if "_" in f.key} | {
    "efficiency",
    "attention_cost_ratio",
    "attention_cost_ratio_dense",
    "computed_tokens_padding_free",
    "total_seconds",
    "busy_device_seconds",
    "busy_seconds",
    "idle_fraction",
    "real_tokens",
    "real_tokens_per_second",
    "mean_step_seconds",
    "n_micro_batches",
    "speedup_vs_naive",
    "pack_dense",
    "loss_token_mean",
    "tokens_per_s",
    "padded_tokens",
    "target_tokens",
    "step_s",
    "wall_s",
    "grad_norm",
    "judge_score",
    "recall_norm",
    "needle_token_pos",
    "context_length",
    "depth_percent",
    "n_target",
    "n_truncated",
    "vocab_size",
    "chat_format",
    "measured_speedup_vs_naive",
    "simulated_speedup_vs_naive",
}
LONG_DECIMALS = re.compile(r"\d\.\d{7,}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_fixture_run) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run = make_fixture_run
    make_run(root, "fixture", 0)
    make_run(root, "fixture-b", 1, model="other-model", skill=5.0, older_batching_keys=True)
    return root


@pytest.fixture(scope="module")
def blank_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blank_runs")
    (root / "empty-run").mkdir()
    return root


def open_page(monkeypatch, root: Path, page: str | None, run: str | None = None) -> AppTest:
    monkeypatch.setenv("LONGALIGN_RUNS", str(root))
    at = AppTest.from_file(HOME, default_timeout=120)
    if run:
        at.query_params["run"] = run
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
    return "\n".join(
        str(x.value) for x in [*at.markdown, *at.caption, *at.info, *at.title, *at.subheader, *at.text, *at.warning]
    )


# ---------------------------------------------------------------------------------------------- what a user reads
def _chart_strings(spec: str) -> list[str]:
    """Titles, axis titles, annotations, trace names, labels, category values and hover templates of a figure."""
    fig = json.loads(spec)
    out: list[str] = []

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "template":
                    walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key in ("text", "name", "hovertemplate", "x", "y", "customdata", "title"):
            out.append(node)

    walk(fig.get("data", []))
    walk(fig.get("layout", {}))
    return out


def _table_strings(el) -> list[str]:
    """Headers and cells of a dataframe as displayed: a Styler's display values; otherwise text cells, and float
    cells unless their column has a display format."""
    import pyarrow as pa

    config = json.loads(el.proto.columns or "{}")
    df = el.value
    out = [str(c) for c in df.columns] + [str(v) for v in (config.get(c, {}).get("label") for c in config) if v]
    styler = el.proto.arrow_data.styler
    if styler.display_values:
        shown = pa.ipc.open_stream(styler.display_values).read_pandas()
        return out + [str(v) for v in shown.to_numpy().ravel() if v is not None]
    if not isinstance(df.index, pd.RangeIndex):
        out += [str(i) for i in df.index]
    for c in df.columns:
        col = df[c]
        if col.dtype == object:
            out += [str(v) for v in col if v is not None]
        elif col.dtype.kind == "f" and not (config.get(str(c), {}).get("type_config") or {}).get("format"):
            vals = [float(v) for v in col if v == v]
            bad = [v for v in vals if abs(v - round(v, 4)) > 1e-12]
            out += [repr(v) for v in bad]  # shown with all their decimals
    return out


def reader_text(at: AppTest) -> str:
    """Everything a user of the page reads, as one text."""
    parts = [text_of(at)]
    parts += [str(e.label) for e in at.expander]
    parts += [re.sub(r"<[^>]+>", " ", html.unescape(h.proto.body)) for h in at.get("html")]
    for m in at.metric:
        parts += [m.label, m.value, m.proto.delta]
    for d in at.dataframe:
        parts += _table_strings(d)
    for c in charts(at):
        parts += _chart_strings(c.proto.spec)
    for w in [*at.selectbox, *at.radio, *at.number_input, *at.multiselect, *at.toggle, *at.slider]:
        parts.append(str(w.label))
    return "\n".join(parts)


def assert_readable(at: AppTest) -> str:
    """No raw statistics key, no number with 7+ decimals, and no arrow on a metric whose delta is not a change."""
    text = reader_text(at)
    raw = sorted(k for k in RAW_KEYS if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", text))
    assert not raw, f"raw keys shown: {raw}"
    long = LONG_DECIMALS.findall(text)
    assert not long, f"numbers with 7 or more decimals shown: {long[:5]}"
    for m in at.metric:
        if m.proto.delta and not re.match(r"[+\-−]\d", m.proto.delta):
            direction = m.proto.DESCRIPTOR.fields_by_name["direction"].enum_type.values_by_number[m.proto.direction]
            assert direction.name == "NONE", f"metric {m.label!r} shows an arrow on {m.proto.delta!r}"
    return text


def values(v) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata" (base64)}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


# ---------------------------------------------------------------------------------------------- the run's files
def token_lengths(run: Path) -> np.ndarray:
    import datasets

    return np.asarray(datasets.load_from_disk(str(run / "tokens"))["length"])


def plan_batches(run: Path, method: str) -> list[list[int]]:
    return json.loads((run / "batching" / f"{method}.plan.json").read_text())["batches"]


def padding_from_files(run: Path, method: str) -> float:
    """Share of computed positions with no token: B x longest per padded batch, the pack's tokens per pack."""
    lengths = token_lengths(run)
    batches = plan_batches(run, method)
    real = sum(int(lengths[b].sum()) for b in batches)
    computed = real if method == "pack" else sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - real / computed


# ---------------------------------------------------------------------------------------------- fixture
def test_home_lists_the_runs_and_links_every_page(monkeypatch, runs):
    at = open_page(monkeypatch, runs, None)
    assert at.sidebar.selectbox[0].value == "fixture"
    assert at.sidebar.selectbox[0].options == ["fixture", "fixture-b"]
    overview = at.dataframe[0].value
    assert overview["run"].tolist() == ["fixture", "fixture-b"]
    assert "Run `fixture`" in text_of(at)
    assert [p.proto.page for p in at.get("page_link")] == [p.split("_", 1)[1][:-3] for p in PAGES]
    assert_readable(at)
    at.sidebar.selectbox[0].set_value("fixture-b").run()
    assert "Run `fixture-b`" in text_of(at) and not at.exception


def test_home_shows_the_demo_summary_rounded_and_signed(monkeypatch, tmp_path, make_fixture_run):
    root = tmp_path / "runs"
    run = make_fixture_run(root, "demo", 0)
    summary = {
        "profile": "quick",
        "seconds": 441.6,
        "base_run": str(root / "demo-base"),
        "methods": {
            "naive": {"seconds": 100.51234, "real_tokens": 1224, "measured_speedup_vs_naive": 1.0},
            "pack": {"seconds": 50.2, "real_tokens": 1224, "measured_speedup_vs_naive": 2.0021},
        },
        "stages": {
            "eval:heldout": {"sequence_mean_loss": {"base": 2.51234567, "tuned": 2.1111111, "change": -0.40123456}},
            "eval:longbench-chat": {"mean_score": {"base": 3.05, "tuned": 2.85, "change": -0.2}},
        },
        "explained": ["Held-out loss: *not* Markdown, __kept__ as written."],
    }
    (run / "demo_summary.json").write_text(json.dumps(summary))
    at = open_page(monkeypatch, root, None)
    text = assert_readable(at)
    assert "100.51234" not in text and "2.51234567" not in text
    evals = next(d for d in at.dataframe if "fine-tuned" in d.value.columns).value.set_index("metric")
    assert evals["change"].tolist() == ["−0.401", "−0.20"]  # signed, rounded to the metric's digits
    assert any(t.value == "• Held-out loss: *not* Markdown, __kept__ as written." for t in at.text)


def test_nested_runs_are_offered(monkeypatch, tmp_path, make_fixture_run):
    root = tmp_path / "runs"
    make_fixture_run(root / "notebooks", "02_tokenize_and_pack", 0)
    at = open_page(monkeypatch, root, PAGES[1])
    assert at.sidebar.selectbox[0].options == ["notebooks/02_tokenize_and_pack"]
    assert not at.exception and at.dataframe[0].value["method"].tolist() == ["naive", "sort", "pack"]


def test_lengths_page_counts_the_sequences_of_the_tokens_folder(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[0])
    m = metrics(at)
    lengths = token_lengths(runs / "fixture")
    assert m["sequences"] == f"{len(lengths):,}" and m["long / short"] == "200 / 100"
    assert len(charts(at)) == 2
    assert at.dataframe[0].value["kind"].tolist() == ["long", "short"]
    assert_readable(at)
    at.radio[0].set_value("lang").run()
    at.toggle[0].set_value(True).run()
    assert not at.exception
    assert set(at.dataframe[1].value["lang"]) == {"en", "zh", "unknown"}
    assert_readable(at)


def test_lengths_of_short_data_draw_one_panel(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[0])
    at.number_input[0].set_value(262144).run()  # no sequence reaches the split
    fig = json.loads(charts(at)[0].proto.spec)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert len(titles) == 1 and titles[0].endswith("(300 sequences)")
    assert "one panel" in text_of(at)


def test_packing_page_padding_equals_the_plan_files_and_the_stage_json(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[1])
    comparison = at.dataframe[0].value.set_index("method")
    assert comparison.index.tolist() == ["naive", "sort", "pack"]
    for m in ("naive", "sort", "pack"):
        recorded = json.loads((runs / "fixture" / "batching" / f"{m}.json").read_text())
        assert comparison.loc[m, "padding"] == pytest.approx(padding_from_files(runs / "fixture", m))
        assert comparison.loc[m, "padding"] == pytest.approx(recorded["padding_fraction"])
    assert comparison.loc["pack", "padding"] == 0
    assert len(charts(at)) == 8  # methods, fill, mask + strip, and mask + strip for naive and sort
    assert "pack micro-batch" in text_of(at)
    assert "holds sequence" in text_of(at)
    assert_readable(at)
    at.number_input(key="batch_pack").set_value(0).run()
    at.selectbox(key="norm").set_value("pack").run()
    assert not at.exception and "pack micro-batch 0" in text_of(at)
    at.selectbox(key="view_m").set_value("naive").run()
    assert not at.exception and "naive micro-batch" in text_of(at)
    assert_readable(at)


def test_packing_reads_older_records_in_todays_words(monkeypatch, runs):
    """fixture-b's batching JSON is in the older vocabulary (a pack's padding_fraction was its unused capacity):
    the page still shows a pack padding of 0.0% in both tables, equal to what its plan files give."""
    at = open_page(monkeypatch, runs, PAGES[1], run="fixture-b")
    old = json.loads((runs / "fixture-b" / "batching" / "pack.json").read_text())
    assert old["padding_fraction"] > 0.001
    comparison = at.dataframe[0].value.set_index("method")
    assert comparison.loc["pack", "padding"] == padding_from_files(runs / "fixture-b", "pack") == 0
    recorded = at.dataframe[1].value.set_index("figure")
    assert recorded.loc["padding", "pack"] == "0.0%"
    lengths, packs = token_lengths(runs / "fixture-b"), plan_batches(runs / "fixture-b", "pack")
    fill = sum(int(lengths[b].sum()) for b in packs) / (len(packs) * old["max_len"])
    assert recorded.loc["fill", "pack"] == f"{fill:.1%}"
    assert_readable(at)


def test_simulator_page_times_equal_simulate_json(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[2])
    recorded = json.loads((runs / "fixture" / "batching" / "simulate.json").read_text())["methods"]
    shown = at.dataframe[-2].value.set_index("method")
    for m, r in recorded.items():
        assert shown.loc[m, "predicted time (s)"] == pytest.approx(r["total_seconds"])
    labels = set(metrics(at))
    assert {"naive", "sort", "pack", "pack, dense mask"} <= labels
    assert len(charts(at)) == 2
    assert "recorded simulation's cost model" in text_of(at)
    assert_readable(at)
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    assert not at.exception
    live = json.loads(charts(at)[0].proto.spec)
    assert len(live["data"]) == 1  # one device: no idle chart
    assert "nothing waits" in text_of(at)
    assert_readable(at)


def metrics_file(run: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (run / "train" / name / "metrics.jsonl").read_text().splitlines()]


def test_training_page_shows_each_runs_losses_and_throughput_as_its_metrics_file_gives_them(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[3])
    m = metrics(at)
    assert list(m) == ["naive", "sort", "pack", "pack-loss-pack"]
    recs = metrics_file(runs / "fixture", "pack")
    assert m["pack"] == f"{recs[-1]['loss']:.3f}"
    # expected figures from each metrics.jsonl: real tokens over the summed step times, padding over the summed
    # padded positions, the last and lowest loss, the per-step tokens/s the throughput chart draws
    summary = next(d.value for d in at.dataframe if "tokens per second" in d.value.columns).set_index("training folder")
    deltas = {x.label: x.proto.delta for x in at.metric}
    charts_now = [json.loads(c.proto.spec) for c in charts(at)]
    assert len(charts_now) == 2
    throughput = {t["name"]: t for t in charts_now[1]["data"] if t.get("xaxis", "x") == "x"}
    for name in m:
        rs = metrics_file(runs / "fixture", name)
        real, seconds = sum(r["real_tokens"] for r in rs), sum(r["step_s"] for r in rs)
        assert summary.loc[name, "tokens per second"] == pytest.approx(real / seconds, rel=1e-9)
        assert deltas[name] == f"{real / seconds:,.0f} tokens/s"
        assert summary.loc[name, "padding"] == pytest.approx(1 - real / sum(r["padded_tokens"] for r in rs))
        assert summary.loc[name, "final loss"] == rs[-1]["loss"]
        assert summary.loc[name, "lowest loss"] == min(r["loss"] for r in rs)
        assert summary.loc[name, "steps"] == len(rs) and summary.loc[name, "wall time (s)"] == pytest.approx(seconds)
        assert values(throughput[name]["y"]).tolist() == pytest.approx([r["tokens_per_s"] for r in rs])
    assert_readable(at)
    at.multiselect[0].set_value(["pack", "pack-loss-pack"]).run()
    at.radio[0].set_value("loss_token_mean").run()
    assert not at.exception and list(metrics(at)) == ["pack", "pack-loss-pack"]
    assert metrics(at)["pack"] == f"{recs[-1]['loss_token_mean']:.3f}"  # the headline follows the loss switch
    at.radio[1].set_value("tokens_seen").run()
    fig = json.loads(charts(at)[0].proto.spec)
    assert fig["layout"]["xaxis"]["title"]["text"] == "tokens seen"
    assert values(fig["data"][0]["x"])[-1] == sum(r["real_tokens"] for r in recs)
    assert_readable(at)
    at.multiselect[0].set_value([]).run()
    assert "Choose at least one training run." in text_of(at)


def test_longbench_chat_page_mean_score_and_change_from_the_judgments(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[4])
    judged = [json.loads(x) for x in (runs / "fixture/eval/longbench_chat/judgments.jsonl").read_text().splitlines()]
    scores = [j["score"] for j in judged if j["score"] is not None]
    assert metrics(at)["mean score"] == f"{sum(scores) / len(scores):.2f}"
    assert metrics(at)["questions"] == "12"
    table = at.dataframe[1].value
    assert len(table) == 12 and "fixture" in table
    assert "#### fixture · score" in text_of(at)
    assert any("judge run 0" in e.label for e in at.expander)
    assert_readable(at)
    at.sidebar.selectbox(key="_compare_run_picker").set_value("fixture-b").run()
    assert not at.exception
    table = at.dataframe[1].value
    assert {"fixture", "fixture-b", "change"} <= set(table.columns)
    assert "#### fixture-b · score" in text_of(at)
    # the headline's change is this run minus the other, coloured by its sign (higher is better)
    judged_b = [
        json.loads(x) for x in (runs / "fixture-b/eval/longbench_chat/judgments.jsonl").read_text().splitlines()
    ]
    scores_b = [j["score"] for j in judged_b if j["score"] is not None]
    diff = sum(scores) / len(scores) - sum(scores_b) / len(scores_b)
    head = next(m for m in at.metric if m.label == "mean score of fixture")
    assert head.proto.delta == f"{diff:+.2f} vs fixture-b"
    assert_readable(at)
    at.multiselect[0].set_value(["zh"]).run()
    assert set(at.dataframe[1].value["lang"]) == {"zh"}
    at.selectbox[0].set_value(12).run()
    assert not at.exception and "请概括" in text_of(at)


def test_longbench_chat_question_detail(monkeypatch, runs):
    """The long context is shown as written, an answer cut at max_new_tokens is marked, and a judge scored by
    its rating probabilities shows them."""
    at = open_page(monkeypatch, runs, PAGES[4])
    at.selectbox[0].set_value(3).run()
    cases = json.loads((runs / "fixture" / "longbench_chat_cases.json").read_text())
    prompt = next(c["prompt"] for c in cases if c["idx"] == 3)
    assert prompt in [t.value for t in at.text]
    assert "cut off at the token limit (max_new_tokens 1,024)" in text_of(at)
    at.selectbox[0].set_value(2).run()
    assert any(e.label.startswith("judge run 0: score ") for e in at.expander)
    assert "expected rating" in text_of(at) and "[[1]]" in [t.value for t in at.text]
    assert_readable(at)


def test_needle_page_scores_and_cell_from_results_jsonl(monkeypatch, runs):
    at = open_page(monkeypatch, runs, PAGES[5])
    results = [json.loads(x) for x in (runs / "fixture/eval/needle/results.jsonl").read_text().splitlines()]
    assert metrics(at)["probes"] == "30"
    assert metrics(at)["mean judge score"] == f"{sum(r['judge_score'] for r in results) / len(results):.2f}"
    assert len(charts(at)) == 1
    at.selectbox(key="needle_len").set_value(16000).run()
    at.selectbox(key="needle_depth").set_value(70.0).run()
    cell = next(r for r in results if r["context_length"] == 16000 and r["depth_percent"] == 70.0)
    assert not at.exception
    assert f"judge score {cell['judge_score']:.1f}" in text_of(at)
    assert f"needle at token {cell['needle_token_pos']:,} of the {cell['context_tokens']:,}-token context" in (
        text_of(at)
    )
    window = at.get("html")[0].proto.body
    assert "<mark>" in window and "* If __debug__ is set" in html.unescape(window)  # as written, not Markdown
    assert cell["response"] in [t.value for t in at.text]
    summary = json.loads((runs / "fixture/eval/needle/summary.json").read_text())
    assert summary["notes"][0] in [w.value for w in at.warning]
    assert_readable(at)
    at.radio[0].set_value("recall").run()
    assert not at.exception
    assert "mean normalised recall" in metrics(at)
    at.radio[0].set_value("recall_norm").run()
    assert not at.exception and "normalised recall" in text_of(at)
    at.sidebar.selectbox(key="_compare_run_picker").set_value("fixture-b").run()
    assert not at.exception and len(charts(at)) == 2
    assert_readable(at)


@pytest.fixture(scope="module")
def ladder_runs(tmp_path_factory) -> Path:
    """tuned / base / other-seed: the real ladder stage answered by scripted answerers (tests/fixtures)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "longalign_fixture_make_ladder", ROOT / "tests/fixtures/make_ladder.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_ladders(tmp_path_factory.mktemp("ladders"))


def ladder_results(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "eval/ruler/results.jsonl").read_text().splitlines()]


def cell_means(results: list[dict]) -> dict[tuple[str, int], float]:
    cells: dict[tuple[str, int], list[float]] = {}
    for r in results:
        cells.setdefault((r["task"], r["length"]), []).append(r["score"])
    return {k: 100 * sum(v) / len(v) for k, v in cells.items()}


def test_ladder(monkeypatch, ladder_runs):
    at = open_page(monkeypatch, ladder_runs, PAGES[6], run="base")
    results = ladder_results(ladder_runs / "base")
    cells = cell_means(results)
    lengths = sorted({x for _, x in cells})
    tasks = json.loads((ladder_runs / "base/eval/ruler/summary.json").read_text())["tasks"]  # the rows' order
    by_length = {x: sum(cells[t, x] for t in tasks) / len(tasks) for x in lengths}
    held = [x for x in lengths if all(by_length[y] > 85.6 for y in lengths if y <= x)]
    assert metrics(at)["effective length"] == (f"{held[-1]:,} tokens" if held else "none")
    assert metrics(at)["ladder score"] == f"{sum(cells.values()) / len(cells):.1f}"
    assert metrics(at)["samples"] == str(len(results))
    heat = json.loads(charts(at)[0].proto.spec)["data"][0]
    z = [list(values(row)) if not isinstance(row, list) else row for row in heat["z"]]
    for i, t in enumerate(tasks):
        assert [round(v, 2) for v in z[i]] == [round(cells[t, x], 2) for x in lengths]
    assert [round(v, 2) for v in z[len(tasks)]] == [round(by_length[x], 2) for x in lengths]  # as summary.json rounds
    assert "no effective length" in reader_text(at)
    assert_readable(at)

    # one sample opened: the prompt with every expected value marked, the answer, the score
    at.selectbox(key="ladder_task").set_value("vt").run()
    at.selectbox(key="ladder_len").set_value(800).run()
    at.selectbox(key="ladder_sample").set_value(2).run()
    assert not at.exception
    rec = next(r for r in results if r["task"] == "vt" and r["length"] == 800 and r["index"] == 2)
    prompt = next(
        json.loads(x)
        for x in (ladder_runs / "base/eval/ruler/prompts.jsonl").read_text().splitlines()
        if json.loads(x)["key"] == rec["key"]
    )
    body = at.get("html")[0].proto.body
    marked = re.findall(r"<mark[^>]*>([^<]*)</mark>", body)
    for value in rec["expected"]:
        assert marked.count(value) == len(re.findall(rf"(?<![A-Za-z0-9]){value}(?![A-Za-z0-9])", prompt["user"]))
    assert html.unescape(re.sub(r"<[^>]+>", "", body)).startswith(prompt["user"][:200])
    found = sum(v.lower() in rec["output"].lower() for v in rec["expected"])
    assert f"score {rec['score']:.2f}: {found} of {len(rec['expected'])} expected values in the answer" in (text_of(at))
    assert rec["output"].strip() in html.unescape(re.sub(r"<[^>]+>", "", at.get("html")[1].proto.body))
    assert_readable(at)


def test_ladder_against_a_second_run(monkeypatch, ladder_runs):
    from longalign.eval.intervals import independent_difference, paired_difference

    at = open_page(monkeypatch, ladder_runs, PAGES[6], run="tuned")
    at.sidebar.selectbox(key="_compare_run_picker").set_value("base").run()
    assert not at.exception
    tuned, base = ladder_results(ladder_runs / "tuned"), ladder_results(ladder_runs / "base")
    by_key = {r["key"]: r for r in base}
    pairs = [(r["score"], by_key[r["key"]]["score"]) for r in tuned]
    overall = paired_difference([a for a, _ in pairs], [b for _, b in pairs], 100.0)
    change = 100 * sum(a - b for a, b in pairs) / len(pairs)
    assert at.metric[1].proto.delta == f"{change:+.1f} vs base"
    table = next(d for d in at.dataframe if "verdict" in d.value.columns).value
    assert table["length"].tolist() == ["500 tokens", "800 tokens", "all lengths"]
    last = table.iloc[-1]
    assert last["samples compared"] == len(pairs)
    assert last["95% interval"] == f"+{overall['lo']:.1f} to +{overall['hi']:.1f}"
    assert last["verdict"] == ("tuned higher" if overall["lo"] > 0 else "no resolved difference")
    for x, (_, row) in zip((500, 800), table.iterrows()):
        sel = [(r["score"], by_key[r["key"]]["score"]) for r in tuned if r["length"] == x]
        d = paired_difference([a for a, _ in sel], [b for _, b in sel], 100.0)
        assert row["difference"] == f"+{d['diff']:.1f}" and row["tuned"] == round(
            100 * sum(a for a, _ in sel) / len(sel), 1
        )
    assert len(charts(at)) == 2  # the ladder and the difference heatmap
    assert_readable(at)

    # another seed: other samples, so the two means are compared, not pairs
    at.sidebar.selectbox(key="_compare_run_picker").set_value("other-seed").run()
    assert not at.exception
    other = ladder_results(ladder_runs / "other-seed")
    table = next(d for d in at.dataframe if "verdict" in d.value.columns).value
    last = table.iloc[-1]
    d = independent_difference([r["score"] for r in tuned], [r["score"] for r in other], 100.0)
    assert last["samples compared"] == "different samples"
    assert last["difference"] == f"+{d['diff']:.1f}"
    assert_readable(at)


def test_ladder_difference_without_a_resolved_change_says_so(monkeypatch, ladder_runs, tmp_path):
    """The same results under two names: every pair ties, the interval contains zero, and the page says so."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(ladder_runs / "base", root / "a")
    shutil.copytree(ladder_runs / "base", root / "b")
    at = open_page(monkeypatch, root, PAGES[6], run="a")
    at.sidebar.selectbox(key="_compare_run_picker").set_value("b").run()
    table = next(d for d in at.dataframe if "verdict" in d.value.columns).value
    assert set(table["verdict"]) == {"no resolved difference"} and set(table["difference"]) == {"0.0"}
    assert "scored the same in both runs" in text_of(at) and len(charts(at)) == 1
    assert_readable(at)


def test_no_change_is_said_in_words_without_an_arrow(monkeypatch, tmp_path, make_fixture_run):
    """Two runs with the same results: the headline says "same as", not a green "↑ +0.00"."""
    import shutil

    root = tmp_path / "runs"
    make_fixture_run(root, "a", 0)
    shutil.copytree(root / "a", root / "b")
    at = open_page(monkeypatch, root, PAGES[5], run="a")
    at.sidebar.selectbox(key="_compare_run_picker").set_value("b").run()
    deltas = [m.proto.delta for m in at.metric if m.proto.delta]
    assert deltas and all(d == "same as b" for d in deltas)
    assert_readable(at)  # and none of them carries an arrow


def test_readability_check_catches_raw_keys_and_long_decimals(monkeypatch, tmp_path):
    """The check the page tests rely on fails on a page that shows a raw key or an unrounded float."""
    page = tmp_path / "bad.py"
    page.write_text(
        "import streamlit as st, pandas as pd\n"
        "st.markdown('padding_fraction 0.10785590277777779')\n"
        "st.dataframe(pd.DataFrame({'total_seconds': [0.00806879232]}))\n"
        "st.metric('questions', '12', delta='1 unscored')\n"
    )
    at = AppTest.from_file(str(page), default_timeout=60).run()
    with pytest.raises(AssertionError, match="raw keys shown: \\['padding_fraction', 'total_seconds'\\]"):
        assert_readable(at)
    page.write_text("import streamlit as st\nst.markdown('padding 0.10785590277777779')\n")
    at = AppTest.from_file(str(page), default_timeout=60).run()
    with pytest.raises(AssertionError, match="7 or more decimals"):
        assert_readable(at)
    page.write_text("import streamlit as st\nst.metric('questions', '12', delta='1 unscored')\n")
    at = AppTest.from_file(str(page), default_timeout=60).run()
    with pytest.raises(AssertionError, match="shows an arrow"):
        assert_readable(at)


# ---------------------------------------------------------------------------------------------- empty
@pytest.mark.parametrize("page", PAGES)
def test_empty_run_shows_how_to_create(monkeypatch, blank_runs, page):
    at = open_page(monkeypatch, blank_runs, page)
    assert not at.exception and not at.error
    shown = " ".join(i.value for i in at.info)
    assert "longalign " in shown and "not found" in shown
    assert not charts(at)


def test_evaluation_only_run_is_told_what_it_is(monkeypatch, tmp_path, make_fixture_run):
    """A base model's evaluation run has no tokens: the Lengths page says so and names the runs that have them,
    instead of telling the user to tokenize it."""
    import shutil

    root = tmp_path / "runs"
    make_fixture_run(root, "demo", 0)
    base = root / "demo-base"
    base.mkdir()
    shutil.copytree(root / "demo" / "eval", base / "eval")
    at = open_page(monkeypatch, root, PAGES[0], run="demo-base")
    shown = " ".join(i.value for i in at.info)
    assert "`demo-base` is an evaluation-only run" in shown and "Runs of this folder that have it: demo." in shown


def test_empty_home_and_no_runs(monkeypatch, blank_runs, tmp_path):
    at = open_page(monkeypatch, blank_runs, None)
    assert at.dataframe[0].value["run"].tolist() == ["empty-run"]
    assert any("no stages" in i.value for i in at.info)
    at = open_page(monkeypatch, tmp_path / "missing", PAGES[0])
    assert any("No run directories" in i.value for i in at.info)


def test_partial_run_training_in_progress(monkeypatch, tmp_path):
    """A metrics file with a torn last line (a writer mid-append) and nothing else: the page still renders."""
    from longalign.rundir import RunDir

    run = RunDir(tmp_path / "live")
    run.metrics("pack").parent.mkdir(parents=True)
    run.metrics("pack").write_text(
        '{"step": 1, "loss": 2.0, "loss_norm": "sequence", "tokens_per_s": 10, "wall_s": 1.0}\n{"step": 2, "lo'
    )
    at = open_page(monkeypatch, tmp_path, PAGES[3])
    assert list(metrics(at)) == ["pack"] and len(charts(at)) == 2
    assert metrics(at)["pack"] == "2.000"
    assert math.isclose(float(at.metric[0].proto.delta.split()[0]), 10.0)


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


# ---------------------------------------------------------------------------------------------- notebook 02
def html_tables(text: str) -> list[list[list[str]]]:
    """The cells of every <table> in ``text`` (header and body rows alike), as text."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Tables()
    parser.feed(text)
    return parser.tables


@pytest.mark.slow
def test_notebook_02_the_packing_page_and_the_stage_json_give_one_padding(monkeypatch, tmp_path):
    """Notebook 02 run into a runs folder: the padding of every method it displays, the padding the Packing page
    shows for that run (listed as notebooks/02_tokenize_and_pack) and the batching stage's JSON agree, and equal
    the padding computed here from the plan files and tokens/."""
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "02_tokenize_and_pack.ipynb", as_version=4)
    root = tmp_path / "runs"
    run_dir = root / "notebooks" / "02_tokenize_and_pack"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += f"\nrun_dir = {str(run_dir)!r}\ndata_run = {str(tmp_path / 'none')!r}\nsim_sequences = 300\n"
    nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    cell = next(c for c in nb.cells if c.cell_type == "code" and "recorded = packing.recorded_stats" in c.source)
    shown = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
    table = html_tables(shown)[0]
    header = table[0]
    row = next(r for r in table[1:] if "padding" in r)
    notebook = {m: row[header.index(m)] for m in ("naive", "sort", "pack")}

    at = open_page(monkeypatch, root, PAGES[1], run="notebooks/02_tokenize_and_pack")
    page = at.dataframe[0].value.set_index("method")["padding"]
    for m in ("naive", "sort", "pack"):
        recorded = json.loads((run_dir / "batching" / f"{m}.json").read_text())["padding_fraction"]
        assert page[m] == pytest.approx(padding_from_files(run_dir, m)) == pytest.approx(recorded)
        assert notebook[m] == f"{recorded:.1%}" == f"{page[m]:.1%}"
    assert notebook["pack"] == "0.0%" and page["naive"] > 0
