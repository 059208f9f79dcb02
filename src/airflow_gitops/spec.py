"""``platform.yaml`` -> :class:`PlatformSpec`, the one source of truth.

Every concept of the design (custom image, executor, fixed Fernet key, Git-synced DAGs, external
PostgreSQL, AWS credentials, logs, ingress, MLflow) has exactly one key here. Both targets read the
spec and nothing else: ``local`` runs it on this machine, ``kubernetes`` renders it for the official
Apache Airflow Helm chart.

With no ``platform.yaml`` at all the embedded defaults serve: a local PostgreSQL, a local bare Git
repository seeded with the example DAGs, and a local S3-compatible endpoint.

Invalid input raises :class:`SpecError`, whose message lists one line per problem with the key's
path and the fix; the CLI prints it and exits without starting anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import contract, dburl
from .errors import PlatformError

DEFAULT_SPEC_FILE = "platform.yaml"
DEFAULT_STATE_DIR = ".airflow-gitops"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
Port = Annotated[int, Field(ge=1024, le=65535)]


class SpecError(PlatformError):
    """``platform.yaml`` is invalid. ``problems`` holds one ``(key path, message)`` per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines), "correct the keys named above; nothing was started")


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `sub_pth` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _k8s_name(value: str) -> str:
    if len(value) > 253 or not DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name; use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


K8sName = Annotated[str, Field(min_length=1)]


class ImageSpec(_Model):
    """The custom Airflow image: ``apache/airflow`` plus the packages DAGs need."""

    repository: str = "airflow-gitops/airflow-mlops"
    tag: str = "latest"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    python: Literal["3.10", "3.11", "3.12", "3.13"] = "3.12"
    # Package names; versions are pinned from the local platform's lock (one source of truth).
    extra_requirements: list[str] = Field(
        default_factory=lambda: ["mlflow", "pandas", "pyarrow", "scikit-learn", "boto3"]
    )

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$", v):
            raise ValueError(f"{v!r} is not an image repository; use e.g. 'registry.example.com/team/airflow-mlops'")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", v):
            raise ValueError(f"{v!r} is not a valid image tag; use letters, digits, '_', '.', '-'")
        return v


class AirflowSpec(_Model):
    """Airflow itself: executor and configuration overrides."""

    # The executor on Kubernetes. The local target always runs LocalExecutor (no cluster to launch pods).
    executor: Literal["KubernetesExecutor", "LocalExecutor", "CeleryExecutor"] = "KubernetesExecutor"
    load_examples: bool = False
    dags_are_paused_at_creation: bool = False
    # Extra `[section] key = value` overrides, e.g. {"core": {"default_task_retries": 1}}. Keys the platform
    # manages (contract.SETTINGS) are errors naming the platform.yaml key to set instead.
    config: dict[str, dict[str, str | int | float | bool]] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for section, keys in v.items():
            if not re.match(r"^[a-z_][a-z0-9_.]*$", section):
                raise ValueError(f"section {section!r} is not an Airflow config section name (e.g. 'core')")
            for key in keys:
                if not re.match(r"^[a-z_][a-z0-9_]*$", key):
                    raise ValueError(f"key {section}.{key} is not an Airflow config key (lower_snake_case)")
        collisions = contract.config_collisions(v)
        if collisions:
            raise ValueError("; ".join(f"{path.removeprefix('airflow.config.')} {msg}" for path, msg in collisions))
        return v


