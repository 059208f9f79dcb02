"""Human-readable status for the local target (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .status import PlatformStatus


def print_access(report: PlatformStatus, console: Console) -> None:
    console = _NoWrap(console)
    urls = dict(report.urls)
    console.print(f"  {'Airflow UI/API':15} {urls.pop('Airflow UI/API', report.api_url)}")
    console.print(f"  Login           {report.login['username']} / password in {report.login['password_file']}")
    console.print(f"  DAG repository  {report.dag_repo}  (branch {report.branch}, DAGs under {report.sub_path}/)")
    console.print(f"                  push: git push {report.dag_repo} HEAD:{report.branch}")
    for label, url in urls.items():
        console.print(f"  {label:15} {url}")
        if label == "MLflow" and "mlflow_username" in report.login:
            login = report.login
            console.print(
                f"  {'MLflow login':15} {login['mlflow_username']} / password in {login['mlflow_password_file']}"
            )


class _NoWrap:
    """Print whole lines: a path or URL broken over two lines cannot be copied."""

    def __init__(self, console: Console):
        self._console = console

    def print(self, *args, **kwargs) -> None:
        self._console.print(*args, soft_wrap=True, highlight=False, **kwargs)


def print_status(report: PlatformStatus, console: Console) -> None:
    if not report.running:
        console.print(f"The platform is not running (state in {report.state_dir}). Start it: `airflow-gitops up`.")
        return
    table = Table(title="airflow-gitops (local)")
    table.caption = f"state: {report.state_dir}"
    for col in ("component", "state", "healthy", "pid", "log"):
        table.add_column(col)
    for name, c in report.components.items():
        ok = "[green]yes[/]" if c.healthy else "[red]no[/]"
        table.add_row(name, c.state, ok, str(c.pid or "-"), c.log.removeprefix(report.state_dir + "/"))
    console.print(table)
    for name, c in report.components.items():
        if c.detail:
            _NoWrap(console).print(f"  {name:15} {c.detail}")
    print_access(report, console)
    head, parsed = report.branch_head, report.parsed_commit
    sync = "in sync" if head and head == parsed else "catching up" if head else "branch not found"
    console = _NoWrap(console)
    console.print(f"  Branch head     {head or '-'}")
    console.print(f"  Parsed commit   {parsed or '-'}  ({sync})")
    for label, items in report.persistence.items():
        if items:
            console.print(f"  {label.capitalize():15} {'; '.join(items)}")
    if any(n for counts in report.declared.values() for n in counts.values()):
        parts = [
            f"{kind} {c['managed']} managed" + (f", {c['hand_made']} made by hand" if c["hand_made"] else "")
            for kind, c in report.declared.items()
        ]
        console.print(f"  {'Declared':15} {'; '.join(parts)} (platform.yaml; `airflow-gitops sync` applies it)")
