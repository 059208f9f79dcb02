"""Every airflow-gitops command the README and scripts/demo.sh print works in a brand-new login shell on a
fresh machine, where the bootstrap's private uv (~/.cache/airflow-gitops/uv/bin) is not on PATH: each is
run for real (its `--help`) with `env -i HOME=$HOME PATH=/usr/bin:/bin bash -lc`."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fresh_shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["env", "-i", f"HOME={Path.home()}", "PATH=/usr/bin:/bin", "bash", "-lc", command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [ln.split("#", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if "airflow-gitops " in ln]


def demo_commands() -> list[str]:
    lines = (REPO / "scripts" / "demo.sh").read_text().splitlines()
    printed = [ln for ln in lines if ln.lstrip().startswith("echo") and "airflow-gitops" in ln]
    assert printed, "demo.sh prints no command"
    return [re.sub(r"^.*?: ", "", ln.strip()[len("echo ") :].strip('"')) for ln in printed]


def _as_help(command: str) -> str:
    """The command with its verb's --help (click then prints the usage and does no work)."""
    line = command.strip().replace("$REPO", str(REPO))
    line = re.sub(r"^([A-Z_]+=\S*\s+)+", "", line)  # VAR=... prefixes
    return re.sub(r"(airflow-gitops \S+)", r"\1 --help", line, count=1)


@pytest.mark.parametrize("command", readme_commands() + demo_commands())
def test_every_printed_command_runs_in_a_new_login_shell(command):
    line = _as_help(command)
    if not line.startswith("cd "):
        line = f"cd {shlex.quote(str(REPO))} && {line}"  # README: "from the repository"
    run = _fresh_shell(line)
    assert run.returncode == 0 and "Usage" in run.stdout, (line, run.stdout[-500:], run.stderr[-500:])
