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

import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import dburl, names, providers
from .errors import PlatformError

DEFAULT_SPEC_FILE = "platform.yaml"
DEFAULT_STATE_DIR = ".airflow-gitops"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
Port = Annotated[int, Field(ge=1024, le=65535)]

# Bounds on the file (a real platform.yaml is a few KiB, a few levels deep, with no or few aliases).
MAX_SPEC_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 10_000  # values in the document once every alias is expanded
MAX_DEPTH = 32
MAX_LISTED = 20  # problems listed in one message
SHORT = 80  # characters of an input value echoed in a message
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = SHORT
_repr.maxlevel = 2
# Git's check-ref-format rules for a branch (git help check-ref-format).
_BAD_REF = re.compile(r"(^|/)\.|\.lock(/|$)|\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{|//|^-|^/|/$|\.$|^@$|^HEAD$")
# Paths Airflow's git hook puts unquoted into GIT_SSH_COMMAND (run by a shell).
_SHELL_SAFE_PATH = re.compile(r"[\w./@+,=:~-]+")
# A Helm chart version (SemVer, 'v' and missing minor/patch allowed as Helm does) and a kubeconfig context.
_CHART_VERSION = re.compile(r"v?\d+(\.\d+){0,2}(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
_CONTEXT = re.compile(r"[^\s-]\S*")
_GIT_URL_FORMS = (
    "use 'git@host:org/repo.git', 'ssh://git@host:port/org/repo.git', 'https://host/org/repo.git' or an absolute path"
)
_SYSTEM_DIRS = {
    Path(p)
    for p in (
        "/ /bin /boot /dev /etc /home /lib /lib32 /lib64 /media /mnt /opt /proc /root /run /sbin /srv /sys /tmp "
        "/usr /usr/bin /usr/lib /usr/local /usr/sbin /usr/share /var /var/lib /var/log /var/tmp /Users /Library "
        "/System /Applications /Volumes /private /private/etc /private/tmp /private/var"
    ).split()
}


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


class ImageSpec(_Model):
    """The custom Airflow image: ``apache/airflow`` plus the packages DAGs need."""

    repository: str = "airflow-gitops/airflow-mlops"
    tag: str = "latest"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # The Python the local platform (and its tests) run: uv.lock pins some packages differently per Python,
    # so another one means an image with versions nothing was tested with (render warns).
    python: Literal["3.10", "3.11", "3.12", "3.13"] = "3.11"
    # Package names; versions are pinned from the local platform's lock (one source of truth).
    extra_requirements: list[str] = Field(
        default_factory=lambda: ["mlflow", "pandas", "pyarrow", "scikit-learn", "boto3"]
    )

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]+([._/:-][a-z0-9]+)*", v):
            raise ValueError(
                f"{_short(v)} is not an image repository; use e.g. 'registry.example.com/team/airflow-mlops'"
            )
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", v):
            raise ValueError(f"{_short(v)} is not a valid image tag; use letters, digits, '_', '.', '-'")
        return v


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

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        # It becomes an INI section header in the AWS files: '[', ']' or a newline would inject sections.
        if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", v):
            raise ValueError(
                f"{_short(v)} is not an AWS profile name; use 1-64 letters, digits, '_', '.', '+', '-' (e.g. 'default')"
            )
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", v):
            raise ValueError(f"{_short(v)} is not an AWS region; use e.g. 'us-east-1' or 'ap-northeast-2'")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v):
            raise ValueError(f"{_short(v)} is not a valid S3 bucket name (3-63 chars: a-z, 0-9, '.', '-')")
        return v

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


class LogsSpec(_Model):
    persistence: bool = True
    existing_claim: str = "airflow-logs"
    size: str = "10Gi"
    storage_class: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?", v):
            raise ValueError(f"{_short(v)} is not a Kubernetes quantity; use e.g. '10Gi'")
        return v

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

    @field_validator("namespace", "release")
    @classmethod
    def _label(cls, v: str) -> str:
        if len(v) > 53 or not DNS_LABEL.fullmatch(v):
            raise ValueError(f"{_short(v)} must be a DNS label: lower-case letters, digits and '-', at most 53")
        return v

    # Both reach helm/kubectl's command line, values.yaml's header and NOTES.md: never an option or a line break.
    @field_validator("chart_version")
    @classmethod
    def _chart_version(cls, v: str) -> str:
        if len(v) > 64 or not _CHART_VERSION.fullmatch(v):
            raise ValueError(f"{_short(v)} is not a chart version; write a chart version such as 1.21.0")
        return v

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


