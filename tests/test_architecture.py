"""Architecture rules of edgetrain, checked on the source with the standard-library ``ast``.

The import graph
    Every module under ``src/edgetrain`` is parsed (nothing is imported) and each ``import``
    / ``from ... import`` naming an edgetrain module becomes an edge, tagged with *when* it
    runs:

    * ``module``: runs when the module is imported (module body, class bodies, module-level
      ``if`` / ``try`` blocks, the ``else`` branch of ``if TYPE_CHECKING``);
    * ``lazy``: inside a function or lambda, runs on the first call;
    * ``typing``: under ``if TYPE_CHECKING:`` (at any depth), never runs.

    ``from pkg import name`` points at ``pkg.name`` when that is a submodule, else at ``pkg``.
    Importing ``a.b.c`` also imports its parent packages ``a.b`` and ``a``: those are added as
    implicit edges, except parents of the importing module itself (they are already being
    imported when it runs). Imports by ``importlib.import_module`` are not seen (the lazy
    names of ``edgetrain`` and ``edgetrain.sweep``, the CLI's subcommands, the preload list
    of ``sweep.zygote``, the user-named callables of ``zoo``); today each stays in its own
    package or goes downwards.

Rules (each test below says which one failed, for which module, line and import)
    * Layer order, for every kind of import (a lazy or type-only import still couples the
      code): a package imports its own modules and packages of lower layers; within a layer
      only the pairs in ``SAME_LAYER_ALLOWED`` (any pair in the layers of
      ``SAME_LAYER_OPEN``); a few packages have a stricter list of what they may import at
      all (``ONLY_IMPORTS``). The root package ``edgetrain`` and
      ``edgetrain.__main__`` are exempt as importers; as a target, the root is every
      module's parent (always imported first, and it eagerly imports only ``config`` and
      ``errors``): a bare ``import edgetrain`` is allowed (the attributes used are not
      checked) and of ``from edgetrain import ...`` only ``__version__``: its other names
      load ``train`` and ``compat`` lazily and would bypass the layers.
    * No import cycles among runtime (``module``) edges. Lazy imports are excluded: they
      run after every module involved has finished importing, which is the usual and
      intended way to break a cycle or to defer a heavy dependency. Type-only imports never
      run and are excluded too. Tolerated cycles go in ``KNOWN_CYCLES``, with a reason.
    * Torch-free modules: ``TORCH_FREE_PACKAGES`` (with all their modules) and
      ``TORCH_FREE_MODULES`` must not import torch at import time,
      checked statically (no module-level torch import in them or in any edgetrain module
      they import at module level) and by importing them in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "edgetrain"

Kind = Literal["module", "lazy", "typing"]

#: Top to bottom. A package may import packages of lower layers.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("cli", frozenset({"cli"})),
    ("workflows", frozenset({"sweep", "bench", "report", "compare", "compat", "export"})),
    ("train", frozenset({"train"})),
    ("building blocks", frozenset({"adapt", "memory", "sparse", "prune", "measure"})),
    # what a batch means: the loop and the blocks' probes ask a Task (docs/design.md)
    ("tasks", frozenset({"tasks"})),
    ("zoo", frozenset({"zoo"})),
    ("utilities", frozenset({"config", "errors", "units", "safefs", "contract", "mark"})),
)

#: Imports between different packages of one layer that are allowed, with the reason.
SAME_LAYER_ALLOWED: dict[tuple[str, str], str] = {
    ("adapt", "sparse"): "the memory planner's fine-tuning lever is a static sparse update "
    "(its selection and row freezer); sparse never imports adapt",
    # workflows: the others may use report (the torch-free renderer that imports only
    # utilities, see ONLY_IMPORTS; none does today), but not each other (none does today).
    ("sweep", "report"): "a sweep may render its results with the torch-free report",
    ("bench", "report"): "a benchmark may render its results with the torch-free report",
    ("compare", "report"): "a comparison may render its results with the torch-free report",
    ("compat", "report"): "the compatibility API may render with the torch-free report",
    # building blocks are independent of one another, with one exception:
    ("adapt", "memory"): (
        "adapt.probe measures a candidate's saved-activation bytes with memory's "
        "SavedTensorCounter instead of a second accounting"
    ),
}

#: Layers whose packages may import one another freely (the import-cycle test keeps them
#: acyclic): the utilities are small leaf modules (config uses errors and units, units and
#: safefs use errors); errors itself imports nothing (see ONLY_IMPORTS).
SAME_LAYER_OPEN: frozenset[str] = frozenset({"utilities"})

#: Exceptions that today's code relies on; a test fails when one is no longer used, so the
#: list cannot outlive the code. (The workflow -> report pairs are rules, not exceptions.)
SAME_LAYER_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset({("adapt", "memory")})

#: Packages held to a stricter list of the other edgetrain packages they may import.
ONLY_IMPORTS: dict[str, tuple[frozenset[str], str]] = {
    "report": (
        frozenset({"config", "errors", "units", "safefs", "contract"}),
        "report reads run directories and renders them; it must not pull training code "
        "or torch, so it imports only the utilities",
    ),
    "errors": (frozenset(), "errors is the bottom of the tree and imports no edgetrain module"),
}

#: Runtime import cycles tolerated for now: the set of modules in the cycle -> why.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

#: Modules that must import without torch (each package here with all its modules).
TORCH_FREE_PACKAGES: tuple[str, ...] = (
    "edgetrain.report",
    "edgetrain.config",
    "edgetrain.measure",
)
TORCH_FREE_MODULES: tuple[str, ...] = (
    "edgetrain",
    "edgetrain.contract",
    "edgetrain.mark",
    "edgetrain.safefs",
    "edgetrain.errors",
    "edgetrain.units",
    "edgetrain.cli",
    "edgetrain.cli.main",
)
TORCH_DISTRIBUTIONS: frozenset[str] = frozenset({"torch", "torchvision", "torchaudio"})

EXEMPT_IMPORTERS: frozenset[str] = frozenset({ROOT, f"{ROOT}.__main__"})
ROOT_NAMES_ALLOWED: frozenset[str] = frozenset({"__version__"})


# -- the graph --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One edge: ``importer`` imports ``target`` (a dotted module name)."""

    importer: str
    target: str
    kind: Kind
    line: int
    implicit: bool = False  # a parent package of an imported module
    names: tuple[str, ...] = ()  # for ``from target import names`` (not submodules)
    statement: str = ""  # the import statement, as written (normalised by ``ast``)

    def describe(self) -> str:
        what = f"`{self.statement}`" if self.statement else f"import of {self.target}"
        if self.implicit:
            what += f", which imports its parent package {self.target}"
        return f"{self.importer} line {self.line}: {what} [{self.kind}]"


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Every edgetrain module, by dotted name (packages under their own name)."""
    found: dict[str, Path] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _walk(node: ast.AST, kind: Kind) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_one(stmt, "typing")
            for stmt in child.orelse:
                yield from _walk_one(stmt, kind)
        else:
            yield from _walk_one(child, kind)


def _walk_one(node: ast.AST, kind: Kind) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    if kind == "module" and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        kind = "lazy"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, kind
    yield from _walk(node, kind)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def parse_imports(
    module: str, source: str, modules: Iterable[str], is_package: bool
) -> list[Import]:
    """The imports of one module (edgetrain and third-party), explicit and implicit."""
    known = set(modules)
    own_parents = set(_parents(module)) | {module}
    edges: list[Import] = []

    def add(target: str, kind: Kind, node: ast.stmt, names: tuple[str, ...] = ()) -> None:
        text = ast.unparse(node)
        edges.append(Import(module, target, kind, node.lineno, names=names, statement=text))
        if target.split(".")[0] == ROOT:
            for parent in _parents(target):
                if parent not in own_parents:
                    edges.append(Import(module, parent, kind, node.lineno, True, (), text))

    for node, kind in _walk(ast.parse(source), "module"):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, kind, node)
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        plain: list[str] = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in known:
                add(submodule, kind, node)
            else:
                plain.append(alias.name)
        if plain:
            add(base, kind, node, tuple(plain))
    # one edge per (target, kind, line, implicit): ``from a import b, c`` with two submodules
    # would otherwise add the parent twice
    return list(dict.fromkeys(edges))


def build_graph(src: Path = SRC) -> tuple[dict[str, Path], list[Import]]:
    files = module_files(src)
    edges: list[Import] = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges += parse_imports(name, path.read_text(encoding="utf-8"), files, is_package)
    return files, edges


FILES, EDGES = build_graph()
INTERNAL = [e for e in EDGES if e.target == ROOT or e.target.startswith(f"{ROOT}.")]


# -- layers -----------------------------------------------------------------------------------


def package_of(module: str) -> str | None:
    """``edgetrain.measure.monitor`` -> ``measure``; the root package -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


