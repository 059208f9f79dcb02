"""The Connections, Variables and pools ``platform.yaml`` declares, resolved for applying.

``spec`` validates their shape (names, types, secrets given by reference only); this module reads the
references, only when a target applies them: each ``${NAME}`` from the environment, each
``{from_file: PATH}`` from its file (relative to platform.yaml, through :func:`keystore.read_private`:
never a symbolic link or another user's file). Every value that cannot be read is one line of a
:class:`SpecError` naming its key path and never the value.

What the platform manages carries :data:`MARKER` at the end of its description, in Airflow's own
database. The marker travels with the object (the UI shows it to anyone about to edit it; a restored
database or a second machine sees the same ownership), where a list of names in the state directory
would go stale the moment the database and the state directory part ways (an external
``database.url``, a wiped or copied state dir). Removing the marker in the UI hands an object over to
the user: ``sync`` leaves it alone unless platform.yaml declares its name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import contract, dburl, keystore, names
from .errors import PlatformError
from .spec import MAX_SECRET_FILE_BYTES, FromFile, PlatformSpec, SpecError

MARKER = "[managed by airflow-gitops]"
KINDS = ("connections", "variables", "pools")
SINGULAR = {"connections": "connection", "variables": "variable", "pools": "pool"}


def mark(description: str | None) -> str:
    """The description an object the platform manages carries: the user's text, then the marker."""
    return f"{description.strip()} {MARKER}" if description and description.strip() else MARKER


def is_managed(description: str | None) -> bool:
    return bool(description) and description.rstrip().endswith(MARKER)


