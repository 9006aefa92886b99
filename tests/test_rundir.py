from __future__ import annotations

import json
import os

import pytest

from longalign.rundir import RunDir, append_jsonl, atomic_write_json, iter_jsonl, read_json, read_jsonl


def test_append_jsonl_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    append_jsonl(path, [{"i": 0}, {"i": 1}])
    with path.open("ab") as fh:  # a writer killed mid-line
        fh.write(b'{"i": 2, "te')
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]
    append_jsonl(path, {"i": 3})
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 3}]
    with pytest.raises(ValueError, match=r"a.jsonl:3: not valid JSON"):
        list(iter_jsonl(path, strict=True))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "s.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert read_json(target) == {"x": 2}
    assert os.listdir(target.parent) == ["s.json"]


def test_run_dir_paths_and_stage_record(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.metrics("pack") == tmp_path / "r" / "train" / "pack" / "metrics.jsonl"
    assert run.batch_plan("sort").name == "sort.plan.json"
    run.record_stage("tokenize", {"max_len": 8})
    run.record_stage("batch", {"method": "pack"}, summary={"n": 3})
    info = json.loads(run.run_json.read_text())
    assert info["stages"]["tokenize"]["config"] == {"max_len": 8}
    assert info["stages"]["batch"]["summary"] == {"n": 3}
    assert "torch" in info["versions"]


def test_bad_records_raise_or_count_and_list_the_first_n():
    import pytest

    from longalign.rundir import BadRecord, BadRecords

    with pytest.raises(BadRecord, match=r"f\.jsonl:3: no text \(or pass --on-error skip"):
        BadRecords().bad("f.jsonl:3", "no text", "missing_field")
    skipped = BadRecords("skip", max_listed=2)
    for line in (1, 2, 3):
        skipped.bad(f"f.jsonl:{line}", "no text", "missing_field")
    skipped.add(BadRecord("f.jsonl:9", "not valid JSON", "invalid_json"))
    d = skipped.to_dict()
    assert d["total"] == 4 and d["by_reason"] == {"invalid_json": 1, "missing_field": 3}
    assert [e["at"] for e in d["first"]] == ["f.jsonl:1", "f.jsonl:2"]
    assert skipped.lines()[0] == "skipped 4 bad records (invalid_json 1, missing_field 3); first 2:"
    with pytest.raises(ValueError, match="on_error"):
        BadRecords("ignore")


def test_train_dir_names_every_file_of_a_training_run(tmp_path):
    from longalign.rundir import TrainDir

    run = RunDir(tmp_path / "r")
    folder = run.train_dir("pack")
    root = tmp_path / "r" / "train" / "pack"
    assert folder == TrainDir(root) and folder.root == run.train("pack") == root
    assert (folder.metrics, folder.meta, folder.plan) == (
        root / "metrics.jsonl",
        root / "run_meta.json",
        root / "plan.json",
    )
    assert (folder.checkpoints, folder.final) == (root / "checkpoints", root / "final")
    assert (run.metrics("pack"), run.train_meta("pack")) == (folder.metrics, folder.meta)
    assert (run.checkpoints("pack"), run.final_model("pack")) == (folder.checkpoints, folder.final)
    assert not folder.has_checkpoints()
    folder.checkpoints.mkdir(parents=True)
    assert not folder.has_checkpoints()  # an empty checkpoints folder holds nothing to resume
    (folder.checkpoints / "checkpoint-4").mkdir()
    assert folder.has_checkpoints()
