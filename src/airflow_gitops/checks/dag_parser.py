"""The one child-process DAG parser: ``python -m airflow_gitops.checks.dag_parser ROOT FOLDER OPTS_JSON``.

Doctor's ``git.dag_imports`` row and ``airflow-gitops check`` run it (``git.parse_dag_files``) in this
platform's Python, so its exact Airflow and providers. It imports nothing of airflow-gitops: only the
standard library and Airflow, in an environment without the operator's credentials.

It does what the DAG processor does per file: one parent imports Airflow and the processor's modules
once, pre-imports the file's ``airflow.*`` imports (``parsing_pre_import_modules``; here also the
names taken from them), then forks and parses the one file with a ``BundleDagBag`` whose bundle path
(on ``sys.path``) is the DAG folder, under ``[core] dagbag_import_timeout``. A file that crashes, hangs
or exits the interpreter takes only its own child down. One file at a time unless ``workers`` says
more (``check`` parses two at once, ``--jobs``); with one, a file's seconds are not shared with a
neighbour's.

What a fork per file would otherwise pay again for every file (issue 21), the parent pays once:

* the file's unconditional module-level imports of installed packages (not of code in the DAG
  folder): the parent imports them before it forks, with an import ledger (each module's own seconds
  at its first load and what it imports, as ``python -X importtime`` has them). A file's parse seconds
  and its slow top-level imports then still say what the DAG processor pays for it: the child reports
  which of those imports the file executed and the parent adds the seconds of every module they pull
  in that the processor would not have loaded before the file (``cost_of``). Should such an import
  kill the parent, ``git.parse_dag_files`` runs the parser again without sharing;
* Airflow's provider asset-URI discovery (~0.5 s, on a file's first ``Asset("s3://...")``): the
  processor's own work, not the file's, done once in the parent when a file imports asset names
  (``warmup`` in the result says how long it took).

Each file's DAG ids, parse seconds, import error, top-level imports slower than the threshold (timed
by wrapping ``__import__`` for calls made from the file itself) and Airflow's DAG-version-inflation
findings come back as one JSON document after ``@@RESULT@@`` on standard output.
"""

from __future__ import annotations

import ast
import builtins
import gc
import importlib
import importlib.util
import json
import os
import re
import select
import signal
import sys
import time
import traceback
from pathlib import Path

MARKER = "@@RESULT@@"
ASSET_NAMES = re.compile(r"Asset|asset|Dataset|ObjectStoragePath")


def ledger_problem(bootstrap=None) -> str | None:
    """Why the import ledger cannot run in this Python, or None.

    The guard for the one interpreter internal it wraps: ``importlib._bootstrap._find_and_load(name,
    import_)``, which CPython's import statement and ``_gcd_import`` call for a module not yet loaded
    (3.11 to 3.13), and ``_resolve_name`` for relative names. Without them, nothing is shared.
    """
    import inspect

    bootstrap = bootstrap or importlib._bootstrap  # type: ignore[attr-defined]
    try:
        params = list(inspect.signature(bootstrap._find_and_load).parameters)
    except (AttributeError, TypeError, ValueError):
        params = None
    if params != ["name", "import_"] or not callable(getattr(bootstrap, "_resolve_name", None)):
        return f"importlib._bootstrap._find_and_load is not (name, import_) in Python {sys.version.split()[0]}"
    return None


class ImportLedger:
    """Who imported what, and each module's own seconds at its first load (``-X importtime``'s self).

    Active only around the parent's pre-imports. Every import made while a module (or a pre-import,
    a node ``("<pre>", n)``) is on the stack is an edge, also one of a module already loaded, so the
    modules a pre-import needs are known even when an earlier one loaded them.
    """

    def __init__(self, active: bool = True) -> None:
        self.active = active  # off: nothing wrapped, nothing recorded
        self.own: dict[str, float] = {}  # module -> seconds of its own body, first load only
        self.deps: dict[object, set[str]] = {}
        self.stack: list[list] = []  # [node, start, seconds of nested loads]
        self._bootstrap = importlib._bootstrap  # type: ignore[attr-defined]
        self._real_find_and_load = self._bootstrap._find_and_load
        self._real_import = builtins.__import__

    def _edge(self, name: str) -> None:
        if self.stack:
            self.deps.setdefault(self.stack[-1][0], set()).add(name)

    def _find_and_load(self, name, import_):
        self._edge(name)
        if name in sys.modules:
            return self._real_find_and_load(name, import_)
        with self.node(name, module=True):
            return self._real_find_and_load(name, import_)

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        module = self._real_import(name, globals, locals, fromlist, level)
        if self.stack:
            base = name
            if level:
                package = (globals or {}).get("__package__") or ""
                try:
                    base = self._bootstrap._resolve_name(name, package, level)
                except Exception:
                    base = ""
            if base:
                self._edge(base)
                for item in fromlist or ():
                    if f"{base}.{item}" in sys.modules:
                        self._edge(f"{base}.{item}")
        return module

    def node(self, key, module: bool = False):
        ledger = self

        class _Node:
            def __enter__(self):
                ledger.deps.setdefault(key, set())
                ledger.stack.append([key, time.perf_counter(), 0.0])

            def __exit__(self, *exc):
                key_, start, nested = ledger.stack.pop()
                seconds = time.perf_counter() - start
                if ledger.stack:
                    ledger.stack[-1][2] += seconds
                if module and key_ not in ledger.own and key_ in sys.modules:
                    ledger.own[key_] = max(0.0, seconds - nested)
                return False

        return _Node()

    def __enter__(self):
        if self.active:
            self._bootstrap._find_and_load = self._find_and_load
            builtins.__import__ = self._import
        return self

    def __exit__(self, *exc):
        if self.active:
            self._bootstrap._find_and_load = self._real_find_and_load
            builtins.__import__ = self._real_import
        return False

    def closure(self, roots) -> set[str]:
        seen: set = set()
        todo = list(roots)
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            todo.extend(self.deps.get(node, ()))
        return {n for n in seen if isinstance(n, str)}


