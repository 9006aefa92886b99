"""Tokenize-stage throughput and storage: 1 vs 2 worker processes, and ragged Arrow vs dense padded arrays.

The conversations are built from the Python standard library installed on this machine: long ones put one
or more source files in the user turn and ask about a function defined there (the reply is that
function's docstring); short ones ask about a function in one line, some over two exchanges. This gives
a long + short mix shaped like LongAlign-10k + ShareGPT at a smaller scale.

Measured side by side in one run, same input, same tokenizer (the embedded SmolLM2 by default):
  * documents/s and tokens/s (wall clock, plus CPU seconds of all processes, which stay meaningful on a
    busy machine) with ``num_proc`` 1 and 2 (reply-boundary verification on, the default),
    and with 1 process and verification off (one tokenization pass instead of two);
  * bytes of the ``tokens/`` folder versus dense ``[rows, max_len]`` input_ids + labels arrays in int32
    and int64 (how the paper's pre-tokenizer stored them), and versus padding only to the longest row.

    python benchmarks/tokenize_throughput.py                 # 2,000 conversations, max_len 8192
    python benchmarks/tokenize_throughput.py --n 500 --quick

``TOKENIZERS_PARALLELISM`` is set to false so that "1 process" really uses one core (the Rust tokenizer
would otherwise spread a batch over threads). Results go to benchmarks/results/tokenize_throughput.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import resource
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from longalign.tokenize import TokenizeConfig, load_tokens, tokenize_file  # noqa: E402


def stdlib_sources(limit_bytes: int = 400_000) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(module name, source text, [(function name, docstring)]) for stdlib modules with documented functions."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > limit_bytes or len(text) < 2_000:
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        funcs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    funcs.append((node.name, doc))
        if funcs:
            out.append((path.stem, text, funcs))
    return out


QUESTIONS = [
    "What does `{name}` in this code do, and how is it meant to be called?",
    "Summarise the purpose of `{name}` as defined above.",
    "Explain the behaviour of `{name}`; mention its arguments and what it returns.",
]
SHORT = [
    "In Python's {module} module, what is `{name}` for?",
    "Briefly, what does {module}.{name} do?",
    "Can you explain `{name}` from the {module} module?",
]


def build_conversations(n: int, long_frac: float, seed: int, min_chars: int, max_chars: int) -> list[dict]:
    rng = random.Random(seed)
    sources = stdlib_sources()
    rows = []
    for _ in range(n):
        module, text, funcs = rng.choice(sources)
        name, doc = rng.choice(funcs)
        if rng.random() < long_frac:
            target = rng.randint(min_chars, max_chars)
            doc_text = text
            while len(doc_text) < target:  # add more files until the document is long enough
                doc_text += "\n\n# ---- next file ----\n\n" + rng.choice(sources)[1]
            doc_text = doc_text[:target]
            question = rng.choice(QUESTIONS).format(name=name)
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"{doc_text}\n\n{question}"},
                        {"role": "assistant", "content": doc},
                    ],
                    "source": f"stdlib:{module}",
                    "lang": "en",
                    "task_type": "general",
                }
            )
        else:
            msgs = [
                {"role": "user", "content": rng.choice(SHORT).format(module=module, name=name)},
                {"role": "assistant", "content": doc if rng.random() > 0.01 else ""},
            ]
            if rng.random() < 0.2:
                name2, doc2 = rng.choice(funcs)
                msgs += [{"role": "user", "content": f"And `{name2}`?"}, {"role": "assistant", "content": doc2}]
            rows.append({"messages": msgs, "source": "short", "lang": "en", "task_type": "chat"})
    return rows


def cpu_split() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="conversations")
    ap.add_argument("--long-frac", type=float, default=0.1, help="fraction of long-document conversations")
    ap.add_argument("--min-chars", type=int, default=6_000, help="shortest long document, characters")
    ap.add_argument("--max-chars", type=int, default=48_000, help="longest long document, characters")
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="skip the verification-off run")
    ap.add_argument("--out", default=str(HERE / "results" / "tokenize_throughput.json"))
    args = ap.parse_args(argv)

    from longalign.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    rows = build_conversations(args.n, args.long_frac, args.seed, args.min_chars, args.max_chars)
    runs = [("1 process", dict(num_proc=1)), ("2 processes", dict(num_proc=2))]
    if not args.quick:
        runs.append(("1 process, verify off", dict(num_proc=1, verify=False)))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tok-bench-") as tmp:
        src = Path(tmp) / "mixed.jsonl"
        with src.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        input_mb = src.stat().st_size / 1e6
        for label, opts in runs:
            out = Path(tmp) / f"tokens-{len(results)}"
            cfg = TokenizeConfig(model=args.model, max_len=args.max_len, **opts)
            main0, kids0 = cpu_split()
            t0 = time.perf_counter()
            res = tokenize_file(src, out, cfg, tokenizer=tokenizer, show_progress=False)
            wall = time.perf_counter() - t0
            main1, kids1 = cpu_split()
            cpu_main, cpu_workers = main1 - main0, kids1 - kids0
            cpu = cpu_main + cpu_workers
            results[label] = {
                "num_proc": opts["num_proc"],
                "verify": opts.get("verify", True),
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "cpu_main_seconds": round(cpu_main, 3),
                "cpu_worker_seconds": round(cpu_workers, 3),
                "docs_per_s": round(res.n_input_rows / wall, 1),
                "tokens_per_cpu_s": round(res.n_tokens / cpu) if cpu > 0 else None,
                "tokens_per_s": round(res.n_tokens / wall),
                "n_rows": res.n_rows,
                "n_tokens": res.n_tokens,
                "n_target_tokens": res.n_target_tokens,
                "n_truncated": res.n_truncated,
                "n_dropped": res.n_dropped,
                "n_boundary_mismatch": res.n_boundary_mismatch,
                "tokens_dir_bytes": folder_bytes(out),
            }
            print(
                f"{label:24s} {wall:7.2f} s  {results[label]['docs_per_s']:8.1f} docs/s  "
                f"{results[label]['tokens_per_s']:9d} tokens/s  (cpu {cpu:6.2f} s, all processes)",
                flush=True,
            )
        ds, meta = load_tokens(Path(tmp) / "tokens-0")
        lengths = ds["length"]
    one, two = results["1 process"], results["2 processes"]
    assert one["n_tokens"] == two["n_tokens"], "1 and 2 processes must produce the same rows"
    n_rows, longest = len(lengths), max(lengths)
    ragged = one["tokens_dir_bytes"]
    dense = {f"padded_to_max_len_{bits}": n_rows * args.max_len * 2 * (bits // 8) for bits in (32, 64)}
    dense.update({f"padded_to_longest_{bits}": n_rows * longest * 2 * (bits // 8) for bits in (32, 64)})
    storage = {
        "tokens_dir_bytes": ragged,
        **{k: v for k, v in dense.items()},
        **{f"ratio_{k}": round(v / ragged, 2) for k, v in dense.items()},
    }
    # On a busy machine the wall-clock ratio mostly measures the neighbours. The CPU split of the 2-process
    # run bounds what two idle cores can give: the main process (read, validate, write) overlaps with the
    # workers (render, tokenize), so the run takes at least max(main CPU, worker CPU / 2, all CPU / 2).
    floor2 = max(two["cpu_main_seconds"], two["cpu_worker_seconds"] / 2, two["cpu_seconds"] / 2)
    speed = {
        "speedup_2_vs_1_proc": round(one["seconds"] / two["seconds"], 2),
        "cpu_ratio_2_vs_1_proc": round(two["cpu_seconds"] / one["cpu_seconds"], 2),
        "main_process_cpu_share_2_proc": round(two["cpu_main_seconds"] / two["cpu_seconds"], 3),
        "idle_2_core_speedup_bound": round(two["cpu_seconds"] / floor2, 2),
    }
    if "1 process, verify off" in results:
        speed["speedup_verify_off"] = round(one["seconds"] / results["1 process, verify off"]["seconds"], 2)
    print(
        f"\nspeed-up with 2 processes: {speed['speedup_2_vs_1_proc']:.2f}x wall clock (load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); CPU used 2 vs 1: "
        f"{speed['cpu_ratio_2_vs_1_proc']:.2f}x; main process share of the CPU: "
        f"{100 * speed['main_process_cpu_share_2_proc']:.1f}%, so two idle cores allow up to "
        f"{speed['idle_2_core_speedup_bound']:.2f}x"
    )
    if "speedup_verify_off" in speed:
        print(f"verification off (one tokenization pass): {speed['speedup_verify_off']:.2f}x faster")
    print(f"rows {n_rows}, tokens {one['n_tokens']}, longest {longest}, mean {one['n_tokens'] / max(n_rows, 1):.0f}")
    print(f"tokens/ folder: {ragged / 1e6:.2f} MB (input jsonl {input_mb:.2f} MB)")
    for k, v in dense.items():
        print(f"  dense {k:24s} {v / 1e6:9.2f} MB  = {v / ragged:6.2f}x the tokens/ folder")
    record = {
        "benchmark": "tokenize_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "params": vars(args),
        "tokenizer": meta["tokenizer"],
        "input_mb": round(input_mb, 2),
        "n_rows": n_rows,
        "longest": longest,
        "runs": results,
        "speed": speed,
        "storage": storage,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
