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


# One child-process parser for doctor's ``git.dag_imports`` row and ``airflow-gitops check``. It runs in
# this platform's Python (so its exact Airflow and providers) and does what the DAG processor does per
# file: with the processor's own modules loaded, pre-import the file's ``airflow.*`` imports in the
# parent (``parsing_pre_import_modules``; here also the names taken from them), then fork and parse
# the one file with a ``BundleDagBag`` whose bundle path (on ``sys.path``) is the DAG folder, under
# ``[core] dagbag_import_timeout``. One file at a time by default, so a file's seconds are its own,
# not shared with a neighbour's. Each file's DAG ids, parse seconds, import error, top-level imports
# slower than the threshold (timed by wrapping ``__import__`` for calls made from the file itself)
# and Airflow's DAG-version-inflation findings come back as one JSON document.
_PARSE_SCRIPT = r"""
import ast, builtins, importlib, json, os, re, select, signal, sys, time, traceback
from pathlib import Path
root, folder, opts = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACK_DEPTH", "50")
import airflow
from airflow.configuration import conf
from airflow.dag_processing.dagbag import BundleDagBag
import airflow.sdk  # every DAG file imports it; the DAG processor has it loaded before parsing
try:  # what the DAG processor has loaded before it forks the child that parses a file
    import airflow.dag_processing.processor
except Exception:
    pass
try:
    from airflow.dag_processing.importers import get_importer_registry
    def list_files():
        return list(get_importer_registry().list_dag_files(str(folder), safe_mode=True))
except ImportError:  # Airflow < 3.3
    from airflow.utils.file import list_py_file_paths
    def list_files():
        return list_py_file_paths(str(folder), safe_mode=True, include_examples=False)
try:
    from airflow.utils.dag_version_inflation_checker import check_dag_file_stability
except ImportError:
    check_dag_file_stability = None

timeout = conf.getfloat("core", "dagbag_import_timeout")
slow = float(opts.get("slow_import_seconds", 0.5))
bag = BundleDagBag(dag_folder=folder, bundle_path=folder, bundle_name="dags", collect_dags=False, load_op_links=False)


def rel(path):
    return os.path.relpath(path, root)


def parse(path):
    bag.import_errors.clear()
    bag.captured_warnings.clear()
    timings = {}
    real_import = builtins.__import__

    def timed_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or not globals or globals.get("__file__") != path:
            return real_import(name, globals, locals, fromlist, level)
        start = time.perf_counter()
        try:
            return real_import(name, globals, locals, fromlist, level)
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    builtins.__import__ = timed_import
    start = time.perf_counter()
    try:
        found = bag.process_file(path, only_if_updated=False, safe_mode=True)
    finally:
        seconds = time.perf_counter() - start
        builtins.__import__ = real_import
    # Our __import__ wrapper is not the user's code: drop its frame from the traceback.
    errors = [re.sub(r'  File "<string>", line \d+, in timed_import\n', "", e) for e in bag.import_errors.values()]
    inflation, level = [], None
    if check_dag_file_stability is not None:
        try:
            result = check_dag_file_stability(path)
            level = result.check_level.value
            inflation = [
                f"line {w.line}: {w.message}" + (f" ({w.code[:80]}...)" if len(w.code) > 80 else f" ({w.code})")
                for w in result.warnings.values()
            ]
        except Exception:
            pass
    return {
        "file": rel(path),
        "dags": sorted(dag.dag_id for dag in found),
        "seconds": round(seconds, 3),
        "error": errors[0] if errors else None,
        "slow_imports": sorted(([n, round(s, 3)] for n, s in timings.items() if s >= slow), key=lambda x: -x[1]),
        "warnings": list(bag.captured_warnings.get(path, ()))[:5],
        "inflation": inflation[:5],
        "inflation_level": level,
    }


def pre_import(path):
    # [dag_processor] parsing_pre_import_modules, and the names the file takes from them: Airflow
    # resolves `from airflow.sdk import Param` lazily, a cost no DAG file can avoid; the file's time
    # is then its own.
    try:
        tree = ast.parse(Path(path).read_bytes())
    except Exception:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wanted = [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            wanted = [(node.module, [a.name for a in node.names])]
        else:
            continue
        for module, names in wanted:
            if module != "airflow" and not module.startswith("airflow."):
                continue
            try:
                mod = importlib.import_module(module)
                for name in names:
                    getattr(mod, name, None)
            except Exception:
                pass


def fork(path):
    # One forked child per file, as the DAG processor does: nothing leaks from one file to the next.
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            payload = json.dumps(parse(path))
        except BaseException:
            payload = json.dumps({"file": rel(path), "dags": [], "seconds": 0, "error": traceback.format_exc()})
        with os.fdopen(write, "wb") as out:
            out.write(payload.encode())
        os._exit(0)
    os.close(write)
    return read, {"pid": pid, "path": path, "start": time.monotonic(), "data": b""}


def parse_in_children(paths, workers):
    # Up to `workers` files at once (as [dag_processor] parsing_processes would); each one is killed
    # when it outlives the import timeout by 15 s (Airflow's own SIGALRM timeout normally ends it first).
    results, running, todo = {}, {}, list(paths)
    while todo or running:
        while todo and len(running) < workers:
            path = todo.pop(0)
            pre_import(path)
            fd, job = fork(path)
            running[fd] = job
        now = time.monotonic()
        wait = max(0.0, min(job["start"] + timeout + 15 - now for job in running.values()))
        ready = select.select(list(running), [], [], wait)[0]
        for fd in ready:
            job = running[fd]
            chunk = os.read(fd, 1 << 16)
            if chunk:
                job["data"] += chunk
                continue
            os.close(fd)
            del running[fd]
            _, status = os.waitpid(job["pid"], 0)
            seconds = round(time.monotonic() - job["start"], 3)
            results[job["path"]] = json.loads(job["data"]) if job["data"] else {
                "file": rel(job["path"]), "dags": [], "seconds": seconds,
                "error": f"the parsing process died (wait status {status}) while importing the file"}
        for fd, job in list(running.items()):
            seconds = time.monotonic() - job["start"]
            if seconds > timeout + 15:
                os.kill(job["pid"], signal.SIGKILL)
                os.waitpid(job["pid"], 0)
                os.close(fd)
                del running[fd]
                results[job["path"]] = {
                    "file": rel(job["path"]), "dags": [], "seconds": round(seconds, 3),
                    "error": f"killed after {seconds:.0f} s: the file did not finish importing within "
                             f"Airflow's {timeout:g} s import timeout"}
    return [results[p] for p in paths]


paths = sorted(list_files())
if hasattr(os, "fork"):
    files = parse_in_children(paths, max(1, int(opts.get("workers", 1))))
else:
    files = []
    for path in paths:
        pre_import(path)
        files.append(parse(path))
print("\n@@RESULT@@" + json.dumps({
    "airflow_version": airflow.__version__,
    "python": sys.executable,
    "import_timeout": timeout,
    "files": files,
    "dags": sorted(d for f in files for d in f["dags"]),
    "errors": {f["file"]: f["error"] for f in files if f["error"]},
}))
"""


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
    "inflation_level"}], "dags", "errors", "airflow_version", "python", "import_timeout"}``; paths are
    relative to ``root`` (the repository). Raises :class:`ParseError` when the parser cannot run or
    takes longer than ``timeout`` seconds in all.
    """
    opts = json.dumps({"slow_import_seconds": slow_import_seconds, "workers": workers})
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-parse-") as home:
        env = parse_env(spec, Path(home), folder)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PARSE_SCRIPT, str(root), str(folder), opts],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                cwd=home,
            )
        except subprocess.TimeoutExpired:
            raise ParseError(
                f"parsing the DAG files took more than {timeout:g} s", "move slow work out of DAG top-level code"
            ) from None
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[:300]
        raise ParseError(f"could not run a DagBag in {sys.executable}: {tail}", "reinstall airflow-gitops (uv sync)")
    return json.loads(proc.stdout[marker + len("@@RESULT@@") :])


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
