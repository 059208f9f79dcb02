"""The DAG repository: reachable with the deploy key, branch, subPath, and DAG files that import.

The seed's first troubleshooting item ("GitSync DAG not reflected: wrong subPath") becomes a check
that names the directories which do exist at the branch head. The DAG files are parsed the way the
platform parses them: a shallow clone of the branch, the repository root on ``sys.path``, a DagBag
over ``sub_path``, in this platform's Python (a subprocess, so DAG code never runs in the CLI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..local.layout import Layout, dag_runtime_env
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip
from .ssh import git_ssh_command

TIMEOUT = 60


@dataclass
class Remote:
    url: str
    env: dict[str, str]
    refs: dict[str, str] = field(default_factory=dict)  # ref name -> sha


def git_env(spec: PlatformSpec) -> dict[str, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    cmd = git_ssh_command(spec)
    if cmd:
        env["GIT_SSH_COMMAND"] = cmd
    return env


def _explain_git_error(stderr: str, spec: PlatformSpec) -> tuple[str, str]:
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


def ls_remote(spec: PlatformSpec, url: str) -> tuple[Remote | None, CheckResult]:
    name = "git.reachable"
    env = git_env(spec)
    try:
        proc = subprocess.run(
            ["git", "ls-remote", "--symref", url], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return None, fail(name, f"git ls-remote {url} did not answer in {TIMEOUT}s", "check the host and network")
    if proc.returncode != 0:
        saw, fix = _explain_git_error(proc.stderr, spec)
        return None, fail(name, saw, fix)
    remote = Remote(url=url, env=env)
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and not parts[0].startswith("ref:"):
            remote.refs[parts[1]] = parts[0]
    how = "with the deploy key, strict host key checking" if spec.dags.is_ssh else "without credentials"
    n = sum(1 for r in remote.refs if r.startswith("refs/heads/"))
    return remote, ok(name, f"{url} answers ({how}); {n} branch{'es' if n != 1 else ''}")


def check_branch(spec: PlatformSpec, remote: Remote) -> CheckResult:
    branch = spec.dags.branch
    sha = remote.refs.get(f"refs/heads/{branch}")
    if sha:
        return ok("git.branch", f"{branch} is at {sha[:12]}")
    branches = sorted(r.removeprefix("refs/heads/") for r in remote.refs if r.startswith("refs/heads/"))
    if not branches:
        return fail("git.branch", "the repository has no branches (it is empty)", "push your DAG repository first")
    return fail(
        "git.branch",
        f"branch {branch!r} does not exist; branches: {', '.join(branches[:10])}",
        f"set dags.branch to one of them (e.g. {branches[0]!r}) or push {branch!r}",
    )


def shallow_clone(spec: PlatformSpec, remote: Remote, dest: Path) -> str | None:
    """Clone the branch head (depth 1) into ``dest``; returns an error text or None."""
    url = remote.url
    if Path(url).is_absolute() and not url.startswith("file://"):
        url = "file://" + url  # --depth is ignored for plain local paths
    proc = subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", "--single-branch", "--branch", spec.dags.branch, url, str(dest)],
        capture_output=True,
        text=True,
        env=remote.env,
        timeout=TIMEOUT * 3,
    )
    return None if proc.returncode == 0 else proc.stderr


def _dirs_with_python(root: Path, limit: int = 8) -> list[str]:
    found = []
    for p in sorted(root.rglob("*.py")):
        rel = p.parent.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        s = str(rel) if str(rel) != "." else "."
        if s not in found:
            found.append(s)
        if len(found) >= limit:
            break
    return found


def check_sub_path(spec: PlatformSpec, clone: Path) -> CheckResult:
    sub = spec.dags.sub_path or "."
    target = clone / sub
    if target.is_dir():
        n = len(list(target.rglob("*.py")))
        return ok("git.sub_path", f"{sub}/ exists at the head of {spec.dags.branch} ({n} .py file{'s' * (n != 1)})")
    top = sorted(p.name for p in clone.iterdir() if p.is_dir() and not p.name.startswith("."))
    with_py = _dirs_with_python(clone)
    what = "is a file" if target.exists() else "does not exist"
    hint = f"directories with .py files: {', '.join(with_py)}" if with_py else "no directory holds .py files"
    return fail(
        "git.sub_path",
        f"{sub!r} {what} at the head of {spec.dags.branch}; top-level directories: {', '.join(top) or '(none)'}; "
        f"{hint}",
        f"set dags.sub_path (the chart's dags.gitSync.subPath) to {with_py[0]!r}"
        if with_py
        else "commit your DAG files under dags.sub_path",
    )


_PARSE_SCRIPT = r"""
import json, sys, traceback
from pathlib import Path
root, folder = Path(sys.argv[1]), Path(sys.argv[2])
from airflow.dag_processing.dagbag import BundleDagBag
bag = BundleDagBag(dag_folder=folder, bundle_path=root, bundle_name="dags", safe_mode=True)
print("\n@@RESULT@@" + json.dumps({"dags": sorted(bag.dag_ids), "errors": bag.import_errors}))
"""


def _error_location(path: str, trace: str) -> tuple[str, str]:
    """(file:line, last message line) of an import error traceback."""
    lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
    message = lines[-1].strip() if lines else "import error"
    line_no = ""
    base = Path(path).name
    for m in re.finditer(r'File "([^"]+)", line (\d+)', trace):
        if Path(m.group(1)).name == base or m.group(1).endswith(path):
            line_no = m.group(2)
    if not line_no:
        m = re.search(r"\((?:[^,()]+), line (\d+)\)", trace)  # SyntaxError: ... (file.py, line 3)
        line_no = m.group(1) if m else ""
    return (f"{path}:{line_no}" if line_no else path), message[:200]


def check_dag_imports(spec: PlatformSpec, clone: Path) -> CheckResult:
    name = "git.dag_imports"
    folder = clone / (spec.dags.sub_path or ".")
    if not folder.is_dir():
        return skip(name, "not checked: sub_path missing")
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-parse-") as home:
        env = {
            **os.environ,
            **dag_runtime_env(Layout(spec)),
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PARSE_SCRIPT, str(clone), str(folder)],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
                cwd=home,
            )
        except subprocess.TimeoutExpired:
            return fail(name, "parsing the DAG files took more than 180 s", "move slow work out of DAG top-level code")
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[:300]
        return fail(name, f"could not run a DagBag in {sys.executable}: {tail}", "reinstall airflow-gitops (uv sync)")
    result = json.loads(proc.stdout[marker + len("@@RESULT@@") :])
    errors = result["errors"]
    if errors:
        where = [f"{loc}: {msg}" for loc, msg in (_error_location(p, t) for p, t in sorted(errors.items()))]
        return fail(
            name,
            f"{len(errors)} DAG file{'s' * (len(errors) != 1)} failed to import: " + "; ".join(where),
            "fix the named lines (a missing package goes into image.extra_requirements) and push; "
            "Airflow shows nothing from a file that fails to import",
        )
    dags = result["dags"]
    if not dags:
        return fail(name, f"no DAG found under {spec.dags.sub_path}/", "commit at least one DAG file there")
    shown = ", ".join(dags[:8]) + (" ..." if len(dags) > 8 else "")
    return ok(
        name,
        f"{len(dags)} DAG{'s' * (len(dags) != 1)} import cleanly in {Path(sys.executable).parent.parent.name}"
        f" Python: {shown}",
    )


def git_checks(spec: PlatformSpec) -> list[CheckResult]:
    if spec.dags.repo is None and not spec.local_repo.exists():
        return [skip("git.reachable", f"{spec.local_repo} will be created by `up` (seeded with the example DAGs)")]
    remote, reach = ls_remote(spec, spec.dag_repo_url)
    if remote is None:
        return [reach]
    results = [reach, check_branch(spec, remote)]
    if results[-1].status != "ok":
        return results
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-clone-") as tmp:
        clone = Path(tmp) / "repo"
        err = shallow_clone(spec, remote, clone)
        if err:
            saw, fix = _explain_git_error(err, spec)
            return [*results, fail("git.sub_path", f"shallow clone failed: {saw}", fix)]
        results.append(check_sub_path(spec, clone))
        if results[-1].status == "ok":
            results.append(check_dag_imports(spec, clone))
    return results
