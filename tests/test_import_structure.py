"""Import structure, read from the source with ``ast``: no import cycles among longalign modules (counting the
imports that run at import time; lazy imports inside functions are left out), and the app, the command line and
the notebooks use only the stage faces; ``longalign --help`` loads no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "longalign"
STAGES = ("data", "tokenize", "batching", "train", "eval")
# longalign.llm.base: the LLM error types (a spending cap reached) that the command line reports for any stage
SHARED_FACES = (
    "longalign",
    "longalign.rundir",
    "longalign.config",
    "longalign.models",
    "longalign.views",
    "longalign.llm.base",
)
COMMAND_MODULES = ("longalign.demo", "longalign.demo_cli", "longalign.app_cli")  # commands beside the stages


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"


def _import_nodes(tree: ast.Module, *, top_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements; ``top_level`` keeps those that run at import time (not in functions, not under
    ``if TYPE_CHECKING`` or ``if __name__ == "__main__"``)."""
    if not top_level:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    out: list = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not (_is_type_checking(node.test) or _is_main_guard(node.test)):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With, ast.ClassDef)):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return out


def imported_modules(path: Path, *, top_level: bool, package: str | None = None) -> set[str]:
    """The longalign modules a file imports (``from P import n`` names ``P.n`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        name = module_name(path) if path.is_relative_to(PKG) else ""
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(tree, top_level=top_level):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "longalign":
                    found.add(alias.name)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if mod.split(".")[0] != "longalign":
            continue
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            found.add(sub if sub in MODULES else mod)
    return found


def test_no_import_cycles_among_longalign_modules():
    graph = {
        name: {m for m in imported_modules(path, top_level=True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles among longalign modules: {cycles}"


def is_stage_face(module: str) -> bool:
    """A stage package or one of its public modules, the views/report, rundir, config or models."""
    if module in SHARED_FACES or module == "longalign.views" or module.startswith("longalign.views."):
        return True
    parts = module.split(".")
    return len(parts) >= 2 and parts[1] in STAGES and not any(p.startswith("_") for p in parts[2:])


def face_clients() -> list[Path]:
    cli = [PKG / "cli.py", PKG / "demo_cli.py", PKG / "app_cli.py", *(PKG / s / "cli.py" for s in STAGES)]
    return [*sorted((ROOT / "app").rglob("*.py")), *cli, *sorted((ROOT / "notebooks").glob("*.py"))]


def test_app_cli_and_notebooks_import_only_stage_faces():
    assert (ROOT / "app" / "Home.py") in face_clients() and all(p.is_file() for p in face_clients())
    bad = {}
    for path in face_clients():
        allowed_extra = COMMAND_MODULES if path.is_relative_to(PKG) else ()
        wrong = sorted(
            m
            for m in imported_modules(path, top_level=False, package="")
            if not is_stage_face(m) and m not in allowed_extra
        )
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, f"modules reaching past the stage faces: {bad}"


def test_face_rule_rejects_internals():
    assert is_stage_face("longalign.eval.needle") and is_stage_face("longalign.batching")
    assert is_stage_face("longalign.views.training") and is_stage_face("longalign.rundir")
    assert not is_stage_face("longalign.llm.client") and not is_stage_face("longalign.stage")
    assert not is_stage_face("longalign.batching._kernels")


def test_cli_help_imports_no_heavy_library():
    code = (
        "import sys, longalign.cli as c; c.build_parser().format_help(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
