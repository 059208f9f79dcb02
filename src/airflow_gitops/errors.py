"""The one error type users see: a problem and its fix, printed without a stack trace."""

from __future__ import annotations


class PlatformError(Exception):
    """Something the user can fix. ``str()`` is the problem; ``fix`` says what to do."""

    def __init__(self, problem: str, fix: str = "", *, log: str | None = None):
        self.problem = problem
        self.fix = fix
        self.log = log
        super().__init__(problem)

    def render(self) -> str:
        lines = [self.problem]
        if self.fix:
            lines.append(f"Fix: {self.fix}")
        if self.log:
            lines.append(f"Log: {self.log}")
        return "\n".join(lines)
