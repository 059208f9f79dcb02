"""``airflow-gitops check [PATH]``: the DAG repository's CI, run on a working tree before a push.

Two phases, each in a child process of this platform's Python (its exact Airflow and providers) with
the minimal environment of :func:`.git.parse_env` (no operator credentials) and a time limit:

1. every DAG file is parsed by the parser doctor's ``git.dag_imports`` row uses
   (:func:`.git.parse_dag_files`: one forked child per file, as the DAG processor does; two at a time
   by default, ``--jobs``). Per file: its
   DAG ids, import errors as ``file:line`` with the message (a missing module names the package and
   where it goes), DAG cycles, the parse time against ``[core] dagbag_import_timeout`` (fail above it,
   warn above a quarter of it), top-level imports slower than 0.5 s by name, and Airflow's own
   DAG-version-inflation findings (``datetime.now()`` in a DAG argument and the like);
2. the repository's own tests (``pytest tests``), when it has a ``tests/`` folder.

Both phases run at the same time. Read-only: no ``.pytest_cache``, no ``__pycache__`` in the tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import PlatformError
from ..spec import PlatformSpec
from .git import ParseError, _dirs_with_python, _error_location, import_timeout, parse_dag_files, parse_env
from .result import STYLE, Status

SLOW_IMPORT_SECONDS = 0.5  # a top-level import slower than this is named
DEFAULT_JOBS = 2  # DAG files parsed at once by default (capped by the CPUs)
WARN_FRACTION = 0.25  # parse time above this share of dagbag_import_timeout is a warning

# Provider namespaces with a second level: airflow.providers.apache.spark -> apache-airflow-providers-apache-spark
_TWO_LEVEL_PROVIDERS = {"apache", "atlassian", "cncf", "common", "dbt", "microsoft"}
# import name -> distribution, for the usual suspects whose names differ
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "PIL": "pillow",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "jwt": "pyjwt",
    "psycopg2": "psycopg2-binary",
}


def _as_dict(self) -> dict:
    """A report dataclass as JSON-ready data (its status as text)."""
    d = asdict(self)
    d["status"] = str(self.status)
    return d


@dataclass
class FileReport:
    file: str
    status: Status
    dags: list[str]
    parse_seconds: float
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    slow_imports: list[dict] = field(default_factory=list)
    missing_package: str | None = None

    to_dict = _as_dict


@dataclass
class TestsReport:
    status: Status
    summary: str
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0
    passed: int = 0
    failed: list[dict] = field(default_factory=list)
    fix: str = ""

    to_dict = _as_dict


@dataclass
class CheckReport:
    path: str
    dags_folder: str
    python: str
    airflow_version: str
    import_timeout: float
    files: list[FileReport]
    tests: TestsReport
    parse_seconds: float
    seconds: float

    @property
    def failed(self) -> bool:
        return self.tests.status is Status.fail or any(f.status is Status.fail for f in self.files)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for f in self.files if f.status is s) for s in (Status.ok, Status.warn, Status.fail)}

    def to_dict(self) -> dict:
        return {
            "ok": not self.failed,
            "path": self.path,
            "dags_folder": self.dags_folder,
            "python": self.python,
            "airflow_version": self.airflow_version,
            "import_timeout": self.import_timeout,
            "thresholds": {
                "fail_parse_seconds": self.import_timeout,
                "warn_parse_seconds": self.import_timeout * WARN_FRACTION,
                "slow_import_seconds": SLOW_IMPORT_SECONDS,
            },
            "counts": self.counts(),
            "dags": sorted(d for f in self.files for d in f.dags),
            "files": [f.to_dict() for f in self.files],
            "tests": self.tests.to_dict(),
            "parse_seconds": self.parse_seconds,
            "seconds": self.seconds,
        }


def missing_package(message: str, trace: str) -> tuple[str, str] | None:
    """(module, distribution to install) for a ``No module named ...`` error, else None."""
    m = re.search(r"No module named '([^']+)'", message)
    if not m:
        return None
    module = m.group(1)
    parts = module.split(".")
    if parts[:2] == ["airflow", "providers"] and len(parts) >= 3:
        ns = parts[2]
        if ns in _TWO_LEVEL_PROVIDERS:
            if len(parts) < 4:  # the whole namespace is missing: the import line names the sub-package
                deeper = re.search(rf"airflow\.providers\.{ns}\.(\w+)", trace)
                if not deeper:
                    return module, f"apache-airflow-providers-{ns}-..."
                parts = [*parts[:3], deeper.group(1)]
            name = f"{ns}-{parts[3]}"
        else:
            name = ns
        return module, "apache-airflow-providers-" + name.replace("_", "-")
    top = parts[0]
    return module, _DISTRIBUTIONS.get(top, top)


def _timed_out(trace: str) -> bool:
    return "DagBag import timeout" in trace or trace.startswith("killed after ")


def _error_problem(file: str, trace: str, timeout: float) -> tuple[str, str, str | None]:
    """(problem, fix, missing distribution) for one file's import error."""
    where, message = _error_location(file, trace)
    slow_fix = "move slow work (queries, downloads, heavy imports) out of module level into tasks"
    if trace.startswith("killed after "):
        return f"{file}: {trace}", slow_fix, None
    if _timed_out(trace):
        return (
            f"{where}: still importing when [core] dagbag_import_timeout ({timeout:g} s) ran out; "
            "Airflow stopped it here",
            slow_fix,
            None,
        )
    missing = missing_package(message, trace)
    if missing:
        module, dist = missing
        return (
            f"{where}: {message}",
            f"{dist} is not installed in the platform's Python: add it to image.extra_requirements in "
            f"platform.yaml and to this repository's requirements.txt, pinned to the platform's version "
            f"(locally: `uv add {dist}`)",
            dist,
        )
    if "Cycle detected" in message or "AirflowDagCycleException" in message:
        return (
            f"{where}: {message}",
            "remove the dependency that closes the loop (the named task is on it); Airflow refuses the DAG",
            None,
        )
    if "SyntaxError" in message or "IndentationError" in message:
        return f"{where}: {message}", "fix the syntax at the named line", None
    if "AirflowDagDuplicatedIdException" in message:
        return f"{where}: {message}", "give every DAG a unique dag_id", None
    return (
        f"{where}: {message}",
        "fix the named line; Airflow shows nothing from a file that fails to import",
        None,
    )


