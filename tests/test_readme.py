"""The README promises only what exists: every ``longalign ...`` command line in it names real subcommands and
flags (checked against the real parser, :func:`longalign.cli.build_parser`), every ``python benchmarks/X.py``
names a script that exists and flags its parser accepts (read from ``--help``, so nothing is measured), every
picture it shows is in the repository, and the sections a user looks for are there: the stages, Evaluation,
Evidence and Performance.

:func:`readme_problems` takes the README's path, so the same check runs against an older text: the README of
2026-12-03, which had lost its Evaluation, Evidence and Performance sections, fails it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BROKEN_README_COMMIT = "c87c2c8"  # "README: memory table, memory plan and Self-Instruct throughput re-measured"

# (what a reader looks for, a heading that holds it)
SECTIONS = (
    ("the stage-by-stage guide", r"^##\s+Stage by stage\b"),
    ("stage 1, data", r"^###\s+1\.\s+Data\b"),
    ("stage 2, tokenize", r"^###\s+2\.\s+Tokeni[sz]e\b"),
    ("stage 3, batching", r"^###\s+3\.\s+Batching\b"),
    ("stage 4, training", r"^###\s+4\.\s+Training\b"),
    ("stage 5, evaluation", r"^###\s+5\.\s+Evaluation\b"),
    ("the Evidence section", r"^##\s+Evidence\b"),
    ("the Performance section", r"^##\s+Performance\b"),
)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
PICTURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img[^>]*\bsrc=[\"']([^\"']+)[\"']")
SEPARATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = re.compile(r"…|\.\.\.|<[^>]*>|[A-Z_]+|\{.*\}")


# ------------------------------------------------------------------------------------------------ reading
def command_lines(text: str) -> list[str]:
    """Every line of the README's fenced code blocks (backslash continuations joined) and every inline code
    span, as written."""
    out = []
    for block in FENCE.findall(text):
        out.extend(block.replace("\\\n", " ").splitlines())
    prose = FENCE.sub("", text)
    out.extend(INLINE.findall(prose))
    return [line.strip() for line in out if line.strip()]


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in an inline span: fall back to plain words
        return line.split("#", 1)[0].split()


def invocations(line: str) -> list[tuple[str, list[str]]]:
    """('longalign', argv) and ('benchmark', [script, *argv]) for each command in ``line`` (a shell line may
    chain several with && or ;). ``python -m longalign.cli`` and ``--module longalign.cli`` count as
    ``longalign``."""
    found = []
    segment: list[str] = []
    for word in [*_words(line), "&&"]:
        if word not in SEPARATORS:
            segment.append(word)
            continue
        for i, w in enumerate(segment):
            if w == "longalign" or w.endswith("/longalign"):
                found.append(("longalign", segment[i + 1 :]))
                break
            if w == "longalign.cli" and i and segment[i - 1] in ("-m", "--module"):
                found.append(("longalign", segment[i + 1 :]))
                break
            if re.fullmatch(r"benchmarks/\w+\.py", w) and i and re.fullmatch(r"(\S*/)?python3?", segment[i - 1]):
                found.append(("benchmark", segment[i:]))
                break
        segment = []
    return found


# ------------------------------------------------------------------------------------------------ checking
def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def longalign_problems(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Subcommands and flags of ``argv`` that ``parser`` does not know (values and positionals not checked)."""
    problems = []
    path = ["longalign"]
    skip_value = False
    for word in argv:
        if skip_value:
            skip_value = False
            continue
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)
            if action is None:
                problems.append(f"`{' '.join(path)}` has no option {flag}")
            elif action.nargs != 0 and "=" not in word:
                skip_value = True
            continue
        sub = _subparsers(parser)
        if sub is not None:
            if PLACEHOLDER.fullmatch(word):  # `longalign …`, `longalign <stage>`: no command named
                return problems
            if word not in sub.choices:
                problems.append(f"`{' '.join(path)}` has no subcommand {word!r} (it has {', '.join(sub.choices)})")
                return problems
            parser = sub.choices[word]
            path.append(word)
    return problems