class LocalSpec(_Model):
    """The local target: everything on 127.0.0.1, state in one directory."""

    state_dir: Path = Path(DEFAULT_STATE_DIR)
    ports: Ports = Field(default_factory=Ports)
    # Task slots ([core] parallelism). Airflow's default 32 pre-forks 32 workers: too much for a laptop.
    parallelism: int = Field(default=4, ge=1, le=64)
    # Python packages the DAGs' tasks import, imported once in the scheduler so that every task process
    # (a fork of it) starts with them (docs/performance.md, "Inner loop"). [] turns preloading off.
    preload: list[str] = Field(default_factory=lambda: list(DEFAULT_PRELOAD), max_length=200)

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


# --- Connections, Variables, pools ---------------------------------------------------------------------
# Names become AIRFLOW_CONN_<NAME> / AIRFLOW_VAR_<NAME> (upper-cased) on Kubernetes and REST API paths
# locally: letters, digits and '_', starting with a letter.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,199}")
_SECRET_SECTIONS = ("connections", "variables")  # errors there never echo a value
MAX_SECRET_FILE_BYTES = 256 * 1024


def _identifier(what: str):
    def check(v: str) -> str:
        if not _IDENTIFIER.fullmatch(v):
            raise ValueError(
                f"{_short(v)} is not a valid {what}; use letters, digits and '_', starting with a letter "
                "(at most 200 characters), e.g. 'warehouse'"
            )
        return v

    return check


def _refs_well_formed(v: str) -> str:
    """Every '${' starts a ``${NAME}`` reference (resolved from the environment when applying)."""
    if "${" in v and v.count("${") != len(dburl.references(v)):
        raise ValueError(
            "'${' must start an environment variable reference ${NAME} (letters, digits, '_'), read when the "
            "platform is applied"
        )
    return v


class FromFile(_Model):
    """``{from_file: PATH}``: a value read from a file (relative to platform.yaml) when the platform is
    applied, never when platform.yaml is read. The file must be ours and not a symbolic link."""

    from_file: Path

    @field_validator("from_file")
    @classmethod
    def _path(cls, v: Path) -> Path:
        if not str(v) or str(v) == ".":
            raise ValueError("from_file is empty; name the file holding the value, e.g. 'secrets/api_token'")
        _printable(str(v), "the path")
        return v


def _from_file(v: dict) -> FromFile:
    if set(v) != {"from_file"} or not isinstance(v["from_file"], str):
        raise ValueError(
            "a mapping here must be exactly {from_file: PATH} (a file read when the platform is applied); "
            "write other values as text"
        )
    return FromFile(from_file=Path(v["from_file"]))


def _inline_secret(hint: str) -> ValueError:
    return ValueError(
        "is a secret given inline; platform.yaml is committed, so secrets go in by reference only: write "
        f"'${{{hint}}}' (an environment variable, read when the platform is applied) or "
        "{from_file: PATH} (a file next to platform.yaml, kept out of Git)"
    )


_HINT = "NAME_OF_THE_SECRET"  # replaced by a name derived from the key path (see _problems)


def _env_hint(path: tuple[Any, ...]) -> str:
    """connections.warehouse.password -> WAREHOUSE_PASSWORD: the variable name an error suggests."""
    parts = [str(p) for p in path[1:] if str(p) != "extra"]
    return re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(parts)).strip("_").upper()[:60] or "SECRET"


def _secret_ref(v: Any) -> str | FromFile | None:
    """A secret field: None, exactly ``${NAME}``, or ``{from_file: PATH}``. Never echoes the value."""
    if v is None or v == "":
        return None
    if isinstance(v, FromFile):
        return v
    if isinstance(v, dict):
        return _from_file(v)
    if isinstance(v, str) and dburl.VAR_REF.fullmatch(v):
        return v
    raise _inline_secret(_HINT)


