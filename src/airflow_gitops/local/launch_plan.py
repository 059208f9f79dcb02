"""The launch plan: what ``launch.py`` does to an Airflow process before Airflow runs in it, as one typed
record instead of a handful of environment variables.

The local target writes it once per ``up`` (``airflow_env.write_launch_plan``) as a JSON file in the state
folder (0600, like every file there; it holds no secret) and names that file in the Airflow programs'
environment file with ONE variable, :data:`ENV_VAR`. ``launch.py`` reads it (is the component forked from
the fork server, is it prepared in-process), and so does the process that becomes the component (the
launcher itself, or the fork server's child): ``preload.start`` / ``preload.run``. A plan file that is
missing or does not read as this record stops the program with one message naming the file and the fix.

Only the standard library here: every launcher (the small stand-ins supervisord keeps for the forks)
imports this module, and what it imports costs start-up time and memory in each of them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import PlatformError

ENV_VAR = "AIRFLOW_GITOPS_LAUNCH_PLAN"  # the path of the plan file (the only launcher variable)


@dataclass(frozen=True)
class LaunchPlan:
    """Each lever, and what the bench measured for it: docs/performance.md ("Inner loop", "Start-up").

    The patches of Airflow internals each lever switches on are guarded (``patches/``): a lever that is on
    applies its patch only where the guard finds the upstream code it was verified on.
    """

    # Scheduler: imported before LocalExecutor forks its workers (patch ``local_executor``), so every task
    # process, a fork of them, starts with them. Empty: nothing preloaded.
    scheduler_preload: tuple[str, ...] = ()
    # Scheduler: its loop sleeps this long instead of ``[scheduler] scheduler_idle_sleep_time`` while a Dag
    # run is queued or running and for a minute after a push (patch ``scheduler_sleep``). None: off.
    scheduler_busy_sleep: float | None = None
    # DAG processor: imported once in it, so each per-file parse process (a fork) has them.
    dag_processor_preload: tuple[str, ...] = ()
    # DAG processor: a finished parse is collected at once, not up to 1 s later (patch ``dag_processor_poll``).
    dag_processor_poll: bool = False
    # API server: each distinct route type is built once, not once per router (patch ``fastapi_routes``).
    api_route_types_once: bool = False
    # Every component: import first, then wait until `up` has written this migration stamp. None: no wait.
    migrated_stamp: str | None = None
    # Every component: forked from the fork server listening here (``forkserver.py``). None: not forked.
    forkserver_socket: str | None = None
    # Scheduler and DAG processor: task and DAG-parse processes forked by the task user's zygote listening
    # here, run by task_uid (patch ``task_zygote``); task_gid may read the bundle worktrees. None: off.
    task_zygote_socket: str | None = None
    task_uid: int | None = None
    task_gid: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> LaunchPlan:
        """The plan in ``text`` (read from ``source``), or a :class:`PlatformError` naming what is wrong."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise _invalid(source, f"it is not JSON ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict):
            raise _invalid(source, f"it is a JSON {type(data).__name__}, not an object")
        known = [f.name for f in fields(cls)]
        missing = [k for k in known if k not in data]
        unknown = sorted(k for k in data if k not in known)
        if missing or unknown:
            said = [f"missing {', '.join(missing)}"] if missing else []
            said += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise _invalid(source, "; ".join(said))
        values = {}
        for name in known:
            value, check = data[name], _CHECKS[name]
            if not check[0](value):
                raise _invalid(source, f"{name} is {json.dumps(value)[:80]}, not {check[1]}")
            values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


def _modules(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, str) and m.strip() for m in value)


def _optional_text(value) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def _seconds(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value > 0)


_CHECKS = {
    "scheduler_preload": (_modules, "a list of module names"),
    "scheduler_busy_sleep": (_seconds, "a number of seconds > 0 or null"),
    "dag_processor_preload": (_modules, "a list of module names"),
    "dag_processor_poll": (lambda v: isinstance(v, bool), "true or false"),
    "api_route_types_once": (lambda v: isinstance(v, bool), "true or false"),
    "migrated_stamp": (_optional_text, "a file path or null"),
    "forkserver_socket": (_optional_text, "a socket path or null"),
    "task_zygote_socket": (_optional_text, "a socket path or null"),
    "task_uid": (
        lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
        "a uid > 0 or null",
    ),
    "task_gid": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0), "a gid or null"),
}

_FIX = (
    "run `airflow-gitops down` and `airflow-gitops up` again: `up` writes the plan before it starts the "
    "components (it is generated, not meant to be edited)"
)


def _invalid(source: str, why: str) -> PlatformError:
    return PlatformError(f"the launch plan {source} is not valid: {why}", _FIX)


def load(path: str | Path) -> LaunchPlan:
    """The plan in the file at ``path``; a missing, unreadable or malformed one is a :class:`PlatformError`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PlatformError(f"the launch plan {path} (named by {ENV_VAR}) does not exist", _FIX) from None
    except OSError as err:
        raise PlatformError(f"the launch plan {path} cannot be read: {err.strerror or err}", _FIX) from None
    return LaunchPlan.from_json(raw, str(path))


def from_env(env: Mapping[str, str] | None = None) -> LaunchPlan | None:
    """The plan :data:`ENV_VAR` names in ``env`` (default: this process's), or None when it names none (a
    program started through the launcher that is not one of Airflow's, e.g. MLflow or the S3 endpoint)."""
    path = (os.environ if env is None else env).get(ENV_VAR)
    return load(path) if path else None


def from_env_or_exit(env: Mapping[str, str] | None = None) -> LaunchPlan | None:
    """:func:`from_env`, or exit with its one message (in a launcher: the component's log) and status 2."""
    try:
        return from_env(env)
    except PlatformError as err:
        print(f"airflow-gitops: {err.render()}", file=sys.stderr, flush=True)
        sys.exit(2)
