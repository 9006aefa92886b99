import json

import numpy as np
import pytest

from longalign.cli import main


@pytest.fixture
def lengths_file(tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("5\n12\n# a comment\n3\n\n7\n")
    return path


def test_plan_json_and_plan_out(lengths_file, tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        [
            "batch",
            "plan",
            "--lengths",
            str(lengths_file),
            "--method",
            "pack",
            "--algo",
            "ffd",
            "--max-len",
            "10",
            "--plan-out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_sequences"] == 4 and stats["truncated"] == 1 and stats["n_tokens"] == 25
    assert stats["lower_bound"] == 3 and stats["method"] == "pack" and stats["algo"] == "ffd"
    batches = json.loads(out.read_text())["batches"]
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_plan_npy_sort(tmp_path, capsys):
    np.save(tmp_path / "l.npy", np.array([4, 2, 3, 1]))
    assert (
        main(
            [
                "batch",
                "plan",
                "--lengths",
                str(tmp_path / "l.npy"),
                "--method",
                "sort",
                "--max-len",
                "10",
                "--batch-size",
                "2",
                "--json",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["computed_tokens"] == 12 and stats["batch_size"] == 2


def test_plan_from_run_dir(tmp_path, capsys):
    from datasets import Dataset

    run = tmp_path / "run"
    Dataset.from_dict(
        {
            "input_ids": [[1, 2], [3, 4, 5], [6]],
            "labels": [[1, 2], [3, 4, 5], [6]],
            "length": [2, 3, 1],
            "n_target": [1, 2, 0],
        }
    ).save_to_disk(str(run / "tokens"))
    assert main(["batch", "plan", "--run", str(run), "--method", "pack", "--max-len", "4"]) == 0
    assert "pack/ffd: 3 sequences" in capsys.readouterr().out
    stats = json.loads((run / "batching" / "pack.json").read_text())
    assert stats["n_tokens"] == 6 and stats["max_len"] == 4
    plan = json.loads((run / "batching" / "pack.plan.json").read_text())
    assert sorted(i for b in plan["batches"] for i in b) == [0, 1, 2]
    assert "batching.pack" in json.loads((run / "run.json").read_text())["stages"]
    assert (
        main(["batch", "simulate", "--run", str(run), "--max-len", "4", "--world-size", "2", "--grad-accum", "1"]) == 0
    )
    sim = json.loads((run / "batching" / "simulate.json").read_text())
    assert set(sim["methods"]) >= {"naive", "sort", "pack"} and sim["config"]["devices"] == 2


def test_simulate_json(lengths_file, capsys):
    assert (
        main(
            [
                "batch",
                "simulate",
                "--lengths",
                str(lengths_file),
                "--max-len",
                "16",
                "--methods",
                "naive,pack",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert set(res["methods"]) == {"naive", "pack", "pack_dense"}
    assert res["methods"]["naive"]["speedup_vs_naive"] == 1.0


def test_errors(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("5\nten\n")
    assert main(["batch", "plan", "--lengths", str(bad), "--max-len", "8"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["batch", "plan", "--lengths", str(tmp_path / "missing.txt"), "--max-len", "8"]) == 2
    assert main(["batch", "plan", "--max-len", "8"]) == 2
    assert "no lengths" in capsys.readouterr().err
    assert main(["batch", "simulate", "--lengths", str(bad), "--methods", "naive,shuffle"]) == 2