def _file_report(raw: dict, timeout: float) -> FileReport:
    row = FileReport(raw["file"], Status.ok, raw["dags"], raw["seconds"])

    def add(status: Status, problem: str, fix: str) -> None:
        row.problems.append(problem)
        if fix and fix not in row.fixes:
            row.fixes.append(fix)
        if status is Status.fail or row.status is Status.ok:
            row.status = status

    if raw.get("error"):
        problem, fix, row.missing_package = _error_problem(raw["file"], raw["error"], timeout)
        add(Status.fail, problem, fix)
    seconds = raw["seconds"]
    if raw.get("error") and _timed_out(raw["error"]):
        pass  # said above
    elif seconds > timeout:
        add(
            Status.fail,
            f"parsed in {seconds:.1f} s, above [core] dagbag_import_timeout ({timeout:g} s): Airflow drops the file",
            "move slow work out of module level into tasks",
        )
    elif seconds > timeout * WARN_FRACTION:
        add(
            Status.warn,
            f"parsed in {seconds:.1f} s, over {WARN_FRACTION:.0%} of [core] dagbag_import_timeout ({timeout:g} s)",
            "move slow work out of module level into tasks",
        )
    row.slow_imports = [{"module": name, "seconds": s} for name, s in raw.get("slow_imports", [])]
    if row.slow_imports:
        names = ", ".join(f"{i['module']} ({i['seconds']:.2f} s)" for i in row.slow_imports)
        add(
            Status.warn,
            f"slow top-level import: {names}",
            "import it inside the task that needs it: the DAG processor re-imports this file on every parse",
        )
    for finding in raw.get("inflation", []):
        add(
            Status.fail if raw.get("inflation_level") == "error" else Status.warn,
            f"{raw['file']}:{finding.removeprefix('line ')}",
            "use fixed values in DAG and task arguments (a start_date, not datetime.now()): every parse "
            "otherwise makes a new DAG version",
        )
    if not raw.get("error") and not raw["dags"]:
        add(
            Status.warn,
            "defines no DAG",
            "define a DAG here, or move helper code into a package listed in the DAG folder's .airflowignore",
        )
    return row


def _duplicates(rows: list[FileReport]) -> None:
    seen: dict[str, list[FileReport]] = {}
    for row in rows:
        for dag_id in row.dags:
            seen.setdefault(dag_id, []).append(row)
    for dag_id, owners in seen.items():
        if len(owners) > 1:
            for row in owners:
                others = ", ".join(o.file for o in owners if o is not row)
                row.problems.append(f"dag_id {dag_id!r} is also defined in {others}")
                row.fixes.append("give every DAG a unique dag_id (Airflow keeps only one of them)")
                row.status = Status.fail


