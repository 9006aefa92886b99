"""``longalign tokenize``: the tokenize stage on the command line."""

from __future__ import annotations

import argparse
from typing import Any

from longalign import tokenize
from longalign.config import add_config_args, add_run_arg, build_config, run_dir_of
from longalign.tokenize.encode import TokenizeConfig


def register(subparsers: Any) -> None:
    """Add ``longalign tokenize``."""
    parser = subparsers.add_parser(
        "tokenize",
        help="tokenize a messages jsonl into tokens/ (loss on assistant replies only)",
        description="Render each conversation in a chat format, tokenize it, keep loss on assistant replies, "
        "truncate to --max-len and save a ragged Arrow dataset (tokens/ with longalign_meta.json). "
        "Give --run RUN (reads RUN/data/mixed.jsonl, writes RUN/tokens and records the stage in "
        "RUN/run.json), or --input FILE --out DIR without a run directory.",
    )
    add_run_arg(
        parser,
        help="run directory: reads RUN/data/mixed.jsonl and writes RUN/tokens (--input/--out override either path)",
    )
    add_config_args(parser, TokenizeConfig)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_cmd_tokenize)


def _cmd_tokenize(args: argparse.Namespace) -> Any:
    cfg = build_config(TokenizeConfig, args)
    run_dir = run_dir_of(args)
    progress = not args.no_progress
    if run_dir:
        summary = tokenize.run(cfg, run_dir, show_progress=progress)
    elif cfg.input and cfg.out:
        summary = tokenize.tokenize_file(cfg.input, cfg.out, cfg, show_progress=progress)
    else:
        raise ValueError(
            "say what to tokenize: --run RUN (reads RUN/data/mixed.jsonl, writes RUN/tokens) or --input FILE --out DIR"
        )
    return summary
