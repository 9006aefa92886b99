"""Held-out loss: equal to the cross-entropy read from the model's full logits on the assistant tokens, both
means as defined, written to eval/heldout/, lower after training on the same conversations, bad input named."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from longalign.eval import HeldOutConfig, heldout  # noqa: E402
from longalign.eval import run as eval_run  # noqa: E402
from longalign.rundir import RunDir, read_json  # noqa: E402

TINY = "random:configs/models/tiny-llama"
CONVS = [
    {
        "messages": [
            {"role": "user", "content": "Document: the river runs north past the mill. Where does the river run?"},
            {"role": "assistant", "content": "North, past the mill."},
        ],
        "doc_id": "a",
        "kind": "long",
    },
    {
        "messages": [
            {"role": "user", "content": "Summarise: a cat sat on a warm mat all afternoon and did not move."},
            {"role": "assistant", "content": "A cat spent the whole afternoon still on a warm mat, sleeping."},
        ],
        "doc_id": "b",
        "kind": "short",
    },
]


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _reference(model, tok, conv, max_len=512):
    from longalign.tokenize.encode import tokenize_conversation

    row = tokenize_conversation(conv["messages"], tok, max_len=max_len, truncation="middle")
    ids = torch.as_tensor(row.input_ids)[None].long()
    labels = torch.as_tensor(row.labels).long()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    ce = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
    return float(ce), int((labels[1:] != -100).sum())


def test_matches_full_logits_and_means(tmp_path):
    from longalign.models import load_model, load_tokenizer

    run = RunDir(tmp_path / "run")
    _write(run.heldout, CONVS)
    model = load_model(TINY, seed=3)
    tok = load_tokenizer(TINY)
    summary = eval_run(HeldOutConfig(model=TINY, max_len=512, progress=False), run, model=model)
    rows = [json.loads(line) for line in (run.eval("heldout") / "results.jsonl").read_text().splitlines()]
    refs = [_reference(model, tok, c) for c in CONVS]
    for row, (ce, n) in zip(rows, refs, strict=True):
        assert row["n_target"] == n > 0
        assert row["loss_sum"] == pytest.approx(ce, rel=1e-5)
    s = read_json(run.eval_summary("heldout"))
    seq = sum(ce / n for ce, n in refs) / len(refs)
    assert s["sequence_mean"] == pytest.approx(seq, abs=1e-4)
    assert s["token_mean"] == pytest.approx(sum(c for c, _ in refs) / sum(n for _, n in refs), abs=1e-4)
    assert s["sequence_ppl"] == pytest.approx(math.exp(seq), rel=1e-3)
    assert summary.scores["n"] == 2 and "held-out loss" in summary.lines()[0]
    by_kind = s["by_kind"]
    assert set(by_kind) == {"long", "short"} and by_kind["long"]["n"] == 1
    assert by_kind["short"]["sequence_mean"] == pytest.approx(refs[1][0] / refs[1][1], abs=1e-4)
    assert "eval_heldout" in read_json(run.run_json)["stages"]


def test_lower_after_fitting_the_replies(tmp_path):
    """A few SGD steps on the same conversations lower the held-out loss: the number can move."""
    from longalign.models import load_model, load_tokenizer
    from longalign.tokenize.encode import tokenize_conversation

    run = RunDir(tmp_path / "run")
    _write(run.heldout, CONVS)
    cfg = HeldOutConfig(model=TINY, max_len=512, progress=False)
    model = load_model(TINY, seed=3)
    before = heldout.run(cfg, run, model=model).scores["sequence_mean"]
    tok = load_tokenizer(TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(5):
        for conv in CONVS:
            row = tokenize_conversation(conv["messages"], tok, max_len=512)
            ids, labels = torch.as_tensor(row.input_ids)[None].long(), torch.as_tensor(row.labels)[None].long()
            out = model(input_ids=ids, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    after = heldout.run(cfg, run, model=model).scores["sequence_mean"]
    assert after < before - 0.1


def test_bad_input_is_named(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="--data"):
        heldout.run(HeldOutConfig(model=TINY, progress=False), run)
    bad = tmp_path / "bad.jsonl"
    _write(bad, [CONVS[0], {"messages": [{"role": "robot", "content": "x"}]}])
    from longalign.models import load_model

    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        heldout.run(HeldOutConfig(data=str(bad), model=TINY, progress=False), run, model=load_model(TINY))
