"""What every part of the spec shares: defaults, bounds on what a message echoes, the checks of a
path or name used in several sections, :class:`SpecError` and the strict base model."""

from __future__ import annotations

import re
import reprlib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import PlatformError

DEFAULT_SPEC_FILE = "platform.yaml"
DEFAULT_STATE_DIR = ".airflow-gitops"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
Port = Annotated[int, Field(ge=1024, le=65535)]

MAX_LISTED = 20  # problems listed in one message
SHORT = 80  # characters of an input value echoed in a message
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = SHORT
_repr.maxlevel = 2
# Paths Airflow's git hook puts unquoted into GIT_SSH_COMMAND (run by a shell).
_SHELL_SAFE_PATH = re.compile(r"[\w./@+,=:~-]+")


def _short(value: Any) -> str:
    """``repr`` of a value from the file, at most ~SHORT characters: messages never grow with the input."""
    text = _repr.repr(value)
    return text if len(text) <= SHORT else text[: SHORT - 3] + "..."


def _printable(value: str, what: str) -> None:
    if any(not c.isprintable() for c in value):
        raise ValueError(f"{what} contains a newline, tab, NUL or other control character; remove it")


def _config_safe(value: str) -> None:
    """A path that ends up in supervisord.conf, where a newline starts a new key and '%' is expanded."""
    _printable(value, "the path")
    if "%" in value:
        raise ValueError("the path contains '%' (supervisord.conf would expand it); rename the folder")


def _ssh_safe(path: str) -> None:
    if not _SHELL_SAFE_PATH.fullmatch(path):
        raise ValueError(
            f"the path {_short(path)} contains whitespace, a quote or another shell character: Airflow's git hook "
            "puts it unquoted into the ssh command (GIT_SSH_COMMAND); move or rename the file to a path of "
            "letters, digits and ._-/"
        )


def _looks_like_token(user: str) -> bool:
    """A user name in an https URL that is really an access token (GitHub, GitLab, or any long secret)."""
    return bool(
        re.match(r"^(gh[opsur]_|github_pat_|glpat-|x-access-token|x-token-auth|oauth2)", user) or len(user) >= 32
    )


def _redact(url: str) -> str:
    """``url`` without whatever precedes an '@' in its authority (a user, a password or a token)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/@]*@", lambda m: f"{m[1] or ''}***@", url)


class SpecError(PlatformError):
    """``platform.yaml`` is invalid. ``problems`` holds one ``(key path, message)`` per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {path}: {msg}" for path, msg in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  - ... and {len(problems) - MAX_LISTED} more")
        super().__init__("\n".join(lines), "correct the keys named above; nothing was started")


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `sub_pth` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _k8s_name(value: str) -> str:
    if len(value) > 253 or not DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{_short(value)} is not a valid Kubernetes name; use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return value
