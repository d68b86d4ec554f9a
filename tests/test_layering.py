"""Imports run one way (issue 12 §5): no import cycle among the library's modules, and every import goes from a
higher layer to a lower one. Static (the AST of every module, function-level imports included), so a lazy import
cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "platform"

#: The library's layers, lowest first. A module may import anything in its own or a lower layer (no cycles).
#: detectors/ sits with the building blocks: its estimators depend on nothing of ours, and a method may hold one
#: (AEGAN-AD's discriminator-embedding KNN); the detector *stage* (stages/detect.py) composes them above the methods.
#: stages/ holds the run's stages (ingest, split, train, score, detect, evaluate); tuning runs them per trial, so it
#: sits above them, and below publishing, as issue 12 §5 and DESIGN.md draw it (publishing reads stored runs and
#: never runs a stage). pipeline.py only chains the stages and then publishes, so it is the top layer.
LAYERS = [
    {"errors", "storage", "config", "runtime"},
    {"data"},
    {"nn", "encoders", "detectors"},
    {"methods", "checkpoint", "presets"},
    {"scoring", "training", "splits", "scopes"},
    {"evaluation", "runs"},
    {"stages"},
    {"tuning"},
    {"publishing"},
    {"pipeline"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "stethoscope").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rsplit(".", 1)[0] if "." in name else ""
                if name and name != mod and not mod.startswith(name + "."):
                    edges[mod].add(name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return -1  # the package __init__ (stethoscope): imports errors only


def test_no_import_cycle():
    assert _cycles(_edges(_modules())) == []


def test_imports_go_one_way():
    mods = _modules()
    tops = {m.split(".")[1] for m in mods if "." in m}
    assert tops <= set().union(*LAYERS), f"modules outside every layer: {sorted(tops - set().union(*LAYERS))}"
    upward = [(a, b) for a, targets in _edges(mods).items() for b in targets if _layer(a) >= 0 and _layer(b) > _layer(a)]
    assert upward == [], "imports that go up: " + ", ".join(f"{a} -> {b}" for a, b in sorted(upward))


def test_the_check_finds_a_cycle_and_an_upward_import():
    """The checks can fail: a made-up graph with a cycle and a data → training edge."""
    edges = {"stethoscope.data.a": {"stethoscope.training.b"}, "stethoscope.training.b": {"stethoscope.data.a"}}
    assert _cycles(edges) == [["stethoscope.data.a", "stethoscope.training.b"]]
    assert _layer("stethoscope.data.a") < _layer("stethoscope.training.b")
