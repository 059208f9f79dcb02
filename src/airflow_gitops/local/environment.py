"""The environment supervisord starts with: built from scratch, never the shell's as a whole.

Every local process inherits it: PostgreSQL, the S3 endpoint, MLflow, serving, the fork server and the
Airflow components forked from it, and so every task LocalExecutor runs (``launch.py`` adds each
program's 0600 environment file on top). The shell that runs ``up`` holds what none of them may see or
be steered by: tokens (``*_TOKEN``), the user's ssh-agent (``SSH_AUTH_SOCK``), AWS keys that boto3 would
prefer to the platform's profile (``AWS_*``: the local S3 then answers 403), settings that override the
platform's (``AIRFLOW__*``, ``PG*``, ``GIT_*``, ``MLFLOW_*``) and code injection (``PYTHONPATH``,
``LD_PRELOAD``, ``VIRTUAL_ENV``). So only the names below pass, and the platform adds its own; the
``${NAME}`` variables platform.yaml refers to stay out even when listed (airflow-gitops reads them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .layout import HOST, Layout

# Passed from the shell when set, each for the reason given. Nothing else is.
INHERITED: dict[str, str] = {
    "PATH": "programs by name: git (GitDagBundle), ssh, bash (BashOperator); the venv's bin/ goes first",
    "HOME": "caches and settings of Python, git, MLflow, rclone (AWS credentials are the platform's files)",
    "USER": "getpass.getuser(): Airflow's task user and log lines",
    "LOGNAME": "the same, read first by getpass",
    "LANG": "the locale: text encoding of logs and of PostgreSQL's messages",
    "TZ": "local time in logs and in DAG code that asks for it",
    "TMPDIR": "where temporary files go (a private or larger temporary folder)",
    "PYTHONDONTWRITEBYTECODE": "an interpreter switch (no code, no credentials): no .pyc written where told",
    # DAG code that reaches the outside (real AWS, package indexes) behind a proxy or a TLS-inspecting
    # one; the loopback addresses never go through a proxy (platform_env).
    "http_proxy": "the proxy for HTTP, as curl and Python read it",
    "HTTP_PROXY": "the same, upper case",
    "https_proxy": "the proxy for HTTPS",
    "HTTPS_PROXY": "the same, upper case",
    "no_proxy": "hosts reached directly (the platform adds 127.0.0.1 and localhost)",
    "NO_PROXY": "the same, upper case",
    "SSL_CERT_FILE": "trust anchors (e.g. a TLS-inspecting proxy's CA) for OpenSSL and Python",
    "SSL_CERT_DIR": "the same, as a folder",
    "REQUESTS_CA_BUNDLE": "the same, for requests",
    "CURL_CA_BUNDLE": "the same, for curl and requests",
}
# Passed by prefix, like the names above.
INHERITED_PREFIXES: dict[str, str] = {
    "LC_": "locale categories (LC_ALL, LC_CTYPE, ...), like LANG",
}

LOOPBACK = (HOST, "localhost")


def inherited(shell: Mapping[str, str], hide: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed part of ``shell`` (without the names in ``hide``)."""
    hidden = set(hide)
    prefixes = tuple(INHERITED_PREFIXES)
    return {k: v for k, v in shell.items() if (k in INHERITED or k.startswith(prefixes)) and k not in hidden}


def platform_env(layout: Layout, passed: Mapping[str, str]) -> dict[str, str]:
    """What the platform itself puts into supervisord's environment: one variable a line."""
    return {
        # The venv's programs (airflow, python, rclone) first, as `uv run` does: a task that calls them
        # gets uv.lock's versions, also when `up` ran by full path without an activated venv.
        "PATH": _venv_first(passed.get("PATH") or os.defpath),
        # The platform's own traffic (S3, MLflow, the API and Execution API) stays on loopback.
        "no_proxy": _with_loopback(passed.get("no_proxy") or passed.get("NO_PROXY")),
        "NO_PROXY": _with_loopback(passed.get("NO_PROXY") or passed.get("no_proxy")),
    }


def supervisord_env(layout: Layout, shell: Mapping[str, str] | None = None) -> dict[str, str]:
    """supervisord's whole environment: the allow-listed shell variables, then the platform's."""
    passed = inherited(os.environ if shell is None else shell, hide=layout.spec.env_references())
    return {**passed, **platform_env(layout, passed)}


def _venv_first(path: str) -> str:
    venv = str(Path(sys.executable).parent)
    parts = [p for p in path.split(os.pathsep) if p and p != venv]
    return os.pathsep.join([venv, *parts])


def _with_loopback(value: str | None) -> str:
    hosts = [h.strip() for h in (value or "").split(",") if h.strip()]
    return ",".join(dict.fromkeys([*hosts, *LOOPBACK]))


@contextmanager
def environ_overlay(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` set in this process's environment for the block; each of its keys restored after (removed
    where it was unset), nothing else touched."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
