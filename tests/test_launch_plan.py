"""The launch plan (``local/launch_plan.py``): one typed record, written once by the local target, that
says what ``launch.py`` does to each Airflow process; real launcher processes read it (and Airflow's CLI
for the levers). The platform tests (tests/test_preload.py, tests/test_platform_local.py) show the
levers at work in a running platform."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_gitops import keystore
from airflow_gitops.errors import PlatformError
from airflow_gitops.local import launch_plan, preload
from airflow_gitops.local.airflow_env import airflow_env
from airflow_gitops.local.launch_plan import LaunchPlan
from airflow_gitops.local.layout import Layout
from airflow_gitops.spec import parse_spec

# The variables the launcher used to be steered by, one per lever (before the plan).
OLD_VARIABLES = {
    "AIRFLOW_GITOPS_PRELOAD",
    "AIRFLOW_GITOPS_SCHEDULER_BUSY_SLEEP",
    "AIRFLOW_GITOPS_DAG_PROCESSOR_POLL_PATCH",
    "AIRFLOW_GITOPS_DAG_PROCESSOR_PRELOAD",
    "AIRFLOW_GITOPS_API_ROUTE_MEMO",
    "AIRFLOW_GITOPS_MIGRATED_STAMP",
    "AIRFLOW_GITOPS_FORKSERVER",
}


def _launch(tmp_path: Path, env: dict[str, str], *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m airflow_gitops.local.launch ENV_FILE -- COMMAND`` as supervisord runs it."""
    env_file = tmp_path / "env.json"
    keystore.write_private(env_file, json.dumps(env))
    return subprocess.run(
        [sys.executable, "-m", "airflow_gitops.local.launch", str(env_file), "--", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )


def test_the_local_target_writes_one_private_plan_and_names_it_with_one_variable(tmp_path):
    # Same-user mode (what a platform started by a user who is not root gets): the scheduler preloads.
    spec = parse_spec({"local": {"preload": ["pandas"], "task_user": "same"}}, base_dir=tmp_path)
    layout = Layout(spec)
    env = airflow_env(layout, "postgresql://u:secret-pw@127.0.0.1/db")
    assert env[launch_plan.ENV_VAR] == str(layout.launch_plan)
    assert not OLD_VARIABLES & set(env), "a launcher lever is still an environment variable"
    path = layout.launch_plan
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    plan = launch_plan.load(path)
    # What the platform asks for, as platform.yaml and the layout say.
    assert "pandas" in plan.scheduler_preload and "pyarrow.parquet" in plan.scheduler_preload
    assert plan.scheduler_busy_sleep == 0.1
    assert plan.dag_processor_preload and plan.dag_processor_poll and plan.api_route_types_once
    assert plan.migrated_stamp == str(layout.migrated_stamp)
    assert plan.forkserver_socket == str(layout.forkserver_socket)
    assert (plan.task_zygote_socket, plan.task_uid, plan.task_gid) == (None, None, None)
    text = path.read_text()
    for secret in (keystore.fernet_key(spec), keystore.jwt_secret(spec), keystore.api_secret_key(spec), "secret-pw"):
        assert secret not in text
    # The record is what the file holds, and back.
    assert LaunchPlan.from_json(plan.to_json(), "x") == plan

    no_preload = parse_spec({"local": {"preload": [], "task_user": "same"}}, base_dir=tmp_path / "other")
    airflow_env(Layout(no_preload), "postgresql://u:p@127.0.0.1/db")
    assert launch_plan.load(Layout(no_preload).launch_plan).scheduler_preload == ()


@pytest.mark.skipif(os.geteuid() != 0, reason="DAG code runs as another user only when `up` runs as root")
def test_as_root_the_plan_hands_dag_code_to_the_task_users_zygote_which_preloads_instead(tmp_path):
    import pwd

    from conftest import passable

    from airflow_gitops.local import task_user

    spec = parse_spec({"local": {"preload": ["pandas"], "task_user": "auto"}}, base_dir=passable(tmp_path))
    layout = Layout(spec)
    user = task_user.ensure(layout, lambda _text: None)
    airflow_env(layout, "postgresql://u:secret-pw@127.0.0.1/db")
    plan = launch_plan.load(layout.launch_plan)
    pw = pwd.getpwnam(task_user.DEFAULT_USER)
    assert (plan.task_uid, plan.task_gid) == (pw.pw_uid, pw.pw_gid) == (user.uid, user.gid)
    assert plan.task_zygote_socket == str(task_user.zygote_socket(layout, user))
    # Tasks are forks of the zygote now: the scheduler and the DAG processor would preload for nothing.
    assert plan.scheduler_preload == () and plan.dag_processor_preload == ()
    assert LaunchPlan.from_json(plan.to_json(), "x") == plan


def _valid() -> dict:
    return json.loads(LaunchPlan(scheduler_preload=("json",), migrated_stamp="/x/stamp").to_json())


BROKEN = {
    "not JSON": "{not json",
    "not an object": "[1, 2]",
    "a field missing": json.dumps({k: v for k, v in _valid().items() if k != "dag_processor_poll"}),
    "an unknown field": json.dumps({**_valid(), "scheduler_preloads": []}),
    "a wrong type": json.dumps({**_valid(), "scheduler_busy_sleep": "fast"}),
    "modules as one string": json.dumps({**_valid(), "scheduler_preload": "pandas"}),
    "not text": b"\xff\xfe{",
}
SAYS = {
    "not JSON": "not JSON",
    "not an object": "not an object",
    "a field missing": "missing dag_processor_poll",
    "an unknown field": "unknown scheduler_preloads",
    "a wrong type": "scheduler_busy_sleep",
    "modules as one string": "scheduler_preload",
    "not text": "not JSON",
}


@pytest.mark.parametrize("case", [*BROKEN, "missing file"])
def test_a_missing_or_malformed_plan_stops_the_launcher_with_one_message_naming_the_file_and_the_fix(case, tmp_path):
    plan = tmp_path / "launch-plan.json"
    if case != "missing file":
        content = BROKEN[case]
        keystore.write_private(plan, content)
    out = _launch(tmp_path, {launch_plan.ENV_VAR: str(plan)}, "sh", "-c", "echo RAN")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "RAN" not in out.stdout, "the program ran without its plan"
    assert "Traceback" not in out.stderr, out.stderr
    assert str(plan) in out.stderr and "airflow-gitops up" in out.stderr and "Fix:" in out.stderr, out.stderr
    assert (SAYS.get(case) or "does not exist") in out.stderr, out.stderr
    assert out.stderr.count("the launch plan") == 1, out.stderr


def test_every_field_is_checked(tmp_path):
    """Each field with a value of the wrong kind is refused, naming the field (none slips through)."""
    for field in dataclasses.fields(LaunchPlan):
        for wrong in ({"a": 1}, [3], "" if field.type != "bool" else None):
            data = {**_valid(), field.name: wrong}
            with pytest.raises(PlatformError, match=f"{field.name} is "):
                LaunchPlan.from_json(json.dumps(data), "plan.json")


def test_a_program_whose_environment_names_no_plan_is_execd_as_it_is(tmp_path):
    """MLflow, the S3 endpoint, serving: started through the launcher for their 0600 environment only."""
    out = _launch(tmp_path, {"FOO": "bar"}, "sh", "-c", 'echo "FOO=$FOO"; exit 3')
    assert out.returncode == 3 and out.stdout.strip() == "FOO=bar", out.stderr


@pytest.mark.parametrize(
    ("plan", "in_process"),
    [
        (LaunchPlan(), set()),
        (LaunchPlan(scheduler_preload=("json",)), {"scheduler"}),
        (LaunchPlan(scheduler_busy_sleep=0.1), {"scheduler"}),
        (LaunchPlan(dag_processor_preload=("json",)), {"dag-processor"}),
        (LaunchPlan(dag_processor_poll=True), {"dag-processor"}),
        (LaunchPlan(api_route_types_once=True), {"api-server"}),
        (LaunchPlan(migrated_stamp="/x/stamp"), {"api-server", "scheduler", "dag-processor", "triggerer"}),
        (LaunchPlan(forkserver_socket="/x/fs.sock"), {"db migrate"}),
    ],
)
def test_each_lever_of_the_plan_applies_to_its_components_only(plan, in_process):
    commands = {
        "api-server": ["airflow", "api-server"],
        "scheduler": ["/venv/bin/airflow", "scheduler", "--skip-serve-logs"],
        "dag-processor": ["airflow", "dag-processor"],
        "triggerer": ["airflow", "triggerer", "--skip-serve-logs"],
        "db migrate": ["airflow", "db", "migrate"],
        "version": ["airflow", "version"],
        "not airflow": ["mlflow", "scheduler"],
    }
    assert {name for name, cmd in commands.items() if preload.wanted(cmd, plan)} == in_process


def test_the_launcher_prepares_each_component_as_its_plan_says(tmp_path):
    """Real launchers running Airflow's CLI (``--help``: it parses its arguments, needs no database): a
    lever that is on applies its (guarded) patch and says so in the log; an empty plan changes nothing."""
    plan_file = tmp_path / "plan.json"
    env = {
        launch_plan.ENV_VAR: str(plan_file),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    on = LaunchPlan(scheduler_busy_sleep=0.1, dag_processor_poll=True, api_route_types_once=True)
    keystore.write_private(plan_file, on.to_json())
    says = {
        "scheduler": "airflow-gitops: busy-only loop sleep 0.1 s: on",
        "dag-processor": "airflow-gitops: prompt parse collection: on",
        "api-server": "airflow-gitops: route types built once: on",
    }
    for command, note in says.items():
        out = _launch(tmp_path, env, airflow, command, "--help")
        assert out.returncode == 0, out.stderr[-3000:]
        assert note in out.stderr and "Usage: airflow" in out.stdout, (command, out.stderr[-3000:])
    keystore.write_private(plan_file, LaunchPlan().to_json())
    out = _launch(tmp_path, env, airflow, "scheduler", "--help")
    assert out.returncode == 0 and "Usage: airflow" in out.stdout, out.stderr[-3000:]
    assert "airflow-gitops:" not in out.stderr, out.stderr[-3000:]
