"""One check's outcome, and how a list of them is printed (rich table or JSON).

Every check is a small function returning :class:`CheckResult` (or a list of them): what it looked at
(``name``), ``ok`` / ``warn`` / ``fail`` / ``skip``, what it ``saw`` and, unless it is ``ok``, the
``fix``. ``saw`` and ``fix`` never contain secret values: fingerprints and file paths, never keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from rich.console import Console
from rich.table import Table


class Status(StrEnum):
    ok = "ok"
    warn = "warn"
    fail = "fail"
    skip = "skip"


STYLE = {Status.ok: "green", Status.warn: "yellow", Status.fail: "bold red", Status.skip: "dim"}


@dataclass
class CheckResult:
    name: str
    status: Status
    saw: str
    fix: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = str(self.status)
        return d


def ok(name: str, saw: str, fix: str = "") -> CheckResult:
    return CheckResult(name, Status.ok, saw, fix)


def warn(name: str, saw: str, fix: str) -> CheckResult:
    return CheckResult(name, Status.warn, saw, fix)


def fail(name: str, saw: str, fix: str) -> CheckResult:
    return CheckResult(name, Status.fail, saw, fix)


def verdict(name: str, good: bool, saw: str, fix: str, *, bad=fail) -> CheckResult:
    """``ok`` when ``good``, else ``bad`` (``fail`` or ``warn``) with the fix."""
    return ok(name, saw) if good else bad(name, saw, fix)


def skip(name: str, saw: str, fix: str = "") -> CheckResult:
    return CheckResult(name, Status.skip, saw, fix)


def exit_code(results: list[CheckResult]) -> int:
    """1 when any check failed, else 0 (warnings and skips do not fail the command)."""
    return 1 if any(r.status is Status.fail for r in results) else 0


def to_json(results: list[CheckResult], **extra) -> str:
    counts = {s.value: sum(1 for r in results if r.status is s) for s in Status}
    return json.dumps(
        {"ok": exit_code(results) == 0, "counts": counts, "checks": [r.to_dict() for r in results], **extra}, indent=2
    )


def print_results(results: list[CheckResult], console: Console, *, title: str) -> None:
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("saw", overflow="fold")
    table.add_column("fix", overflow="fold")
    for r in results:
        table.add_row(r.name, f"[{STYLE[r.status]}]{r.status}[/]", r.saw, r.fix)
    console.print(table)
    failed = [r.name for r in results if r.status is Status.fail]
    warned = [r.name for r in results if r.status is Status.warn]
    if failed:
        console.print(f"[bold red]{len(failed)} failed:[/] {', '.join(failed)} (see the fix column)")
    else:
        console.print(f"[green]no failures[/] ({len(warned)} warning{'s' if len(warned) != 1 else ''})")


def emit(results: list[CheckResult], console: Console, *, title: str, as_json: bool, **extra) -> int:
    if as_json:
        print(to_json(results, **extra))
    else:
        print_results(results, console, title=title)
    return exit_code(results)
