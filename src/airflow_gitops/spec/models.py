"""The sections of ``platform.yaml`` (image, airflow, dags, database, secrets, aws, mlflow, serving,
logs, ingress, kubernetes, local) and :class:`PlatformSpec`, the whole file: pydantic models, each key
with its default and its validator."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .. import dburl, names
from .base import (
    DEFAULT_STATE_DIR,
    DNS_LABEL,
    Port,
    SpecError,
    _config_safe,
    _k8s_name,
    _looks_like_token,
    _Model,
    _printable,
    _redact,
    _short,
    _ssh_safe,
)
from .declared import ConnectionSpec, ConnId, FromFile, PoolName, PoolSpec, VariableKey, _secret_ref, _variable_value

# Git's check-ref-format rules for a branch (git help check-ref-format).
_BAD_REF = re.compile(r"(^|/)\.|\.lock(/|$)|\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{|//|^-|^/|/$|\.$|^@$|^HEAD$")
# A Helm chart version (SemVer, 'v' and missing minor/patch allowed as Helm does) and a kubeconfig context.
_CHART_VERSION = re.compile(r"v?\d+(\.\d+){0,2}(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
_CONTEXT = re.compile(r"[^\s-]\S*")
_GIT_URL_FORMS = (
    "use 'git@host:org/repo.git', 'ssh://git@host:port/org/repo.git', 'https://host/org/repo.git' or an absolute path"
)


def _full_match(field: str | tuple[str, ...], pattern: str | re.Pattern, problem: str, max_len: int | None = None):
    """A validator of ``field``: the whole value matches ``pattern`` (no trailing newline slips through) within
    ``max_len`` characters, else ``problem`` with ``{v}`` the value, shortened and quoted."""
    rx = re.compile(pattern)

    def check(cls, v: str | None) -> str | None:
        if v is None:  # an optional key left out
            return v
        if (max_len is not None and len(v) > max_len) or not rx.fullmatch(v):
            raise ValueError(problem.format(v=_short(v)))
        return v

    return field_validator(*((field,) if isinstance(field, str) else field))(classmethod(check))


class ImageSpec(_Model):
    """The custom Airflow image: ``apache/airflow`` plus the packages DAGs need."""

    repository: str = "airflow-gitops/airflow-mlops"
    tag: str = "latest"
    # The image's manifest digest (what `image build --push` or your registry prints): pods then run exactly
    # that image, whatever the tag points to later (the chart and the serving pods use REPOSITORY@DIGEST).
    digest: str | None = None
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # The Python the local platform (and its tests) run: uv.lock pins some packages differently per Python,
    # so another one means an image with versions nothing was tested with (render warns). X.Y, or X.Y.Z when
    # the base image's patch level is known (the lock has markers on it, e.g. soupsieve for >= 3.11.5).
    python: str = "3.11"
    # Package names; versions are pinned from the local platform's lock (one source of truth).
    extra_requirements: list[str] = Field(
        default_factory=lambda: ["mlflow", "pandas", "pyarrow", "scikit-learn", "boto3"]
    )

    _repo = _full_match(
        "repository",
        r"[a-z0-9]+([._/:-][a-z0-9]+)*",
        "{v} is not an image repository; use e.g. 'registry.example.com/team/airflow-mlops'",
    )
    _tag = _full_match(
        "tag", r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "{v} is not a valid image tag; use letters, digits, '_', '.', '-'"
    )

    @field_validator("python", mode="before")
    @classmethod
    def _python_quoted(cls, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError(f"write it quoted, python: '{v}' (YAML reads 3.10 as the number 3.1)")
        return v

    _digest = _full_match(
        "digest",
        r"sha256:[0-9a-f]{64}",
        "{v} is not an image digest; use sha256: and 64 hex digits (e.g. from `skopeo inspect`)",
    )
    _python = _full_match(
        "python",
        r"3\.(10|11|12|13)(\.\d{1,2})?",
        "{v} is not a Python the image can have; use 3.10, 3.11, 3.12 or 3.13, or with the base image's patch "
        "level, e.g. '3.11.2'",
    )

    @property
    def ref(self) -> str:
        """What pods run: ``REPOSITORY@DIGEST`` when the digest is given, else ``REPOSITORY:TAG``."""
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"

    @property
    def python_minor(self) -> str:
        """X.Y of ``python`` (the official image's tag suffix, the lock's ``python_version``)."""
        return ".".join(self.python.split(".")[:2])


class AirflowSpec(_Model):
    """Airflow itself: executor and configuration overrides."""

    # The executor on Kubernetes. The local target always runs LocalExecutor (no cluster to launch pods).
    executor: Literal["KubernetesExecutor", "LocalExecutor", "CeleryExecutor"] = "KubernetesExecutor"
    load_examples: bool = False
    dags_are_paused_at_creation: bool = False
    # Extra `[section] key = value` overrides, e.g. {"core": {"default_task_retries": 1}}. Keys the platform
    # manages (names.SETTINGS) are errors naming the platform.yaml key to set instead.
    config: dict[str, dict[str, str | int | float | bool]] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for section, keys in v.items():
            if not re.fullmatch(r"[a-z_][a-z0-9_.]*", section):
                raise ValueError(f"section {_short(section)} is not an Airflow config section name (e.g. 'core')")
            for key in keys:
                if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
                    raise ValueError(
                        f"key {_short(section)}.{_short(key)} is not an Airflow config key (lower_snake_case)"
                    )
        collisions = names.config_collisions(v)
        if collisions:
            raise ValueError("; ".join(f"{path.removeprefix('airflow.config.')} {msg}" for path, msg in collisions))
        return v


class DagsSpec(_Model):
    """Where DAGs come from: a Git repository, synced the GitOps way."""

    # None: a bare repository in the state directory, seeded from the DAG repository template.
    repo: str | None = None
    branch: str = "main"
    sub_path: str = "dags"
    # 0: the full history.
    depth: int = Field(default=1, ge=0, le=1_000_000)
    # Seconds between syncs (git-sync `period`, GitDagBundle `refresh_interval`). Unset: 10 s for a
    # remote repository (the seed's git-sync period), 1 s for the local bare repository, where a
    # fetch is a few milliseconds of local I/O and push-to-live is then ~1-2 s instead of ~5.
    sync_interval: int | None = Field(default=None, ge=1, le=3600)
    # SSH deploy key (private half) and pinned known_hosts for an SSH `repo`.
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    # Kubernetes delivery: the chart's git-sync sidecars (the seed's) or Airflow 3's GitDagBundle.
    delivery: Literal["git-sync", "bundle"] = "git-sync"

    @property
    def subdir(self) -> str:
        """``sub_path`` as a folder inside the repository: '' for its root ('' or '.' in platform.yaml)."""
        return "" if self.sub_path in ("", ".") else self.sub_path

    @field_validator("sync_interval")
    @classmethod
    def _interval(cls, v: int | None, info) -> int:
        if v is not None:
            return v
        return 1 if info.data.get("repo") is None else 10

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        if not v or len(v) > 255 or _BAD_REF.search(v):
            raise ValueError(
                f"{_short(v)} is not a valid branch name (git check-ref-format: at most 255 characters, no "
                "whitespace or control characters, none of ~^:?*[\\ '..' '@{' '//', no leading '-' or '.'); "
                "use e.g. 'main'"
            )
        return v

    @field_validator("sub_path")
    @classmethod
    def _sub_path(cls, v: str) -> str:
        _printable(v, "the path")
        v = v.strip("/")
        if v.startswith(".") and v != "." or ".." in v.split("/"):
            raise ValueError(f"{_short(v)} must be a path inside the repository, e.g. 'dags'")
        return v

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError(f"contains whitespace, a newline or a control character; {_GIT_URL_FORMS}")
        userinfo = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@]*)@", v)
        if userinfo and (":" in userinfo[1] or _looks_like_token(userinfo[1])):
            raise ValueError(
                f"{_redact(v)} carries credentials (redacted here); never put a password or token in "
                "platform.yaml: use an SSH deploy key (repo: git@HOST:ORG/REPO.git with dags.ssh_key_file), or "
                "an https URL without credentials and a git credential helper holding the token"
            )
        plain = re.match(r"(git|http)://", v, re.IGNORECASE)
        if plain:
            raise ValueError(
                f"{_short(_redact(v))} fetches DAG code over {plain[1].lower()}://, an unauthenticated channel "
                "(anyone on the path can change the code Airflow runs); use ssh (git@HOST:ORG/REPO.git with "
                "dags.ssh_key_file) or https://"
            )
        if re.match(r"^-|^[^/:]*@-|^[A-Za-z][A-Za-z0-9+.-]*://([^/@]*@)?-", v):
            raise ValueError("the host or user starts with '-' (ssh would read it as an option); correct the URL")
        if not (re.match(r"^(ssh|https|file)://", v) or re.match(r"^[\w.-]+@[\w.-]+:[^/].*", v) or v.startswith("/")):
            raise ValueError(f"{_short(_redact(v))} is not a Git URL; {_GIT_URL_FORMS}")
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

    @field_validator("ssh_key_file", "known_hosts_file")
    @classmethod
    def _ssh_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            _printable(str(v), "the path")
            _ssh_safe(str(v))
        return v

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
        if "${" in v:
            if v.count("${") != len(dburl.references(v)):
                raise ValueError(
                    "'${' must start an environment variable reference ${NAME} (letters, digits, '_'); "
                    "write a literal '$' as %24"
                )
            if dburl.VAR_REF.fullmatch(v):
                return v
            _url_problem(dburl.VAR_REF.sub("x", v))
            return v
        _url_problem(v)
        return v

    def expanded_url(self) -> str | None:
        """The URL with every ``${VAR}`` resolved from the environment (not validated: doctor explains it)."""
        if not self.url or "${" not in self.url:
            return self.url
        names = list(dict.fromkeys(dburl.references(self.url)))
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            listed = ", ".join(f"${{{n}}}" for n in missing)
            raise SpecError(
                "platform.yaml",
                [("database.url", f"refers to {listed} but that environment variable is not set; export it")],
            )
        value = dburl.expand(self.url)
        if "${" in value:
            raise SpecError(
                "platform.yaml",
                [(self._where(), "a variable's value contains '${' (not expanded again); write '$' as %24")],
            )
        return value

    def _where(self) -> str:
        return f"database.url ({', '.join(f'${{{n}}}' for n in dict.fromkeys(dburl.references(self.url or '')))})"

    def resolved_url(self) -> str | None:
        """The URL with every ``${VAR}`` reference resolved from the environment, then validated."""
        value = self.expanded_url()
        if value == self.url:
            return value
        try:
            _url_problem(value)
        except ValueError as err:
            raise SpecError("platform.yaml", [(self._where(), str(err))]) from None
        return value


def _url_problem(v: str) -> None:
    """Raise ValueError if ``v`` is not a PostgreSQL URL. Never echoes ``v`` (it holds a password)."""
    _printable(v, "the URL")
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
    # Declared Connections and Variables (AIRFLOW_CONN_* / AIRFLOW_VAR_*, one key each).
    connections_secret: str = "airflow-connections"
    # mlflow.username / mlflow.password: the login for your own MLflow server, on every pod that runs DAG code.
    mlflow_secret: str = "mlflow-credentials"
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
        "connections_secret",
        "mlflow_secret",
    )(classmethod(lambda cls, v: _k8s_name(v)))

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: Path) -> Path:
        _config_safe(str(v))
        return v

    @model_validator(mode="after")
    def _distinct(self) -> SecretsSpec:
        seen: dict[str, str] = {}
        for key, name in self.model_dump(exclude={"dir"}).items():
            if name in seen:
                raise ValueError(
                    f"secrets.{key} and secrets.{seen[name]} are both {_short(name)}; one would overwrite the "
                    "other: give each Secret its own name"
                )
            seen[name] = key
        return self


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

    @field_validator("credentials_file", "config_file")
    @classmethod
    def _file(cls, v: Path | None) -> Path | None:
        if v is not None:
            _printable(str(v), "the path")
        return v

    # The profile becomes an INI section header in the AWS files: '[', ']' or a newline would inject sections.
    _profile = _full_match(
        "profile",
        r"[A-Za-z0-9_.+-]{1,64}",
        "{v} is not an AWS profile name; use 1-64 letters, digits, '_', '.', '+', '-' (e.g. 'default')",
    )
    _region = _full_match(
        "region", r"[a-z]{2}(-[a-z]+)+-\d", "{v} is not an AWS region; use e.g. 'us-east-1' or 'ap-northeast-2'"
    )
    _bucket = _full_match(
        "bucket",
        r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
        "{v} is not a valid S3 bucket name (3-63 chars: a-z, 0-9, '.', '-')",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(r"https?://\S+", v) or not v.isprintable()):
            raise ValueError(
                f"{_short(v)} must be an http(s) URL without spaces, e.g. 'https://s3.ap-northeast-2.amazonaws.com'"
            )
        return v


class MlflowSpec(_Model):
    """MLflow tracking (the series' previous step). None: a local tracking server."""

    tracking_uri: str | None = None
    experiment: str = "airflow-gitops"
    registered_model: str = "mlops-classifier"
    # The login for your own MLflow server (its basic-auth app) that tasks and serving send, as
    # MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. The password by reference only ('${VAR}' or
    # {from_file: PATH}); on Kubernetes it goes into the Secret secrets.mlflow_secret.
    username: str | None = None
    password: Annotated[str | FromFile | None, BeforeValidator(_secret_ref)] = None

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None and (not v or not v.isprintable() or ":" in v or v != v.strip()):
            raise ValueError(
                f"{_short(v)} is not an MLflow user name; give the name of the user your MLflow server knows "
                "(printable, no ':' and no surrounding spaces)"
            )
        return v

    @model_validator(mode="after")
    def _login(self) -> MlflowSpec:
        if (self.username is None) != (self.password is None):
            given, missing = ("username", "password") if self.password is None else ("password", "username")
            raise ValueError(
                f"mlflow.{given} is set but mlflow.{missing} is not: MLflow's login needs both; set "
                f"mlflow.{missing} too, or remove mlflow.{given}"
            )
        if self.password is not None and self.tracking_uri is None:
            raise ValueError(
                "mlflow.username/password are the login for your own MLflow server, but mlflow.tracking_uri is "
                "not set (the local target runs its own MLflow, with a login it generates): set "
                "mlflow.tracking_uri, or remove mlflow.username and mlflow.password"
            )
        return self

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and (
            not re.match(r"^(https?|databricks|file)://|^databricks$", v) or re.search(r"\s", v) or not v.isprintable()
        ):
            raise ValueError(f"{_short(v)} must be an MLflow tracking URI, e.g. 'http://mlflow.mlflow.svc:5000'")
        return v


_MLFLOW_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


class ServingSpec(_Model):
    """The serving component: ``models:/<model>@<alias>`` over HTTP, hot-swapped when the alias moves.

    On by default: the template's pipeline registers a model and moves ``champion``; a platform that
    trains a champion and does not serve it leaves the user one more thing to wire up by hand.
    """

    enabled: bool = True
    model: str | None = None  # null: mlflow.registered_model (what the template's pipeline registers)
    alias: str = "champion"  # the template pipeline's alias
    poll_interval: float = Field(10.0, ge=0.5, le=3600)  # the fallback when no webhook arrives
    webhook: bool = True  # MLflow's model_version_alias.created webhook, HMAC-signed
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    # Kubernetes: pods of the serving Deployment (each follows the alias and swaps on its own); with 2 or
    # more a PodDisruptionBudget keeps one up through node drains.
    replicas: int = Field(2, ge=1, le=100)
    ingress_host: str | None = None  # Kubernetes: an Ingress for the serving Service at this host
    tls_secret: str | None = None  # Kubernetes: the kubernetes.io/tls Secret for ingress_host
    # A new version is downloaded and first checked in a worker process beside the server, so the swap
    # does not slow the requests it serves meanwhile (bench/bench_serving.py); false saves that process's
    # memory (~180 MiB) at the cost of slower requests during a swap.
    load_in_worker: bool = True

    @model_validator(mode="after")
    def _tls_needs_host(self):
        if self.tls_secret and not self.ingress_host:
            raise ValueError(
                "serving.tls_secret is set but serving.ingress_host is not: the TLS Secret is for the serving "
                "Ingress, which only exists with a host; set serving.ingress_host or remove serving.tls_secret"
            )
        return self

    _ingress_names = field_validator("ingress_host", "tls_secret")(
        classmethod(lambda cls, v: v if v is None else _k8s_name(v))
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or len(v) > 256 or not v.isprintable() or any(c in v for c in "/:@")):
            raise ValueError(
                f"{_short(v)} must be a registered model name (printable, no '/', ':' or '@', "
                "at most 256 characters), e.g. 'mlops-classifier'; or null for mlflow.registered_model"
            )
        return v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if not _MLFLOW_ALIAS.match(v) or v.lower() == "latest" or re.fullmatch(r"[vV]\d+", v):
            raise ValueError(
                f"{_short(v)} must be an MLflow alias: letters, digits, '_' or '-', not 'latest' "
                "nor v<number> (MLflow reserves those), e.g. 'champion'"
            )
        return v


def _remote(v: Any) -> Any:
    # YAML 1.1 reads `off` / `no` as false: both mean what null means (no remote logging).
    if v is None or v is False or v == "s3":
        return None if v is False else v
    raise ValueError(
        f"{_short(v)} is not a remote logging backend: use 's3' (task logs to aws.bucket with the platform's "
        "AWS credentials), or null / false for none (the seed's logs volume only)"
    )


class LogsSpec(_Model):
    """Task logs: the seed's PVC (Kubernetes; files in the state dir locally) and, optionally, Airflow's
    remote logging to S3, which needs no ReadWriteMany volume for task pods on several nodes."""

    persistence: bool = True
    existing_claim: str = "airflow-logs"
    size: str = "10Gi"
    storage_class: str | None = None
    # 's3': every task log is also uploaded to s3://<aws.bucket>/<remote_prefix>/ with the platform's AWS
    # credentials and endpoint, and read back from there by the API server. null (false, off): logs stay
    # where the seed keeps them.
    remote: Annotated[Literal["s3"] | None, BeforeValidator(_remote)] = None
    remote_prefix: str = "airflow-logs"

    @field_validator("remote_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        # An S3 key prefix inside aws.bucket; it also becomes part of an Airflow config value (no '%', '{').
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", v) or ".." in v.split("/") or len(v) > 512:
            raise ValueError(
                f"{_short(v)} is not an S3 key prefix: use folder names of letters, digits, '_', '.', '-' "
                "separated by '/', no leading or trailing '/', e.g. 'airflow-logs' or 'logs/airflow'"
            )
        return v

    _size = _full_match(
        "size", r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?", "{v} is not a Kubernetes quantity; use e.g. '10Gi'"
    )

    _claim = field_validator("existing_claim")(classmethod(lambda cls, v: _k8s_name(v)))


class IngressSpec(_Model):
    enabled: bool = True
    host: str = "airflow.local"
    ingress_class: str | None = None
    tls_secret: str | None = None

    _host = field_validator("host")(classmethod(lambda cls, v: _k8s_name(v)))


LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + LABEL_NAME)
LABEL_VALUE = re.compile(f"({LABEL_NAME})?")
IMAGE_REF = re.compile(r"[a-z0-9]+([._/:-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class Toleration(_Model):
    """A Kubernetes toleration (the chart's ``tolerations`` entries)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and not LABEL_KEY.fullmatch(v):
            raise ValueError(f"{_short(v)} is not a taint key; use e.g. 'dedicated'")
        return v


class KubernetesSpec(_Model):
    namespace: str = "airflow"
    release: str = "airflow"
    chart_version: str = "1.21.0"
    # A local chart folder, or REPO_URL@VERSION; None: the official repository at chart_version.
    chart: str | None = None
    context: str | None = None
    # Where the pods run: the chart's nodeSelector and tolerations, for every pod it makes (the
    # KubernetesExecutor's task pods included).
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    # The chart's side images, for clusters that pull from a registry of their own (air-gapped, mirrors):
    # 'repository:tag'. None: the chart's defaults (registry.k8s.io/git-sync, quay.io statsd-exporter).
    git_sync_image: str | None = None
    statsd_image: str | None = None

    @field_validator("git_sync_image", "statsd_image")
    @classmethod
    def _image_ref(cls, v: str | None) -> str | None:
        if v is not None and not IMAGE_REF.fullmatch(v):
            raise ValueError(
                f"{_short(v)} is not an image reference 'repository:tag'; "
                "use e.g. 'registry.example.com/git-sync:v4.4.2'"
            )
        return v

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise ValueError(f"{_short(key)}: {_short(value)} is not a Kubernetes label; use e.g. 'pool: airflow'")
        return v

    _label = _full_match(
        ("namespace", "release"),
        DNS_LABEL,
        "{v} must be a DNS label: lower-case letters, digits and '-', at most 53",
        max_len=53,
    )
    # Both reach helm/kubectl's command line, values.yaml's header and NOTES.md: never an option or a line break.
    _chart_version = _full_match(
        "chart_version", _CHART_VERSION, "{v} is not a chart version; write a chart version such as 1.21.0", max_len=64
    )

    @field_validator("context")
    @classmethod
    def _context(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _CONTEXT.fullmatch(v) or not v.isprintable()):
            raise ValueError(
                f"{_short(v)} is not a kubeconfig context name (no leading '-', no spaces or control characters); "
                "write one that `kubectl config get-contexts` lists"
            )
        return v


class Ports(_Model):
    api: Port = 8080
    mlflow: Port = 5000
    s3: Port = 5055
    postgres: Port = 5433
    serving: Port = 5001

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        seen: dict[int, str] = {}
        for name, port in self.model_dump().items():
            if port in seen:
                raise ValueError(f"local.ports.{name} and local.ports.{seen[port]} are both {port}; pick two")
            seen[port] = name
        return self


# What the DAG repository template's tasks import (local.preload's default).
DEFAULT_PRELOAD = (
    "pandas",
    "sklearn.datasets",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.tree",
    "boto3",
    "mlflow",
    "mlflow.sklearn",
)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,20}")


_POSIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,30}")


class LocalSpec(_Model):
    """The local target: everything on 127.0.0.1, state in one directory."""

    state_dir: Path = Path(DEFAULT_STATE_DIR)
    ports: Ports = Field(default_factory=Ports)
    # Task slots ([core] parallelism). Airflow's default 32 pre-forks 32 workers: too much for a laptop.
    parallelism: int = Field(default=4, ge=1, le=64)
    # Python packages the DAGs' tasks import, imported once in the scheduler so that every task process
    # (a fork of it) starts with them (docs/performance.md, "Inner loop"). [] turns preloading off.
    preload: list[str] = Field(default_factory=lambda: list(DEFAULT_PRELOAD), max_length=200)
    # The OS user DAG code runs as (tasks, and DAG files while they are parsed) when `up` runs as root:
    # "auto" = airflow-gitops-tasks (created by `up` if missing), a user name, or "same" (as root itself:
    # DAG code can then read the platform's keys). Without root, DAG code runs as the user who ran `up`.
    task_user: str = "same"  # opt-in for now: docs/architecture.md, "Who can read what"

    @field_validator("task_user")
    @classmethod
    def _task_user(cls, v: str) -> str:
        if v in ("auto", "same") or _POSIX_USER.fullmatch(v):
            if v == "root":
                raise ValueError("'root' is what this setting keeps DAG code from; say 'same' to run DAG code as root")
            return v
        raise ValueError(
            f"{_short(v)} is not a user name: give 'auto' (the default: a user of its own), an existing user "
            "such as 'airflow-tasks', or 'same'"
        )

    @field_validator("preload")
    @classmethod
    def _preload(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if not _MODULE.fullmatch(m)]
        if bad:
            raise ValueError(
                f"{_short(bad[0])} is not a Python module name; list importable modules such as 'pandas' "
                "or 'sklearn.ensemble' ([] turns preloading off)"
            )
        return list(dict.fromkeys(v))

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: Path) -> Path:
        _config_safe(str(v))
        return v


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
    serving: ServingSpec = Field(default_factory=ServingSpec)
    logs: LogsSpec = Field(default_factory=LogsSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    local: LocalSpec = Field(default_factory=LocalSpec)
    # Applied by `up`/`sync` locally (REST API), rendered into a Secret (and the create-user job's pool
    # step) on Kubernetes. Values that are secrets go in as '${VAR}' or {from_file: PATH} only.
    connections: dict[ConnId, ConnectionSpec] = Field(default_factory=dict)
    variables: dict[VariableKey, Annotated[Any, BeforeValidator(_variable_value)]] = Field(default_factory=dict)
    pools: dict[PoolName, PoolSpec] = Field(default_factory=dict)

    # Where the spec was read from; relative paths in it resolve against this folder.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, p: Path | str) -> Path:
        """Resolve a path from the spec against the spec file's folder."""
        p = Path(p).expanduser()
        # abspath, not resolve(): a key file that is a symbolic link must be seen as one (and refused).
        return Path(os.path.abspath(p if p.is_absolute() else self.base_dir / p))

    @property
    def serving_model(self) -> str:
        """The registered model serving follows: ``serving.model``, else ``mlflow.registered_model``."""
        return self.serving.model or self.mlflow.registered_model

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

    def env_references(self) -> set[str]:
        """Every environment variable a ``${NAME}`` in platform.yaml refers to (database.url, connections,
        variables, mlflow.password): read by airflow-gitops when it applies the file."""
        texts: list[str] = [self.database.url or ""]
        if isinstance(self.mlflow.password, str):
            texts.append(self.mlflow.password)

        def walk(value: Any) -> None:
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        for conn in self.connections.values():
            walk([conn.description, conn.host, conn.login, conn.password, conn.schema_, conn.extra])
        walk(list(self.variables.values()))
        return {name for text in texts for name in dburl.references(text)}

    def declared_files(self) -> dict[str, Path]:
        """Key path -> file of every ``{from_file: PATH}`` (connections, variables, mlflow.password; resolved)."""
        found: dict[str, Path] = {}

        def walk(value: Any, path: str) -> None:
            if isinstance(value, FromFile):  # not resolved: a symbolic link is refused when it is read
                file = value.from_file.expanduser()
                found[path] = file if file.is_absolute() else self.base_dir / file
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{path}.{k}")
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    walk(v, f"{path}.{i}")

        for conn_id, conn in self.connections.items():
            walk(conn.password, f"connections.{conn_id}.password")
            walk(conn.extra, f"connections.{conn_id}.extra")
        for key, value in self.variables.items():
            walk(value, f"variables.{key}")
        walk(self.mlflow.password, "mlflow.password")
        return found