def parse_phase(
    spec: PlatformSpec, root: Path, folder: Path, *, timeout: float, jobs: int = 1
) -> tuple[list[FileReport], dict, float]:
    start = time.monotonic()
    try:
        result = parse_dag_files(
            spec, root, folder, timeout=timeout, slow_import_seconds=SLOW_IMPORT_SECONDS, workers=jobs
        )
    except ParseError as err:
        row = FileReport(_rel(folder, root) + "/", Status.fail, [], round(time.monotonic() - start, 3))
        row.problems.append(err.saw)
        row.fixes.append(err.fix)
        return [row], {}, time.monotonic() - start
    limit = result.get("import_timeout") or import_timeout(spec)
    rows = [_file_report(raw, limit) for raw in result["files"]]
    _duplicates(rows)
    if not rows:
        row = FileReport(_rel(folder, root) + "/", Status.fail, [], 0.0)
        row.problems.append("no DAG file found (Airflow only parses .py files that mention both 'airflow' and 'dag')")
        row.fixes.append("add a DAG file, or point --dags-folder / dags.sub_path at the folder that has them")
        rows.append(row)
    return rows, result, time.monotonic() - start


def _junit_failures(junit: Path, root: Path) -> tuple[int, list[dict]]:
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return 0, []
    passed, failed = 0, []
    for case in tree.iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if case.find("skipped") is not None:
            continue
        if bad is None:
            passed += 1
            continue
        module = case.get("classname", "").split(".")
        # classname tests.test_x[.Class] -> tests/test_x.py[::Class]
        for i in range(len(module), 0, -1):
            if (root / Path(*module[:i]).with_suffix(".py")).is_file():
                node = "/".join(module[:i]) + ".py" + "".join(f"::{c}" for c in module[i:])
                break
        else:
            node = ".".join(module)
        message = (bad.get("message") or bad.text or "").strip().splitlines()
        failed.append({"test": f"{node}::{case.get('name')}", "message": (message[0] if message else "")[:300]})
    return passed, failed


