"""Import structure, read from the source with ``ast``.

Every import counts: at the top of a module, inside functions (where lazy imports of heavy libraries live), under
``if TYPE_CHECKING`` and under ``if __name__ == "__main__"``, and so does the package ``__init__`` that importing a
submodule runs first. Over that graph:

* the layer table below holds: a module imports only from its own unit and from lower layers (units of one layer
  are siblings and import nothing from each other);
* there are no import cycles;
* the app, the command line and the notebooks use only the stage faces, and the recipes take every name a stage
  package exports from the package itself, never from its modules, and no private name;
* ``longalign --help`` loads no heavy library.

A copy of the tree with one function-level cycle (and one with one upward import) injected shows the checks fail.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "tokenize", "batching", "train", "eval")

# The layers, lowest first: (rank, unit, module prefixes). A unit holds its prefixes and every module below them
# (``longalign`` itself only: the package's constants). Surfaces are recognised by name wherever they live: the
# ``longalign.cli`` package and every module named ``cli``, ``*_cli`` or ``__main__`` (a stage's or a recipe's
# command sits beside it). Above the package: the app, the notebooks and the benchmarks, which it never imports.
LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        0,
        "shared",
        (
            "longalign",
            "longalign.config",
            "longalign.rundir",
            "longalign.stage",
            "longalign.options",
            "longalign.models",
            "longalign.llm",
        ),
    ),  # fmt: skip
    (1, "data", ("longalign.data",)),
    (2, "tokenize", ("longalign.tokenize",)),
    (3, "batching", ("longalign.batching",)),
    (4, "train", ("longalign.train",)),
    (4, "eval", ("longalign.eval",)),
    (5, "views", ("longalign.views",)),
    (6, "recipes", ("longalign.recipes",)),
    (7, "surfaces", ("longalign.cli",)),
)
SURFACES = (7, "surfaces")

# longalign.llm.base: the LLM error types (a spending cap reached) that the command line reports for any stage
SHARED_FACES = ("longalign", "longalign.rundir", "longalign.config", "longalign.models", "longalign.llm.base")


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Import:
    source: str  # the importing module (or a file outside the package)
    target: str  # the imported longalign module
    names: tuple[str, ...]  # names taken with ``from target import ...`` (empty for ``import target``)
    function_level: bool  # inside a function body
    line: int


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def read_modules(root: Path) -> dict[str, Path]:
    """Every module of the ``longalign`` package under ``root``, by dotted name."""
    return {module_name(p, root): p for p in sorted((root / "longalign").rglob("*.py"))}


def _walk(node: ast.AST, in_function: bool = False):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inner)


def read_imports(path: Path, modules: dict[str, Path], source: str, package: str) -> list[Import]:
    """The longalign modules ``path`` imports, everywhere in the file (``from P import n`` names ``P.n`` when
    that is a module). ``package`` resolves relative imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for node, in_function in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "longalign":
                    found.append(Import(source, alias.name, (), in_function, node.lineno))
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if mod.split(".")[0] != "longalign":
            continue
        plain = []
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            if sub in modules:
                found.append(Import(source, sub, (), in_function, node.lineno))
            else:
                plain.append(alias.name)
        if plain:
            found.append(Import(source, mod, tuple(plain), in_function, node.lineno))
    return found


