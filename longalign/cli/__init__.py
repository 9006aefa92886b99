"""``longalign`` command line: one subcommand per stage and per recipe (the surfaces floor).

Each command module -- a stage's ``cli.py`` beside its stage, a recipe's beside its recipe, ``longalign app`` in
:mod:`.app` -- is imported here by name and adds its parser with ``register(subparsers)``; a module's config
classes are imported at its top, and none of them imports torch, transformers or datasets, so
``longalign --help`` stays fast (heavy libraries load when a stage runs). A handler parses the flags into the
stage's config, calls the stage's ``run`` and returns its summary; :func:`finish` prints ``summary.lines()``
and returns the summary's exit code (a handler that prints something else returns its exit code itself).
Deprecated spellings of options print one ``deprecated: ...`` line on stderr. ``python -m longalign.cli`` is
the same command (the form the torchrun, deepspeed and accelerate launchers take).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from longalign.batching import cli as batching_cli
from longalign.cli import app as app_cli
from longalign.config import CommandParser, DeprecatedOption
from longalign.data import cli as data_cli
from longalign.eval import cli as eval_cli
from longalign.eval.judge import JudgeCannotRate
from longalign.llm.base import LLMBudgetExceeded, LLMEndpointDown
from longalign.recipes import demo_cli
from longalign.recipes.ablation import cli as ablation_cli
from longalign.recipes.evidence import cli as evidence_cli
from longalign.tokenize import cli as tokenize_cli
from longalign.train import allocator
from longalign.train import cli as train_cli

# commands that train on a CPU in this process start again with the CPU allocator preloaded (longalign train does it
# in its handler, where its --cpu-allocator is known)
PRELOAD_COMMANDS = ("demo", "experiment")

COMMANDS = (
    data_cli,  # longalign data corpus|generate|short|mix
    tokenize_cli,  # longalign tokenize
    batching_cli,  # longalign batch plan|simulate
    train_cli,  # longalign train
    ablation_cli,  # longalign experiment ablation
    evidence_cli,  # longalign experiment evidence
    eval_cli,  # longalign eval longbench-chat|needle|longbench|judge-agreement
    demo_cli,  # longalign demo
    app_cli,  # longalign app
)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="longalign",
        description="LongAlign Workbench: build long instruction data, train with sorted batching or packing "
        "plus loss weighting, and evaluate long-context ability (LongBench-Chat, needle, LongBench).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def finish(result: Any) -> int:
    """How every command ends: a summary's lines are printed on stdout and its exit code returned; an exit code
    (or None, for 0) is returned as it is."""
    if result is None or isinstance(result, int):
        return int(result or 0)
    for line in result.lines():
        print(line)
    return result.exit_code


def end_process(code: int) -> None:
    """Exit at once with ``code`` after flushing stdout, stderr and the logs, skipping the interpreter's teardown
    (atexit handlers and object finalisation): for a process whose work is written and whose last threads belong
    to libraries that may abort while being torn down."""
    import os

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, DeprecatedOption):
        print(f"deprecated: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("always", DeprecatedOption)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.from_command_line = argv is None  # only the process's own command line is started again
    if args.from_command_line and args.command in PRELOAD_COMMANDS:
        allocator.restart_with_preload()
    try:
        code = finish(args.func(args))
        if getattr(args, "end_process", False):  # set by a command that must not reach the interpreter's teardown
            end_process(code)
        return code
    except (ValueError, OSError) as exc:  # bad input, a missing or unreadable file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (LLMBudgetExceeded, JudgeCannotRate) as exc:  # a step that does not report these in its summary
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    except LLMEndpointDown as exc:  # the circuit breaker: one line naming this command's flags
        print(f"stopped: {exc.line(vars(args))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: work done so far is kept; re-run the same command to resume", file=sys.stderr)
        return 130