LAYER_OF: dict[str, int] = {pkg: rank for rank, (_, pkgs) in enumerate(LAYERS) for pkg in pkgs}
LAYER_NAME: dict[str, str] = {pkg: name for name, pkgs in LAYERS for pkg in pkgs}


def layer_violation(edge: Import) -> str | None:
    """Which rule ``edge`` breaks, or None."""
    if edge.importer in EXEMPT_IMPORTERS:
        return None
    source = package_of(edge.importer)
    target = package_of(edge.target)
    assert source is not None
    if target is None:  # the root package, every module's parent: already imported
        taken = sorted(set(edge.names) - ROOT_NAMES_ALLOWED)
        if taken:
            return (
                f"{', '.join(taken)} taken from the root package edgetrain: only "
                f"{', '.join(sorted(ROOT_NAMES_ALLOWED))} may be (its other names load "
                "train/compat lazily or re-export a lower module); import from the defining "
                "module instead"
            )
        return None
    if source == target:
        return None
    if source in ONLY_IMPORTS:
        allowed, reason = ONLY_IMPORTS[source]
        if target not in allowed:
            listed = ", ".join(sorted(allowed)) or "nothing"
            return f"{source} may import only {listed} of edgetrain: {reason}"
    if target == "__main__":
        return "nothing imports edgetrain.__main__"
    where = f"{source} is in layer '{LAYER_NAME[source]}', {target} in layer '{LAYER_NAME[target]}'"
    if LAYER_OF[target] < LAYER_OF[source]:
        return f"layer order: {where}, which is above it; import only downwards"
    if (
        LAYER_OF[target] == LAYER_OF[source]
        and LAYER_NAME[source] not in SAME_LAYER_OPEN
        and (source, target) not in SAME_LAYER_ALLOWED
    ):
        return (
            f"same layer: {where}; packages of one layer do not import each other unless the "
            "pair is listed, with a reason, in SAME_LAYER_ALLOWED"
        )
    return None


