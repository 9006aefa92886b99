"""``longalign`` command line: one subcommand per stage. Each stage module exposes ``register(subparsers)``,
which adds its parser and sets ``func``; heavy imports happen inside the handlers so ``--help`` is fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

STAGE_MODULES = (
    "longalign.data.cli",        # longalign data corpus|generate|short|mix
    "longalign.tokenize.cli",    # longalign tokenize
    "longalign.batching.cli",    # longalign batch plan|simulate
    "longalign.train.cli",       # longalign train
    "longalign.eval.cli",        # longalign eval longbench-chat|needle|longbench|judge-agreement
    "longalign.demo",            # longalign demo
    "longalign.app_cli",         # longalign app
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longalign",
        description="LongAlign Workbench: build long instruction data, train with sorted batching or packing "
                    "plus loss weighting, and evaluate long-context ability (LongBench-Chat, needle, LongBench).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: work done so far is kept; re-run the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