class DagsSpec(_Model):
    """Where DAGs come from: a Git repository, synced the GitOps way."""

    # None: a bare repository in the state directory, seeded from the DAG repository template.
    repo: str | None = None
    branch: str = "main"
    sub_path: str = "dags"
    depth: int = Field(default=1, ge=0)
    # Seconds between syncs (git-sync `period`, GitDagBundle `refresh_interval`). Unset: 10 s for a
    # remote repository (the seed's git-sync period), 1 s for the local bare repository, where a
    # fetch is a few milliseconds of local I/O and push-to-live is then ~1-2 s instead of ~5.
    sync_interval: int | None = Field(default=None, ge=1, le=3600)
    # SSH deploy key (private half) and pinned known_hosts for an SSH `repo`.
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    # Kubernetes delivery: the chart's git-sync sidecars (the seed's) or Airflow 3's GitDagBundle.
    delivery: Literal["git-sync", "bundle"] = "git-sync"

    @field_validator("sync_interval")
    @classmethod
    def _interval(cls, v: int | None, info) -> int:
        if v is not None:
            return v
        return 1 if info.data.get("repo") is None else 10

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        if not v or v.startswith(("-", "/")) or ".." in v or " " in v or v.endswith((".lock", "/")):
            raise ValueError(f"{v!r} is not a valid branch name; use e.g. 'main'")
        return v

    @field_validator("sub_path")
    @classmethod
    def _sub_path(cls, v: str) -> str:
        v = v.strip("/")
        if v.startswith(".") and v != "." or ".." in v.split("/"):
            raise ValueError(f"{v!r} must be a path inside the repository, e.g. 'dags'")
        return v

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not (
            re.match(r"^(ssh|https?|file|git)://", v) or re.match(r"^[\w.-]+@[\w.-]+:[^/].*", v) or v.startswith("/")
        ):
            raise ValueError(
                f"{v!r} is not a Git URL; use 'git@host:org/repo.git', 'ssh://git@host:port/org/repo.git', "
                "'https://host/org/repo.git' or an absolute path"
            )
        return v

    @property
    def is_ssh(self) -> bool:
        return bool(self.repo) and (
            self.repo.startswith("ssh://") or bool(re.match(r"^[\w.-]+@[\w.-]+:[^/]", self.repo))
        )

    def ssh_host_port(self) -> tuple[str, int]:
        """Host and port of an SSH ``repo`` (for known_hosts look-ups)."""
        assert self.repo
        if self.repo.startswith("ssh://"):
            parts = urlsplit(self.repo)
            return parts.hostname or "", parts.port or 22
        return self.repo.split("@", 1)[1].split(":", 1)[0], 22

    @model_validator(mode="after")
    def _ssh_needs_key(self) -> DagsSpec:
        if self.is_ssh and self.ssh_key_file is None:
            raise ValueError(
                "dags.repo is an SSH URL but dags.ssh_key_file is not set; set it to the deploy key's "
                "private half (generate one with `airflow-gitops init --deploy-key`)"
            )
        if self.is_ssh and self.known_hosts_file is None:
            raise ValueError(
                "dags.repo is an SSH URL but dags.known_hosts_file is not set; pin the host key with "
                "`ssh-keyscan -p PORT HOST > known_hosts` (verify its fingerprint) and set the path"
            )
        return self


class DatabaseSpec(_Model):
    """The metadata database. None: a PostgreSQL the local target runs itself."""

    # ``${VAR}`` anywhere in the URL is read from the environment when the URL is used, so a password
    # never has to be written into platform.yaml.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if dburl.VAR_REF.fullmatch(v):
            return v
        scheme = v.split("://", 1)[0]
        if "://" not in v or not scheme.startswith("postgres"):
            raise ValueError(
                "must be a PostgreSQL URL 'postgresql://USER:PASSWORD@HOST:5432/DB' "
                "(put the password in an environment variable and write '${AIRFLOW_DB_URL}')"
            )
        netloc = v.split("://", 1)[1].split("/", 1)[0]
        if netloc.count("@") > 1:
            raise ValueError(
                "the password contains '@' that is not URL-encoded; write it as %40 "
                "(python -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=\"\"))' PASS)"
            )
        return v

    def expanded_url(self) -> str | None:
        """The URL with every ``${VAR}`` resolved from the environment (not validated: doctor explains it)."""
        if not self.url or not dburl.references(self.url):
            return self.url
        try:
            return dburl.expand(self.url)
        except dburl.UnsetVariable as err:
            raise SpecError("platform.yaml", [("database.url", str(err))]) from None

    def resolved_url(self) -> str | None:
        """The URL with every ``${VAR}`` reference resolved from the environment, then validated."""
        value = self.expanded_url()
        if value == self.url:
            return value
        try:
            return DatabaseSpec(url=value).url
        except ValidationError as err:
            names = ", ".join(f"${{{n}}}" for n in dburl.references(self.url))
            raise SpecError("platform.yaml", [(f"database.url ({names})", p[1]) for p in _problems(err)]) from None