def tests_phase(spec: PlatformSpec, root: Path, folder: Path, *, timeout: float) -> TestsReport:
    if not (root / "tests").is_dir():
        return TestsReport(Status.skip, "no tests/ folder")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-tests-") as home:
        junit = Path(home) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={junit}", "tests"]
        shown = ["pytest", "-q", "-p", "no:cacheprovider", "tests"]
        try:
            proc = subprocess.run(
                cmd, cwd=root, env=parse_env(spec, Path(home), folder), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return TestsReport(
                Status.fail,
                f"pytest tests took more than {timeout:g} s and was stopped",
                shown,
                round(time.monotonic() - start, 1),
                fix="make the tests faster, or raise --timeout",
            )
        passed, failed = _junit_failures(junit, root)
    seconds = round(time.monotonic() - start, 1)
    tail = " ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])[:400]
    if proc.returncode == 0:
        return TestsReport(Status.ok, f"{passed} passed", shown, seconds, passed)
    if proc.returncode == 5:
        return TestsReport(
            Status.warn, "no tests collected under tests/", shown, seconds, fix="add tests, or remove tests/"
        )
    if "No module named pytest" in proc.stderr:
        return TestsReport(
            Status.fail,
            f"pytest is not installed in {sys.executable}",
            shown,
            seconds,
            fix="install it next to airflow-gitops (pip install pytest), or pass --no-tests",
        )
    if proc.returncode == 1 and failed:
        names = "; ".join(f"{f['test']}: {f['message']}" for f in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        return TestsReport(
            Status.fail,
            f"{len(failed)} failed, {passed} passed: {names}{more}",
            shown,
            seconds,
            passed,
            failed,
            fix="run `pytest tests` in the repository and fix the failing tests before pushing",
        )
    return TestsReport(
        Status.fail,
        f"pytest exited {proc.returncode}: {tail}",
        shown,
        seconds,
        passed,
        failed,
        fix="run `pytest tests` in the repository to see the whole output",
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


def resolve_folders(spec: PlatformSpec, path: Path, dags_folder: Path | None) -> tuple[Path, Path]:
    """(repository root, DAG folder), or a :class:`PlatformError` a user can act on."""
    root = path.expanduser()
    if not root.exists():
        raise PlatformError(f"{path} does not exist", "pass the DAG repository working tree: airflow-gitops check PATH")
    if not root.is_dir():
        raise PlatformError(f"{path} is not a folder", "give the DAG repository's root folder, not a file")
    root = root.resolve()
    if dags_folder is not None:
        folder, how = (dags_folder if dags_folder.is_absolute() else root / dags_folder), "--dags-folder"
    else:
        folder, how = root / (spec.dags.sub_path or "."), "dags.sub_path"
    folder = folder.expanduser()
    if not folder.is_dir():
        with_py = _dirs_with_python(root)
        hint = f"folders with .py files: {', '.join(with_py)}" if with_py else "no folder there holds .py files"
        raise PlatformError(
            f"no DAG folder {_rel(folder, root)!r} in {root} ({how}); {hint}",
            "pass --dags-folder, or set dags.sub_path in the platform.yaml given with -f",
        )
    return root, folder.resolve()


def check_repo(
    spec: PlatformSpec,
    path: Path,
    *,
    dags_folder: Path | None = None,
    run_tests: bool = True,
    timeout: float = 600,
    jobs: int | None = None,
) -> CheckReport:
    start = time.monotonic()
    if jobs is None:  # two files at once: the speed of a plain DagBag on two cores (docs/performance.md)
        jobs = min(DEFAULT_JOBS, os.cpu_count() or 1)
    root, folder = resolve_folders(spec, path, dags_folder)
    with ThreadPoolExecutor(max_workers=2) as pool:
        parsing = pool.submit(parse_phase, spec, root, folder, timeout=timeout, jobs=jobs)
        testing = pool.submit(tests_phase, spec, root, folder, timeout=timeout) if run_tests else None
        rows, raw, parse_seconds = parsing.result()
        tests = testing.result() if testing else TestsReport(Status.skip, "skipped (--no-tests)")
    return CheckReport(
        path=str(root),
        dags_folder=_rel(folder, root),
        python=sys.executable,
        airflow_version=raw.get("airflow_version", ""),
        import_timeout=raw.get("import_timeout") or import_timeout(spec),
        files=rows,
        tests=tests,
        parse_seconds=round(parse_seconds, 2),
        seconds=round(time.monotonic() - start, 2),
    )


def print_report(report: CheckReport, console: Console) -> None:
    table = Table(
        title=escape(f"DAG check: {report.path} ({report.dags_folder}/, Airflow {report.airflow_version or '?'})"),
        expand=False,
    )
    table.add_column("file", no_wrap=True)
    table.add_column("DAGs", overflow="fold")
    table.add_column("parse s", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("problem / fix", overflow="fold")
    for f in report.files:
        text = escape("\n".join(f.problems + [f"fix: {x}" for x in f.fixes]))
        table.add_row(
            escape(f.file),
            escape(", ".join(f.dags)) or "-",
            f"{f.parse_seconds:.2f}",
            f"[{STYLE[f.status]}]{f.status}[/]",
            text,
        )
    t = report.tests
    text = escape(t.summary + (f"\nfix: {t.fix}" if t.fix else ""))
    seconds = f"{t.seconds:.1f}" if t.status is not Status.skip else "-"
    table.add_row("tests/ (pytest)", "", seconds, f"[{STYLE[t.status]}]{t.status}[/]", text)
    console.print(table)
    counts = report.counts()
    n_dags = sum(len(f.dags) for f in report.files)
    slowest = max(report.files, key=lambda f: f.parse_seconds, default=None)
    line = (
        f"{len(report.files)} file{'s' * (len(report.files) != 1)}, {n_dags} DAG{'s' * (n_dags != 1)}; "
        f"parse {report.parse_seconds:.1f} s"
        + (f" (slowest {slowest.file} {slowest.parse_seconds:.2f} s)" if slowest else "")
        + f"; tests: {t.summary.split(':')[0]}; total {report.seconds:.1f} s"
    )
    console.print(escape(line), highlight=False)
    failed = [f.file for f in report.files if f.status is Status.fail] + (["tests"] if t.status is Status.fail else [])
    if failed:
        console.print(f"[bold red]{len(failed)} failed:[/] {escape(', '.join(failed))}", highlight=False)
    else:
        w = counts["warn"] + (t.status is Status.warn)
        console.print(f"[green]no failures[/] ({w} warning{'s' * (w != 1)})", highlight=False)


def check_command(
    spec: PlatformSpec,
    path: Path,
    *,
    dags_folder: Path | None,
    run_tests: bool,
    timeout: float,
    jobs: int | None = None,
    as_json: bool,
    console: Console,
) -> int:
    report = check_repo(spec, path, dags_folder=dags_folder, run_tests=run_tests, timeout=timeout, jobs=jobs)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, console)
    return 1 if report.failed else 0
