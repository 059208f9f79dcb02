"""``python -m airflow_gitops.local.launch ENV_FILE [--nice N] -- COMMAND...``: exec COMMAND with ENV_FILE's
environment (and N added to its nice value).

supervisor starts every Airflow program through this launcher so that the platform's secrets live in
one 0600 JSON file instead of ``supervisord.conf`` (whose ``environment=`` line would also need
fragile quoting for JSON values such as the bundle config).

Airflow's components (``airflow api-server|scheduler|dag-processor|triggerer``) are not exec'd but run
in this process when the environment asks for a preload, a patch or a wait for the migration stamp
(``preload.py``): LocalExecutor's task processes are forks of the scheduler, and each component
imports what it needs before the database is migrated.

``--nice``: components that work in the background (DAG processor, triggerer, MLflow) yield the CPU
to those a user waits on (API server, scheduler and its tasks) when both want it, e.g. during
``up``, where seven processes start on two cores: the API server, whose single-threaded start is the
critical path, then gets a larger share (docs/performance.md, "Start-up"). Without contention a
nice value changes nothing.
"""

from __future__ import annotations

import json
import os
import sys

USAGE = "usage: python -m airflow_gitops.local.launch ENV_FILE [--nice N] -- COMMAND [ARGS...]"


def main(argv: list[str]) -> None:
    nice = 0
    if len(argv) > 2 and argv[1] == "--nice":
        try:
            nice = int(argv[2])
        except ValueError:
            sys.exit(USAGE)
        argv = [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        sys.exit(USAGE)
    with open(argv[0], encoding="utf-8") as fh:
        os.environ.update(json.load(fh))
    if nice:
        os.nice(nice)
    command = argv[2:]
    from . import preload

    if preload.wanted(command, dict(os.environ)):
        preload.run(command, dict(os.environ))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
