"""The Connection types the installed Airflow providers define, found without configuring Airflow.

Airflow's ``ProvidersManager`` learns connection types from each provider's ``get_provider_info()``
(the ``apache_airflow_provider`` entry point), whose ``connection-types`` list names them. Calling it
imports the provider package, and with it ``airflow`` itself (seconds of CPU and a configured
``AIRFLOW_HOME``), so this module reads the function's source instead: it is generated code that
returns one literal dict, which :func:`ast.literal_eval` evaluates without running anything. Only a
provider whose file cannot be read that way is imported. Airflow core adds ``generic`` and ``email``.

The answer is cached for the process (a few provider files, ~0.1 s the first time).
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.metadata
from typing import Any

ENTRY_POINT_GROUP = "apache_airflow_provider"
# Connection types Airflow core registers itself (ProvidersManager._init_airflow_core_hooks).
CORE_TYPES = {"generic": "apache-airflow-core", "email": "apache-airflow-core"}
# Names people write for a type that is spelled differently in Airflow.
ALIASES = {"s3": "aws", "amazon": "aws", "postgresql": "postgres", "pg": "postgres", "https": "http"}


def _literal_provider_info(ep: importlib.metadata.EntryPoint) -> dict[str, Any] | None:
    """``get_provider_info()``'s returned literal, read from the source file; None if that is not possible."""
    module, _, func = ep.value.partition(":")
    if ep.dist is None or not func:
        return None
    path = ep.dist.locate_file(module.replace(".", "/") + ".py")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))  # type: ignore[union-attr]
    except (OSError, SyntaxError, UnicodeDecodeError, AttributeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            returns = [n for n in node.body if isinstance(n, ast.Return)]
            if len(returns) == 1 and returns[0].value is not None:
                try:
                    info = ast.literal_eval(returns[0].value)
                except (ValueError, SyntaxError, TypeError, RecursionError):
                    return None
                return info if isinstance(info, dict) else None
    return None


def _provider_info(ep: importlib.metadata.EntryPoint) -> dict[str, Any]:
    info = _literal_provider_info(ep)
    if info is not None:
        return info
    try:  # not a plain literal: ask the provider (imports it)
        loaded = ep.load()()
    except Exception:  # noqa: BLE001 - a broken provider must not break validation of the others
        return {}
    return loaded if isinstance(loaded, dict) else {}


@functools.cache
def connection_types() -> dict[str, str]:
    """Connection type -> the distribution that defines it, for every installed provider."""
    types = dict(CORE_TYPES)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist is not None else ep.value.partition(":")[0]
        for entry in _provider_info(ep).get("connection-types") or []:
            conn_type = entry.get("connection-type") if isinstance(entry, dict) else None
            if isinstance(conn_type, str) and conn_type:
                types.setdefault(conn_type, package)
    return types


def providers_found() -> bool:
    """Is any provider installed at all? (Without one there is nothing to validate against.)"""
    return len(connection_types()) > len(CORE_TYPES)


def closest(conn_type: str, n: int = 3) -> list[str]:
    """The known connection types that look most like ``conn_type``."""
    known = connection_types()
    lowered = conn_type.lower().replace("-", "_")
    matches = difflib.get_close_matches(lowered, known, n=n, cutoff=0.6)
    alias = ALIASES.get(lowered)
    if alias in known and alias not in matches:
        matches.insert(0, alias)
    prefixed = [t for t in sorted(known) if t not in matches and (t.startswith(lowered) or lowered.startswith(t))]
    return (matches + prefixed)[:n]