def package_imports(root: Path) -> tuple[dict[str, Path], list[Import]]:
    modules = read_modules(root)
    imports = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports += [i for i in read_imports(path, modules, name, package) if i.target != name]
    return modules, imports


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def import_graph(modules: dict[str, Path], imports: list[Import]) -> dict[str, set[str]]:
    """Module -> modules whose code runs when it imports them: the target, and the packages above the target
    that are not the importer's own (those are already being imported when the importer runs)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        own = set(ancestors(imp.source))
        if imp.target in modules:
            graph[imp.source].add(imp.target)
        graph[imp.source].update(m for m in ancestors(imp.target) if m in modules and m not in own)
    return graph


# ------------------------------------------------------------------------------------------------ checks


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def is_surface(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return (
        module == "longalign.cli"
        or module.startswith("longalign.cli.")
        or last in ("cli", "__main__")
        or last.endswith("_cli")
    )


def layer_of(module: str) -> tuple[int, str]:
    """(rank, unit) of a module: a surface by its name, otherwise the unit of its longest matching prefix."""
    if is_surface(module):
        return SURFACES
    best: tuple[int, int, str] | None = None
    for rank, unit, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (p != "longalign" or module == p):
                if best is None or len(p) > best[0]:
                    best = (len(p), rank, unit)
    if best is None:
        raise KeyError(f"{module} is in no layer: add its package to LAYERS in tests/test_import_structure.py")
    return best[1], best[2]


def upward_imports(modules: dict[str, Path], graph: dict[str, set[str]]) -> list[str]:
    """Every edge to a higher layer or to a sibling unit of the same layer, as ``a -> b (layer -> layer)``."""
    bad = []
    for source in sorted(graph):
        rank, unit = layer_of(source)
        for target in sorted(graph[source]):
            t_rank, t_unit = layer_of(target)
            if t_rank > rank or (t_rank == rank and t_unit != unit):
                bad.append(f"{source} -> {target} ({unit} -> {t_unit})")
    return bad


def check_tree(root: Path) -> tuple[list[list[str]], list[str]]:
    """(cycles, upward imports) of the package under ``root``."""
    modules, imports = package_imports(root)
    graph = import_graph(modules, imports)
    return cycles(graph), upward_imports(modules, graph)


def numbers(root: Path = ROOT) -> dict[str, int]:
    """What the checker reads: imports between longalign modules, how many of them sit inside functions, the
    edges of the graph (package ``__init__`` runs included), its cycles and its upward imports."""
    modules, imports = package_imports(root)
    graph = import_graph(modules, imports)
    return {
        "modules": len(modules),
        "imports": len(imports),
        "function_level_imports": sum(i.function_level for i in imports),
        "edges": sum(len(v) for v in graph.values()),
        "cycles": len(cycles(graph)),
        "upward_imports": len(upward_imports(modules, graph)),
    }


# ------------------------------------------------------------------------------------------------ faces


def stage_exports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``__all__`` of each stage package: the names its face offers."""
    out: dict[str, set[str]] = {}
    for stage in STAGES:
        tree = ast.parse(modules[f"longalign.{stage}"].read_text(encoding="utf-8"))
        names: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                names = set(ast.literal_eval(node.value))
        out[f"longalign.{stage}"] = names
    return out


def is_stage_face(module: str) -> bool:
    """A stage package or one of its public modules, the views, rundir, config or models."""
    if module in SHARED_FACES or module == "longalign.views" or module.startswith("longalign.views."):
        return True
    parts = module.split(".")
    return len(parts) >= 2 and parts[1] in STAGES and not any(p.startswith("_") for p in parts[2:])


def face_clients() -> list[Path]:
    """The app, the notebooks and every command module of the package."""
    modules = read_modules(ROOT)
    commands = [p for m, p in modules.items() if is_surface(m)]
    return [*sorted((ROOT / "app").rglob("*.py")), *commands, *sorted((ROOT / "notebooks").glob("*.py"))]


def test_layer_table_covers_every_module():
    modules = read_modules(ROOT)
    assert {layer_of(m)[1] for m in modules} == {unit for _, unit, _ in LAYERS}
    assert layer_of("longalign.eval.cli") == SURFACES and layer_of("longalign.eval.needle") == (4, "eval")
    assert layer_of("longalign.recipes.ablation.cli") == SURFACES


def test_no_import_cycles_among_longalign_modules():
    found = cycles(import_graph(*package_imports(ROOT)))
    assert not found, f"import cycles among longalign modules: {found}"


def test_no_upward_imports():
    modules, imports = package_imports(ROOT)
    bad = upward_imports(modules, import_graph(modules, imports))
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)


def test_the_package_imports_nothing_above_it():
    above = {"app", "benchmarks", "notebooks", "tests"}
    bad = []
    for path in read_modules(ROOT).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in above]
    assert not bad, bad


