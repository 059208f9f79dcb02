"""The patches of Airflow and FastAPI internals (``local/patches/``) apply only to the upstream code they
were verified on: each guard fingerprints the functions its patch replaces or relies on, and turns the
patch off - visibly, in the component's log and in ``doctor`` - when one of them changed."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from airflow_gitops.checks.doctor import DOCTOR
from airflow_gitops.checks.patches import patch_checks
from airflow_gitops.local import patches, preload
from airflow_gitops.local.target import LocalTarget

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
            "applied = [preload.patch_fastapi_route_building(), preload.patch_local_executor(['json']),\n"
            "           preload.patch_scheduler_busy_sleep(0.1), preload.patch_dag_processor_poll()]\n"
            "from airflow.executors.local_executor import LocalExecutor\n"
            "again = [preload.patch_fastapi_route_building(), preload.patch_scheduler_busy_sleep(0.1)]\n"
            "print(json.dumps({'mismatches': mismatches, 'applied': applied, 'again': again,\n"
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
    assert out["applied"] == [True, True, True, True]
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
    monkeypatch.setattr(patches, "STATES", {})
    assert apply() is False
    assert getattr(owner, attr) is changed  # the patch did not wrap it
    qual = target.partition(":")[2]
    [line] = [line for line in capsys.readouterr().err.splitlines() if "turned off" in line]
    guard = GUARDS[name]
    assert line.startswith(f"airflow-gitops: patch {name}: {qual} changed: turned off: upstream code changed")
    assert f"(verified on {guard.label} {', '.join(guard.verified)}" in line
    assert patches.STATES[name].on is False and qual in patches.STATES[name].detail


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


def test_doctor_shows_each_patch_on_and_a_changed_one_off(monkeypatch):
    [check] = [c for c in DOCTOR if c.group == "patches"]
    assert check.targets == (LocalTarget,)
    rows = patch_checks()
    assert [r.name for r in rows] == [f"patch.{name}" for name in APPLY]
    assert all(r.status.name == "ok" and r.saw.startswith("on: ") for r in rows), rows
    owner, attr = _owner(APPLY["scheduler_sleep"][1])
    monkeypatch.setattr(owner, attr, lambda self, session: 0)
    rows = {r.name: r for r in patch_checks()}
    off = rows.pop("patch.scheduler_sleep")
    assert off.status.name == "warn" and off.saw.startswith("off: upstream changed")
    assert "SchedulerJobRunner._do_scheduling changed" in off.saw and "local/patches/scheduler_sleep.py" in off.fix
    assert all(r.status.name == "ok" for r in rows.values())
    assert getattr(owner, attr).__name__ == "<lambda>"  # doctor applied nothing
