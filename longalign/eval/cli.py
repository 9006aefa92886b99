"""``longalign eval longbench-chat | needle | longbench | judge-agreement``.

Every option of a subcommand is a field of its config dataclass (``--config FILE`` plus ``--field-name``
overrides); heavy imports (torch, transformers) happen inside the handlers so ``longalign --help`` stays fast.
Re-running a command with the same ``--out`` resumes: finished predictions and judge runs are skipped.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from longalign.config import add_config_args, build_config


def _print_json(title: str, obj: Any) -> None:
    print(title)
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _longbench_chat(args: argparse.Namespace) -> int:
    from longalign.eval.longbench_chat import LongBenchChatConfig, eval_dir, run_longbench_chat

    cfg = build_config(LongBenchChatConfig, args)
    result = run_longbench_chat(cfg)
    p = result["predictions"]
    print(f"predictions: {p['generated']} new, {p['done_before']} already done -> {eval_dir(cfg) / 'predictions.jsonl'}")
    if "judging" in result:
        j = result["judging"]
        print(f"judge runs: {j['runs_judged']} new, {j['runs_before']} already done")
        s = result["summary"]
        print(f"{s['dataset']}: mean {s['mean']} (1-10) over {s['n_scored']}/{s['n']} cases; by language "
              f"{s['by_lang']}; unparsed {s['unparsed']}; judge tokens {s['tokens']}; cost {s['cost']}")
        for note in s["notes"]:
            print(f"note: {note}")
        print(f"summary: {eval_dir(cfg) / 'summary.json'}")
    else:
        print("no --judge given: predictions only")
    return 0


def _needle(args: argparse.Namespace) -> int:
    from longalign.eval.needle import NeedleConfig, run_needle
    from longalign.rundir import RunDir

    cfg = build_config(NeedleConfig, args)
    s = run_needle(cfg)
    edir = RunDir(cfg.out).eval("needle")
    print(f"needle grid {len(s['lengths'])} lengths x {len(s['depths'])} depths, {s['n']} cells: mean recall "
          f"{s['mean_recall']}, mean judge {s['mean_judge']}")
    for note in s["notes"]:
        print(f"note: {note}")
    print(f"results: {edir / 'results.jsonl'}\nheatmap: {edir / 'heatmap.html'}")
    return 0


def _longbench(args: argparse.Namespace) -> int:
    from longalign.eval.longbench import LongBenchConfig, run_longbench

    cfg = build_config(LongBenchConfig, args)
    result = run_longbench(cfg)
    if "summary" not in result:
        print(f"predictions: {result['predictions']} (no --judge given: nothing judged)")
        return 0
    s = result["summary"]
    for t, v in s["tasks"].items():
        print(f"{t:18s} {v['category']:14s} n={v['n']:4d} score={v['score_0_100']}")
    for c, v in s["categories"].items():
        print(f"{c:18s} {v['score_0_100']}")
    print(f"overall {s['overall']}")
    for note in s["notes"]:
        print(f"note: {note}")
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from longalign.eval.agreement import AgreementConfig, run_agreement

    cfg = build_config(AgreementConfig, args)
    s = run_agreement(cfg)
    print(f"judge {s['judge']} on {s['n_scored']}/{s['n']} human-scored answers: Spearman {s['spearman']}, "
          f"Kendall {s['kendall']}")
    for name, v in s["paper"].items():
        print(f"  paper {name}: Spearman {v['spearman']}, Kendall {v['kendall']}")
    for note in s["notes"]:
        print(f"note: {note}")
    return 0


COMMANDS = {
    "longbench-chat": ("LongBench-Chat: answer, judge 1-10 with scored examples, summarise",
                       "longalign.eval.longbench_chat:LongBenchChatConfig", _longbench_chat),
    "needle": ("needle-in-a-haystack grid of context lengths x depths, with a heatmap",
               "longalign.eval.needle:NeedleConfig", _needle),
    "longbench": ("LongBench single/multi-doc QA and summarization, judged and normalised to 0-100",
                  "longalign.eval.longbench:LongBenchConfig", _longbench),
    "judge-agreement": ("correlate a judge with the human scores of LongBench-Chat's few_shots.json",
                        "longalign.eval.agreement:AgreementConfig", _agreement),
}


def _config_class(path: str) -> type:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model: LongBench-Chat, needle, LongBench, judge agreement",
                                   description="Evaluate long-context ability; results go to <out>/eval/.")
    sub = parser.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    for name, (help_text, cls_path, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_args(p, _config_class(cls_path))
        p.set_defaults(func=handler)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
