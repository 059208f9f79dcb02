"""The patches of Airflow and FastAPI internals (``local/patches/``) apply only to the upstream code they
were verified on: each guard fingerprints the functions its patch replaces or relies on, and turns the
patch off - visibly, in the component's log and in ``doctor`` - when one of them changed."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys

import pytest

from airflow_gitops.checks.doctor import DOCTOR
from airflow_gitops.checks.patches import patch_checks
from airflow_gitops.local import patches, preload
from airflow_gitops.local.patches import task_zygote
from airflow_gitops.local.platform import LocalTarget
from airflow_gitops.target import Capability

GUARDS = {g.patch: g for g in patches.all_guards()}

# per patch: how preload.py applies it, and the upstream attribute it replaces first
APPLY = {
    "local_executor": (
        lambda: preload.patch_local_executor(["json"]),
        "airflow.executors.local_executor:LocalExecutor.start",
    ),
    "scheduler_sleep": (
        lambda: preload.patch_scheduler_busy_sleep(0.1),
        "airflow.jobs.scheduler_job_runner:SchedulerJobRunner._do_scheduling",
    ),
    "dag_processor_poll": (
        preload.patch_dag_processor_poll,
        "airflow.dag_processing.manager:DagFileProcessorManager._service_processor_sockets",
    ),
    "fastapi_routes": (preload.patch_fastapi_route_building, "fastapi._compat.v2:ModelField.__post_init__"),
    "task_zygote": (
        lambda: task_zygote.patch_task_zygote("/nonexistent/zygote.sock", 65534, 65534),
        "airflow.sdk.execution_time.supervisor:WatchedSubprocess.start",
    ),
}


def _owner(target: str):
    module, _, qualname = target.partition(":")
    *path, attr = qualname.split(".")
    owner = importlib.import_module(module)
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def test_every_guard_matches_the_installed_airflow_and_fastapi_so_every_patch_applies(tmp_path):
    """This is the test that fails when a guarded upstream function changes: each guard's fingerprint
    check runs against the installed code (uv.lock's Airflow and FastAPI), and its patch must then apply.
    After an upgrade that changes one, re-verify that patch and record the new version's fingerprints."""
    assert set(GUARDS) == set(APPLY)
    got = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json\n"
            "from airflow_gitops.local import patches, preload\n"
            "mismatches = {g.patch: g.mismatches() for g in patches.all_guards()}\n"
            "from_files = {g.patch: g.mismatches(imported=False) for g in patches.all_guards()}\n"
            "from airflow_gitops.local.patches import task_zygote\n"
            "applied = [preload.patch_fastapi_route_building(), preload.patch_local_executor(['json']),\n"
            "           preload.patch_scheduler_busy_sleep(0.1), preload.patch_dag_processor_poll(),\n"
            "           task_zygote.patch_task_zygote('/nonexistent.sock', 65534, 65534)]\n"
            "from airflow.executors.local_executor import LocalExecutor\n"
            "again = [preload.patch_fastapi_route_building(), preload.patch_scheduler_busy_sleep(0.1)]\n"
            "print(json.dumps({'mismatches': mismatches, 'from_files': from_files, 'applied': applied,\n"
            "  'again': again,\n"
            "  'states': {n: s.on for n, s in patches.STATES.items()},\n"
            "  'still_match': {g.patch: g.mismatches() for g in patches.all_guards()},\n"
            "  'replaced': getattr(LocalExecutor.start, patches.PATCHED, False)}))\n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRFLOW_HOME": str(tmp_path)},
    )
    assert got.returncode == 0, got.stderr[-3000:]
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["mismatches"] == {name: [] for name in APPLY}
    assert out["from_files"] == {name: [] for name in APPLY}  # doctor's import-free read agrees
    assert out["applied"] == [True, True, True, True, True]
    assert out["again"] == [False, False]  # a second patch changes nothing
    assert out["states"] == {name: True for name in APPLY}
    assert out["still_match"] == {name: [] for name in APPLY}  # the guard sees the original behind a patch
    assert out["replaced"] is True
    assert "turned off" not in got.stderr


@pytest.mark.parametrize("name", list(APPLY))
def test_a_changed_upstream_function_turns_its_patch_off_untouched_and_logged(name, monkeypatch, capsys):
    apply, target = APPLY[name]
    owner, attr = _owner(target)

    def changed(*args, **kwargs):  # a different upstream function under the same name
        return None

    monkeypatch.setattr(owner, attr, changed)
    monkeypatch.setattr(patches.guard, "STATES", {})  # where Guard records it
    assert apply() is False
    assert getattr(owner, attr) is changed  # the patch did not wrap it
    qual = target.partition(":")[2]
    [line] = [line for line in capsys.readouterr().err.splitlines() if "turned off" in line]
    guard = GUARDS[name]
    assert line.startswith(f"airflow-gitops: patch {name}: {qual} changed: turned off: upstream code changed")
    assert f"(verified on {guard.label} {', '.join(guard.verified)}" in line
    assert patches.guard.STATES[name].on is False and qual in patches.guard.STATES[name].detail


