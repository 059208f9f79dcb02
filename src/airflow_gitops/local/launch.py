"""``python -m airflow_gitops.local.launch ENV_FILE -- COMMAND...``: exec COMMAND with ENV_FILE's environment.

supervisor starts every Airflow program through this launcher so that the platform's secrets live in
one 0600 JSON file instead of ``supervisord.conf`` (whose ``environment=`` line would also need
fragile quoting for JSON values such as the bundle config).

``airflow scheduler`` / ``airflow dag-processor`` are not exec'd but run in this process when the
environment asks for a preload or a patch (``preload.py``): LocalExecutor's task processes are forks
of the scheduler.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m airflow_gitops.local.launch ENV_FILE -- COMMAND [ARGS...]")
    with open(argv[0], encoding="utf-8") as fh:
        os.environ.update(json.load(fh))
    command = argv[2:]
    from . import preload

    if preload.wanted(command, dict(os.environ)):
        preload.run(command, dict(os.environ))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
