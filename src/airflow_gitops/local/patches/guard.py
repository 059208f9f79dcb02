"""A patch's guard: the fingerprints of the upstream code it replaces or relies on, checked before it
patches (see the package's docstring); and :func:`wrap`, which puts a patched function in place.

Every patch module imports this one; the package (``__init__``) lists the patches (:func:`all_guards`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

PATCHED = "_airflow_gitops"  # set on every function a patch put in place
ORIGINAL = "_airflow_gitops_original"  # the upstream function it replaced


def _digest(source: str) -> str:
    lines = textwrap.dedent(source).splitlines()
    text = "\n".join(line.rstrip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(obj) -> str:
    """sha256 of ``inspect.getsource(obj)`` normalised: dedented, blank and comment-only lines dropped,
    trailing spaces stripped (any change to the code or its docstring changes it)."""
    return _digest(inspect.getsource(obj))


def _module_file(module: str):
    """The installed source file of ``module``, found without importing it or its packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    if spec is not None and not rest:
        return spec.origin if spec.origin and spec.origin.endswith(".py") else None
    for base in (spec and spec.submodule_search_locations) or ():
        for candidate in (f"{base}/{'/'.join(rest)}.py", f"{base}/{'/'.join(rest)}/__init__.py"):
            if os.path.isfile(candidate):
                return candidate
    return None


def source_fingerprint(target: str, _hops: int = 2) -> str | None:
    """:func:`fingerprint` of ``"module:Class.attr"`` read from the installed file without importing
    anything (``doctor``: milliseconds, and no Airflow start-up in the checking process); follows a
    ``from X import name`` of the module (two at most). None when the module or a name is missing."""
    module, _, qualname = target.partition(":")
    path = _module_file(module)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    body = ast.parse(text).body
    parts = qualname.split(".")
    for i, part in enumerate(parts):
        found = [
            n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part
        ]
        if not found:
            if i == 0 and _hops:
                for node in body:
                    if isinstance(node, ast.ImportFrom) and any(a.name == part and not a.asname for a in node.names):
                        origin = (
                            importlib.util.resolve_name(
                                "." * node.level + (node.module or ""), module.rpartition(".")[0]
                            )
                            if node.level
                            else node.module
                        )
                        return source_fingerprint(f"{origin}:{qualname}", _hops - 1)
            return None
        node = found[-1]
        body = node.body
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    return _digest("\n".join(text.splitlines()[first - 1 : node.end_lineno]))


def resolve(target: str):
    """``"module:Class.attr"`` -> the upstream object (a property's getter; for an attribute a patch
    replaced, the original), or None when the module or an attribute is missing."""
    module, _, qualname = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return None
    for part in qualname.split("."):
        owner = obj
        obj = inspect.getattr_static(owner, part, None) if isinstance(owner, type) else getattr(owner, part, None)
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if obj is None:
            return None
    if isinstance(obj, property):
        obj = obj.fget
    return getattr(obj, ORIGINAL, obj)


@dataclass(frozen=True)
class PatchState:
    patch: str
    on: bool
    detail: str


STATES: dict[str, PatchState] = {}  # patch name -> its state in this process, once a patch was tried


@dataclass(frozen=True)
class Guard:
    patch: str  # the patch's name, in logs and doctor
    what: str  # what it does, for doctor
    package: str  # the distribution the guarded code comes from
    label: str  # how the message names it: "Airflow", "FastAPI"
    verified: dict[str, dict[str, str]]  # version verified on -> {"module:Qual.name": fingerprint}

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(t for prints in self.verified.values() for t in prints))

    def mismatches(self, *, imported: bool = True) -> list[str]:
        """The guarded functions that are missing or differ from every verified version ([] = all match):
        of the imported objects (what a patch would replace), or read from the installed files."""
        found = {}
        for target in self.targets:
            if not imported:
                found[target] = source_fingerprint(target)
                continue
            obj = resolve(target)
            try:
                found[target] = None if obj is None else fingerprint(obj)
            except (OSError, TypeError):  # no source to read: treat as changed
                found[target] = "no source"
        if any(all(found.get(t) == fp for t, fp in prints.items()) for prints in self.verified.values()):
            return []
        closest = min(self.verified.values(), key=lambda prints: sum(found.get(t) != fp for t, fp in prints.items()))
        return [
            f"{t.partition(':')[2]} {'missing' if found.get(t) is None else 'changed'}"
            for t, fp in closest.items()
            if found.get(t) != fp
        ]

    def installed(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def reason(self, mismatches: list[str]) -> str:
        versions = ", ".join(self.verified)
        return (
            f"{'; '.join(mismatches)}: turned off: upstream code changed (verified on {self.label} {versions}, "
            f"installed {self.installed()})"
        )

    def allows(self) -> bool:
        """May the patch be applied? If not, says so once on stderr and records it in :data:`STATES`."""
        bad = self.mismatches()
        if not bad:
            return True
        detail = self.reason(bad)
        STATES[self.patch] = PatchState(self.patch, False, detail)
        print(f"airflow-gitops: patch {self.patch}: {detail}", file=sys.stderr, flush=True)
        return False

    def applied(self) -> bool:
        STATES[self.patch] = PatchState(self.patch, True, f"on (matches {self.label} {', '.join(self.verified)})")
        return True


def wrap(owner, name: str, make: Callable) -> bool:
    """Replace ``owner.name`` by ``make(original)``, once; False (nothing changed) if it is missing or
    was replaced already."""
    original = getattr(owner, name, None)
    if original is None or getattr(original, PATCHED, False):
        return False
    patched = make(original)
    setattr(patched, PATCHED, True)
    setattr(patched, ORIGINAL, original)
    setattr(owner, name, patched)
    return True
