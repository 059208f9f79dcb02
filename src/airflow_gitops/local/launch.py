"""``python -m airflow_gitops.local.launch ENV_FILE [--nice N] -- COMMAND...``: exec COMMAND with ENV_FILE's
environment (and N added to its nice value).

supervisor starts every Airflow program through this launcher so that the platform's secrets live in
one 0600 JSON file instead of ``supervisord.conf`` (whose ``environment=`` line would also need
fragile quoting for JSON values such as the bundle config).

What else happens to an Airflow program is its launch plan's (``launch_plan.py``): one JSON record the
local target writes, named in ENV_FILE by ``launch_plan.ENV_VAR``; a program whose environment names
none (MLflow, the S3 endpoint, serving) is simply exec'd. Airflow's components (``airflow
api-server|scheduler|dag-processor|triggerer``) are not exec'd but run in this process when the plan
asks for a preload, a patch or a wait for the migration stamp (``preload.py``): LocalExecutor's task
processes are forks of the scheduler, and each component imports what it needs before the database is
migrated. A plan file that is missing or malformed stops the program with one message naming it and the
fix (in the component's log).

When the plan names the fork server's socket, such a component is not imported here but forked
from the fork server, which imported Airflow once for all of them; this process stays as its
stand-in for supervisord (``forkserver.py``), and runs the component itself only when no server
takes the request.

``--nice``: components that work in the background (DAG processor, triggerer, MLflow) yield the CPU
to those a user waits on (API server, scheduler and its tasks) when both want it, e.g. during
``up``, where seven processes start on two cores: the API server, whose single-threaded start is the
critical path, then gets a larger share (docs/performance.md, "Start-up"). Without contention a
nice value changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

USAGE = "usage: python -m airflow_gitops.local.launch ENV_FILE [--nice N] [--user NAME] -- COMMAND [ARGS...]"


def _become_user(name: str) -> None:
    """Drop root for good: ``name``'s uid and group, no other group (the task user's zygote, zygote.py).
    The environment file was read first: it stays root's 0600 file."""
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        sys.exit(f"airflow-gitops: the user {name} does not exist (local.task_user); `airflow-gitops up` creates it")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.getuid() != pw.pw_uid or os.geteuid() != pw.pw_uid or os.getegid() != pw.pw_gid:
        sys.exit(f"airflow-gitops: could not become the user {name}")


def main(argv: list[str]) -> None:
    nice, user = 0, None
    while len(argv) > 2 and argv[1] in ("--nice", "--user"):
        if argv[1] == "--nice":
            try:
                nice = int(argv[2])
            except ValueError:
                sys.exit(USAGE)
        else:
            user = argv[2]
        argv = [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        sys.exit(USAGE)
    with open(argv[0], "rb") as fh:
        raw = fh.read()
    os.environ.update(json.loads(raw))
    if nice:
        os.nice(nice)
    if user is not None:
        _become_user(user)
    command = argv[2:]
    from . import launch_plan

    plan = launch_plan.from_env_or_exit()
    if plan is None:
        os.execvp(command[0], command)  # not one of Airflow's programs: nothing to prepare
    from . import forkserver, preload

    # What the fork server compares: it forks only for the environment it imported Airflow with.
    os.environ[forkserver.DIGEST_ENV_VAR] = hashlib.sha256(raw).hexdigest()
    if plan.forkserver_socket and preload.wanted(command, plan):
        try:
            forkserver.run_forked(plan.forkserver_socket, command)  # exits as the component does
        except forkserver.Unavailable as why:
            print(f"airflow-gitops: {why}; starting {command[1]} in this process", file=sys.stderr, flush=True)
    preload.start(command, plan)


if __name__ == "__main__":
    main(sys.argv[1:])
