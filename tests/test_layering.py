"""The installed package's architecture, read from its source: no import cycle, no back-edge between layers,
no import of the checkout's top-level `exporters` / `cli`, no file located through `parents[N]`.

Layers, lowest first (a module may import its own layer's modules and lower layers' only):

    0  errors, fileio, config, contract        facts and helpers every layer reads
    1  ops, kernels, cuda, cache, model,       the model and its kernel backends (kernels: the reference ops,
       checkpoint, info                        cuda: the plugin kernels)
    2  exporters                               PyTorch -> ONNX
    3  engine                                  ONNX -> TensorRT engine
    4  runtime, serving                        what executes a model (ONNX Runtime, TensorRT, torch, cuda)
    5  parity, bench, generation               what compares, times or drives the runtimes
    6  cli                                     the click commands

Every import counts, function-level (lazy) ones too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hymba_deploy

PACKAGE = "hymba_deploy"
LAYERS = [
    ["errors", "fileio", "config", "contract"],
    ["ops", "kernels", "cuda", "cache", "model", "checkpoint", "info", ""],   # "": the package's own __init__
    ["exporters"],
    ["engine"],
    ["runtime", "serving"],
    ["parity", "bench", "generation"],
    ["cli"],
]


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file of every module under `root` (the package folder), links followed as
    installed (the `exporters` mapping and the `cli.py` link included), `_plugins` (C++ sources) left out."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "_plugins":
            continue
        parts = [p for p in rel.with_suffix("").parts if p != "__init__"]
        mods[".".join([package, *parts])] = path
    return mods


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` imports anywhere in its source. `from P import x` counts as
    an import of module P.x when that is a module, else of P; `import a.b` as an import of a.b only."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str, package: str = PACKAGE) -> int:
    top = module.removeprefix(package).lstrip(".").split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise KeyError(f"{module}: no layer assigned (add its top-level name to LAYERS in {__file__})")


def back_edges(graph: dict[str, set[str]], package: str = PACKAGE) -> list[str]:
    return [f"{a} (layer {layer_of(a, package)}) imports {b} (layer {layer_of(b, package)})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b, package) > layer_of(a, package)]


ROOT = Path(hymba_deploy.__file__).parent
GRAPH = import_graph(ROOT, PACKAGE)


def test_the_package_has_no_import_cycle():
    assert cycles(GRAPH) == []


def test_no_module_imports_a_higher_layer():
    assert back_edges(GRAPH) == []


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


def test_no_module_imports_the_checkouts_top_level_packages():
    """`exporters` and `cli` install as hymba_deploy.exporters / hymba_deploy.cli; the top-level names exist only
    in a checkout (a wheel has no `exporters` package)."""
    bad = []
    for name, path in package_modules(ROOT, PACKAGE).items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{name}: import {n}" for n in names if n.split(".")[0] in ("exporters", "cli")]
    assert bad == []


def test_no_module_locates_files_through_parents_of_its_own_path():
    """Files the package needs ship with it (contract.plugin_sources, package data); `Path(__file__).parents[N]`
    holds only in one checkout layout."""
    bad = [f"{name}: {line.strip()}" for name, path in package_modules(ROOT, PACKAGE).items()
           for line in path.read_text().splitlines()
           if "__file__" in line and (".parents[" in line or ".parent.parent" in line)]
    assert bad == []


# ---- the checks themselves, on a made-up package: they find what they are for -----------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_lazy_import_cycle_is_found(tmp_path):
    root = _write(tmp_path / "pkg", {"__init__.py": "", "model.py": "def f():\n    from .checkpoint import g\n",
                                     "checkpoint.py": "from . import model\n", "config.py": "import pkg.errors\n",
                                     "errors.py": ""})
    assert cycles(import_graph(root, "pkg")) == [["pkg.checkpoint", "pkg.model"]]


@pytest.mark.parametrize("source, edge", [
    ("from .exporters.graphs import PrefillGraph\n", "pkg.model (layer 1) imports pkg.exporters.graphs (layer 2)"),
    ("def f():\n    from pkg.engine import plugins\n", "pkg.model (layer 1) imports pkg.engine.plugins (layer 3)"),
])
def test_an_import_of_a_higher_layer_is_found(tmp_path, source, edge):
    root = _write(tmp_path / "pkg", {"__init__.py": "", "exporters/__init__.py": "", "exporters/graphs.py": "",
                                     "engine/__init__.py": "", "engine/plugins.py": "", "model.py": source})
    graph = import_graph(root, "pkg")
    assert cycles(graph) == []
    assert back_edges(graph, "pkg") == [edge]


def test_a_failing_test_prints_its_seed_and_the_replay_command(pytester):
    """tests/conftest.py's report hook: the seed of a failed test that used the `seed` fixture is printed."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile("def test_unlucky(seed):\n    assert seed < 0\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*seed = *; replay: HYMBA_TEST_SEED=* python -m pytest 'test_a_failing_test*::test_unlucky'"])