def layer_violations(edges: Iterable[Import]) -> list[str]:
    return [
        f"{edge.describe()}\n    breaks: {rule}"
        for edge in edges
        if (rule := layer_violation(edge)) is not None
    ]


def test_every_package_has_a_layer() -> None:
    packages = {package_of(m) for m in FILES} - {None, "__main__"}
    unplaced = sorted(p for p in packages if p not in LAYER_OF)
    assert not unplaced, f"put these edgetrain packages into LAYERS: {unplaced}"
    gone = sorted(set(LAYER_OF) - packages)
    assert not gone, f"LAYERS names packages that no longer exist: {gone}"


def test_every_edgetrain_import_names_a_module() -> None:
    unknown = [e.describe() for e in INTERNAL if e.target not in FILES]
    assert not unknown, "imports of edgetrain modules that do not exist:\n" + "\n".join(unknown)


def test_imports_follow_the_layers() -> None:
    bad = layer_violations(INTERNAL)
    order = " > ".join(f"{name} ({', '.join(sorted(pkgs))})" for name, pkgs in LAYERS)
    assert not bad, (
        f"{len(bad)} import(s) break the layering (top to bottom: {order}):\n" + "\n".join(bad)
    )


def test_same_layer_exceptions_are_still_needed() -> None:
    used = {
        (package_of(e.importer), package_of(e.target))
        for e in INTERNAL
        if e.importer not in EXEMPT_IMPORTERS
    }
    stale = sorted(SAME_LAYER_EXCEPTIONS - used)
    assert not stale, f"no import uses these exceptions any more; delete them: {stale}"
    assert SAME_LAYER_EXCEPTIONS.issubset(SAME_LAYER_ALLOWED)


