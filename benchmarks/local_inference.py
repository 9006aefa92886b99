"""Local inference speed and agreement: the exact float32 path against int4 decoding, side by side in one run.

Both settings of the same model are loaded in one process (``get_local_model(dtype="float32")`` and
``dtype="int4"``, see :mod:`longalign.llm.int4_decode`) and measured in alternation (ABAB), so a change of machine
load hits both alike:

  * ``steps``: for each prompt length (tokens of a built-in document), a prefill into an empty KV cache (prompt
    tokens/s) and ``--decode-tokens`` greedy decoding steps, one token each (decode tokens/s from the median step).
    Greedy agreement: how many of the int4 model's decoded tokens match the float32 model's before the first
    difference, and whether the prefill logits are bit for bit the same.
  * ``selfinstruct``: the real Self-Instruct job (:func:`longalign.data.selfinstruct.generate_long_data`, greedy,
    request cache off, prefix reuse on) over each document, alternating the two settings per document through
    ``LONGALIGN_LOCAL_DTYPE``: documents/s, generated and prompt tokens/s, the validity rate (documents that
    became a record) and how many records are identical between the two settings.

    python benchmarks/local_inference.py                       # ~10 min on 2 quiet cores
    python benchmarks/local_inference.py --docs '' --rounds 1  # steps only, ~2 min

Results go to benchmarks/results/local_inference.json, with the load average at start and end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SETTINGS = ("float32", "int4")


def _selfinstruct_bench():
    """The helpers of benchmarks/selfinstruct_throughput.py (document choice, one job run)."""
    spec = importlib.util.spec_from_file_location("selfinstruct_throughput", HERE / "selfinstruct_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def steps(lm, ids: list[int], decode_tokens: int) -> dict:
    """Prefill ``ids`` into an empty cache, then ``decode_tokens`` greedy steps; seconds and tokens."""
    import torch

    from longalign.llm.local_model import _output_cache

    kw = lm._cache_keyword()
    with lm.lock, torch.inference_mode():
        cache = lm._new_cache()
        start = time.perf_counter()
        out = lm.model(input_ids=torch.tensor([ids]), use_cache=True, **{kw: cache}, **lm._one_logit_kwargs())
        prefill = time.perf_counter() - start
        first_logits = out.logits[0, -1].clone()
        cache = _output_cache(out) or cache
        nxt = out.logits[:, -1:].argmax(-1)
        tokens, times = [int(nxt)], []
        for _ in range(decode_tokens):
            start = time.perf_counter()
            out = lm.model(input_ids=nxt, use_cache=True, **{kw: cache})
            nxt = out.logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - start)
            tokens.append(int(nxt))
    return {"prefill_s": prefill, "step_s": times, "tokens": tokens, "first_logits": first_logits}


def measure_steps(models: dict, doc_ids: list[int], lengths: list[int], decode_tokens: int, rounds: int) -> dict:
    raw: dict[str, dict[int, list[dict]]] = {s: {n: [] for n in lengths} for s in models}
    for r in range(rounds):
        for n in lengths:
            for setting, lm in models.items():
                got = steps(lm, doc_ids[:n], decode_tokens)
                raw[setting][n].append(got)
                print(
                    f"round {r} {setting:7s} prompt {n:5d}: prefill {n / got['prefill_s']:7.1f} tokens/s, decode "
                    f"{1 / statistics.median(got['step_s']):6.2f} tokens/s  (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    out = {}
    for n in lengths:
        row: dict = {}
        for setting in models:
            runs = raw[setting][n]
            row[setting] = {
                "prefill_tokens_per_s": [round(n / g["prefill_s"], 1) for g in runs],
                "decode_tokens_per_s": [round(1 / statistics.median(g["step_s"]), 2) for g in runs],
            }
        a, b = raw["float32"][n][0], raw["int4"][n][0]
        agree = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y), len(a["tokens"]))
        med = {s: statistics.median(row[s]["decode_tokens_per_s"]) for s in models}
        pre = {s: statistics.median(row[s]["prefill_tokens_per_s"]) for s in models}
        row["decode_speedup"] = round(med["int4"] / med["float32"], 3)
        row["prefill_speedup"] = round(pre["int4"] / pre["float32"], 3)
        row["prefill_logits_identical"] = bool((a["first_logits"] == b["first_logits"]).all())
        row["greedy_tokens_agreeing_before_first_difference"] = agree
        row["greedy_tokens"] = len(a["tokens"])
        out[str(n)] = row
        print(
            f"prompt {n}: decode {row['decode_speedup']}x, prefill {row['prefill_speedup']}x; greedy tokens agree "
            f"{agree}/{len(a['tokens'])}; prefill logits identical: {row['prefill_logits_identical']}"
        )
    return out


def measure_selfinstruct(docs: list[dict], max_prompt_tokens: int, answer_tokens: int) -> dict:
    from longalign.data.selfinstruct import GenerateConfig
    from longalign.llm.local_model import LOCAL_DTYPE_ENV

    bench = _selfinstruct_bench()
    cfg = GenerateConfig(
        llm="local:smollm2",
        temperature=0.0,
        question_max_tokens=answer_tokens,
        answer_max_tokens=answer_tokens,
        max_prompt_tokens=max_prompt_tokens,
        max_question_attempts=2,
        seed=42,
        relevance_gate=False,
    )
    cfg.prefix_reuse, cfg.local_batch_size = True, 1
    totals = {s: {"seconds": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "records": 0} for s in SETTINGS}
    outputs: dict[str, list] = {s: [] for s in SETTINGS}
    before = os.environ.get(LOCAL_DTYPE_ENV)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for doc in docs:
                for setting in SETTINGS:
                    os.environ[LOCAL_DTYPE_ENV] = setting
                    sec, (out,), usage = bench.run_job(cfg, [doc], Path(tmp), setting)
                    t = totals[setting]
                    t["seconds"] += sec
                    t["prompt_tokens"] += int(usage.get("prompt_tokens", 0))
                    t["completion_tokens"] += int(usage.get("completion_tokens", 0))
                    t["records"] += int(bool(out.get("answer")))
                    outputs[setting].append(out)
                    print(
                        f"{doc['id'][:40]:40s} {setting:7s} {sec:7.1f} s  question: {str(out.get('question'))[:50]!r}"
                        f"  (load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    finally:
        if before is None:
            os.environ.pop(LOCAL_DTYPE_ENV, None)
        else:
            os.environ[LOCAL_DTYPE_ENV] = before
    runs = {}
    for setting, t in totals.items():
        s = t["seconds"]
        runs[setting] = {
            "seconds": round(s, 2),
            "docs_per_s": round(len(docs) / s, 4),
            "completion_tokens_per_s": round(t["completion_tokens"] / s, 2),
            "prompt_tokens_per_s": round(t["prompt_tokens"] / s, 1),
            "validity_rate": round(t["records"] / len(docs), 3),
            "prompt_tokens": t["prompt_tokens"],
            "completion_tokens": t["completion_tokens"],
        }
    same = sum(x == y for x, y in zip(outputs["float32"], outputs["int4"]))
    return {
        "documents": [d["id"] for d in docs],
        "max_prompt_tokens": max_prompt_tokens,
        "runs": runs,
        "docs_per_s_speedup": round(runs["int4"]["docs_per_s"] / runs["float32"]["docs_per_s"], 3),
        "records_identical": same,
        "outputs": outputs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="64,2000", help="prompt lengths in tokens for the step measurements")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="ABAB rounds of the step measurements")
    ap.add_argument("--docs", default="stdlib:compileall.py,stdlib:sqlite3/dump.py,stdlib:secrets.py")
    ap.add_argument("--max-prompt-tokens", type=int, default=2048)
    ap.add_argument("--answer-max-tokens", type=int, default=160)
    ap.add_argument("--out", default=str(HERE / "results" / "local_inference.json"))
    a = ap.parse_args()

    import torch

    from longalign.llm.local_model import get_local_model

    load_start = list(os.getloadavg())
    models = {s: get_local_model("smollm2", device="cpu", dtype=s) for s in SETTINGS}
    bench = _selfinstruct_bench()
    doc_ids = [d.strip() for d in a.docs.split(",") if d.strip()]
    step_doc = bench.pick_documents(["stdlib:argparse.py"])[0]
    ids = models["float32"].encode(step_doc["text"])
    lengths = [min(int(n), len(ids)) for n in a.lengths.split(",") if n.strip()]
    for lm in models.values():  # warm-up: first calls allocate
        steps(lm, ids[:32], 4)
    record = {
        "benchmark": "local_inference",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": load_start,
        },
        "model": models["float32"].name,
        "settings": list(SETTINGS),
        "steps": measure_steps(models, ids, lengths, a.decode_tokens, a.rounds),
    }
    if doc_ids:
        docs = bench.pick_documents(doc_ids)
        si = measure_selfinstruct(docs, a.max_prompt_tokens, a.answer_max_tokens)
        record["selfinstruct"] = si
        r = si["runs"]
        print(
            f"Self-Instruct: {r['float32']['docs_per_s']} -> {r['int4']['docs_per_s']} docs/s "
            f"({si['docs_per_s_speedup']}x); valid {r['float32']['validity_rate']} / {r['int4']['validity_rate']}; "
            f"records identical {si['records_identical']}/{len(docs)}"
        )
    record["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
