"""Patches of Airflow (and FastAPI) internals, one module each, every one behind a :class:`Guard`.

A guard holds the fingerprint of each upstream function the patch replaces or relies on, as it was on
the versions the patch was verified on. Before patching, it fingerprints the installed code (the
function's source, :func:`fingerprint`); on any difference or a missing attribute the patch is not
applied, one line naming the patch and the function goes to stderr (the component's log), and
:data:`STATES` says "off" - so ``doctor`` (``checks/patches.py``) and the log show it, never a silent
change of behaviour. Re-verify a patch on a new upstream version, then add that version's fingerprints
(``fingerprint(resolve(target))`` gives the installed ones).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

PATCHED = "_airflow_gitops"  # set on every function a patch put in place
ORIGINAL = "_airflow_gitops_original"  # the upstream function it replaced


def fingerprint(obj) -> str:
    """sha256 of ``inspect.getsource(obj)`` normalised: dedented, blank and comment-only lines dropped,
    trailing spaces stripped (any change to the code or its docstring changes it)."""
    lines = textwrap.dedent(inspect.getsource(obj)).splitlines()
    text = "\n".join(line.rstrip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return hashlib.sha256(text.encode()).hexdigest()


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

    def mismatches(self) -> list[str]:
        """The guarded functions that are missing or differ from every verified version ([] = all match)."""
        found = {}
        for target in self.targets:
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


def all_guards() -> list[Guard]:
    from . import dag_processor_poll, fastapi_routes, local_executor, scheduler_sleep

    return [local_executor.GUARD, scheduler_sleep.GUARD, dag_processor_poll.GUARD, fastapi_routes.GUARD]