class SecretsSpec(_Model):
    """Names of the Kubernetes Secrets and where local key material lives."""

    fernet_key_secret: str = "airflow-fernet-key"
    metadata_secret: str = "airflow-metadata"
    git_ssh_secret: str = "airflow-git-ssh"
    aws_secret: str = "aws-credentials"
    api_secret_key_secret: str = "airflow-api-secret-key"
    jwt_secret_secret: str = "airflow-jwt-secret"
    # The Airflow admin login's password (generated; the chart's create-user job reads it from here).
    admin_password_secret: str = "airflow-admin-password"
    # airflow.config entries that hold secrets (password/secret/token ... in the key's name).
    config_secret: str = "airflow-config-secrets"
    # Where generated key material lives (0600 files). Relative to the state directory.
    dir: Path = Path("secrets")

    _check_names = field_validator(
        "fernet_key_secret",
        "metadata_secret",
        "git_ssh_secret",
        "aws_secret",
        "api_secret_key_secret",
        "jwt_secret_secret",
        "admin_password_secret",
        "config_secret",
    )(classmethod(lambda cls, v: _k8s_name(v)))


class AwsSpec(_Model):
    """AWS credentials for DAG code (the seed's `/home/airflow/.aws` mount)."""

    # A shared credentials file (INI, `[profile]` sections). None: generated for the local S3 endpoint.
    credentials_file: Path | None = None
    config_file: Path | None = None
    profile: str = "default"
    region: str = "us-east-1"
    # S3/STS endpoint. None: real AWS when credentials_file is set, the local endpoint otherwise.
    endpoint_url: str | None = None
    bucket: str = "mlops-data"

    def config_file_text(self, endpoint_url: str | None, *, local_endpoint: bool = False) -> str:
        """An AWS config file for this profile: region, and the S3 endpoint when one is given.

        Both targets write it (the local platform's ``aws/config``, the Kubernetes AWS Secret); boto3
        >= 1.28 honours ``endpoint_url`` there, so DAG code calls plain ``boto3.client("s3")``. The local
        endpoint (rclone) computes checksums only where S3 requires them, so boto3 and pyarrow's AWS SDK
        are told to do the same (otherwise ranged GETs and pyarrow's multipart uploads are refused).
        """
        section = "default" if self.profile == "default" else f"profile {self.profile}"
        lines = [f"[{section}]", f"region = {self.region}"]
        if endpoint_url:
            lines.append(f"endpoint_url = {endpoint_url}")
        if local_endpoint:
            lines += ["request_checksum_calculation = when_required", "response_checksum_validation = when_required"]
        return "\n".join(lines) + "\n"

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not re.match(r"^[a-z]{2}(-[a-z]+)+-\d$", v):
            raise ValueError(f"{v!r} is not an AWS region; use e.g. 'us-east-1' or 'ap-northeast-2'")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", v):
            raise ValueError(f"{v!r} is not a valid S3 bucket name (3-63 chars: a-z, 0-9, '.', '-')")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError(f"{v!r} must be an http(s) URL, e.g. 'https://s3.ap-northeast-2.amazonaws.com'")
        return v


class MlflowSpec(_Model):
    """MLflow tracking (the series' previous step). None: a local tracking server."""

    tracking_uri: str | None = None
    experiment: str = "airflow-gitops"
    registered_model: str = "mlops-classifier"

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?|databricks|file)://|^databricks$", v):
            raise ValueError(f"{v!r} must be an MLflow tracking URI, e.g. 'http://mlflow.mlflow.svc:5000'")
        return v


class LogsSpec(_Model):
    persistence: bool = True
    existing_claim: str = "airflow-logs"
    size: str = "10Gi"
    storage_class: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not re.match(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$", v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity; use e.g. '10Gi'")
        return v

    _claim = field_validator("existing_claim")(classmethod(lambda cls, v: _k8s_name(v)))


class IngressSpec(_Model):
    enabled: bool = True
    host: str = "airflow.local"
    ingress_class: str | None = None
    tls_secret: str | None = None

    _host = field_validator("host")(classmethod(lambda cls, v: _k8s_name(v)))


