"""The shape of the library's code: no function over 120 lines, and no function above cyclomatic complexity 10
beyond the ones listed here (the list can only shrink: a listed function that no longer exceeds the ceiling fails
the test until its line is removed).

Complexity is ruff's mccabe count (``ruff check longalign --select C901 --config
'lint.mccabe.max-complexity=10'`` prints the same list)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

from installed import require  # the tests folder is on sys.path (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 120
MAX_COMPLEXITY = 10

# functions above the complexity ceiling, by file (33 when the ceiling was set, before the trainer, the ablation
# and the data and evaluation readers were split into named steps)
OVER_COMPLEXITY: dict[str, set[str]] = {
    "longalign/batching/attention.py": {"segment_attention_forward"},
    "longalign/batching/figures.py": {"read_figures"},
    "longalign/batching/plans.py": {"_bfd_kernel"},  # one numba kernel: splitting it costs speed
    "longalign/cli/app.py": {"serve"},
    "longalign/config.py": {"add_config_args"},
    "longalign/data/short.py": {"load_short_data", "normalize_conversation"},
    "longalign/eval/agreement.py": {"run"},
    "longalign/eval/longbench.py": {"run"},
    "longalign/eval/longbench_v2.py": {"read_longbench_v2"},
    "longalign/eval/ruler_tasks.py": {"fit_prompt", "read_squad"},
    "longalign/llm/client.py": {"_attempts", "chat_many"},
    "longalign/llm/local_model.py": {"_prefilled_batch_cache", "appending_layer_class", "generate"},
    "longalign/llm/openai_backend.py": {"complete"},
    "longalign/models.py": {"gguf_context_length"},
    "longalign/tokenize/formats.py": {"validate_messages"},
    "longalign/tokenize/sources.py": {"_normalise", "_read_jsonl"},
    "longalign/train/sequence_parallel.py": {"ulysses_attention"},
}


def long_functions(root: Path, limit: int = MAX_LINES) -> list[tuple[str, str, int]]:
    """``(file, function, lines)`` of every function or method in the package longer than ``limit`` lines."""
    out = []
    for path in sorted((root / "longalign").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((path.relative_to(root).as_posix(), node.name, n))
    return out


def ruff_executable() -> list[str]:
    return [require("ruff")]


def over_complexity(root: Path) -> dict[str, set[str]]:
    """Functions of the package above the complexity ceiling, by file, as ruff reports them."""
    cmd = ruff_executable() + [
        "check",
        "longalign",
        "--select",
        "C901",
        "--config",
        f"lint.mccabe.max-complexity={MAX_COMPLEXITY}",
        "--output-format",
        "json",
        "--no-cache",
    ]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    found: dict[str, set[str]] = {}
    for item in json.loads(proc.stdout or "[]"):
        name = re.search(r"`([^`]+)`", item["message"]).group(1)
        rel = Path(item["filename"]).resolve().relative_to(root).as_posix()
        found.setdefault(rel, set()).add(name)
    return found


def test_no_function_in_the_library_is_longer_than_120_lines():
    assert long_functions(ROOT) == []


def test_only_the_listed_functions_exceed_complexity_10_and_the_list_only_shrinks():
    found = over_complexity(ROOT)
    new = {f: sorted(names - OVER_COMPLEXITY.get(f, set())) for f, names in found.items()}
    new = {f: n for f, n in new.items() if n}
    assert not new, f"above complexity {MAX_COMPLEXITY}: split these into named steps: {new}"
    fixed = {f: sorted(names - found.get(f, set())) for f, names in OVER_COMPLEXITY.items()}
    fixed = {f: n for f, n in fixed.items() if n}
    assert not fixed, f"no longer above the ceiling: remove them from OVER_COMPLEXITY: {fixed}"


def test_the_checks_see_a_planted_offender(tmp_path):
    """A copy of the package with one long, branchy function added fails both checks."""
    shutil.copytree(ROOT / "longalign", tmp_path / "longalign", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(70))
    (tmp_path / "longalign" / "planted.py").write_text(f"def planted(x):\n{branches}\n    return -1\n")
    assert ("longalign/planted.py", "planted", 142) in long_functions(tmp_path)
    assert over_complexity(tmp_path).get("longalign/planted.py") == {"planted"}
