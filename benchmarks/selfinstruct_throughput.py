"""Self-Instruct generation speed with a local model: prefix reuse on and off, and batched requests.

Same documents, same seeds, same settings in one run, greedy decoding so that the outputs can be compared token
for token, in two settings: ``demo`` (the demo's documents of a few thousand tokens, prompts cut to 2,048
tokens) and ``long`` (three long documents cut to the job's default 6,000-token prompt limit, where reading
the document costs more than writing the reply). Both generate at most 160 new tokens per request.

  * ``no_reuse`` and ``reuse``: the real job (:func:`longalign.data.selfinstruct.generate_long_data`, request
    cache off) over each document, once with ``prefix_reuse`` off and once on, alternating per document so a
    change of machine load hits both alike. Reported: documents/s, generated tokens/s, prompt tokens/s, and
    the prompt tokens that came from the prefix cache. The records (questions, chosen question, answer) must
    be identical, else the script fails.
  * ``batching``: all documents in one job with ``local_batch_size`` = their number and reuse on: each prompt
    is prefilled alone from the prefix cache and the documents' requests decode together; reported against the
    two runs above, with whether the outputs are identical (not required: batched products may round
    differently).

    python benchmarks/selfinstruct_throughput.py              # both settings, ~10 min on 2 quiet cores
    python benchmarks/selfinstruct_throughput.py --long-docs ''   # the demo setting only, ~4 min
    python benchmarks/selfinstruct_throughput.py --docs stdlib:secrets.py --long-docs '' \
        --model random:configs/models/tiny-llama

Documents are built-in texts of this machine (:func:`longalign.data.corpus.builtin_documents`): ``demo``:
``compileall.py`` (20 kB, cut to the prompt limit), ``sqlite3/dump.py`` (3 kB) and ``secrets.py`` (2 kB);
``long``: ``argparse.py``, ``difflib.py`` and ``zipfile.py`` (22k-25k tokens each, cut to their head and tail).
Results go to benchmarks/results/selfinstruct_throughput.json.
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


DEFAULT_DOCS = "stdlib:compileall.py,stdlib:sqlite3/dump.py,stdlib:secrets.py"
LONG_DOCS = "stdlib:argparse.py,stdlib:difflib.py,stdlib:zipfile.py"


def pick_documents(ids: list[str]) -> list[dict]:
    from longalign.data.corpus import builtin_documents

    found = {str(d["id"]): d for d in builtin_documents()}
    missing = [i for i in ids if i not in found]
    if missing:
        raise SystemExit(f"no built-in document {missing[0]!r} on this machine; name others with --docs")
    return [found[i] for i in ids]


def run_job(cfg, docs: list[dict], root: Path, label: str) -> tuple[float, list[dict], dict]:
    """``docs`` through the job with a cache-less client; returns (seconds, output per document, client usage)."""
    from longalign.data.selfinstruct import generate_long_data, make_generator_client
    from longalign.rundir import RunDir, read_jsonl

    run = RunDir(root / f"{label}-{docs[0]['id']}".replace("/", "_").replace(":", "_"))
    client = make_generator_client(cfg, run)
    client.cache = None  # every request reaches the model
    try:
        start = time.perf_counter()
        generate_long_data(cfg, run, client=client, docs=docs, progress=False)
        seconds = time.perf_counter() - start
        usage = client.usage()
    finally:
        client.close()
    by_id = {str(r["doc_id"]): r for r in read_jsonl(run.failed) + read_jsonl(run.long)}
    outs = []
    for doc in docs:
        rec = by_id[str(doc["id"])]
        out = {k: rec.get(k) for k in ("questions", "question", "reason")}
        out["answer"] = (rec.get("messages") or [{}, {}])[-1].get("content")
        outs.append(out)
    return seconds, outs, usage


def measure(lm, cfg, docs: list[dict], *, batching: bool) -> tuple[dict, list[dict], list[dict] | None]:
    """One setting: the job one document at a time with and without prefix reuse (alternating per document),
    then all documents in one batched job with reuse. Returns (result, outputs without reuse, first difference)."""
    modes = {"no_reuse": False, "reuse": True}
    totals = {m: {"seconds": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "reused_prompt_tokens": 0} for m in modes}
    outputs: dict[str, list[dict]] = {m: [] for m in modes}
    cfg.local_batch_size = 1
    with tempfile.TemporaryDirectory() as tmp:
        for doc in docs:
            for mode, reuse in modes.items():
                cfg.prefix_reuse = reuse
                lm.prefix_cache.clear()
                before = lm.prefix_cache.reused_tokens
                sec, (out,), usage = run_job(cfg, [doc], Path(tmp), mode)
                t = totals[mode]
                t["seconds"] += sec
                t["prompt_tokens"] += int(usage.get("prompt_tokens", 0))
                t["completion_tokens"] += int(usage.get("completion_tokens", 0))
                t["reused_prompt_tokens"] += lm.prefix_cache.reused_tokens - before
                outputs[mode].append(out)
                print(f"{doc['id'][:48]:48s} {mode:9s} {sec:7.1f} s  question: {str(out.get('question'))[:60]!r}")
    runs = {}
    for mode, t in totals.items():
        s = t["seconds"]
        runs[mode] = {
            **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()},
            "docs_per_s": round(len(docs) / s, 4),
            "completion_tokens_per_s": round(t["completion_tokens"] / s, 2),
            "prompt_tokens_per_s": round(t["prompt_tokens"] / s, 1),
        }
    identical = outputs["no_reuse"] == outputs["reuse"]
    speedup = round(runs["reuse"]["docs_per_s"] / runs["no_reuse"]["docs_per_s"], 3)
    for mode, r in runs.items():
        print(
            f"{mode:9s} {r['seconds']:7.1f} s  {r['docs_per_s']:.4f} docs/s  {r['completion_tokens_per_s']:6.2f} "
            f"generated tokens/s  {r['prompt_tokens_per_s']:7.1f} prompt tokens/s  "
            f"({r['reused_prompt_tokens']} prompt tokens from the prefix cache)"
        )
    print(f"prefix reuse: {speedup}x docs/s; outputs identical: {identical}")

    batched = None
    if batching and len(docs) > 1:
        # all documents in one job, their requests generated together: each prompt prefilled alone from the
        # prefix cache, the rows decoded together; compared with the one-at-a-time runs above
        cfg.prefix_reuse, cfg.local_batch_size = True, len(docs)
        lm.prefix_cache.clear()
        with tempfile.TemporaryDirectory() as tmp:
            sec, outs, usage = run_job(cfg, docs, Path(tmp), "batched")
        cfg.local_batch_size = 1
        completion = int(usage.get("completion_tokens", 0))
        batched = {
            "batch_size": len(docs),
            "seconds": round(sec, 2),
            "docs_per_s": round(len(docs) / sec, 4),
            "completion_tokens": completion,
            "completion_tokens_per_s": round(completion / sec, 2),
            "speedup_vs_no_reuse": round(runs["no_reuse"]["seconds"] / sec, 3),
            "speedup_vs_reuse": round(runs["reuse"]["seconds"] / sec, 3),
            "outputs_identical": outs == outputs["no_reuse"],
        }
        print(
            f"batched   {sec:7.1f} s  {batched['docs_per_s']:.4f} docs/s  ({batched['speedup_vs_no_reuse']}x vs "
            f"no reuse, {batched['speedup_vs_reuse']}x vs reuse); outputs identical: {batched['outputs_identical']}"
        )
    result = {
        "documents": [d["id"] for d in docs],
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "runs": runs,
        "prefix_reuse_speedup_docs_per_s": speedup,
        "outputs_identical": identical,
        "batching": batched,
    }
    diff = None
    if not identical:
        diff = next([x, y] for x, y in zip(outputs["no_reuse"], outputs["reuse"]) if x != y)
    return result, outputs["no_reuse"], diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="local model spec (default: the embedded SmolLM2-135M)")
    ap.add_argument("--docs", default=DEFAULT_DOCS, help="built-in document ids, comma-separated")
    ap.add_argument("--max-prompt-tokens", type=int, default=2048)
    ap.add_argument("--long-docs", default=LONG_DOCS, help="documents of the long-prompt setting ('' = skip it)")
    ap.add_argument("--long-max-prompt-tokens", type=int, default=6000, help="prompt limit of the long setting")
    ap.add_argument("--max-question-attempts", type=int, default=2)
    ap.add_argument("--question-max-tokens", type=int, default=160)
    ap.add_argument("--answer-max-tokens", type=int, default=160)
    ap.add_argument("--no-batching", action="store_true", help="skip the batching comparison")
    ap.add_argument("--out", default=str(HERE / "results" / "selfinstruct_throughput.json"))
    a = ap.parse_args()

    import torch

    from longalign.data.selfinstruct import GenerateConfig
    from longalign.llm.local_model import get_local_model

    def ids(text: str) -> list[str]:
        return [d.strip() for d in text.split(",") if d.strip()]

    settings = [("demo", pick_documents(ids(a.docs)), a.max_prompt_tokens)]
    if ids(a.long_docs) and a.long_max_prompt_tokens > 0:
        settings.append(("long", pick_documents(ids(a.long_docs)), a.long_max_prompt_tokens))
    lm = get_local_model(a.model)
    results, failures = {}, []
    for name, docs, max_prompt in settings:
        print(f"--- {name}: {len(docs)} documents, prompts cut to {max_prompt} tokens")
        cfg = GenerateConfig(
            llm=f"local:{a.model}",
            temperature=0.0,
            question_max_tokens=a.question_max_tokens,
            answer_max_tokens=a.answer_max_tokens,
            max_prompt_tokens=max_prompt,
            max_question_attempts=a.max_question_attempts,
            seed=42,
            relevance_gate=False,  # the same records whatever the gate would say; speed is what is measured
        )
        results[name], _, diff = measure(lm, cfg, docs, batching=not a.no_batching)
        if diff is not None:
            failures.append((name, diff))

    demo = results["demo"]
    record = {
        "benchmark": "selfinstruct_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_end": list(os.getloadavg()),
            "device": str(lm.device),
        },
        "model": lm.name,
        "settings": {
            "question_max_tokens": a.question_max_tokens,
            "answer_max_tokens": a.answer_max_tokens,
            "decoding": "greedy",
            "seed": 42,
            "max_question_attempts": a.max_question_attempts,
        },
        # the demo's setting at the top level, as before; every setting under "settings_results"
        "runs": demo["runs"],
        "prefix_reuse_speedup_docs_per_s": demo["prefix_reuse_speedup_docs_per_s"],
        "outputs_identical": all(r["outputs_identical"] for r in results.values()),
        "batching": demo["batching"],
        "settings_results": results,
    }
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_path}")
    for name, r in results.items():
        b = r["batching"] or {}
        print(
            f"{name:5s} ({r['max_prompt_tokens']} prompt tokens): reuse {r['prefix_reuse_speedup_docs_per_s']}x, "
            f"reuse + batch {b.get('speedup_vs_no_reuse', '-')}x docs/s vs neither"
        )
    for name, (x, y) in failures:
        print(f"{name}: first difference:\n  without reuse:", json.dumps(x)[:400])
        print("  with reuse:   ", json.dumps(y)[:400])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
