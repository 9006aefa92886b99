#!/usr/bin/env python
"""Speed and peak memory of CPU training under each memory allocator setting, side by side in one run.

Settings (:mod:`longalign.train.allocator`): ``tcmalloc`` (the default: preloaded with ``LD_PRELOAD``), ``glibc``
(glibc's malloc as it is), ``lean`` (glibc with a 1 MiB mmap threshold: freed blocks leave the process at once),
``jemalloc`` (preloaded, its own defaults; not in the default list) -- a preloaded one is skipped with a note
when its library is missing (Debian's ``libtcmalloc-minimal4``, ``libjemalloc2``). The cases are those of
``train_cases.py``:

  demo   the demo's pack training (SmolLM2-135M-Instruct, packs of 1,536 tokens, ``--demo-steps`` steps);
         speed = real tokens/s after the first step
  peer   the peer harness's packed run (hidden-256 Llama, packs of 4,096 tokens, 30k real tokens, one epoch);
         speed = real tokens / the epoch's wall time (the harness's measure)
  mem8k  benchmarks/memory.py's ``smollm2:8192:chunked:ckpt`` (two steps); speed = the second step's tokens/s

Every run is a fresh subprocess started with the setting's environment (``LONGALIGN_CPU_ALLOCATOR``, and
``LD_PRELOAD`` for the preloaded ones); peak memory is the child's ``ru_maxrss``. Runs are interleaved: in each
round, for each case, every setting in turn (A B C A B C), so slow drifts of a shared machine spread over all
settings. Besides wall-clock tokens/s, each run reports tokens per CPU-second of the training process (user +
system, after the first step) and the kernel's share of it: on a machine that other jobs share, those are the
stable measures (``--threads 1`` also removes thread-pool waits). The summary gives each setting's mean speed
over the rounds as a share of the fastest, and its largest peak as a multiple of the lowest.

    python benchmarks/allocator.py                            # demo + peer, 2 rounds: ~7 minutes on 2 quiet cores
    python benchmarks/allocator.py --cases mem8k --rounds 1   # SmolLM2 at 8k: ~10 minutes
    python benchmarks/allocator.py --cases peer --settings tcmalloc,glibc,lean,jemalloc --rounds 3
    python benchmarks/allocator.py --demo-tokens runs/demo/tokens   # the demo case on a real demo run's tokens

JSON goes to benchmarks/results/allocator.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_cases  # noqa: E402

GIB = 1024**3
SETTINGS = ("tcmalloc", "glibc", "lean", "jemalloc")
# variants for exploring a preloaded allocator's own options: name -> (setting, extra environment)
VARIANTS = {
    "jemalloc-o0": ("jemalloc", {"MALLOC_CONF": "oversize_threshold:0"}),
    "jemalloc-o0-bg": ("jemalloc", {"MALLOC_CONF": "oversize_threshold:0,background_thread:true"}),
    "jemalloc-keep": ("jemalloc", {"MALLOC_CONF": "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"}),
}
CASES = train_cases.CASES


# ------------------------------------------------------------------------------------------------------------
# one run (child process)
# ------------------------------------------------------------------------------------------------------------


def child(case: str, setting: str, data: dict, out_json: Path, a) -> None:
    from longalign.train import allocator

    res = train_cases.measure(data, seed=a.seed, demo_steps=a.demo_steps, threads=a.threads)
    res.update(setting=setting, in_force=res["run_meta"].get("cpu_allocator"), loaded=allocator.loaded())
    del res["run_meta"]
    out_json.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------------------------
# the parent: settings, interleaved rounds, summary
# ------------------------------------------------------------------------------------------------------------


def setting_env(name: str) -> tuple[dict[str, str] | None, str]:
    """The environment of a child for setting ``name`` (None when its library is missing) and a note."""
    from longalign.train import allocator

    setting, extra = VARIANTS.get(name, (name, {}))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_CONF")}
    env.update({allocator.ENV: setting, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), **extra})
    env.pop(allocator.RESTARTED_ENV, None)
    if setting in allocator.PRELOADED:
        library = allocator.find_library(setting)
        if library is None:
            return None, f"{setting}: library not found ({', '.join(allocator.LIBRARIES[setting])})"
        # the environment `longalign train` starts itself again with
        env = allocator.preload_environment(allocator.Decision(setting, setting, library), env)
        return env, library
    return env, ""


def spawn(case: str, setting: str, env: dict[str, str], data: dict, a) -> dict:
    args = ["--child", case, "--setting", setting, "--child-data", json.dumps(data), "--seed", str(a.seed)]
    args += ["--demo-steps", str(a.demo_steps), "--threads", str(a.threads)]
    res = train_cases.spawn(__file__, args, env, a.timeout)
    res.setdefault("case", case)
    res.setdefault("setting", setting)
    return res


def summarize(runs: list[dict], cases: list[str], settings: list[str]) -> dict:
    out = {}
    for case in cases:
        rows = {}
        for s in settings:
            mine = [r for r in runs if r["case"] == case and r["setting"] == s and r.get("ok")]
            if not mine:
                continue
            speeds = [r["tokens_per_s"] for r in mine]
            per_cpu = [r["tokens_per_cpu_s"] for r in mine if r.get("tokens_per_cpu_s")]
            rows[s] = {
                "tokens_per_s": speeds,
                "mean_tokens_per_s": sum(speeds) / len(speeds),
                "mean_tokens_per_cpu_s": sum(per_cpu) / len(per_cpu) if per_cpu else None,
                "cpu_sys_share": sum(r["cpu_sys_s"] for r in mine)
                / sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in mine),
                "peak_rss_gib": max(r["peak_rss_bytes"] for r in mine) / GIB,
                "in_force": sorted({str(r.get("in_force")) for r in mine}),
            }
        if rows:
            fastest = max(v["mean_tokens_per_s"] for v in rows.values())
            most = max((v["mean_tokens_per_cpu_s"] or 0) for v in rows.values())
            leanest = min(v["peak_rss_gib"] for v in rows.values())
            for v in rows.values():
                v["speed_vs_fastest"] = round(v["mean_tokens_per_s"] / fastest, 3)
                v["per_cpu_s_vs_best"] = round((v["mean_tokens_per_cpu_s"] or 0) / most, 3) if most else None
                v["peak_vs_lowest"] = round(v["peak_rss_gib"] / leanest, 3)
        out[case] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--settings", default="tcmalloc,glibc,lean", help=f"comma-separated, of {', '.join((*SETTINGS, *VARIANTS))}"
    )
    ap.add_argument("--cases", default="demo,peer", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (every setting once per round)")
    ap.add_argument("--demo-steps", type=int, default=4, help="optimizer steps of the demo case")
    ap.add_argument("--demo-tokens", default=None, help="train the demo case on this tokens folder (RUN/tokens)")
    ap.add_argument("--peer-budget", type=int, default=30000, help="real tokens of the peer case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of each run (0 = torch's default)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "allocator.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.setting, json.loads(a.child_data), Path(a.child_out), a)
        return
    settings = [s for s in a.settings.split(",") if s]
    cases = [c for c in a.cases.split(",") if c]
    for name, pool in (("setting", settings), ("case", cases)):
        known = (*SETTINGS, *VARIANTS) if name == "setting" else CASES
        bad = [x for x in pool if x not in known]
        if bad:
            raise SystemExit(f"unknown {name} {', '.join(bad)}: choose from {', '.join(known)}")
    command = "python benchmarks/allocator.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    print(f"command: {command}", flush=True)
    envs, notes = {}, {}
    for s in settings:
        env, note = setting_env(s)
        notes[s] = note
        if env is None:
            print(f"skipped: {note}", flush=True)
        else:
            envs[s] = env
    work = Path(tempfile.mkdtemp(prefix="la_alloc_data_"))
    data = {}
    for case in cases:
        data[case] = train_cases.build(
            case,
            work / case,
            seed=a.seed,
            demo_steps=a.demo_steps,
            demo_tokens=a.demo_tokens,
            peer_budget=a.peer_budget,
        )
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_start = os.getloadavg()
    runs = []
    for rnd in range(a.rounds):
        for case in cases:
            for s in envs:
                res = spawn(case, s, envs[s], data[case], a)
                res["round"] = rnd
                runs.append(res)
                if res["ok"]:
                    print(
                        f"round {rnd + 1} {case:<6} {s:<14} {res['tokens_per_s']:8.1f} tokens/s "
                        f"{res['tokens_per_cpu_s'] or 0:8.1f} per CPU-s  peak "
                        f"{res['peak_rss_bytes'] / GIB:5.2f} GiB  (in force: {res['in_force']}, "
                        f"{res['subprocess_s']} s)",
                        flush=True,
                    )
                else:
                    print(f"round {rnd + 1} {case:<6} {s:<14} FAILED {res['error'][-300:]}", flush=True)
    summary = summarize(runs, cases, list(envs))
    import torch

    doc = {
        "benchmark": "allocator",
        "command": command,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "loadavg_at_start": load_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "settings": {s: notes[s] or "in-process" for s in settings},
        "data": data,
        "runs": runs,
        "summary": summary,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(
        f"\n{'case':<6} {'setting':<14} {'tokens/s':>9} {'vs fastest':>10} {'per CPU-s':>9} {'vs best':>8} "
        f"{'sys share':>9} {'peak GiB':>9} {'vs lowest':>9}"
    )
    for case, rows in summary.items():
        for s, v in rows.items():
            print(
                f"{case:<6} {s:<14} {v['mean_tokens_per_s']:9.1f} {v['speed_vs_fastest']:9.3f}x "
                f"{v['mean_tokens_per_cpu_s'] or 0:9.1f} {v['per_cpu_s_vs_best'] or 0:7.3f}x {v['cpu_sys_share']:9.3f} "
                f"{v['peak_rss_gib']:9.2f} {v['peak_vs_lowest']:8.3f}x"
            )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
