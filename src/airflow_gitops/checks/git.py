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


def parse_env(spec: PlatformSpec, home: Path, folder: Path) -> dict[str, str]:
    """The environment DAG files are imported in on the operator's machine: nothing of the operator's.

    DAG top-level code runs here, so it gets no credentials, no kubeconfig, no ssh agent and no home
    with dotfiles: only PATH, a throwaway HOME/AIRFLOW_HOME, Airflow's parse settings and the
    non-secret part of the runtime contract (the AWS files point nowhere; instance metadata is off).
    """
    runtime = {
        k: v
        for k, v in dag_runtime_env(Layout(spec)).items()
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
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "30",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def check_dag_imports(spec: PlatformSpec, clone: Path) -> CheckResult:
    name = "git.dag_imports"
    folder = clone / (spec.dags.sub_path or ".")
    if not folder.is_dir():
        return skip(name, "not checked: sub_path missing")
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-parse-") as home:
        env = parse_env(spec, Path(home), folder)
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