@dataclass(frozen=True)
class Connection:
    conn_id: str
    conn_type: str
    description: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """What Airflow stores (the marked description; ``extra`` as a mapping, None when empty)."""
        return {
            "conn_type": self.conn_type,
            "description": mark(self.description),
            "host": self.host,
            "login": self.login,
            "password": self.password,
            "schema": self.schema,
            "port": self.port,
            "extra": self.extra or None,
        }

    def api_body(self) -> dict[str, Any]:
        """The REST API's ConnectionBody (every field given, so an update replaces the whole Connection)."""
        body = {"connection_id": self.conn_id, **self.fields()}
        body["extra"] = json.dumps(self.extra) if self.extra else None
        return body

    def env_json(self) -> str:
        """``AIRFLOW_CONN_<ID>``: Airflow's JSON form (no marker: it is no database object)."""
        data = {"conn_type": self.conn_type}
        for key in ("description", "host", "login", "password", "schema", "port"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.extra:
            data["extra"] = self.extra
        return json.dumps(data)


@dataclass(frozen=True)
class Variable:
    key: str
    value: str

    def fields(self) -> dict[str, Any]:
        return {"value": self.value, "description": MARKER}

    def api_body(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "description": MARKER}


@dataclass(frozen=True)
class Pool:
    name: str
    slots: int
    description: str = ""
    include_deferred: bool = False

    def fields(self) -> dict[str, Any]:
        return {"slots": self.slots, "description": mark(self.description), "include_deferred": self.include_deferred}

    def api_body(self) -> dict[str, Any]:
        return {"name": self.name, **self.fields()}


@dataclass
class Declared:
    """Everything platform.yaml declares, references resolved. ``secrets``: every resolved value that is a
    secret (a password, a secret-looking key's value, anything read from a file), to prove none leaks."""

    connections: dict[str, Connection] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    # mlflow.username / mlflow.password (password resolved): the login for the user's own MLflow server.
    mlflow_login: tuple[str, str] | None = None

    def of(self, kind: str) -> dict[str, Connection | Variable | Pool]:
        return getattr(self, kind)

    def env(self) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` -> value (the Kubernetes Secret's keys)."""
        out = {contract.conn_env_name(c.conn_id): c.env_json() for c in self.connections.values()}
        out.update({contract.var_env_name(v.key): v.value for v in self.variables.values()})
        return out


def pools(spec: PlatformSpec) -> dict[str, Pool]:
    """The declared pools (they hold no references: nothing to resolve)."""
    return {name: Pool(name, p.slots, p.description, p.include_deferred) for name, p in spec.pools.items()}


class _Resolver:
    def __init__(self, spec: PlatformSpec, environ: dict[str, str] | None):
        self.spec = spec
        self.environ = os.environ if environ is None else environ
        self.problems: list[tuple[str, str]] = []
        self.secrets: list[str] = []

    def value(self, value: Any, path: str, secret: bool) -> Any:
        """``value`` with every reference read; ``secret`` marks values under a secret-looking name."""
        if isinstance(value, FromFile):
            text = self.read_file(value, path)
            if text:
                self.secrets.append(text)
            return text
        if isinstance(value, str):
            try:
                text = dburl.expand(value, self.environ)
            except dburl.UnsetVariable as err:
                self.problems.append((path, f"{err}; export it (nothing was applied)"))
                return None
            if secret and text:
                self.secrets.append(text)
            return text
        if isinstance(value, dict):
            return {k: self.value(v, f"{path}.{k}", secret or names.looks_secret(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{path}.{i}", secret) for i, v in enumerate(value)]
        return value

    def read_file(self, ref: FromFile, path: str) -> str | None:
        file = secret_file(self.spec, ref)
        where = f"from_file {file}"
        try:
            data = keystore.read_private(file)
        except FileNotFoundError:
            self.problems.append(
                (path, f"{where} does not exist; create it (relative paths resolve against {self.spec.base_dir})")
            )
            return None
        except PlatformError as err:  # a symbolic link, not a regular file, another user's
            why = err.problem.replace(f"key file {file}", where).replace("; it was not used", "")
            self.problems.append((path, f"{why}; {err.fix}"))
            return None
        except OSError as err:
            self.problems.append((path, f"{where} cannot be read ({err.strerror}); make it readable by you"))
            return None
        if len(data) > MAX_SECRET_FILE_BYTES:
            self.problems.append(
                (path, f"{where} is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB; is it the right file?")
            )
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.problems.append((path, f"{where} is not UTF-8 text; save it as UTF-8 (base64 for binary keys)"))
            return None
        # `echo secret > file` ends it with a newline that is not part of the secret.
        return text.rstrip("\r\n")


def secret_file(spec: PlatformSpec, ref: FromFile) -> Path:
    """Where ``{from_file: PATH}`` points: relative to platform.yaml's folder, the last part NOT resolved
    (a symbolic link must be seen, and refused, not followed)."""
    path = ref.from_file.expanduser()
    return path if path.is_absolute() else spec.base_dir / path


def _variable_text(value: Any) -> str:
    """Airflow Variables are text: text stays as it is, anything else is stored as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def resolve(spec: PlatformSpec, environ: dict[str, str] | None = None) -> Declared:
    """Read every reference of connections / variables; raise :class:`SpecError` listing each one that
    cannot be read (by key path, never with a value)."""
    r = _Resolver(spec, environ)
    out = Declared(pools=pools(spec))
    for conn_id, c in spec.connections.items():
        base = f"connections.{conn_id}"
        out.connections[conn_id] = Connection(
            conn_id=conn_id,
            conn_type=c.conn_type,
            description=r.value(c.description, f"{base}.description", False),
            host=r.value(c.host, f"{base}.host", False),
            login=r.value(c.login, f"{base}.login", False),
            password=r.value(c.password, f"{base}.password", True),
            schema=r.value(c.schema_, f"{base}.schema", False),
            port=c.port,
            extra=r.value(c.extra, f"{base}.extra", False),
        )
    for key, value in spec.variables.items():
        resolved = r.value(value, f"variables.{key}", names.looks_secret(key))
        out.variables[key] = Variable(key, _variable_text(resolved))
    ml = spec.mlflow
    if ml.username is not None and ml.password is not None:
        password = r.value(ml.password, "mlflow.password", True)
        if password == "":
            r.problems.append(("mlflow.password", "is empty; give the MLflow user's password"))
        elif password is not None:
            out.mlflow_login = (ml.username, password)
    if r.problems:
        err = SpecError("platform.yaml", r.problems)
        err.fix = "export the variables and create the files named above; nothing was applied"
        raise err
    out.secrets = sorted(set(r.secrets), key=len, reverse=True)
    return out


def pools_json(spec: PlatformSpec) -> str:
    """The declared pools in ``airflow pools import`` form (descriptions marked)."""
    return json.dumps({name: p.fields() for name, p in pools(spec).items()}, sort_keys=True)
