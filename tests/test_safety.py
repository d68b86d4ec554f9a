"""Invariants of the code base itself (issue 11, "what must keep holding")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _torch_loads(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == "torch":
                yield node


def test_every_torch_load_passes_weights_only_true():
    """No checkpoint, bundle or detector state is ever unpickled with arbitrary objects: every ``torch.load`` in
    the library, jobs, server and benchmarks says ``weights_only=True``."""
    calls, unsafe = 0, []
    for folder in ("platform", "jobs", "serve", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in _torch_loads(ast.parse(path.read_text(), str(path))):
                calls += 1
                kw = {k.arg: k.value for k in call.keywords}
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert calls >= 3  # checkpoint.load, publishing's bundle loader, the trainer's resume
    assert unsafe == [], f"torch.load without weights_only=True: {unsafe}"
