"""The package layers of docs/architecture.md §1, enforced on every import in the source tree.

A module may import from its own package, from packages of *lower* layers and from the top-level
``msrl_model`` package (version, research-use text); never from a sibling of its layer or from a
higher layer. ``msrl_model.train`` is a leaf: only the ``msrl`` command line dispatches to it, and
the app never imports it. Imports inside functions count too (the AST is read, nothing is run).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. Packages of one layer are independent of each other.
LAYERS: list[list[str]] = [
    ["msrl_model.errors"],
    ["msrl_model.progress", "msrl_model.files", "msrl_model.device", "msrl_model.weights", "msrl_model.resources"],
    ["msrl_model.slide", "msrl_model.encoders", "msrl_model.stats", "msrl_model.nn"],
    ["msrl_model.features"],
    ["msrl_model.cohort"],
    ["msrl_model.synth", "msrl_model.infer"],
    ["msrl_model.bench"],
    ["msrl_model.train"],
    ["msrl_model.cli"],
    ["msrl_app"],
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}
FORBIDDEN = {("msrl_app", "msrl_model.train")}  # the app predicts; it never trains


def package_of(module: str) -> str | None:
    """The layered package a dotted module name belongs to (None: the top-level ``msrl_model``)."""
    parts = module.split(".")
    for n in (2, 1):
        name = ".".join(parts[:n])
        if name in LAYER_OF:
            return name
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every project import in ``path``, relative ones resolved."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
            # ``from msrl_model import train`` imports the sub-package: take the longest known name
            target = max((n for n in names if package_of(n)), key=len, default=target)
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("msrl_model", "msrl_app")]


def sources() -> list[Path]:
    return sorted(p for pkg in ("msrl_model", "msrl_app") for p in (ROOT / pkg).rglob("*.py"))


def violations(path: Path) -> list[str]:
    source = package_of(module_name(path))
    assert source is not None or module_name(path) == "msrl_model", f"{path} is in no layer of LAYERS"
    out = []
    for line, target in imported_modules(path):
        dest = package_of(target)
        if source is None or dest is None or dest == source:
            continue
        upward_or_sideways = LAYER_OF[dest] >= LAYER_OF[source]
        if upward_or_sideways or (source, dest) in FORBIDDEN:
            out.append(f"{path.relative_to(ROOT)}:{line} {source} (layer {LAYER_OF[source]}) imports "
                       f"{target} (layer {LAYER_OF[dest]})")
    return out


def test_every_package_has_a_layer():
    packages = {p.parent.relative_to(ROOT).as_posix().replace("/", ".")
                for p in (ROOT / "msrl_model").glob("*/__init__.py")}
    modules = {f"msrl_model.{p.stem}" for p in (ROOT / "msrl_model").glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(LAYER_OF), sorted((packages | modules) - set(LAYER_OF))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    assert violations(path) == []


@pytest.mark.parametrize("source, target, allowed", [
    ("msrl_model.infer.predictor", "msrl_model.stats.survival", True),
    ("msrl_model.infer.predictor", "msrl_model.train.metrics", False),  # the cycle issue 14 removed
    ("msrl_model.synth.cohort", "msrl_model.infer.bundle", False),  # siblings stay independent
    ("msrl_app.window", "msrl_model.infer", True),
    ("msrl_app.window", "msrl_model.train", False),
])
def test_the_checker_tells_allowed_from_forbidden(tmp_path, monkeypatch, source, target, allowed):
    # a throw-away tree with one module importing one name: the checker must flag exactly the bad ones
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path.joinpath(*source.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True)
    path.write_text(f"def f():\n    import {target}\n", encoding="utf-8")
    assert (violations(path) == []) is allowed
