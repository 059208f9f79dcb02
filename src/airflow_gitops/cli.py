"""Thin Typer verbs. Each verb loads the spec and calls one function of a target or of checks.

Errors a user can fix (:class:`PlatformError`, including an invalid ``platform.yaml``) are printed
as one message with the fix, exit code 1, never a stack trace.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .errors import PlatformError
from .spec import PlatformSpec, load_spec
from .target import Target

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Apache Airflow for MLOps, the GitOps way: DAGs from Git, everything else from platform.yaml.",
)
console = Console()
err_console = Console(stderr=True)

SpecOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="platform.yaml to use (default: ./platform.yaml, else built-in defaults)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


# ``--target`` -> the module and class of its implementation (a ``target.Target``; imported on use: the
# CLI starts without Airflow or Kubernetes). Adding a target is one line here; every verb then serves it.
TARGETS = {
    "local": ("airflow_gitops.local.platform", "LocalTarget"),
    "kubernetes": ("airflow_gitops.kubernetes.target", "KubernetesTarget"),
}
TargetName = StrEnum("TargetName", {name: name for name in TARGETS})

TargetOption = Annotated[TargetName, typer.Option("--target", "-t", help="Where the platform runs.")]


def _friendly(fn):
    """Turn PlatformError into one readable message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PlatformError as err:
            err_console.print(f"[bold red]error:[/] {err.render()}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _spec(path: Path | None) -> PlatformSpec:
    return load_spec(path)


def _target(kind: TargetName, spec: PlatformSpec) -> Target:
    module, cls = TARGETS[kind]
    return getattr(importlib.import_module(module), cls)(spec)


@app.command()
@_friendly
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to write platform.yaml into.")] = Path("."),
    deploy_key: Annotated[
        bool,
        typer.Option("--deploy-key", help="Also generate an ed25519 deploy key and print its public half."),
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing platform.yaml.")] = False,
) -> None:
    """Write a commented platform.yaml (and optionally a deploy key)."""
    from .init import init_project

    init_project(directory, deploy_key=deploy_key, force=force, console=console)


@app.command()
@_friendly
def up(target: TargetOption = TargetName.local, file: SpecOption = None) -> None:
    """Start the whole platform on this machine and wait until every component is healthy."""
    _target(target, _spec(file)).up(console)


@app.command()
@_friendly
def down(target: TargetOption = TargetName.local, file: SpecOption = None) -> None:
    """Stop every local component. All data (database, DAG repo, MLflow, keys) is kept."""
    _target(target, _spec(file)).down(console)


@app.command()
@_friendly
def status(target: TargetOption = TargetName.local, file: SpecOption = None, as_json: JsonOption = False) -> None:
    """Component health, URLs, login, the DAG repository and the commit Airflow has parsed."""
    platform = _target(target, _spec(file))
    report = platform.status()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        platform.print_status(report, console)
    if not report.running:
        raise typer.Exit(3)


@app.command()
@_friendly
def sync(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; apply nothing.")] = False,
    as_json: JsonOption = False,
    target: TargetOption = TargetName.local,
    file: SpecOption = None,
) -> None:
    """Apply platform.yaml's connections, variables and pools to the running local platform.

    Creates and updates what the file declares, deletes what it managed and no longer declares, and
    leaves what was made by hand in the UI alone. Prints names and fields, never a value.
    """
    platform = _target(target, _spec(file))
    result = platform.sync(console, dry_run=dry_run)
    if as_json:
        print(json.dumps({**result.to_dict(), "dry_run": dry_run, "summary": result.summary()}, indent=2))
    else:
        platform.print_plan(result, console, dry_run=dry_run)


@app.command()
@_friendly
def logs(
    component: Annotated[str | None, typer.Argument(help="Component name; all when omitted.")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 40,
    target: TargetOption = TargetName.local,
    file: SpecOption = None,
) -> None:
    """Show the last lines of a component's log (and where the log file is)."""
    _target(target, _spec(file)).logs(component, lines, console)


@app.command()
@_friendly
def run(
    dag_id: Annotated[str, typer.Argument(help="The DAG to trigger, e.g. ml_training_pipeline.")],
    conf: Annotated[str | None, typer.Option(help="DAG params as JSON.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 600,
    target: TargetOption = TargetName.local,
    file: SpecOption = None,
) -> None:
    """Trigger a DAG on the local platform and wait for it; exit 1 if the run fails."""
    _target(target, _spec(file)).run_dag(dag_id, conf, timeout, console)


@app.command()
@_friendly
def predict(
    records: Annotated[
        str | None,
        typer.Argument(help="A JSON list of records (- reads stdin); default: the served model's input example."),
    ] = None,
    target: TargetOption = TargetName.local,
    file: SpecOption = None,
) -> None:
    """Ask the local serving component for predictions from the champion; print its answer."""
    _target(target, _spec(file)).predict(records, console)


@app.command()
@_friendly
def render(
    target: TargetOption = TargetName.kubernetes,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("rendered"),
    chart: Annotated[
        str | None, typer.Option(help="Chart folder or REPO_URL@VERSION to render the full chart against.")
    ] = None,
    file: SpecOption = None,
) -> None:
    """Write Helm values, Secret manifests and the image files for the Kubernetes target."""
    _target(target, _spec(file)).render(out, chart=chart, console=console)


@app.command()
@_friendly
def deploy(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the rendered files.")] = Path("rendered"),
    chart: Annotated[str | None, typer.Option(help="Chart folder or REPO_URL@VERSION.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; apply nothing.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait until the workloads are ready and the Jobs finished.")] = True,
    timeout: Annotated[
        int, typer.Option(min=10, help="Seconds helm may take (hook Jobs) and, again, the workloads to be ready.")
    ] = 600,
    target: TargetOption = TargetName.kubernetes,
    file: SpecOption = None,
) -> None:
    """Apply the Secrets and `helm upgrade --install` the official chart with the rendered values."""
    _target(target, _spec(file)).deploy(out, chart=chart, dry_run=dry_run, console=console, wait=wait, timeout=timeout)


image_app = typer.Typer(no_args_is_help=True, help="The Airflow image of the Kubernetes target.")
app.add_typer(image_app, name="image")


@image_app.command("build")
@_friendly
def image_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for image/ and the build log.")] = Path("rendered"),
    base: Annotated[
        str | None,
        typer.Option(help="Base image instead of the official apache/airflow (the Dockerfile's BASE_IMAGE)."),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="The OCI archive to write (default: OUT/image.oci.tar).")] = None,
    push: Annotated[
        str | None, typer.Option(help="Also push to REF (docker://REGISTRY/REPO:TAG, oci-archive:/x.tar, ...).")
    ] = None,
    file: SpecOption = None,
) -> None:
    """Build the image from the rendered image/ folder with buildah (no Docker daemon): an OCI archive."""
    from .kubernetes.image_build import build_command

    build_command(_spec(file), out, base=base, output=output, push=push, console=console)


@app.command()
@_friendly
def doctor(target: TargetOption = TargetName.local, as_json: JsonOption = False, file: SpecOption = None) -> None:
    """Preflight checks before starting or deploying: each with what it saw and the fix."""
    from .checks.doctor import doctor_command

    code = doctor_command(_target(target, _spec(file)), as_json=as_json, console=console)
    raise typer.Exit(code)


@app.command()
@_friendly
def check(
    path: Annotated[Path, typer.Argument(help="The DAG repository's working tree (its root).")] = Path("."),
    dags_folder: Annotated[
        Path | None,
        typer.Option("--dags-folder", help="DAG folder, relative to PATH (default: dags.sub_path of -f, 'dags')."),
    ] = None,
    tests: Annotated[bool, typer.Option("--tests/--no-tests", help="Also run the repository's pytest tests/.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds each phase (parsing, tests) may take.")] = 600,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="DAG files parsed at once (default: 2, or 1 on one CPU; 1: no file's seconds include a "
            "neighbour's share of the CPU).",
        ),
    ] = None,
    as_json: JsonOption = False,
    file: SpecOption = None,
) -> None:
    """DAG CI before a push: parse every DAG file as the platform does, then run the repo's tests."""
    from .checks.dag_check import check_command

    code = check_command(
        _spec(file),
        path,
        dags_folder=dags_folder,
        run_tests=tests,
        timeout=timeout,
        jobs=jobs,
        as_json=as_json,
        console=console,
    )
    raise typer.Exit(code)


@app.command()
@_friendly
def verify(
    target: TargetOption = TargetName.local,
    probe: Annotated[
        bool, typer.Option(help="Push a marker commit to a throwaway ref and measure push-to-live.")
    ] = False,
    as_json: JsonOption = False,
    file: SpecOption = None,
) -> None:
    """Prove the running platform works: UI, DAG sync, PostgreSQL, AWS and MLflow from inside a task."""
    from .checks.verify import verify_command

    code = verify_command(_target(target, _spec(file)), probe=probe, as_json=as_json, console=console)
    raise typer.Exit(code)


@app.command("rotate-fernet-key")
@_friendly
def rotate_fernet_key(target: TargetOption = TargetName.local, file: SpecOption = None) -> None:
    """Rotate the Fernet key without losing any encrypted Connection or Variable."""
    _target(target, _spec(file)).rotate_fernet_key(console)


def main() -> None:  # pragma: no cover - entry point
    app(prog_name="airflow-gitops")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
