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

# What the patches' users and tests name through the package.
from .guard import PATCHED, STATES, Guard, fingerprint, resolve

__all__ = ["PATCHED", "STATES", "Guard", "all_guards", "fingerprint", "resolve"]


def all_guards() -> list[Guard]:
    from . import dag_processor_poll, fastapi_routes, local_executor, scheduler_sleep, task_zygote

    return [
        local_executor.GUARD,
        scheduler_sleep.GUARD,
        dag_processor_poll.GUARD,
        fastapi_routes.GUARD,
        task_zygote.GUARD,
    ]
