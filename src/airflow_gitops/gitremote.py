"""Talking to the DAG repository with exactly the key and pinned host key Airflow will use.

Used by ``up``'s preflight, ``status``, doctor and verify. SSH options are passed as arguments by a
small launcher (``airflow-gitops-ssh``, set as ``GIT_SSH``), with the key and known_hosts paths in
environment variables: no path is ever put into a shell command line, so a quote in a path cannot
run anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import venv_bin
from .spec import PlatformSpec

TIMEOUT = 60
SSH_KEY_ENV = "AIRFLOW_GITOPS_SSH_KEY"
KNOWN_HOSTS_ENV = "AIRFLOW_GITOPS_KNOWN_HOSTS"
SSH_LAUNCHER = "airflow-gitops-ssh"


class GitError(Exception):
    """A git command failed; ``saw`` and ``fix`` are readable (no credentials in them)."""

    def __init__(self, saw: str, fix: str):
        self.saw, self.fix = saw, fix
        super().__init__(saw)


@dataclass
class Remote:
    url: str
    env: dict[str, str]
    refs: dict[str, str] = field(default_factory=dict)  # ref name -> sha

    def branch_sha(self, branch: str) -> str | None:
        return self.refs.get(f"refs/heads/{branch}")

    @property
    def branches(self) -> list[str]:
        return sorted(r.removeprefix("refs/heads/") for r in self.refs if r.startswith("refs/heads/"))


def ssh_main() -> None:  # pragma: no cover - exec'd by git as GIT_SSH
    """``airflow-gitops-ssh``: ssh with the deploy key, pinned known_hosts, strict checking, no config."""
    key, known_hosts = os.environ.get(SSH_KEY_ENV), os.environ.get(KNOWN_HOSTS_ENV)
    if not key or not known_hosts:
        sys.exit(f"{SSH_LAUNCHER}: {SSH_KEY_ENV} and {KNOWN_HOSTS_ENV} must be set")
    args = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f'UserKnownHostsFile="{known_hosts}"',  # one argument; ssh splits this option's value at spaces
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        *sys.argv[1:],
    ]
    os.execvp("ssh", args)


def git_env(spec: PlatformSpec) -> dict[str, str]:
    """The environment for git commands against ``dags.repo``: no prompts, the deploy key for SSH."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    env.pop("GIT_SSH_COMMAND", None)  # it would take precedence over GIT_SSH
    if spec.dags.is_ssh:
        env.update(
            {
                "GIT_SSH": venv_bin(SSH_LAUNCHER),
                "GIT_SSH_VARIANT": "ssh",  # so git passes -p PORT to the launcher
                SSH_KEY_ENV: str(spec.path(spec.dags.ssh_key_file)),
                KNOWN_HOSTS_ENV: str(spec.path(spec.dags.known_hosts_file)),
            }
        )
    return env


def explain(stderr: str, spec: PlatformSpec) -> tuple[str, str]:
    """(what happened, fix) for a failed ls-remote/clone."""
    url = spec.dag_repo_url
    tail = " ".join(ln.strip() for ln in stderr.strip().splitlines()[-3:])[:300]
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        host, port = spec.dags.ssh_host_port() if spec.dags.is_ssh else ("HOST", 22)
        return (
            f"the server's host key is not the one pinned in dags.known_hosts_file ({tail})",
            f"re-pin it: ssh-keyscan -p {port} {host} > {spec.dags.known_hosts_file}, and compare the fingerprint "
            "with the one your Git host publishes before trusting it",
        )
    if "Permission denied" in stderr and "publickey" in stderr:
        return (
            f"the server rejected the deploy key ({tail})",
            "add the key's public half (see ssh.key.fingerprint) to the repository as a deploy key; "
            "read access is enough",
        )
    if "bad permissions" in stderr or "UNPROTECTED PRIVATE KEY" in stderr:
        return (f"ssh refused the key file ({tail})", f"chmod 600 {spec.dags.ssh_key_file}")
    if "invalid format" in stderr or "error in libcrypto" in stderr:
        return (f"ssh could not read the key ({tail})", "see the ssh.key.format row")
    if re.search(r"Could not resolve hostname|Name or service not known", stderr):
        return (f"the Git host name does not resolve ({tail})", "check the host in dags.repo and your DNS")
    if re.search(r"Connection refused|timed out|No route to host|Network is unreachable", stderr):
        return (f"cannot connect to the Git host ({tail})", "check the host/port in dags.repo and any firewall")
    if re.search(r"not found|does not appear to be a git repository|not exist", stderr, re.I):
        return (
            f"no repository at {url} ({tail})",
            "check the path in dags.repo (for GitHub: git@github.com:ORG/REPO.git) and that the deploy key is "
            "added to THIS repository",
        )
    return (f"git failed: {tail}", f"run `git ls-remote {url}` with the same key to see why")


def ls_remote(spec: PlatformSpec, url: str | None = None) -> Remote:
    """Every ref of the repository. Raises :class:`GitError`."""
    url = url or spec.dag_repo_url
    env = git_env(spec)
    try:
        proc = subprocess.run(
            ["git", "ls-remote", "--symref", url], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"git ls-remote {url} did not answer in {TIMEOUT}s", "check the host and network") from None
    if proc.returncode != 0:
        raise GitError(*explain(proc.stderr, spec))
    remote = Remote(url=url, env=env)
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and not parts[0].startswith("ref:"):
            remote.refs[parts[1]] = parts[0]
    return remote


def branch_problem(spec: PlatformSpec, remote: Remote) -> tuple[str, str] | None:
    """(saw, fix) when ``dags.branch`` is not in the repository, else None."""
    branch = spec.dags.branch
    if remote.branch_sha(branch):
        return None
    branches = remote.branches
    if not branches:
        return "the repository has no branches (it is empty)", "push your DAG repository first"
    return (
        f"branch {branch!r} does not exist; branches: {', '.join(branches[:10])}",
        f"set dags.branch to one of them (e.g. {branches[0]!r}) or push {branch!r}",
    )


def branch_head(spec: PlatformSpec) -> str | None:
    """The commit at the tip of ``dags.branch``, or None when it cannot be read."""
    try:
        return ls_remote(spec).branch_sha(spec.dags.branch)
    except GitError:
        return None


def clone_url(url: str) -> str:
    """``--depth`` is ignored for plain local paths: use ``file://`` for them."""
    return "file://" + url if Path(url).is_absolute() else url


def shallow_clone(spec: PlatformSpec, remote: Remote, dest: Path, branch: str | None = None) -> None:
    """Clone the branch head (depth 1) into ``dest``. Raises :class:`GitError`."""
    proc = subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--single-branch",
            "--branch",
            branch or spec.dags.branch,
            clone_url(remote.url),
            str(dest),
        ],
        capture_output=True,
        text=True,
        env=remote.env,
        timeout=TIMEOUT * 3,
    )
    if proc.returncode != 0:
        raise GitError(*explain(proc.stderr, spec))
