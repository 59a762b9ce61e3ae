"""DESIGN.md §2: imports point one way. Parse every module's imports and check the forbidden edges."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "unclip"

# subpackage -> unclip subpackages it must never import
FORBIDDEN = {
    "nn": {
        "models",
        "encoders",
        "diffusion",
        "samplers",
        "pipeline",
        "data",
        "train",
        "interop",
        "eval",
        "cli",
        "web",
    },
    "models": {"train", "pipeline", "cli", "web", "interop", "samplers", "diffusion"},
    "diffusion": {
        "nn",
        "models",
        "encoders",
        "samplers",
        "pipeline",
        "data",
        "train",
        "interop",
        "eval",
        "cli",
        "web",
    },
    "samplers": {"nn", "models", "encoders", "pipeline", "data", "train", "interop", "eval", "cli", "web"},
    "encoders": {"train", "pipeline", "cli", "web", "samplers", "diffusion"},
    "data": {"models", "train", "pipeline", "cli", "web", "samplers"},
    "pipeline": {"train", "cli", "web"},
    "train": {"cli", "web"},
    "eval": {"cli", "web"},
}

ALLOWED_THIRD_PARTY_FOR_DIFFUSION = {
    "torch",
    "math",
    "dataclasses",
    "typing",
    "enum",
    "collections",
    "__future__",
    "functools",
    "abc",
    "numbers",
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_import_direction():
    bad = []
    for sub, forbidden in FORBIDDEN.items():
        for path in (SRC / sub).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "unclip" and len(parts) > 1 and parts[1] in forbidden:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "imports against DESIGN.md §2:\n" + "\n".join(bad)


def test_diffusion_imports_torch_only():
    bad = []
    for path in (SRC / "diffusion").rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "unclip":
                if not name.startswith("unclip.diffusion"):
                    bad.append(f"{path.name}: {name}")
            elif top not in ALLOWED_THIRD_PARTY_FOR_DIFFUSION:
                bad.append(f"{path.name}: {name}")
    assert not bad, bad


def test_checker_sees_files():
    # guard against a vacuous pass: the walk must find the package's modules
    assert len(list(SRC.rglob("*.py"))) > 10
