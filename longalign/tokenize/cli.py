"""``longalign tokenize``: the tokenize stage on the command line."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from longalign.config import add_config_args, build_config, to_dict
from longalign.tokenize.encode import TokenizeConfig, resolve_paths, tokenize_file


def register(subparsers: Any) -> None:
    """Add ``longalign tokenize``."""
    parser = subparsers.add_parser(
        "tokenize", help="tokenize a messages jsonl into tokens/ (loss on assistant replies only)",
        description="Render each conversation in a chat format, tokenize it, keep loss on assistant replies, "
                    "truncate to --max-len and save a ragged Arrow dataset (tokens/ with longalign_meta.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(parser, TokenizeConfig)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_cmd_tokenize)


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from longalign.rundir import RunDir

    cfg = build_config(TokenizeConfig, args).validate()
    input_path, out = resolve_paths(cfg)
    res = tokenize_file(input_path, out, cfg, show_progress=not getattr(args, "no_progress", False))
    if cfg.run:
        RunDir(cfg.run).record_stage("tokenize", to_dict(cfg), summary={
            k: v for k, v in asdict(res).items() if k != "meta"})
    print(f"tokenized {input_path} -> {out}")
    print(f"  rows       {res.n_rows} written of {res.n_input_rows} read")
    print(f"  tokens     {res.n_tokens} ({res.n_target_tokens} target), longest row {res.max_length}")
    print(f"  truncated  {res.n_truncated} kept rows cut to {cfg.max_len} ({cfg.truncation})")
    print(f"  dropped    {res.n_dropped} without target tokens ({res.n_no_target} had none, "
          f"{res.n_no_target_after_truncation} lost them to truncation)")
    print(f"  skipped    {res.n_skipped} bad rows" + (f" -> {res.skipped_path}" if res.skipped_path else ""))
    if cfg.verify:
        print(f"  boundary   {res.n_boundary_mismatch} rows where reply pieces tokenize differently")
    print(f"  seconds    {res.seconds:.2f} ({res.rows_per_s:.1f} rows/s, {res.tokens_per_s:.0f} tokens/s)")
    return 0
