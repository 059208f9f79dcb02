"""The lifecycle on ``Target``: one CLI serves every target, and a verb a target does not implement
gets one clear message (``Target.unsupported``), before anything is touched."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from airflow_gitops import cli
from airflow_gitops.checks.doctor import run_doctor
from airflow_gitops.checks.result import Status
from airflow_gitops.checks.verify import verify_command
from airflow_gitops.errors import PlatformError
from airflow_gitops.spec import parse_spec
from airflow_gitops.target import Target

runner = CliRunner()


def _spec_file(tmp_path) -> str:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump({"kubernetes": {"namespace": "ml", "release": "af"}}))
    return str(path)


@pytest.mark.parametrize(
    ("args", "problem", "fix"),
    [
        (["up", "--target", "kubernetes"], "`up` does not apply to --target kubernetes", "airflow-gitops deploy"),
        (["down", "-t", "kubernetes"], "`down` does not apply to --target kubernetes", "helm -n ml uninstall af"),
        (["status", "-t", "kubernetes"], "`status` does not apply", "airflow-gitops verify --target kubernetes"),
        (["logs", "-t", "kubernetes"], "`logs` does not apply", "kubectl -n ml logs deploy/af-scheduler"),
        (["sync", "-t", "kubernetes"], "`sync` does not apply", "airflow-gitops deploy"),
        (["run", "some_dag", "-t", "kubernetes"], "`run` does not apply", "port-forward svc/af-api-server"),
        (["render", "--target", "local"], "`render` does not apply to --target local", "airflow-gitops up"),
        (["deploy", "--target", "local"], "`deploy` does not apply to --target local", "airflow-gitops up"),
    ],
)
def test_a_verb_the_target_does_not_implement_says_so_and_what_to_use(tmp_path, args, problem, fix):
    result = runner.invoke(cli.app, [*args, "-f", _spec_file(tmp_path)])
    assert result.exit_code == 1, result.output
    assert problem in result.output and "Fix: " in result.output and fix in result.output, result.output
    assert "Traceback" not in result.output
    # nothing was started or written: no state folder, no rendered files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["platform.yaml"]


# --- a test double: the smallest Target, registered in place of the local one --------------------------
@dataclass
class DoubleReport:
    running: bool
    components: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"running": self.running, "components": self.components}


class RecordingTarget(Target):
    """TEST DOUBLE (no platform can exist for it): a Target implementing four verbs that records the
    calls it gets. If the CLI chose by type, it would not reach these methods."""

    name = "local"  # it stands in under --target local (cli.TargetName is fixed at import)
    calls: list[tuple] = []

    def checked_database_url(self):
        return None, "the test double has no database"

    def up(self, console):
        self.calls.append(("up",))
        console.print("double: up")

    def down(self, console):
        self.calls.append(("down",))

    def status(self):
        self.calls.append(("status",))
        return DoubleReport(running=False, components={"double": "STOPPED"})

    def print_status(self, report, console):
        console.print(f"double: {report.components}")

    def logs(self, component, lines, console):
        self.calls.append(("logs", component, lines))


@pytest.fixture
def double(monkeypatch):
    RecordingTarget.calls = []
    monkeypatch.setitem(cli.TARGETS, "local", (__name__, "RecordingTarget"))
    return RecordingTarget


def test_a_new_target_gets_the_cli_verbs_without_a_change_to_the_cli(tmp_path, double):
    spec = _spec_file(tmp_path)
    up = runner.invoke(cli.app, ["up", "-f", spec])
    assert up.exit_code == 0 and "double: up" in up.output, up.output
    assert runner.invoke(cli.app, ["down", "-f", spec]).exit_code == 0
    logs = runner.invoke(cli.app, ["logs", "scheduler", "-n", "7", "-f", spec])
    assert logs.exit_code == 0, logs.output
    status = runner.invoke(cli.app, ["status", "--json", "-f", spec])
    assert status.exit_code == 3  # not running: the CLI's exit code, from the target's report
    assert json.loads(status.output) == {"running": False, "components": {"double": "STOPPED"}}
    table = runner.invoke(cli.app, ["status", "-f", spec])
    assert table.exit_code == 3 and "double: {'double': 'STOPPED'}" in table.output
    assert double.calls == [("up",), ("down",), ("logs", "scheduler", 7), ("status",), ("status",)]


class PlainStatusTarget(RecordingTarget):
    """TEST DOUBLE: reports a status but does not print it its own way."""

    print_status = Target.print_status


def test_a_target_without_its_own_status_printer_shows_the_report(tmp_path, monkeypatch):
    monkeypatch.setitem(cli.TARGETS, "local", (__name__, "PlainStatusTarget"))
    result = runner.invoke(cli.app, ["status", "-f", _spec_file(tmp_path)])
    assert result.exit_code == 3 and json.loads(result.output) == {
        "running": False,
        "components": {"double": "STOPPED"},
    }


def test_a_verb_the_double_does_not_implement_gets_the_base_class_message(tmp_path, double):
    result = runner.invoke(cli.app, ["sync", "-f", _spec_file(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "`sync` does not apply to --target local" in result.output
    # no hint of its own: the verbs it does implement
    assert "Fix: --target local supports: up, down, status, logs" in result.output
    assert double.calls == []


def test_doctor_and_verify_ask_the_target_not_its_type(tmp_path):
    class Elsewhere(RecordingTarget):
        """TEST DOUBLE: a target named nowhere in checks/, with no capability."""

        name = "elsewhere"

    target = Elsewhere(parse_spec({}, base_dir=tmp_path))
    rows = {r.name: r for r in run_doctor(target)}
    for needs_a_capability in ("declared.drift", "kube", "preload", "patches"):
        assert rows[needs_a_capability].status == Status.skip
        assert rows[needs_a_capability].saw == "not checked: target is elsewhere"
    # the checks every target gets ran against it: the database row is its own answer
    assert any("the test double has no database" in r.saw for r in rows.values()), rows
    with pytest.raises(PlatformError) as err:
        verify_command(target, probe=False, as_json=True, console=Console(file=None))
    assert str(err.value) == "`verify` does not apply to --target elsewhere"
