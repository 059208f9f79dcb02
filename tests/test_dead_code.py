"""No dead module-level names: every constant, alias or class field defined at the top of a module in
src/airflow_gitops is mentioned somewhere else (src, tests, bench). A word count over the real sources."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "airflow_gitops"


def _defined(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("__")]
        elif isinstance(node, ast.ClassDef):
            names += [b.target.id for b in node.body if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name)]
    return names


def test_every_module_level_name_is_used_somewhere():
    sources = [p for d in ("src", "tests", "bench") for p in (REPO / d).rglob("*.py")]
    counts: dict[str, int] = {}
    for path in sources:
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text()):
            counts[word] = counts.get(word, 0) + 1
    dead = [
        f"{path.relative_to(REPO)}: {name}"
        for path in PACKAGE.rglob("*.py")
        if "template" not in path.parts
        for name in _defined(ast.parse(path.read_text()))
        if counts.get(name, 0) <= 1
    ]
    assert not dead, "defined but never used (remove them): " + ", ".join(dead)