# -- cycles -----------------------------------------------------------------------------------


def runtime_graph(edges: Iterable[Import]) -> dict[str, dict[str, Import]]:
    """importer -> target -> the first runtime edge (import-time, edgetrain only)."""
    graph: dict[str, dict[str, Import]] = defaultdict(dict)
    for edge in edges:
        if edge.kind == "module" and edge.target != edge.importer:
            graph[edge.importer].setdefault(edge.target, edge)
    return graph


def strongly_connected(graph: Mapping[str, Mapping[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _one_cycle(graph: Mapping[str, Mapping[str, Import]], members: list[str]) -> list[Import]:
    """A shortest cycle through the first member, within the component, as edges."""
    inside = set(members)
    start = members[0]
    came_from: dict[str, Import] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt, edge in sorted(graph.get(node, {}).items()):
            if nxt not in inside or nxt in came_from:
                continue
            came_from[nxt] = edge
            if nxt == start:
                path = [edge]
                while path[0].importer != start:
                    path.insert(0, came_from[path[0].importer])
                return path
            queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def cycle_report(edges: Iterable[Import]) -> list[str]:
    graph = runtime_graph(edges)
    problems = []
    for members in strongly_connected(graph):
        if frozenset(members) in KNOWN_CYCLES:
            continue
        steps = "\n".join(f"    {e.describe()}" for e in _one_cycle(graph, members))
        problems.append(f"cycle among {', '.join(members)}, e.g.:\n{steps}")
    return problems


def test_no_runtime_import_cycles() -> None:
    problems = cycle_report(INTERNAL)
    assert not problems, (
        "module-level imports form cycles (move the shared code into a module both can "
        "import, or make one import lazy):\n" + "\n".join(problems)
    )


# -- torch ------------------------------------------------------------------------------------


def torch_free_modules() -> list[str]:
    names = set(TORCH_FREE_MODULES)
    for package in TORCH_FREE_PACKAGES:
        names |= {m for m in FILES if m == package or m.startswith(f"{package}.")}
    return sorted(names)


def torch_chains(start: Iterable[str], edges: Iterable[Import]) -> list[str]:
    """How modules reached from ``start`` at import time end at a module-level torch import."""
    edges = list(edges)
    graph = runtime_graph(e for e in edges if e.target in FILES)
    graph.setdefault(ROOT, {})  # every module's parent runs first: follow it too
    torch_lines = {
        e.importer: e
        for e in edges
        if e.kind == "module" and e.target.split(".")[0] in TORCH_DISTRIBUTIONS
    }
    chains = []
    for first in start:
        came_from: dict[str, Import | None] = {first: None, ROOT: None}
        queue = [first, ROOT]
        while queue:
            node = queue.pop(0)
            if node in torch_lines:
                path: list[Import] = [torch_lines[node]]
                step = came_from[node]
                while step is not None:
                    path.insert(0, step)
                    step = came_from[step.importer]
                chain = "\n".join(f"    {e.describe()}" for e in path)
                chains.append(f"{first} imports torch at import time:\n{chain}")
                break
            for nxt, edge in sorted(graph.get(node, {}).items()):
                if nxt not in came_from:
                    came_from[nxt] = edge
                    queue.append(nxt)
    return chains


def test_torch_free_modules_do_not_import_torch_statically() -> None:
    chains = torch_chains(torch_free_modules(), EDGES)
    assert not chains, (
        "these modules must import without torch (import it inside the function that needs "
        "it):\n" + "\n".join(chains)
    )


def test_torch_free_modules_import_without_torch() -> None:
    modules = torch_free_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"    pulled = sorted({set(TORCH_DISTRIBUTIONS)!r} & set(sys.modules))\n"
        "    if pulled:\n"
        "        sys.exit(f'importing {name} imported {pulled}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        "the modules that must import without torch, imported one at a time in a fresh "
        f"interpreter (edgetrain.report, .config, .measure with all their modules, and "
        f"{', '.join(TORCH_FREE_MODULES)}), failed:\n{done.stderr}"
    )


# -- the checker itself -----------------------------------------------------------------------


def _edges_of(module: str, source: str, is_package: bool = False) -> list[Import]:
    return [
        e
        for e in parse_imports(module, source, FILES, is_package)
        if e.target == ROOT or e.target.startswith(f"{ROOT}.")
    ]


@pytest.mark.parametrize(
    "source",
    [
        "import edgetrain.train\n",
        "from edgetrain.train import fit\n",
        "def f():\n    from edgetrain.train import loop\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgetrain import train\n",
        "from edgetrain.memory import report\n",
        "from edgetrain import fit\n",
        "from ..bench import runner\n",
    ],
)
def test_the_checker_catches_an_import_that_breaks_the_layers(source: str) -> None:
    bad = layer_violations(_edges_of("edgetrain.measure.monitor", source))
    assert bad, f"not caught in edgetrain.measure.monitor:\n{source}"


def test_the_checker_sorts_imports_by_when_they_run() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import edgetrain.errors\n"
        "if TYPE_CHECKING:\n"
        "    from edgetrain.units import parse_bytes\n"
        "else:\n"
        "    from edgetrain.safefs import claim_dir\n"
        "class C:\n"
        "    from edgetrain.config import TrainConfig\n"
        "def f():\n"
        "    from edgetrain.measure import proctree\n"
        "    if TYPE_CHECKING:\n"
        "        import edgetrain.zoo\n"
    )
    kinds = {e.target: e.kind for e in _edges_of("edgetrain.measure.x", source) if not e.implicit}
    assert kinds == {
        "edgetrain.errors": "module",
        "edgetrain.units": "typing",
        "edgetrain.safefs": "module",
        "edgetrain.config": "module",
        "edgetrain.measure.proctree": "lazy",
        "edgetrain.zoo": "typing",
    }


def test_the_checker_finds_a_cycle_and_its_path() -> None:
    edges = [
        *_edges_of("edgetrain.measure.window", "from edgetrain.measure.monitor import Monitor\n"),
        *_edges_of("edgetrain.measure.monitor", "from edgetrain.measure.window import Window\n"),
        *_edges_of("edgetrain.measure.energy", "def f():\n    import edgetrain.measure.window\n"),
    ]
    (problem,) = cycle_report(edges)
    assert "edgetrain.measure.monitor, edgetrain.measure.window" in problem
    assert "edgetrain.measure.window line 1: `from edgetrain.measure.monitor import" in problem


def test_the_checker_follows_torch_through_other_modules() -> None:
    edges = [
        *_edges_of("edgetrain.report.tables", "from edgetrain.units import parse_bytes\n"),
        Import("edgetrain.units", "torch", "module", 3),
    ]
    (chain,) = torch_chains(["edgetrain.report.tables"], edges)
    assert "edgetrain.report.tables line 1" in chain
    assert "edgetrain.units line 3: import of torch" in chain