def benchmark_flags(scripts: list[str]) -> dict[str, set[str] | str]:
    """{script: the flags its ``--help`` lists} for each existing script, or {script: why not}; the scripts
    run side by side, each only as far as its argument parser."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = {}
    out: dict[str, set[str] | str] = {}
    for script in scripts:
        if not (ROOT / script).is_file():
            out[script] = f"{script} does not exist"
            continue
        procs[script] = subprocess.Popen(
            [sys.executable, script, "--help"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    for script, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        text = text.decode(errors="replace")
        if proc.returncode != 0:
            out[script] = f"`python {script} --help` failed: {text[-300:]}"
        else:
            out[script] = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    return out


def readme_problems(path: Path) -> list[str]:
    """Everything in the README at ``path`` that does not exist: subcommands, flags, benchmark scripts and their
    flags, pictures, and the sections a user looks for."""
    from longalign.cli import build_parser

    text = path.read_text(encoding="utf-8")
    problems = []
    for what, heading in SECTIONS:
        if not re.search(heading, text, re.M):
            problems.append(f"no section for {what} (a heading like {heading!r})")
    for target in (a or b for a, b in PICTURE.findall(text)):
        if not re.match(r"[a-z]+://", target) and not (path.parent / target).is_file():
            problems.append(f"picture {target} does not exist")
    parser = build_parser()
    benchmarks: list[tuple[str, list[str], str]] = []
    for line in command_lines(text):
        for kind, argv in invocations(line):
            if kind == "longalign":
                problems.extend(f"{p}: {line}" for p in longalign_problems(parser, argv))
            else:
                benchmarks.append((argv[0], argv[1:], line))
    flags = benchmark_flags(sorted({b[0] for b in benchmarks}))
    for script, argv, line in benchmarks:
        known = flags[script]
        if isinstance(known, str):
            problems.append(f"{known}: {line}")
            continue
        for word in argv:
            if word.startswith("-") and word.split("=", 1)[0] not in known:
                problems.append(f"python {script} has no option {word.split('=', 1)[0]}: {line}")
    return problems


# ------------------------------------------------------------------------------------------------ tests
def test_readme_names_only_what_exists():
    problems = readme_problems(README)
    assert not problems, "\n".join(problems)


def test_readme_shows_commands_of_every_stage():
    """The check has something to check: commands of each stage, the evaluation commands and the benchmarks."""
    calls = [c for line in command_lines(README.read_text(encoding="utf-8")) for c in invocations(line)]
    subcommands = {" ".join(argv[:2]) for kind, argv in calls if kind == "longalign"}
    for needed in ("data corpus", "tokenize --run", "batch plan", "train --config", "eval longbench-chat", "demo"):
        assert any(s.startswith(needed.split()[0]) and needed.split()[-1] in s for s in subcommands), needed
    assert any(kind == "benchmark" for kind, _ in calls)


def test_a_readme_with_broken_commands_fails(tmp_path):
    bad = tmp_path / "README.md"
    bad.write_text(
        "# x\n\n## Stage by stage\n\n### 1. Data\n\n### 2. Tokenize\n\n### 3. Batching\n\n### 4. Training\n\n"
        "```bash\nlongalign batch plan --run r --methd pack\nlongalign evaluate needle\n"
        "python benchmarks/packing.py --n 10 --no-such-flag\npython benchmarks/nothing.py\n```\n\n"
        "![shot](docs/screenshots/none.png)\n",
        encoding="utf-8",
    )
    problems = "\n".join(readme_problems(bad))
    assert "no section for stage 5, evaluation" in problems
    assert "no section for the Evidence section" in problems and "no section for the Performance section" in problems
    assert "`longalign batch plan` has no option --methd" in problems
    assert "`longalign` has no subcommand 'evaluate'" in problems
    assert "python benchmarks/packing.py has no option --no-such-flag" in problems
    assert "option --n:" not in problems  # a flag the script has is not reported
    assert "benchmarks/nothing.py does not exist" in problems
    assert "picture docs/screenshots/none.png does not exist" in problems


def test_continuations_comments_and_module_forms_are_read():
    assert invocations("bash scripts/setup.sh && .venv/bin/longalign demo --quick  # ~2 minutes") == [
        ("longalign", ["demo", "--quick"])
    ]
    assert invocations("torchrun --nproc_per_node 8 -m longalign.cli train --run r") == [
        ("longalign", ["train", "--run", "r"])
    ]
    lines = command_lines("```bash\nlongalign train --a 1 \\\n  --b 2\n```\nthen `longalign app --runs runs`.\n")
    assert lines == ["longalign train --a 1    --b 2", "longalign app --runs runs"]


def test_the_readme_of_2026_12_03_fails(tmp_path):
    """The README that lost a third of itself (Evaluation, Evidence, Performance) does not pass."""
    try:
        old = subprocess.run(
            ["git", "show", f"{BROKEN_README_COMMIT}:README.md"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {BROKEN_README_COMMIT} is not in this clone's history")
    path = tmp_path / "README.md"
    path.write_text(old, encoding="utf-8")
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    problems = readme_problems(path)
    assert any(p.startswith("no section for stage 5, evaluation") for p in problems)
    assert any("Evidence" in p for p in problems) and any("Performance" in p for p in problems)
