"""Throughput of the synthetic ladder (``longalign eval ruler``) on a local model, with and without prefix reuse.

The same ladder (tasks x lengths x samples, one seed) runs twice in one process on one loaded model: once with
``prefix_reuse`` off (every prompt prefilled in full) and once on (the runner answers prompts in the
lexicographic order of their token ids and the model's prefix cache prefills only what a prompt does not share
with the one before: the header and the haystack up to the first insert, across tasks and lengths). Reported per
setting: prompts/s, the seconds spent answering (the sum over samples) and in the whole run (prompt building
included), prompt tokens in all and taken from the prefix cache; then the speed-up and whether the outputs are
identical sample by sample (greedy decoding; the script exits with 1 when they are not). One short generation
warms the model up before the timed runs. ``--rounds 2`` runs
the pair twice in opposite order (off, on, on, off) so that a drift of the machine's load hits both settings.

    python benchmarks/ladder_throughput.py                                   # 4 tasks x 1k, 2k x 3 samples
    python benchmarks/ladder_throughput.py --lengths 1024,2048,4096 --samples 5 --rounds 2
    python benchmarks/ladder_throughput.py --model random:configs/models/tiny-llama --lengths 400,700

Results go to benchmarks/results/ladder_throughput.json (``--out``). The ratio means something for a model whose
config keeps the KV cache on (``use_cache``, as SmolLM2's does): prefix reuse always decodes with a cache, while a
config with ``use_cache: false`` (the random test model's) decodes without one when reuse is off, which inflates
the speed-up; ``model_use_cache`` in the JSON says which case a run was.

``--batch-size N`` adds a third setting, prefix reuse with ``N`` samples answered together (``longalign eval ruler
--batch-size``: each prompt prefilled alone, the answers decoded as one batch), timed in the same rounds; reported:
its speed-up over reuse alone, how many outputs differ from the one-by-one answers (batched products may round
differently) and the mean score of each setting. ``--dtype float32`` measures the numeric path the demo's ladder
uses (the default is the local default: int4 decoding on AVX-512 CPUs).

    python benchmarks/ladder_throughput.py --tasks niah_multivalue,vt --lengths 1024 --samples 6 \
        --max-new-tokens 40 --dtype float32 --batch-size 12 --rounds 2      # the demo's ladder
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEFAULT_TASKS = "niah_single_docs,niah_multikey,vt,fwe"


def run_once(cfg, root: Path, label: str, answerer) -> dict:
    from longalign.eval import ruler
    from longalign.rundir import RunDir, read_jsonl

    answerer.lm.prefix_cache.clear()
    answerer.prefix_reuse = cfg.prefix_reuse
    run = RunDir(root / label)
    start = time.perf_counter()
    ruler.run(cfg, run, answerer=answerer)
    total = time.perf_counter() - start
    recs = read_jsonl(run.ruler_results())
    answering = sum(r["seconds"] for r in recs)
    prompt = sum(r["prompt_tokens"] for r in recs)
    reused = sum(r["reused_prompt_tokens"] for r in recs)
    return {
        "samples": len(recs),
        "seconds_answering": round(answering, 2),
        "seconds_total": round(total, 2),
        "prompts_per_s": round(len(recs) / answering, 4) if answering else None,
        "prompt_tokens": prompt,
        "reused_prompt_tokens": reused,
        "prefilled_tokens": prompt - reused,
        "completion_tokens": sum(r["completion_tokens"] for r in recs),
        "mean_score": round(sum(r["score"] for r in recs) / len(recs), 4) if recs else None,
        "outputs": {r["key"]: r["output"] for r in recs},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=0, help="0 = each task's own budget")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of runs (every second round in reverse order)")
    ap.add_argument("--batch-size", type=int, default=1, help="also answer this many samples together (1 = not)")
    ap.add_argument("--dtype", default="", help="float32, bfloat16 or int4 (default: the local default)")
    ap.add_argument("--out", default=str(HERE / "results" / "ladder_throughput.json"))
    args = ap.parse_args(argv)

    import torch

    from longalign.eval.ruler import LocalAnswerer, RulerConfig

    answerer = LocalAnswerer(args.model, dtype=args.dtype or None)
    lm = answerer.lm  # the first generate call of a process is slower: warm up outside the timed runs
    lm.generate([lm.encode(lm.render([{"role": "user", "content": "Say hello."}]))], max_new_tokens=4)
    base = dict(
        model=args.model,
        tasks=[t for t in args.tasks.split(",") if t],
        lengths=[int(x) for x in args.lengths.split(",") if x],
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        progress=False,
    )
    settings = {"no_reuse": (False, 1), "reuse": (True, 1)}
    if args.batch_size > 1:
        settings["batched"] = (True, args.batch_size)
    order = []
    for r in range(args.rounds):
        order += list(settings) if r % 2 == 0 else list(reversed(settings))
    runs: dict[str, list[dict]] = {label: [] for label in settings}
    with tempfile.TemporaryDirectory(prefix="ladder-bench-") as tmp:
        for k, label in enumerate(order):
            reuse, batch = settings[label]
            cfg = RulerConfig(**base, prefix_reuse=reuse, batch_size=batch, dtype=args.dtype)
            res = run_once(cfg, Path(tmp), f"{label}-{k}", answerer)
            runs[label].append(res)
            print(
                f"{label:9s} {res['samples']} prompts in {res['seconds_answering']} s answering "
                f"({res['prompts_per_s']} prompts/s); {res['reused_prompt_tokens']} of {res['prompt_tokens']} prompt "
                "tokens from the prefix cache",
                flush=True,
            )
    reference = runs["no_reuse"][0]["outputs"]
    mismatches = [
        {"key": key, "no_reuse": out, "reuse": res["outputs"].get(key)}
        for res in runs["no_reuse"] + runs["reuse"]
        for key, out in reference.items()
        if res["outputs"].get(key) != out
    ]
    batched_differ = [
        {"key": key, "one_by_one": out, "batched": res["outputs"].get(key)}
        for res in runs.get("batched", [])
        for key, out in reference.items()
        if res["outputs"].get(key) != out
    ]

    def pooled(label: str) -> dict:
        rs = runs[label]
        secs = sum(r["seconds_answering"] for r in rs)
        n = sum(r["samples"] for r in rs)
        keep = [k for k in rs[0] if k != "outputs"]
        return {"runs": [{k: r[k] for k in keep} for r in rs], "prompts_per_s": round(n / secs, 4) if secs else None}

    off, on = pooled("no_reuse"), pooled("reuse")
    batched = pooled("batched") if "batched" in runs else None
    out = {
        "benchmark": "ladder_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": answerer.name,
        "model_use_cache": bool(getattr(answerer.lm.model.config, "use_cache", True)),
        "settings": {k: v for k, v in base.items() if k != "progress"},
        "rounds": args.rounds,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "no_reuse": off,
        "reuse": on,
        "speedup": round(on["prompts_per_s"] / off["prompts_per_s"], 3)
        if on["prompts_per_s"] and off["prompts_per_s"]
        else None,
        "identical_outputs": not mismatches,
        "mismatches": mismatches[:20],
        "mean_score": {label: [r["mean_score"] for r in rs] for label, rs in runs.items()},
    }
    if batched is not None:
        out["batch_size"] = args.batch_size
        out["batched"] = batched
        out["batched_speedup_over_reuse"] = (
            round(batched["prompts_per_s"] / on["prompts_per_s"], 3)
            if batched["prompts_per_s"] and on["prompts_per_s"]
            else None
        )
        out["batched_outputs_differing"] = len(batched_differ)
        out["batched_differences"] = batched_differ[:20]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"speed-up with prefix reuse: {out['speedup']}x ({off['prompts_per_s']} -> {on['prompts_per_s']} prompts/s); "
        f"outputs identical: {out['identical_outputs']}; written to {path}"
    )
    if batched is not None:
        print(
            f"batches of {args.batch_size}: {out['batched_speedup_over_reuse']}x over reuse alone "
            f"({on['prompts_per_s']} -> {batched['prompts_per_s']} prompts/s); outputs differing from one-by-one: "
            f"{len(batched_differ)} of {sum(r['samples'] for r in runs['batched'])}; mean scores {out['mean_score']}"
        )
    return 0 if not mismatches else 1


if __name__ == "__main__":
    raise SystemExit(main())