class KubernetesSpec(_Model):
    namespace: str = "airflow"
    release: str = "airflow"
    chart_version: str = "1.21.0"
    # A local chart folder, or REPO_URL@VERSION; None: the official repository at chart_version.
    chart: str | None = None
    context: str | None = None

    @field_validator("namespace", "release")
    @classmethod
    def _label(cls, v: str) -> str:
        if len(v) > 53 or not DNS_LABEL.match(v):
            raise ValueError(f"{v!r} must be a DNS label: lower-case letters, digits and '-', at most 53")
        return v


class Ports(_Model):
    api: Port = 8080
    mlflow: Port = 5000
    s3: Port = 5055
    postgres: Port = 5433

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        seen: dict[int, str] = {}
        for name, port in self.model_dump().items():
            if port in seen:
                raise ValueError(f"local.ports.{name} and local.ports.{seen[port]} are both {port}; pick two")
            seen[port] = name
        return self


class LocalSpec(_Model):
    """The local target: everything on 127.0.0.1, state in one directory."""

    state_dir: Path = Path(DEFAULT_STATE_DIR)
    ports: Ports = Field(default_factory=Ports)
    # Task slots ([core] parallelism). Airflow's default 32 pre-forks 32 workers: too much for a laptop.
    parallelism: int = Field(default=4, ge=1, le=64)


class PlatformSpec(_Model):
    """A whole platform, as declared in ``platform.yaml``."""

    name: str = "airflow-gitops"
    image: ImageSpec = Field(default_factory=ImageSpec)
    airflow: AirflowSpec = Field(default_factory=AirflowSpec)
    dags: DagsSpec = Field(default_factory=DagsSpec)
    database: DatabaseSpec = Field(default_factory=DatabaseSpec)
    secrets: SecretsSpec = Field(default_factory=SecretsSpec)
    aws: AwsSpec = Field(default_factory=AwsSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    logs: LogsSpec = Field(default_factory=LogsSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    local: LocalSpec = Field(default_factory=LocalSpec)

    # Where the spec was read from; relative paths in it resolve against this folder.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, p: Path | str) -> Path:
        """Resolve a path from the spec against the spec file's folder."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def state_dir(self) -> Path:
        return self.path(self.local.state_dir)

    @property
    def secrets_dir(self) -> Path:
        d = Path(self.secrets.dir)
        return d if d.is_absolute() else self.state_dir / d

    @property
    def local_repo(self) -> Path:
        """The bare repository the local target seeds when ``dags.repo`` is unset."""
        return self.state_dir / "dags.git"

    @property
    def dag_repo_url(self) -> str:
        return self.dags.repo or str(self.local_repo)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after")) or "(top level)"


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, str) or "[" not in p)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see docs/platform-yaml.md)"
        elif e["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be one of:")
        elif e["type"] in ("int_parsing", "int_type", "bool_parsing", "bool_type", "string_type"):
            msg = f"{msg} (got {e.get('input')!r})"
        out.append((_loc(loc), msg))
    return out


def parse_spec(data: Any, *, source: str = DEFAULT_SPEC_FILE, base_dir: Path | None = None) -> PlatformSpec:
    """Validate already-loaded YAML data. Raises :class:`SpecError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, [("(top level)", "must be a mapping of keys such as 'dags:' and 'aws:'")])
    try:
        return PlatformSpec(**data, base_dir=base_dir or Path.cwd())
    except ValidationError as err:
        raise SpecError(source, _problems(err)) from None
    except TypeError as err:  # e.g. a non-string key
        raise SpecError(source, [("(top level)", str(err))]) from None


def load_spec(path: Path | str | None = None) -> PlatformSpec:
    """Read ``platform.yaml`` (or the embedded defaults when ``path`` is None and no file exists)."""
    if path is None:
        candidate = Path.cwd() / DEFAULT_SPEC_FILE
        if not candidate.exists():
            return parse_spec({}, source="(embedded defaults)", base_dir=Path.cwd())
        path = candidate
    path = Path(path)
    if not path.exists():
        raise SpecError(str(path), [("(file)", "not found; create it with `airflow-gitops init`")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise SpecError(str(path), [(where, f"not valid YAML: {getattr(err, 'problem', err)}")]) from None
    return parse_spec(data, source=str(path), base_dir=path.resolve().parent)