def test_function_level_imports_are_counted():
    modules, imports = package_imports(ROOT)
    lazy = [i for i in imports if i.source == "longalign.eval.heldout" and i.target == "longalign.batching.head_loss"]
    assert lazy and all(i.function_level for i in lazy)  # imported where the scoring runs (torch at its top)
    assert "longalign.batching.head_loss" in import_graph(modules, imports)["longalign.eval.heldout"]
    counted = numbers()
    assert 0 < counted["function_level_imports"] < counted["imports"]


def test_checker_fails_on_an_injected_function_level_cycle(tmp_path):
    shutil.copytree(ROOT / "longalign", tmp_path / "longalign", ignore=shutil.ignore_patterns("__pycache__"))
    assert check_tree(tmp_path) == check_tree(ROOT)
    config = tmp_path / "longalign" / "config.py"  # longalign.stage imports longalign.config at its top
    config.write_text(
        config.read_text() + "\n\ndef _summary_type():\n    from longalign.stage import Summary\n\n    return Summary\n"
    )
    found, upward = check_tree(tmp_path)
    assert ["longalign.config", "longalign.stage"] in found
    assert upward == check_tree(ROOT)[1]  # both are shared modules: a cycle, not an upward import


def test_checker_fails_on_an_injected_upward_import(tmp_path):
    shutil.copytree(ROOT / "longalign", tmp_path / "longalign", ignore=shutil.ignore_patterns("__pycache__"))
    plans = tmp_path / "longalign" / "batching" / "plans.py"
    plans.write_text(plans.read_text() + "\n\ndef _train_config():\n    from longalign.train import TrainConfig\n")
    memory = tmp_path / "longalign" / "train" / "memory.py"  # train and eval are siblings: neither imports the other
    memory.write_text(memory.read_text() + "\n\ndef _needle():\n    from longalign.eval import needle\n")
    _, upward = check_tree(tmp_path)
    assert "longalign.batching.plans -> longalign.train (batching -> train)" in upward
    assert "longalign.train.memory -> longalign.eval.needle (train -> eval)" in upward
    assert len(upward) == len(check_tree(ROOT)[1]) + 3  # memory -> longalign.eval too (its package runs first)


def test_app_cli_and_notebooks_import_only_stage_faces():
    clients = face_clients()
    assert (ROOT / "app" / "Home.py") in clients and (ROOT / "longalign" / "cli" / "__init__.py") in clients
    modules = read_modules(ROOT)
    bad = {}
    for path in clients:
        inside = path.is_relative_to(ROOT / "longalign")
        name = module_name(path, ROOT) if inside else ""
        package = (name if path.name == "__init__.py" else name.rpartition(".")[0]) if inside else ""
        wrong = sorted(
            i.target
            for i in read_imports(path, modules, name, package)
            # the recipes are faces too (notebook 06 reads the ablation), and a command may use the other commands
            if not is_stage_face(i.target)
            and layer_of(i.target)[1] != "recipes"
            and not (inside and layer_of(i.target) == SURFACES)
        )
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, f"modules reaching past the stage faces: {bad}"


def test_recipes_use_the_stage_packages_faces():
    modules, imports = package_imports(ROOT)
    exports = stage_exports(modules)
    bad = []
    for imp in imports:
        if layer_of(imp.source) != (6, "recipes") or layer_of(imp.target)[0] not in (1, 2, 3, 4):
            continue
        stage = ".".join(imp.target.split(".")[:2])
        if not is_stage_face(imp.target) or any(n.startswith("_") for n in imp.names):
            bad.append(f"{imp.source}:{imp.line} imports a private part of {imp.target}")
        elif imp.target != stage and set(imp.names) & exports[stage]:
            offered = sorted(set(imp.names) & exports[stage])
            bad.append(f"{imp.source}:{imp.line} takes {offered} from {imp.target}; import it from {stage}")
    assert not bad, "\n".join(bad)


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


if __name__ == "__main__":  # pragma: no cover - the numbers docs/architecture.md quotes
    print(numbers())
    for cycle in cycles(import_graph(*package_imports(ROOT))):
        print("cycle:", " <-> ".join(cycle))
