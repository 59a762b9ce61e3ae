"""The package graph (docs/architecture.md): no cycle, every import runs down the layers.

Every module under ``src/unclip`` is parsed (nothing is imported). Its dependencies are read from

- ``import`` / ``from ... import`` statements anywhere in the file (module level, inside functions, under
  ``TYPE_CHECKING``), relative ones resolved;
- ``importlib.import_module("...")`` and ``__import__("...")`` calls with a string literal;
- any other string constant that names a module of the package (``"unclip.models.prior"``,
  ``"unclip.cli.train_clip:command"``): registries that map names to modules import them later. A string
  that is a whole expression statement (a docstring) is documentation and is not read.

Each target maps to its *unit*: the first component under ``unclip`` (a subpackage, or a root module such as
``io``); a name taken from ``unclip`` itself (``from unclip import UnCLIPPipeline``) maps to ``__init__``.
``UNCLIP_LAYERING_SRC`` points the test at another tree (e.g. an export of an older commit).
"""

from __future__ import annotations

import ast
import os
import re
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

SRC = Path(os.environ.get("UNCLIP_LAYERING_SRC") or Path(__file__).resolve().parents[2] / "src" / "unclip")

# Bottom to top. A unit may import units on lower rows only (never its own row: siblings stay independent).
LAYERS: list[tuple[str, ...]] = [
    ("io", "limits", "images", "precision", "omp_policy"),  # root modules: files, bounds, images, dtype, threads
    ("config",),  # config dataclasses <-> JSON (uses io)
    ("nn", "diffusion"),  # building blocks; diffusion math and stage settings (torch only)
    ("samplers", "models"),  # algorithms on the denoiser contract (diffusion only); the networks
    ("encoders",),  # the CLIP interface and its implementations
    ("data", "stages"),  # datasets and caches; sampling one stage (network + DiffusionConfig)
    ("measure",),  # metrics, the shapes oracle, prior and image quality
    ("pipeline", "train"),  # end-to-end generation; the training loop and the stage tasks
    ("interop", "recipes"),  # Karlo/diffusers formats (registered with the pipeline); the built-in recipe
    ("experiments",),  # the paper's claims, measured
    ("web",),  # the HTTP API and page
    ("cli",),  # the `unclip` command (its `serve` starts the web app)
]
FACE = {"__init__", "__main__"}  # the package's face: above everything, exempt from the rows
ROW = {unit: row for row, units in enumerate(LAYERS) for unit in units}

STDLIB_FOR_DIFFUSION = {"math", "dataclasses", "typing", "enum", "collections", "__future__", "functools", "abc"}
MODULE_STRING = re.compile(r"(?<![\w.])unclip(?:\.[a-z_][a-z0-9_]*)+")


@dataclass(frozen=True)
class Site:
    path: str  # relative to SRC
    line: int
    name: str  # what was imported (dotted)

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.name})"


