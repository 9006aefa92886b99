"""``longalign data corpus|generate|short|mix``: the data stage on the command line.

Each subcommand takes ``--run DIR`` (the run directory), ``--config FILE`` (YAML whose keys are the option
names) and one flag per option; flags typed on the command line override the file. The handlers only parse,
call the library (:mod:`longalign.data.corpus`, :mod:`longalign.data.selfinstruct`, :mod:`longalign.data.short`),
record the stage in ``run.json`` and print a summary.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from longalign.config import add_config_args, build_config, to_dict

DEFAULT_RUN = "runs/default"


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="DIR", default=DEFAULT_RUN,
                   help=f"run directory whose data/ folder is read and written (default: {DEFAULT_RUN})")


def _print(title: str, obj: Any) -> None:
    print(title)
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def register(subparsers: Any) -> None:
    from longalign.data.corpus import CorpusConfig
    from longalign.data.selfinstruct import GenerateConfig
    from longalign.data.short import ShortConfig
    from longalign.data.mix import MixConfig

    data = subparsers.add_parser(
        "data", help="build training data: corpus, long instruction data, short chat data, mix",
        description="Build LongAlign training data in <run>/data/: corpus.jsonl (long documents), long.jsonl "
                    "(Self-Instruct questions and answers), short.jsonl (ShareGPT-style chats) and mixed.jsonl.")
    sub = data.add_subparsers(dest="data_command", metavar="STEP")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = sub.add_parser("corpus", help="collect long documents, measure them in tokens, filter and sample",
                       description="Read documents (built-in texts of this machine, a .jsonl file, a folder of "
                                   ".txt/.md files or an HF dataset), count their tokens with the target tokenizer, "
                                   "keep those between --min-tokens and --max-tokens, sample --n-docs with longer "
                                   "ones upsampled, and write <run>/data/corpus.jsonl.")
    _add_run(p)
    add_config_args(p, CorpusConfig)
    p.set_defaults(func=_corpus)

    p = sub.add_parser("generate", help="Self-Instruct: questions and answers for each corpus document",
                       description="For every document of <run>/data/corpus.jsonl, ask the LLM for five questions "
                                   "of one task type, validate them (retrying with a new seed or task type), pick "
                                   "one, ask for its answer and append a training record to <run>/data/long.jsonl. "
                                   "Re-running resumes: finished documents are skipped and answered requests come "
                                   "from the request cache. Exit code 1 when some documents failed (see "
                                   "<run>/data/failed.jsonl).")
    _add_run(p)
    add_config_args(p, GenerateConfig)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_generate)

    p = sub.add_parser("short", help="import short chat data (ShareGPT or messages jsonl)",
                       description="Read ShareGPT-style conversations ('conversations' with 'from'/'value') or "
                                   "'messages' records, map roles, drop empty replies and unusable turns per the "
                                   "stated policies, and write <run>/data/short.jsonl with counts of what was "
                                   "dropped and why.")
    _add_run(p)
    add_config_args(p, ShortConfig)
    p.set_defaults(func=_short)

    p = sub.add_parser("mix", help="mix all short data with K long examples into mixed.jsonl",
                       description="Write <run>/data/mixed.jsonl: every short conversation plus --n-long long "
                                   "examples (the paper's suites: 0k, 5k, 10k), shuffled with --seed.")
    _add_run(p)
    add_config_args(p, MixConfig)
    p.set_defaults(func=_mix)


def _corpus(args: argparse.Namespace) -> int:
    from longalign.data.corpus import CorpusConfig, build_corpus
    from longalign.rundir import RunDir

    cfg = build_config(CorpusConfig, args)
    run = RunDir(args.run)
    _, summary = build_corpus(cfg, run.corpus)
    run.record_stage("data.corpus", to_dict(cfg), summary=summary)
    _print(f"wrote {summary['written']} documents to {run.corpus}", summary)
    return 0 if summary["written"] else 1


def _generate(args: argparse.Namespace) -> int:
    from longalign.rundir import RunDir
    from longalign.data.selfinstruct import GenerateConfig, failed_path, generate_long_data

    cfg = build_config(GenerateConfig, args)
    run = RunDir(args.run)
    summary = generate_long_data(cfg, run, progress=not args.no_progress)
    info = summary.to_dict()
    run.record_stage("data.generate", to_dict(cfg), summary=info)
    usage = info.get("usage") or {}
    cost = usage.get("cost")
    print(f"{summary.records_total} records in {run.long} ({summary.written} new, {summary.already_done} "
          f"already there, {summary.failed} failed) in {summary.seconds:.1f} s")
    print(f"tokens: {usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion "
          f"in {usage.get('requests', 0)} paid requests, {usage.get('cached', 0)} from cache, "
          f"{usage.get('retries', 0)} retries; cost: " + (f"${cost:.4f}" if cost is not None else "n/a (no prices given)"))
    if summary.failed:
        print(f"{summary.failed} document(s) failed, listed in {failed_path(run)}; re-run the same command to "
              "retry them")
        return 1
    return 0


def _short(args: argparse.Namespace) -> int:
    from longalign.rundir import RunDir
    from longalign.data.short import ShortConfig, load_short_data, write_jsonl

    cfg = build_config(ShortConfig, args)
    run = RunDir(args.run)
    records, report = load_short_data(cfg)
    write_jsonl(run.short, records)
    run.record_stage("data.short", to_dict(cfg), summary=report.to_dict())
    _print(f"wrote {report.kept} of {report.read} conversations to {run.short}", report.to_dict())
    return 0


def _mix(args: argparse.Namespace) -> int:
    from longalign.rundir import RunDir
    from longalign.data.mix import MixConfig, mix_files

    cfg = build_config(MixConfig, args)
    run = RunDir(args.run)
    short = cfg.short_path or (run.short if run.short.is_file() else None)
    counts = mix_files(cfg.long_path or run.long, short, run.mixed, n_long=cfg.n_long, seed=cfg.seed)
    run.record_stage("data.mix", to_dict(cfg), summary=counts)
    _print(f"wrote {counts['total']} examples ({counts['long']} long, {counts['short']} short) to {run.mixed}", counts)
    return 0
