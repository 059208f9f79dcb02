"""The DAG repository: reachable with the deploy key, branch, subPath, and DAG files that import.

The seed's first troubleshooting item ("GitSync DAG not reflected: wrong subPath") becomes a check
that names the directories which do exist at the branch head. The DAG files are parsed the way the
platform parses them: a shallow clone of the branch, a bundle DagBag over ``sub_path`` (that folder on
``sys.path``, as the DAG processor has it), in this platform's Python (a subprocess, so DAG code never
runs in the CLI). ``airflow-gitops check`` (``checks/dag_check.py``) uses the same parser on a working tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import gitremote
from ..gitremote import GitError, Remote
from ..local.layout import Layout, dag_runtime_env
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip


def reachable(spec: PlatformSpec) -> tuple[Remote | None, CheckResult]:
    name = "git.reachable"
    try:
        remote = gitremote.ls_remote(spec)
    except GitError as err:
        return None, fail(name, err.saw, err.fix)
    how = "with the deploy key, strict host key checking" if spec.dags.is_ssh else "without credentials"
    n = len(remote.branches)
    return remote, ok(name, f"{remote.url} answers ({how}); {n} branch{'es' if n != 1 else ''}")


def check_branch(spec: PlatformSpec, remote: Remote) -> CheckResult:
    problem = gitremote.branch_problem(spec, remote)
    if problem:
        return fail("git.branch", *problem)
    return ok("git.branch", f"{spec.dags.branch} is at {remote.branch_sha(spec.dags.branch)[:12]}")


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


# One child-process parser for doctor's ``git.dag_imports`` row and ``airflow-gitops check``:
# ``checks/dag_parser.py``, run as ``python -m`` in this platform's Python (its docstring says how it
# parses: a fork per file from one parent that imported Airflow once).
PARSER_MODULE = "airflow_gitops.checks.dag_parser"


def _error_location(path: str, trace: str) -> tuple[str, str]:
    """(file:line, last message line) of an import error traceback."""
    lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
    message = lines[-1].strip() if lines else "import error"
    frames = list(re.finditer(r'File "([^"]+)", line (\d+)', trace))
    # the innermost frame in the DAG file itself; by base name only when no frame names its path
    same = [m for m in frames if m.group(1).endswith("/" + path.removeprefix("./")) or m.group(1) == path]
    same = same or [m for m in frames if Path(m.group(1)).name == Path(path).name]
    line_no = same[-1].group(2) if same else ""
    if not line_no:
        m = re.search(r"\((?:[^,()]+), line (\d+)\)", trace)  # SyntaxError: ... (file.py, line 3)
        line_no = m.group(1) if m else ""
    return (f"{path}:{line_no}" if line_no else path), message[:200]


def import_timeout(spec: PlatformSpec) -> float:
    """``[core] dagbag_import_timeout`` on this platform: Airflow's 30 s unless ``airflow.config`` sets it."""
    value = spec.airflow.config.get("core", {}).get("dagbag_import_timeout", 30)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 30.0


def parse_env(spec: PlatformSpec, home: Path, folder: Path) -> dict[str, str]:
    """The environment DAG files are imported in on the operator's machine: nothing of the operator's.

    DAG top-level code runs here, so it gets no credentials, no kubeconfig, no ssh agent and no home
    with dotfiles: only PATH, a throwaway HOME/AIRFLOW_HOME, Airflow's parse settings and the
    non-secret part of the runtime contract (the AWS files point nowhere; instance metadata is off).
    """
    runtime = {
        k: v
        for k, v in dag_runtime_env(Layout(spec), credentials=False).items()
        if k not in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
    }
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        **runtime,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": str(import_timeout(spec)),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class ParseError(Exception):
    """The parser itself could not run (not a DAG file's fault): what happened, and the fix."""

    def __init__(self, saw: str, fix: str):
        super().__init__(saw)
        self.saw, self.fix = saw, fix


def parse_dag_files(
    spec: PlatformSpec,
    root: Path,
    folder: Path,
    *,
    timeout: float = 180,
    slow_import_seconds: float = 0.5,
    workers: int = 1,
) -> dict:
    """Parse every DAG file under ``folder`` in a child process of this platform's Python.

    Returns ``{"files": [{"file", "dags", "seconds", "error", "slow_imports", "warnings", "inflation",
    "inflation_level"}], "dags", "errors", "airflow_version", "python", "import_timeout", "shared_imports",
    "warmup"}``; paths are relative to ``root`` (the repository). Raises :class:`ParseError` when the
    parser cannot run or takes longer than ``timeout`` seconds in all. ``workers``: files parsed at once.
    """
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-parse-") as home:
        env = parse_env(spec, Path(home), folder)
        for share_imports in (True, False):
            # Sharing imports across files: the parent imports the files' installed packages once. If
            # one of those kills the parent (a crashing C extension), parse again the old way, each
            # file importing them itself in its own child, so the one file fails and not all of them.
            opts = {"slow_import_seconds": slow_import_seconds, "workers": workers, "share_imports": share_imports}
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", PARSER_MODULE, str(root), str(folder), json.dumps(opts)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=max(1.0, deadline - time.monotonic()),
                    cwd=home,
                )
            except subprocess.TimeoutExpired:
                raise ParseError(
                    f"parsing the DAG files took more than {timeout:g} s", "move slow work out of DAG top-level code"
                ) from None
            marker = proc.stdout.rfind("@@RESULT@@")
            if proc.returncode == 0 and marker >= 0:
                return json.loads(proc.stdout[marker + len("@@RESULT@@") :])
    tail = " ".join(proc.stderr.strip().splitlines()[-2:])[:300]
    raise ParseError(f"could not run a DagBag in {sys.executable}: {tail}", "reinstall airflow-gitops (uv sync)")


def check_dag_imports(spec: PlatformSpec, clone: Path) -> CheckResult:
    name = "git.dag_imports"
    folder = clone / (spec.dags.sub_path or ".")
    if not folder.is_dir():
        return skip(name, "not checked: sub_path missing")
    try:
        result = parse_dag_files(spec, clone, folder)
    except ParseError as err:
        return fail(name, err.saw, err.fix)
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
    remote, reach = reachable(spec)
    if remote is None:
        return [reach]
    results = [reach, check_branch(spec, remote)]
    if results[-1].status != "ok":
        return results
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-clone-") as tmp:
        clone = Path(tmp) / "repo"
        try:
            gitremote.shallow_clone(spec, remote, clone)
        except GitError as err:
            return [*results, fail("git.sub_path", f"shallow clone failed: {err.saw}", err.fix)]
        results.append(check_sub_path(spec, clone))
        if results[-1].status == "ok":
            results.append(check_dag_imports(spec, clone))
    return results
