"""Validation that pydantic's per-field errors do not cover: one line per problem (key path and fix),
checks across keys and against the spec file's folder, inline secrets; :func:`parse_spec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import dburl, names
from .base import DEFAULT_SPEC_FILE, SHORT, SpecError, _config_safe, _short, _ssh_safe
from .declared import _HINT, _SECRET_SECTIONS, _env_hint, _inline_secret
from .models import PlatformSpec

_SYSTEM_DIRS = {
    Path(p)
    for p in (
        "/ /bin /boot /dev /etc /home /lib /lib32 /lib64 /media /mnt /opt /proc /root /run /sbin /srv /sys /tmp "
        "/usr /usr/bin /usr/lib /usr/local /usr/sbin /usr/share /var /var/lib /var/log /var/tmp /Users /Library "
        "/System /Applications /Volumes /private /private/etc /private/tmp /private/var"
    ).split()
}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(p if len(p) <= SHORT else p[: SHORT - 3] + "..." for p in parts) or "(top level)"


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, str) or "[" not in p)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see docs/platform-yaml.md)"
        elif e["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be one of:")
        elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            msg = f"must be a mapping of keys (e.g. 'key: value' lines indented under it), got {_short(e.get('input'))}"
        elif e["type"] in ("int_parsing", "int_type", "bool_parsing", "bool_type", "string_type", "list_type"):
            msg = f"{msg} (got {_short(e.get('input'))})"
        if loc[:2] == ("mlflow", "password"):
            msg = msg.split(" (got ", 1)[0].split(", got ", 1)[0].replace(_HINT, "MLFLOW_TRACKING_PASSWORD")
        elif loc and loc[0] in _SECRET_SECTIONS:
            # A value there may be a secret: never echo one (pydantic's messages hold none; 'got ...' would).
            msg = msg.split(" (got ", 1)[0].split(", got ", 1)[0].replace(_HINT, _env_hint(loc))
        out.append((_loc(loc), msg if len(msg) <= 600 else msg[:597] + "..."))
    return out


def _cross_problems(spec: PlatformSpec) -> list[tuple[str, str]]:
    """Checks that need several keys or the spec file's folder (relative paths resolve against it)."""
    out: list[tuple[str, str]] = []
    try:
        state = spec.state_dir
        secrets_dir = spec.secrets_dir.resolve()
    except (OSError, RuntimeError, ValueError) as err:  # e.g. '~nosuchuser/x'
        return [("local.state_dir", f"cannot be resolved ({_short(str(err))}); use a plain relative path")]
    try:
        home = Path.home().resolve()
    except (OSError, RuntimeError):
        home = None
    if state in _SYSTEM_DIRS or any(state.is_relative_to(d) for d in (Path("/proc"), Path("/sys"), Path("/dev"))):
        out.append(
            (
                "local.state_dir",
                f"resolves to {_short(str(state))}, a system folder; the state dir holds the platform's database, "
                "keys and logs: use a folder of its own, e.g. '.airflow-gitops' (the default) next to platform.yaml",
            )
        )
    elif state == home:
        out.append(
            (
                "local.state_dir",
                "is your home folder itself; use a folder of its own, e.g. '.airflow-gitops' (the default)",
            )
        )
    else:
        try:
            _config_safe(str(state))
        except ValueError as err:
            out.append(("local.state_dir", f"resolves to {_short(str(state))}: {err}"))
    if not secrets_dir.is_relative_to(state):
        out.append(
            (
                "secrets.dir",
                f"resolves to {_short(str(secrets_dir))}, outside the state dir {_short(str(state))}; leave it a "
                "relative path inside the state dir, e.g. 'secrets' (the default)",
            )
        )
    for key, value in (
        ("dags.ssh_key_file", spec.dags.ssh_key_file),
        ("dags.known_hosts_file", spec.dags.known_hosts_file),
    ):
        if value is not None:
            try:
                _ssh_safe(str(spec.path(value)))
            except (OSError, RuntimeError) as err:
                out.append((key, f"cannot be resolved ({_short(str(err))})"))
            except ValueError as err:
                out.append((key, str(err)))
    secret_names = {f"secrets.{k}": v for k, v in spec.secrets.model_dump(exclude={"dir"}).items()}
    for key, name in secret_names.items():
        if spec.ingress.tls_secret == name:
            out.append(("ingress.tls_secret", f"is {_short(name)}, the name of {key}; give it its own name"))
    if spec.logs.remote:
        user_logging = spec.airflow.config.get("logging", {})
        for key in names.REMOTE_LOGGING_KEYS:
            if key in user_logging:
                out.append(
                    (
                        f"airflow.config.logging.{key}",
                        f"is set by logs.remote: {spec.logs.remote} (to aws.bucket / logs.remote_prefix); remove it "
                        "here, or set logs.remote: null to configure remote logging yourself",
                    )
                )
    return out + _declared_problems(spec)