def test_a_missing_or_changed_function_it_relies_on_turns_the_patch_off_too(monkeypatch, capsys):
    from airflow.dag_processing.manager import DagFileProcessorManager
    from airflow.executors.local_executor import LocalExecutor

    start = LocalExecutor.__dict__["start"]
    monkeypatch.delattr(LocalExecutor, "_check_workers")
    assert preload.patch_local_executor(["json"]) is False
    assert LocalExecutor.__dict__["start"] is start
    sockets = DagFileProcessorManager.__dict__["_service_processor_sockets"]
    monkeypatch.setattr(DagFileProcessorManager, "_run_parsing_loop", lambda self: None)
    assert preload.patch_dag_processor_poll() is False
    assert DagFileProcessorManager.__dict__["_service_processor_sockets"] is sockets
    err = capsys.readouterr().err
    assert "patch local_executor: LocalExecutor._check_workers missing: turned off" in err
    assert "patch dag_processor_poll: DagFileProcessorManager._run_parsing_loop changed: turned off" in err


def _source_of(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.C.f


def test_the_fingerprint_ignores_indentation_blank_and_comment_lines_not_code(tmp_path):
    base = _source_of(tmp_path, "m0", "class C:\n    def f(self, x):\n        return x + 1\n")
    same = _source_of(tmp_path, "m1", "class C:\n\n    def f(self, x):  \n        # why\n\n        return x + 1\n")
    code = _source_of(tmp_path, "m2", "class C:\n    def f(self, x):\n        return x + 2\n")
    doc = _source_of(tmp_path, "m3", 'class C:\n    def f(self, x):\n        """new"""\n        return x + 1\n')
    assert patches.fingerprint(base) == patches.fingerprint(same)
    assert patches.fingerprint(base) != patches.fingerprint(code)
    assert patches.fingerprint(base) != patches.fingerprint(doc)


def test_doctor_shows_each_patch_on_without_importing_airflow():
    code = (
        "import json, sys\n"
        "from airflow_gitops.checks.doctor import DOCTOR\n"
        "from airflow_gitops.checks.patches import patch_checks\n"
        "rows = [[r.name, r.status.value, r.saw] for r in patch_checks()]\n"
        "print(json.dumps({'rows': rows, 'imported': sorted(m for m in sys.modules if m.split('.')[0] in "
        "('airflow', 'fastapi'))}))\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-3000:]
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert [r[0] for r in out["rows"]] == [f"patch.{name}" for name in APPLY]
    assert all(status == "ok" and saw.startswith("on: ") for _, status, saw in out["rows"]), out["rows"]
    assert out["imported"] == []  # read from the installed files: Airflow is not started in doctor
    [check] = [c for c in DOCTOR if c.group == "patches"]
    assert check.needs is Capability.AIRFLOW_HERE and check.needs in LocalTarget.capabilities


def test_doctor_shows_a_patch_off_when_the_installed_file_changed(tmp_path, monkeypatch):
    """A stand-in upstream module on disk (a copy of the guarded function with one line changed) plays an
    upgraded Airflow: the doctor row reads it and reports the patch off."""
    from airflow_gitops.local.patches import scheduler_sleep

    [(target, fp)] = [(t, f) for t, f in scheduler_sleep.GUARD.verified["3.3.2"].items() if "_do_scheduling" in t]
    original = inspect.getsource(patches.resolve(target))
    (tmp_path / "upgraded_upstream.py").write_text(
        "class SchedulerJobRunner:\n" + original.replace("return num_queued_tis", "return num_queued_tis or 0", 1)
    )
    assert "num_queued_tis or 0" in (tmp_path / "upgraded_upstream.py").read_text()
    (tmp_path / "same_upstream.py").write_text("class SchedulerJobRunner:\n" + original)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, state in (("same_upstream", "ok"), ("upgraded_upstream", "warn")):
        guard = dataclasses.replace(
            scheduler_sleep.GUARD, verified={"3.3.2": {f"{module}:SchedulerJobRunner._do_scheduling": fp}}
        )
        monkeypatch.setattr(scheduler_sleep, "GUARD", guard)
        rows = {r.name: r for r in patch_checks()}
        row = rows.pop("patch.scheduler_sleep")
        assert row.status.name == state, row
        assert all(r.status.name == "ok" for r in rows.values())
    assert row.saw.startswith("off: upstream changed: SchedulerJobRunner._do_scheduling changed: turned off")
    assert "verified on Airflow 3.3.2" in row.saw and "local/patches/scheduler_sleep.py" in row.fix