def _units(src: Path) -> set[str]:
    out = {p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return out | {p.stem for p in src.glob("*.py")}


def _module_name(path: Path, src: Path) -> tuple[list[str], list[str]]:
    """(dotted parts of the module, parts of the package that relative imports start from)."""
    parts = ["unclip", *path.relative_to(src).with_suffix("").parts]
    if parts[-1] == "__init__":
        return parts[:-1], parts[:-1]
    return parts, parts[:-1]


def _unit_of(name: str, units: set[str]) -> str | None:
    parts = name.split(".")
    if parts[0] != "unclip":
        return None
    if len(parts) == 1 or parts[1] not in units:
        return "__init__"  # a name defined in (or handed on by) unclip/__init__.py
    return parts[1]


def _documentation(tree: ast.AST) -> set[int]:
    """ids of string constants that are whole expression statements (docstrings, attribute docs)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def module_imports(path: Path, src: Path = SRC) -> list[tuple[str, int, bool]]:
    """Every dotted name that ``path`` imports, with its line and whether it was read from a plain string
    (statements and import_module/__import__ literals are imports; a string is one if it names a unit)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    _, package = _module_name(path, src)
    docs = _documentation(tree)
    names: list[tuple[str, int, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # "from unclip import models" imports the subpackage; "from unclip.x import name" imports unclip.x
            names += [(f"{base}.{a.name}" if base == "unclip" else base, node.lineno, False) for a in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if fname in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    names.append((arg.value, node.lineno, False))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            names += [(m, node.lineno, True) for m in MODULE_STRING.findall(node.value)]
    return names


def unit_graph(src: Path = SRC) -> tuple[dict[tuple[str, str], list[Site]], set[str]]:
    """{(unit, imported unit): the sites that create the edge}, and the units found."""
    units = _units(src)
    edges: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        unit = rel.parts[0].removesuffix(".py")
        for name, line, from_string in module_imports(path, src):
            if from_string and name.split(".")[1] not in units:
                continue  # e.g. "unclip.word_byte_tokenizer": a format tag, not a module
            target = _unit_of(name, units)
            site = Site(str(rel), line, name)
            if target is not None and target != unit and site not in edges[(unit, target)]:
                edges[(unit, target)].append(site)
    return dict(edges), units


def _sccs(nodes: set[str], adj: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adj.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def _shortest_path(adj: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str] | None:
    prev: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            path = [v]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])
            return path[::-1]
        for w in sorted(adj.get(v, ())):
            if w in within and w not in prev:
                prev[w] = v
                queue.append(w)
    return None


def find_cycles(edges: dict[tuple[str, str], list[Site]]) -> list[list[str]]:
    """For each edge inside a strongly connected component, the shortest cycle through it (deduplicated)."""
    adj: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
    nodes = set(adj) | {b for _, b in edges}
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for comp in _sccs(nodes, adj):
        for a, b in sorted(edges):
            if a in comp and b in comp:
                back = _shortest_path(adj, b, a, comp)
                cycle = [a, *back] if back else None
                if cycle is None:
                    continue
                ring = cycle[:-1]
                k = ring.index(min(ring))
                key = tuple(ring[k:] + ring[:k])
                if key not in seen:
                    seen.add(key)
                    cycles.append([*key, key[0]])
    return cycles


def _describe(sites: list[Site], limit: int = 4) -> str:
    shown = "; ".join(str(s) for s in sites[:limit])
    return shown + (f"; +{len(sites) - limit} more" if len(sites) > limit else "")


def test_no_package_cycle():
    edges, _ = unit_graph()
    cycles = find_cycles(edges)
    lines = []
    for cycle in cycles:
        lines.append("cycle: " + " -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"    {a} -> {b}: {_describe(edges[(a, b)])}")
    assert not cycles, f"{len(cycles)} package cycle(s):\n" + "\n".join(lines)


def test_imports_run_down_the_layers():
    edges, units = unit_graph()
    unplaced = sorted(units - FACE - set(ROW))
    missing = sorted(set(ROW) - units)
    bad = []
    for (a, b), sites in sorted(edges.items()):
        if a in FACE or a not in ROW or b not in ROW:
            continue
        if ROW[b] >= ROW[a]:
            how = "the same row" if ROW[b] == ROW[a] else f"row {ROW[b] + 1}, above row {ROW[a] + 1}"
            bad += [f"{s.path}:{s.line}: {a} imports {s.name} ({b}: {how})" for s in sites]
    for (a, b), sites in sorted(edges.items()):
        if b in FACE and a not in FACE:
            bad += [f"{s.path}:{s.line}: {a} imports {s.name} (the package face unclip/__init__.py)" for s in sites]
    assert not (unplaced or missing or bad), (
        (f"units not in LAYERS (place them): {unplaced}\n" if unplaced else "")
        + (f"LAYERS names units that do not exist: {missing}\n" if missing else "")
        + (f"{len(bad)} import(s) against the layers:\n" + "\n".join(bad) if bad else "")
    )


def test_diffusion_imports_torch_only():
    bad = []
    for path in sorted((SRC / "diffusion").rglob("*.py")):
        for name, line, _ in module_imports(path):
            top = name.split(".")[0]
            if top == "unclip":
                if not name.startswith("unclip.diffusion"):
                    bad.append(f"{path.relative_to(SRC)}:{line}: {name}")
            elif top not in STDLIB_FOR_DIFFUSION | {"torch"}:
                bad.append(f"{path.relative_to(SRC)}:{line}: {name}")
    assert not bad, "diffusion imports more than torch and the standard library:\n" + "\n".join(bad)


def test_samplers_import_diffusion_only():
    edges, _ = unit_graph()
    bad = [f"samplers -> {b}: {_describe(sites)}" for (a, b), sites in edges.items() if a == "samplers"]
    bad = [line for line in bad if not line.startswith("samplers -> diffusion:")]
    assert not bad, "samplers import more of the package than diffusion:\n" + "\n".join(bad)


def test_checker_sees_imports():
    # guard against a vacuous pass: the walk finds the modules, lazy imports and registry strings
    assert len(list(SRC.rglob("*.py"))) > 10
    edges, _ = unit_graph()
    assert ("pipeline", "samplers") in edges and ("models", "nn") in edges
    strings = module_imports(SRC / "models" / "registry.py")
    assert any(name == "unclip.models.prior" and from_string for name, _, from_string in strings), "strings not read"
    lazy = module_imports(SRC / "cli" / "main.py")
    assert any(name.startswith("unclip.cli.train_clip") for name, _, _ in lazy), "lazy command strings not read"
