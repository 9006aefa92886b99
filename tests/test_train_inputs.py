"""Training data from anywhere: `longalign tokenize` folders, plain datasets folders, parquet, jsonl, hf:NAME.

The equality test tokenizes real chat records with the embedded SmolLM2 tokenizer, copies only input_ids and
labels into a plain ``datasets.save_to_disk`` folder, and trains the tiny random Llama on both: the loss of
every step and the final parameters must be the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from longalign.batching import read_token_lengths  # noqa: E402
from longalign.rundir import read_jsonl  # noqa: E402
from longalign.tokenize import TokenizeConfig, tokenize_file  # noqa: E402
from longalign.tokenize.sources import open_token_data  # noqa: E402
from longalign.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = f"random:{ROOT / 'configs' / 'models' / 'tiny-llama'}"
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?" + " Think." * (i % 3)},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." + " Done." * (i % 2)},
        ],
        "source": "arith",
        "lang": "en",
        "task_type": "qa",
    }
    for i in range(6)
]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    src = root / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    tokenize_file(src, root / "tokens", TokenizeConfig(max_len=96), show_progress=False)
    return root / "tokens"


def rows_of(tokens_dir: Path) -> tuple[list[list[int]], list[list[int]]]:
    ds = datasets.load_from_disk(str(tokens_dir))
    return [list(x) for x in ds["input_ids"]], [list(x) for x in ds["labels"]]


class FinalParams:
    def __new__(cls):
        from transformers import TrainerCallback

        class _Final(TrainerCallback):
            params: dict = {}

            def on_train_end(self, args, state, control, model=None, **kw):
                self.params = {n: p.detach().clone() for n, p in model.named_parameters()}

        return _Final()


def train_on(tokens: str, out: Path, **kw):
    cap = FinalParams()
    cfg = TrainConfig(
        tokens=tokens,
        output_dir=str(out),
        model=TINY,
        method="pack",
        max_len=96,
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        epochs=1.0,
        grad_accum=1,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=0,
        **kw,
    )
    train(cfg, callbacks=[cap])
    losses = [(r["step"], r["loss"]) for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    return losses, cap.params


def test_plain_datasets_folder_trains_exactly_like_the_tokenize_folder(tmp_path, tokens):
    ids, labels = rows_of(tokens)
    assert any(-100 in lab for lab in labels) and any(x != -100 for lab in labels for x in lab)
    plain = tmp_path / "plain"
    datasets.Dataset.from_dict({"input_ids": ids, "labels": labels}).save_to_disk(str(plain))

    ref_losses, ref_params = train_on(str(tokens), tmp_path / "a")
    losses, params = train_on(str(plain), tmp_path / "b")
    assert len(ref_losses) >= 2 and losses == ref_losses
    assert params.keys() == ref_params.keys()
    assert all(torch.equal(params[k], ref_params[k]) for k in params)
    # the comparison can tell: the same ids with every token a target train differently
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(tmp_path / "all"))
    other, _ = train_on(str(tmp_path / "all"), tmp_path / "c")
    assert len(other) == len(ref_losses) and other != ref_losses


def test_parquet_jsonl_and_plain_folders_load_the_same_rows(tmp_path, tokens):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, labels = rows_of(tokens)
    pq.write_table(pa.table({"input_ids": ids, "labels": labels, "lang": ["en"] * len(ids)}), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"input_ids": a, "labels": b}) + "\n" for a, b in zip(ids, labels)), encoding="utf-8"
    )
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})}).save_to_disk(
        str(tmp_path / "dict")
    )
    ref = open_token_data(tokens)
    assert ref.kind == "tokenize" and ref.added == ()
    for spec, kind in (("t.parquet", "parquet"), ("t.jsonl", "jsonl"), ("dict", "disk")):
        got = open_token_data(tmp_path / spec)
        assert got.kind == kind and "length" in got.added
        assert [list(x) for x in got.ds["input_ids"]] == ids
        assert [list(x) for x in got.ds["labels"]] == labels
        assert list(got.ds["length"]) == [len(x) for x in ids]
        assert np.array_equal(read_token_lengths(tmp_path / spec), np.array([len(x) for x in ids]))


def test_without_labels_every_token_is_a_target(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"input_ids": [5, 6, 7]}\n\n{"input_ids": [8, 9]}\n', encoding="utf-8")
    got = open_token_data(tmp_path / "t.jsonl")
    assert got.added == ("labels", "length")
    assert got.ds["labels"] == [[5, 6, 7], [8, 9]] and got.ds["length"] == [3, 2]
    assert got.meta["max_token_id"] == 9


def test_training_on_a_parquet_file_runs(tmp_path, tokens):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, labels = rows_of(tokens)
    pq.write_table(pa.table({"input_ids": ids, "labels": labels}), tmp_path / "t.parquet")
    losses, _ = train_on(str(tmp_path / "t.parquet"), tmp_path / "run", max_steps=1)
    assert len(losses) == 1 and np.isfinite(losses[0][1])


def test_hub_spec_goes_through_load_dataset(monkeypatch):
    seen = {}

    def fake_load_dataset(name, config=None, split=None):
        seen.update(name=name, config=config, split=split)
        return datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[-100, 2, 3]], "extra": ["x"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = open_token_data("hf:someone/sft-tokens")
    assert seen == {"name": "someone/sft-tokens", "config": None, "split": "train"} and got.kind == "hub"
    assert got.ds["labels"] == [[-100, 2, 3]] and got.ds["length"] == [3]
    open_token_data("hf:someone/sft-tokens:main:validation")
    assert seen == {"name": "someone/sft-tokens", "config": "main", "split": "validation"}
    with pytest.raises(ValueError, match="hf:NAME:SPLIT"):
        open_token_data("hf:")


def test_missing_input_ids_column_is_a_clear_error(tmp_path):
    folder = tmp_path / "texts"
    datasets.Dataset.from_dict({"text": ["hello"], "labels": [[1]]}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"texts: no input_ids column \(columns: text, labels\).*longalign tokenize"):
        open_token_data(folder)
    with pytest.raises(ValueError, match="no input_ids column"):
        train_on(str(folder), tmp_path / "run")
    (tmp_path / "t.jsonl").write_text('{"input_ids": [1]}\n{"ids": [2]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.jsonl:2: no input_ids \(keys: ids\)"):
        open_token_data(tmp_path / "t.jsonl")


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2, 3], "labels": [1, 2]}],
            r"t\.jsonl:2: labels has 2 entries but input_ids has 3",
        ),
        (
            [{"input_ids": [1, 2.5]}],
            r"t\.jsonl:1: input_ids must be a list of integer token ids, got a list holding 2\.5",
        ),
        ([{"input_ids": ["a"]}], r"t\.jsonl:1: input_ids must be a list of integer"),
        (
            [{"input_ids": [1, 2, 3], "labels": [-1, 2, 3]}],
            r"t\.jsonl:1: label -1 at position 0; only -100 .* replace -1",
        ),
        (
            [{"input_ids": [4, 5, 6], "labels": [5, 6, -100]}],
            r"t\.jsonl:1: label 5 at position 0 differs .*not shifted",
        ),
        (
            [{"input_ids": [4, 5], "labels": [4, 5]}, {"input_ids": [6]}],
            r"t\.jsonl:2: no labels, while the first row has",
        ),
        ([{"input_ids": [4, 5], "length": 3}], r"t\.jsonl:1: length is 3 but input_ids has 2"),
        ([{"input_ids": [4, -5]}], r"t\.jsonl:1: input id -5 at position 1 is negative"),
    ],
)
def test_bad_jsonl_rows_name_the_line_and_the_fix(tmp_path, rows, message):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        open_token_data(path)


def test_bad_rows_of_a_folder_name_the_row(tmp_path):
    folder = tmp_path / "plain"
    datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4, 5]], "labels": [[1, 2], [3, 4]]}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"plain: row 1: labels has 2 entries but input_ids has 3"):
        open_token_data(folder)
    floats = tmp_path / "floats"
    datasets.Dataset.from_dict({"input_ids": [[1.0, 2.0]]}).save_to_disk(str(floats))
    with pytest.raises(ValueError, match=r"floats: input_ids holds list<item: double>.*integer"):
        open_token_data(floats)
    with pytest.raises(FileNotFoundError, match="does not exist.*datasets.save_to_disk"):
        open_token_data(tmp_path / "nowhere")


def test_token_ids_beyond_the_model_vocabulary(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"input_ids": [1, 2, 60000, 3]}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="token id 60000 but the model embeds only 49152"):
        train_on(str(tmp_path / "t.jsonl"), tmp_path / "run")


def test_row_checks_find_the_row_across_slices(tmp_path, monkeypatch):
    from longalign.tokenize import sources

    monkeypatch.setattr(sources, "CHECK_ROWS", 2)
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12], [13]]
    labels = [list(x) for x in ids]
    labels[3] = [-100, 12, -100]  # row 3, position 1: a label shifted by one
    folder = tmp_path / "plain"
    datasets.Dataset.from_dict({"input_ids": ids, "labels": labels}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"plain: row 3: label 12 at position 1 differs from the input id 11"):
        open_token_data(folder)
    labels[3] = list(ids[3])
    datasets.Dataset.from_dict({"input_ids": ids, "labels": labels}).save_to_disk(str(tmp_path / "good"))
    assert open_token_data(tmp_path / "good").meta["max_token_id"] == 13
