"""``longalign data corpus|generate|short|mix``: the data stage on the command line.

Each subcommand takes ``--run DIR`` (the run directory), ``--config FILE`` (YAML whose keys are the option
names) and one flag per option; flags typed on the command line override the file. The handlers parse the
flags into the step's config, call its ``run`` (:func:`longalign.data.run`) and return the summary, which
``longalign`` prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from longalign import data
from longalign.config import add_config_args, add_run_arg, build_config, run_dir_of
from longalign.data.corpus import CorpusConfig
from longalign.data.mix import MixConfig
from longalign.data.selfinstruct import GenerateConfig
from longalign.data.short import ShortConfig

DEFAULT_RUN = "runs/default"
RUN_HELP = "run directory whose data/ folder is read and written"


def register(subparsers: Any) -> None:
    """Add ``longalign data`` and its four steps."""
    parser = subparsers.add_parser(
        "data",
        help="build training data: corpus, long instruction data, short chat data, mix",
        description="Build LongAlign training data in <run>/data/: corpus.jsonl (long documents), long.jsonl "
        "(Self-Instruct questions and answers), short.jsonl (ShareGPT-style chats) and mixed.jsonl.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="STEP")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser(
        "corpus",
        help="collect long documents, measure them in tokens, filter and sample",
        description="Read documents (built-in texts of this machine, a .jsonl file, a folder of "
        ".txt/.md files or an HF dataset), count their tokens with the target tokenizer, "
        "keep those between --min-tokens and --max-tokens, sample --n-docs with longer "
        "ones upsampled, and write <run>/data/corpus.jsonl. Exit code 1 when no "
        "document passes the filters.",
    )
    add_run_arg(p, default=DEFAULT_RUN, help=RUN_HELP)
    add_config_args(p, CorpusConfig)
    p.set_defaults(func=_handler(CorpusConfig))

    p = sub.add_parser(
        "generate",
        help="Self-Instruct: questions and answers for each corpus document",
        description="For every document of <run>/data/corpus.jsonl, ask the LLM for five questions "
        "of one task type, validate them (retrying with a new seed or task type), pick "
        "one, ask for its answer and append a training record to <run>/data/long.jsonl. "
        "Re-running resumes: finished documents are skipped and answered requests come "
        "from the request cache. Exit code 1 when some documents failed (see "
        "<run>/data/failed.jsonl).",
    )
    add_run_arg(p, default=DEFAULT_RUN, help=RUN_HELP)
    add_config_args(p, GenerateConfig)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_handler(GenerateConfig, progress=True))

    p = sub.add_parser(
        "short",
        help="import short chat data (ShareGPT or messages jsonl)",
        description="Read ShareGPT-style conversations ('conversations' with 'from'/'value') or "
        "'messages' records, map roles, drop empty replies and unusable turns per the "
        "stated policies, and write <run>/data/short.jsonl with counts of what was "
        "dropped and why.",
    )
    add_run_arg(p, default=DEFAULT_RUN, help=RUN_HELP)
    add_config_args(p, ShortConfig)
    p.set_defaults(func=_handler(ShortConfig))

    p = sub.add_parser(
        "mix",
        help="mix all short data with K long examples into mixed.jsonl",
        description="Write <run>/data/mixed.jsonl: every short conversation plus --n-long long "
        "examples (the paper's suites: 0k, 5k, 10k), shuffled with --seed.",
    )
    add_run_arg(p, default=DEFAULT_RUN, help=RUN_HELP)
    add_config_args(p, MixConfig)
    p.set_defaults(func=_handler(MixConfig))


def _handler(cls: type, progress: bool = False):
    def handle(args: argparse.Namespace) -> Any:
        cfg = build_config(cls, args)
        kwargs = {"progress": not args.no_progress} if progress else {}
        return data.run(cfg, run_dir_of(args), **kwargs)

    return handle