def _json_value(v: Any, depth: int = 0) -> Any:
    """A JSON-like value (text, number, bool, null, list, mapping) in which ``{from_file: PATH}`` mappings
    become :class:`FromFile` and every '${' starts a reference."""
    if depth > 8:
        raise ValueError("nested more than 8 levels deep; flatten it")
    if isinstance(v, FromFile) or v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, str):
        return _refs_well_formed(v)
    if isinstance(v, list):
        return [_json_value(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if "from_file" in v:
            return _from_file(v)
        bad = [k for k in v if not isinstance(k, str)]
        if bad:
            raise ValueError("keys must be text; quote them")
        return {k: _json_value(x, depth + 1) for k, x in v.items()}
    raise ValueError(f"must be text, a number, true/false, a list or a mapping (got a {type(v).__name__})")


JsonValue = Annotated[Any, BeforeValidator(_json_value)]


def _variable_value(v: Any) -> Any:
    if v is None:
        raise ValueError("has no value; give one (text, a number, JSON) or {from_file: PATH}")
    return _json_value(v)


class ConnectionSpec(_Model):
    """One Airflow Connection (the fields of Airflow's Connection; ``extra`` as a mapping)."""

    conn_type: str
    description: str | None = None
    host: str | None = None
    login: str | None = None
    # Secret: '${VAR}' or {from_file: PATH}, never inline.
    password: Annotated[str | FromFile | None, BeforeValidator(_secret_ref)] = None
    schema_: str | None = Field(default=None, alias="schema")
    port: int | None = Field(default=None, ge=1, le=65535)
    # Keys that name a secret (token, secret, password, *_key ...) take '${VAR}' or {from_file: PATH}.
    extra: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("conn_type")
    @classmethod
    def _conn_type(cls, v: str) -> str:
        if not providers.providers_found() or v in providers.connection_types():
            return v
        near = providers.closest(v)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
        known = ", ".join(sorted(providers.connection_types()))
        raise ValueError(
            f"{_short(v)} is not a connection type of the installed Airflow providers; {hint}"
            f"known: {known if len(known) <= 300 else known[:297] + '...'}; for another type install its provider "
            "package (apache-airflow-providers-...) in this environment and in image.extra_requirements"
        )

    @field_validator("host", "login", "schema_", "description")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return v if v is None else _refs_well_formed(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and re.search(r"://[^/@\s]*:[^/@\s]*@", dburl.VAR_REF.sub("x", v)):
            raise ValueError(
                "carries a password in the URL (user:password@); put the password in 'password' as '${VAR}' or "
                "{from_file: PATH} and leave it out of host"
            )
        return v

    @property
    def schema(self) -> str | None:  # type: ignore[override] - Airflow's name for the field
        return self.schema_


class PoolSpec(_Model):
    """One Airflow pool."""

    # -1: unlimited (Airflow's convention).
    slots: int = Field(ge=-1, le=1_000_000)
    description: str = ""
    include_deferred: bool = False


ConnId = Annotated[str, AfterValidator(_identifier("connection id"))]
VariableKey = Annotated[str, AfterValidator(_identifier("variable key"))]
PoolName = Annotated[str, AfterValidator(_identifier("pool name"))]


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
        variables): read by airflow-gitops when it applies the file."""
        texts: list[str] = [self.database.url or ""]

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
        """Key path -> file of every ``{from_file: PATH}`` under connections and variables (resolved)."""
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
        return found


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
        if loc and loc[0] in _SECRET_SECTIONS:
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
    names = {f"secrets.{k}": v for k, v in spec.secrets.model_dump(exclude={"dir"}).items()}
    for key, name in names.items():
        if spec.ingress.tls_secret == name:
            out.append(("ingress.tls_secret", f"is {_short(name)}, the name of {key}; give it its own name"))
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


# --- reading the file ----------------------------------------------------------------------------


class _Problem(yaml.YAMLError):
    """A problem met while reading the YAML: ``where`` (key path or line) and the message."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where
        self.message = message


class _SpecLoader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, plus: duplicate keys are errors, and the document is bounded (aliases,
    values once aliases are expanded, nesting depth) so a hostile file fails at once instead of hanging."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._key_path: list[str] = []
        self._aliases = 0
        self._count = 0
        self._sizes: dict[int, int] = {}  # node id -> values in it, aliases expanded
        self._paths: dict[int, str] = {}  # node id -> its key path

    def _here(self) -> str:
        here = ".".join(self._key_path) or "(top level)"
        return here if len(here) <= 2 * SHORT else "..." + here[-2 * SHORT :]

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if isinstance(index, yaml.ScalarNode):
            segment: str | None = index.value if len(index.value) <= SHORT else index.value[: SHORT - 3] + "..."
        elif isinstance(index, int):
            segment = str(index)
        elif parent is not None:
            segment = "(a key)"
        else:
            segment = None
        if segment is not None:
            self._key_path.append(segment)
        try:
            event = self.peek_event()
            line = f"line {event.start_mark.line + 1}"
            if len(self._key_path) > MAX_DEPTH:
                raise _Problem(self._here(), f"nested more than {MAX_DEPTH} levels deep ({line}); flatten it")
            self._count += 1
            if self._count > MAX_NODES:
                raise _Problem(self._here(), f"the file holds more than {MAX_NODES:,} values ({line}); shorten it")
            is_alias = isinstance(event, yaml.AliasEvent)
            if is_alias:
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _Problem(
                        self._here(), f"more than {MAX_ALIASES} aliases (*name) ({line}); write the values out"
                    )
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                if is_alias:
                    raise _Problem(
                        self._here(),
                        f"the alias *{event.anchor[:SHORT]} refers to a value containing it ({line}); remove the cycle",
                    )
                if isinstance(node, yaml.SequenceNode):
                    children = node.value
                elif isinstance(node, yaml.MappingNode):
                    children = [n for pair in node.value for n in pair]
                else:
                    children = []
                size = 1 + sum(self._sizes[id(c)] for c in children)
                self._sizes[id(node)] = size
                self._paths[id(node)] = self._here()
            if size > MAX_NODES:
                raise _Problem(
                    self._here(),
                    f"expands to more than {MAX_NODES:,} values through YAML aliases ({line}); write the values out",
                )
            return node
        finally:
            if segment is not None:
                self._key_path.pop()

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    parent = self._paths.get(id(node), "(top level)")
                    name = str(key) if len(str(key)) <= SHORT else str(key)[: SHORT - 3] + "..."
                    raise _Problem(
                        name if parent == "(top level)" else f"{parent}.{name}",
                        f"duplicate key (lines {first} and {line}); YAML would silently keep the last one: "
                        "delete one of them",
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):  # noqa: ANN001, ANN201
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:  # e.g. a 5,000-digit number, the date 2024-13-45
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            raise _Problem(
                self._paths.get(id(node), "(top level)"),
                f"{_short(value)} cannot be read ({_short(str(err))}, line {node.start_mark.line + 1}); "
                "quote it to make it text, or correct it",
            ) from None

    def construct_undefined(self, node):  # noqa: ANN001, ANN201
        raise _Problem(
            self._paths.get(id(node), "(top level)"),
            f"the tag {_short(node.tag)} is not allowed (line {node.start_mark.line + 1}); platform.yaml holds "
            "plain values: remove the tag",
        )


_SpecLoader.add_constructor(None, _SpecLoader.construct_undefined)


def _read(path: Path) -> str:
    """The file's text: a regular, readable, UTF-8 file of at most MAX_SPEC_BYTES (checked before reading)."""

    def fail(message: str) -> SpecError:
        return SpecError(str(path), [("(file)", message)])

    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise fail("not found; create it with `airflow-gitops init`") from None
    except PermissionError:
        raise fail(f"cannot be read (permission denied); make it readable: chmod u+r {path}") from None
    except OSError as err:
        raise fail(f"cannot be opened ({err.strerror}); point -f at a platform.yaml file") from None
    too_big = fail(f"is larger than {MAX_SPEC_BYTES // 1024} KiB (a platform.yaml is a few KiB); is -f the right file?")
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise fail(f"is a folder, not a file; point -f at the file: -f {path / DEFAULT_SPEC_FILE}")
        if not stat.S_ISREG(info.st_mode):
            raise fail("is not a regular file (a pipe or a device?); point -f at a platform.yaml file")
        if info.st_size > MAX_SPEC_BYTES:  # before reading any of it
            raise too_big
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise fail(f"cannot be read ({err.strerror}); point -f at a platform.yaml file") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise too_big
    try:
        if b"\0" in data:
            raise UnicodeError
        return data.decode("utf-8-sig")
    except UnicodeError:
        raise fail("is not UTF-8 text (binary, or UTF-16?); save it as UTF-8") from None


def load_spec(path: Path | str | None = None) -> PlatformSpec:
    """Read ``platform.yaml`` (or the embedded defaults when ``path`` is None and no file exists)."""
    if path is None:
        candidate = Path.cwd() / DEFAULT_SPEC_FILE
        if not (candidate.exists() or candidate.is_symlink()):
            return parse_spec({}, source="(embedded defaults)", base_dir=Path.cwd())
        path = candidate
    path = Path(path)
    text = _read(path)
    loader = None
    try:
        loader = _SpecLoader(text)  # the reader refuses control characters here
        data = loader.get_single_data()
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise SpecError(
            str(path), [(f"line {line}", f"contains the control character #x{err.character:04x}; remove it")]
        ) from None
    except _Problem as err:
        raise SpecError(str(path), [(err.where, err.message)]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = ", ".join(filter(None, (getattr(err, "context", None), getattr(err, "problem", None)))) or str(err)
        message = f"not valid YAML: {_short(problem)[1:-1]}"
        lines = text.splitlines()
        if mark and mark.line < len(lines) and "${" in lines[mark.line]:
            # Inside {...} or [...], the braces of an unquoted ${NAME} end the mapping early.
            message += "; quote a ${NAME} reference written inside {...} or [...], e.g. password: '${DB_PASSWORD}'"
        raise SpecError(str(path), [(where, message)]) from None
    except RecursionError:
        raise SpecError(str(path), [("(file)", "nested too deeply; flatten it")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return parse_spec(data, source=str(path), base_dir=path.resolve().parent)