class _Timeout(Exception):
    pass


def _alarm(seconds: float):
    """Raise :class:`_Timeout` in this (the parent) process after ``seconds``; returns the undo."""

    def ring(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)

    def undo():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

    return undo


class Parser:
    def __init__(self, root: Path, folder: Path, opts: dict):
        os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACK_DEPTH", "50")
        import airflow
        import airflow.sdk  # noqa: F401  every DAG file imports it; the processor has it loaded
        from airflow.configuration import conf
        from airflow.dag_processing.dagbag import BundleDagBag

        try:  # what the DAG processor has loaded before it forks the child that parses a file
            import airflow.dag_processing.processor  # noqa: F401
        except Exception:
            pass
        try:
            from airflow.utils.dag_version_inflation_checker import check_dag_file_stability
        except ImportError:
            check_dag_file_stability = None
        self.airflow_version = airflow.__version__
        self.check_dag_file_stability = check_dag_file_stability
        self.root, self.folder = root, folder
        self.timeout = conf.getfloat("core", "dagbag_import_timeout")
        self.slow = float(opts.get("slow_import_seconds", 0.5))
        self.workers = max(1, int(opts.get("workers", 1)))
        if not hasattr(os, "fork"):
            self.share_off = "no os.fork: the files are parsed in this process, one after the other"
        elif not opts.get("share_imports", True):
            self.share_off = "off for this run (a shared import ended the parser before)"
        else:
            self.share_off = ledger_problem()
        self.share = self.share_off is None
        self.bag = BundleDagBag(
            dag_folder=folder, bundle_path=folder, bundle_name="dags", collect_dags=False, load_op_links=False
        )
        self.ledger = ImportLedger(active=self.share)
        self.manager_side: set[str] = set()  # modules the processor would have loaded before a file
        self.roots: dict[tuple, object] = {}  # (module, fromlist) pre-imported -> its ledger node
        self.failed_shares: set[tuple] = set()
        self.shared_modules: set[str] = set()  # loaded here only because a file imports them
        self.warmup: dict[str, float] = {}
        self.installed: dict[str, bool] = {}

    # --- files ---------------------------------------------------------------------------------

    def list_files(self) -> list[str]:
        try:
            from airflow.dag_processing.importers import get_importer_registry
        except ImportError:  # Airflow < 3.3
            from airflow.utils.file import list_py_file_paths

            return list(list_py_file_paths(str(self.folder), safe_mode=True, include_examples=False))
        return list(get_importer_registry().list_dag_files(str(self.folder), safe_mode=True))

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    # --- the child: one file ------------------------------------------------------------------

    def parse(self, path: str) -> dict:
        bag = self.bag
        bag.import_errors.clear()
        bag.captured_warnings.clear()
        timings: dict[str, float] = {}
        real_import = builtins.__import__

        def timed_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level or not globals or globals.get("__file__") != path:
                return real_import(name, globals, locals, fromlist, level)
            start = time.perf_counter()
            try:
                return real_import(name, globals, locals, fromlist, level)
            finally:
                key = json.dumps([name, sorted(fromlist or ())])
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

        builtins.__import__ = timed_import
        start = time.perf_counter()
        try:
            found = bag.process_file(path, only_if_updated=False, safe_mode=True)
        finally:
            seconds = time.perf_counter() - start
            builtins.__import__ = real_import
        # Our __import__ wrapper is not the user's code: drop its frame from the traceback.
        frame = re.compile(r'  File "[^"]*dag_parser\.py", line \d+, in timed_import\n(?:    .*\n)*?(?=  File )')
        errors = [frame.sub("", e) for e in bag.import_errors.values()]
        return {
            "file": self.rel(path),
            "dags": sorted(dag.dag_id for dag in found),
            "seconds": seconds,
            "error": errors[0] if errors else None,
            "imports": timings,  # the parent turns these into slow_imports
            "warnings": list(bag.captured_warnings.get(path, ()))[:5],
        }

    def stability(self, path: str) -> dict:
        """Airflow's DAG-version-inflation findings: static (the file's AST), so done in the parent
        while the child parses."""
        inflation, level = [], None
        if self.check_dag_file_stability is not None:
            try:
                result = self.check_dag_file_stability(path)
                level = result.check_level.value
                inflation = [
                    f"line {w.line}: {w.message}" + (f" ({w.code[:80]}...)" if len(w.code) > 80 else f" ({w.code})")
                    for w in result.warnings.values()
                ]
            except Exception:
                pass
        return {"inflation": inflation[:5], "inflation_level": level}

    # --- the parent: before a fork ------------------------------------------------------------

    def _module_imports(self, path: str):
        """(airflow imports anywhere in the file, unconditional module-level imports of others)."""
        try:
            source = Path(path).read_bytes()
            tree = ast.parse(source)
        except Exception:
            return [], [], False
        airflow_side, others = [], []
        # A file that changes its import path may mean its own `utils` where an installed one exists:
        # it imports everything itself, as it would without sharing (its child forgets the shared ones).
        changes_path = b"sys.path" in source or b"addsitedir" in source
        # statements that run when the module does: its body, and the bodies of top-level try/with
        # (`try: from kubernetes.client import models` ...); not `if` blocks (`if TYPE_CHECKING:`)
        top_level, todo = set(), list(tree.body)
        while todo:
            stmt = todo.pop()
            top_level.add(id(stmt))
            if isinstance(stmt, ast.Try | ast.With):
                todo.extend(stmt.body)
            if isinstance(stmt, ast.Try):
                todo.extend(stmt.orelse + stmt.finalbody)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [(a.name, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                wanted = [(node.module, tuple(a.name for a in node.names if a.name != "*"))]
            else:
                continue
            for module, names in wanted:
                if module == "airflow" or module.startswith("airflow."):
                    airflow_side.append((module, names))
                elif id(node) in top_level and module != "__future__" and not changes_path:
                    others.append((module, names))
        return airflow_side, others, changes_path

    def _is_installed(self, module: str) -> bool:
        """An installed package or the standard library, not code in the DAG folder or repository."""
        top = module.split(".")[0]
        if top not in self.installed:
            try:
                spec = importlib.util.find_spec(top)
            except Exception:
                spec = None
            if spec is None:
                self.installed[top] = False
            elif spec.origin in ("built-in", "frozen"):
                self.installed[top] = True
            else:
                places = [p for p in [spec.origin, *(spec.submodule_search_locations or [])] if p]
                mine = [str(self.folder), str(self.root)]
                self.installed[top] = bool(places) and not any(
                    p == m or p.startswith(m + os.sep) for p in places for m in mine
                )
        return self.installed[top]

    def pre_import(self, path: str) -> dict[str, set[str]]:
        """Import in the parent what the file needs; the modules each shared import would cost it."""
        airflow_side, others, changes_path = self._module_imports(path)
        with self.ledger:
            # [dag_processor] parsing_pre_import_modules, and the names the file takes from them:
            # Airflow resolves `from airflow.sdk import Param` lazily, a cost no DAG file can avoid.
            for module, names in airflow_side:
                key = ("<airflow>", module, names)
                if key not in self.roots:
                    self.roots[key] = key
                    with self.ledger.node(key):
                        try:
                            mod = importlib.import_module(module)
                            for name in names:
                                getattr(mod, name, None)
                        except Exception:
                            pass
                self.manager_side |= self.ledger.closure([key])
            if any(ASSET_NAMES.search(n) for _, names in airflow_side for n in names) and "assets" not in self.warmup:
                self._warm_assets()
            shared = {}
            if self.share:
                for module, names in others:
                    key = (module, names)
                    if key in self.failed_shares or not self._is_installed(module):
                        continue
                    if key not in self.roots:
                        if not self._share(key):
                            continue
                    shared[json.dumps([module, sorted(names)])] = self.ledger.closure([key]) - self.manager_side
        return shared, changes_path

    def _share(self, key: tuple) -> bool:
        module, names = key
        undo = _alarm(self.timeout)
        before = set(sys.modules)
        try:
            with self.ledger.node(key):
                builtins.__import__(module, {"__name__": "__main__"}, None, names, 0)
        except BaseException:  # noqa: BLE001  the child imports it again and reports what happens
            self.failed_shares.add(key)
            return False
        finally:
            undo()
            self.shared_modules |= set(sys.modules) - before
        self.roots[key] = key
        return True

    def _warm_assets(self) -> None:
        start = time.perf_counter()
        try:
            from airflow.sdk import Asset

            Asset("airflow-gitops-warmup://warmup/x")  # a scheme no provider has: discovery only
        except Exception:
            pass
        self.warmup["assets"] = round(time.perf_counter() - start, 3)

    def cost_of(self, raw: dict, shared: dict[str, set[str]]) -> dict:
        """The child's figures plus what the shared imports it executed cost the DAG processor."""
        timings = raw.pop("imports", None) or {}
        counted: set[str] = set()
        slow: dict[str, float] = {}
        for key, seconds in timings.items():
            extra = shared.get(key, set()) - counted
            counted |= extra
            added = sum(self.ledger.own.get(m, 0.0) for m in extra)
            raw["seconds"] += added
            name = json.loads(key)[0]
            slow[name] = slow.get(name, 0.0) + seconds + added
        raw["seconds"] = round(raw["seconds"], 3)
        raw["slow_imports"] = sorted(([n, round(s, 3)] for n, s in slow.items() if s >= self.slow), key=lambda x: -x[1])
        return raw

    # --- forks ------------------------------------------------------------------------------

    def fork(self, path: str, forget_shared: bool = False):
        # One forked child per file, as the DAG processor does: nothing leaks from one file to the next.
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # as the processor's manager does: the child's collections leave the parent's pages alone
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            if forget_shared:
                for name in self.shared_modules - self.manager_side:
                    sys.modules.pop(name, None)
            try:
                payload = json.dumps(self.parse(path))
            except BaseException:
                payload = json.dumps(
                    {"file": self.rel(path), "dags": [], "seconds": 0, "error": traceback.format_exc()}
                )
            with os.fdopen(write, "wb") as out:
                out.write(payload.encode())
            os._exit(0)
        os.close(write)
        return read, {"pid": pid, "path": path, "start": time.monotonic(), "data": b""}

    def parse_in_children(self, paths: list[str]) -> list[dict]:
        # Up to `workers` files at once (as [dag_processor] parsing_processes would); each one is killed
        # when it outlives the import timeout by 15 s (Airflow's own SIGALRM timeout normally ends it first).
        timeout = self.timeout
        results, running, todo = {}, {}, list(paths)
        while todo or running:
            while todo and len(running) < self.workers:
                path = todo.pop(0)
                shared, changes_path = self.pre_import(path)
                fd, job = self.fork(path, forget_shared=changes_path)
                job["shared"] = shared
                running[fd] = job
                job["stability"] = self.stability(path)
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
                if job["data"]:
                    raw = {**json.loads(job["data"]), **job["stability"]}
                    results[job["path"]] = self.cost_of(raw, job["shared"])
                else:
                    results[job["path"]] = {
                        "file": self.rel(job["path"]),
                        "dags": [],
                        "seconds": seconds,
                        "error": f"the parsing process died (wait status {status}) while importing the file",
                    }
            for fd, job in list(running.items()):
                seconds = time.monotonic() - job["start"]
                if seconds > timeout + 15:
                    os.kill(job["pid"], signal.SIGKILL)
                    os.waitpid(job["pid"], 0)
                    os.close(fd)
                    del running[fd]
                    results[job["path"]] = {
                        "file": self.rel(job["path"]),
                        "dags": [],
                        "seconds": round(seconds, 3),
                        "error": f"killed after {seconds:.0f} s: the file did not finish importing within "
                        f"Airflow's {timeout:g} s import timeout",
                    }
        return [results[p] for p in paths]

    def run(self) -> dict:
        paths = sorted(self.list_files())
        if hasattr(os, "fork"):
            files = self.parse_in_children(paths)
        else:
            files = []
            for path in paths:
                self.pre_import(path)
                files.append(self.cost_of({**self.parse(path), **self.stability(path)}, {}))
        for f in files:
            f.setdefault("slow_imports", [])
        return {
            "airflow_version": self.airflow_version,
            "python": sys.executable,
            "import_timeout": self.timeout,
            "shared_imports": self.share,
            "shared_imports_off": self.share_off,
            "warmup": self.warmup,
            "files": files,
            "dags": sorted(d for f in files for d in f["dags"]),
            "errors": {f["file"]: f["error"] for f in files if f["error"]},
        }


def main(argv: list[str] | None = None) -> None:
    root, folder, opts = (argv or sys.argv[1:])[:3]
    result = Parser(Path(root), Path(folder), json.loads(opts)).run()
    print("\n" + MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