def _inline_secrets(value: Any, path: tuple[str, ...], secret: bool) -> list[tuple[str, str]]:
    """Key paths under ``value`` where a secret-looking key (or ``secret``) holds a literal instead of a
    reference. Text that is exactly ``${NAME}`` and ``{from_file: PATH}`` are references; numbers and
    true/false are not secrets."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _inline_secrets(v, (*path, k), secret or names.looks_secret(k))
        return out
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _inline_secrets(v, (*path, str(i)), secret)]
    if secret and isinstance(value, str) and value and not dburl.VAR_REF.fullmatch(value):
        return [(_loc(path), str(_inline_secret(_env_hint(path))))]
    return []


def _declared_problems(spec: PlatformSpec) -> list[tuple[str, str]]:
    """connections / variables / pools: secrets by reference only, names that stay distinct as env vars."""
    out: list[tuple[str, str]] = []
    for kind, declared in (("connections", spec.connections), ("variables", spec.variables)):
        seen: dict[str, str] = {}
        for name in declared:
            if name.upper() in seen:
                out.append(
                    (
                        f"{kind}.{name}",
                        f"differs from {kind}.{seen[name.upper()]} only in case; Airflow reads both from the same "
                        f"environment variable (AIRFLOW_{'CONN' if kind == 'connections' else 'VAR'}_"
                        f"{name.upper()}): rename one",
                    )
                )
            seen[name.upper()] = name
    for conn_id, conn in spec.connections.items():
        reserved = {
            names.GIT_CONN_ID: "the Connection airflow-gitops pulls the DAG repository with (set by dags.*)",
            names.LOGS_CONN_ID: "the Connection remote task logging uses (set by logs.remote and aws.*)",
            "airflow_db": "the Connection the Helm chart points at the metadata database (set by database.url)",
        }.get(conn_id.lower())
        if reserved:
            out.append((f"connections.{conn_id}", f"is {reserved}; pick another id"))
        out += _inline_secrets(conn.extra, ("connections", conn_id, "extra"), False)
    for key, value in spec.variables.items():
        out += _inline_secrets(value, ("variables", key), names.looks_secret(key))
    if "default_pool" in spec.pools:
        out.append(
            (
                "pools.default_pool",
                "is Airflow's built-in pool, not one platform.yaml manages; size it with "
                "airflow.config.core.default_pool_task_slot_count (used when the database is created) or in the UI",
            )
        )
    return out


def parse_spec(data: Any, *, source: str = DEFAULT_SPEC_FILE, base_dir: Path | None = None) -> PlatformSpec:
    """Validate already-loaded YAML data. Raises :class:`SpecError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            source, [("(top level)", f"must be a mapping of keys such as 'dags:' and 'aws:', got {_short(data)}")]
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise SpecError(source, [(_short(k), "keys must be text such as 'dags'; correct this key") for k in bad])
    try:
        spec = PlatformSpec(**data, base_dir=base_dir or Path.cwd())
    except ValidationError as err:
        raise SpecError(source, _problems(err)) from None
    except TypeError as err:  # e.g. a non-string key
        raise SpecError(source, [("(top level)", _short(str(err)))]) from None
    problems = _cross_problems(spec)
    if problems:
        raise SpecError(source, problems)
    return spec
