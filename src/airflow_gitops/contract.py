"""What Airflow and DAG code see on ANY target, each fact named once.

Both targets build from these: the local target turns them into environment variables for its
processes, the Kubernetes target into chart values and Secrets. The DAG repository template relies on
:func:`dag_runtime_env`; doctor and verify check the Secrets of :func:`secret_keys`.

It sits above ``spec`` (it builds from a validated ``PlatformSpec``) and below both targets; the
names ``spec`` needs too (the settings the platform owns, secret-looking names) are in ``names``:

    platform.yaml -> names -> spec -> contract -> local | kubernetes -> checks
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .names import GIT_CONN_ID, LOGS_CONN_ID, SECRET_WORDS, Setting

if TYPE_CHECKING:
    from .spec import PlatformSpec

# --- DAG delivery -------------------------------------------------------------------------------------
BUNDLE_NAME = "dags"
GIT_BUNDLE_CLASS = "airflow.providers.git.bundles.git.GitDagBundle"
# `verify --probe` measures push-to-live on this bundle and branch of the local repository, never on
# dags.branch: it holds no DAGs, only the probe's marker commits (each removed again after the probe).
PROBE_BUNDLE = "airflow-gitops-probe"
PROBE_BRANCH = "airflow-gitops/probe"


def conn_env_name(conn_id: str) -> str:
    """The environment variable Airflow reads a Connection from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def var_env_name(key: str) -> str:
    """The environment variable Airflow reads a Variable from."""
    return f"AIRFLOW_VAR_{key.upper()}"


def declared_env_names(spec: PlatformSpec) -> list[str]:
    """``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` of the Connections and Variables platform.yaml declares
    (on Kubernetes: the keys of the Secret ``secrets.connections_secret``)."""
    return sorted(
        [conn_env_name(c) for c in spec.connections] + [var_env_name(v) for v in spec.variables],
    )


def bundle_config(spec: PlatformSpec, *, probe: bool = False) -> list[dict[str, Any]]:
    """``[dag_processor] dag_bundle_config_list``: one GitDagBundle on ``dags.repo`` / ``dags.branch``
    (and, with ``probe``, the probe bundle: the same repository and refresh, the probe branch)."""
    kwargs: dict[str, Any] = {
        "git_conn_id": GIT_CONN_ID,
        "tracking_ref": spec.dags.branch,
        "refresh_interval": spec.dags.sync_interval,
    }
    if spec.dags.subdir:
        kwargs["subdir"] = spec.dags.subdir
    bundles = [{"name": BUNDLE_NAME, "classpath": GIT_BUNDLE_CLASS, "kwargs": kwargs}]
    if probe:
        probe_kwargs = {**kwargs, "tracking_ref": PROBE_BRANCH}
        probe_kwargs.pop("subdir", None)
        bundles.append({"name": PROBE_BUNDLE, "classpath": GIT_BUNDLE_CLASS, "kwargs": probe_kwargs})
    return bundles


def git_connection(spec: PlatformSpec, *, key_file: str | None = None, known_hosts_file: str | None = None) -> str:
    """The git Connection GitDagBundle pulls with, as ``AIRFLOW_CONN_*`` JSON (paths only, no key material).

    SSH: the deploy key and the pinned known_hosts, strictly checked. Never "accept-new": a host key
    we have not pinned is an attack, not a first visit.
    """
    extra: dict[str, str] = {}
    if spec.dags.is_ssh:
        extra = {
            "key_file": key_file or "",
            "known_hosts_file": known_hosts_file or "",
            "strict_host_key_checking": "yes",
        }
    return json.dumps({"conn_type": "git", "host": spec.dag_repo_url, "extra": extra})


# --- what DAG code sees ------------------------------------------------------------------------------
# Where DAG code reaches the serving component (set only when serving is on).
SERVING_URL_ENV = "MLOPS_SERVING_URL"
# The HTTP basic-auth credential MLflow's clients send to the tracking server (MLflow's own names,
# read by mlflow.utils.credentials): set where the target runs MLflow with authentication on.
MLFLOW_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
MLFLOW_CREDENTIAL_ENV = (MLFLOW_USERNAME_ENV, MLFLOW_PASSWORD_ENV)


def aws_profile_env(spec: PlatformSpec, aws_files: tuple[str, str] | None = None) -> dict[str, str]:
    """How boto3 finds the platform's AWS profile, for DAG code and every component that reaches S3:
    the profile, the region and, where they are not at boto3's default place, the two files."""
    env = {"AWS_PROFILE": spec.aws.profile, "AWS_DEFAULT_REGION": spec.aws.region}
    if aws_files:
        env["AWS_SHARED_CREDENTIALS_FILE"], env["AWS_CONFIG_FILE"] = aws_files
    return env


def dag_runtime_env(
    spec: PlatformSpec,
    *,
    mlflow_uri: str,
    s3_endpoint: str | None,
    aws_files: tuple[str, str] | None = None,
    s3_only_endpoint: bool = False,
    serving_url: str | None = None,
    mlflow_credential: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The environment every task gets on every target (the DAG repository template relies on it).

    ``aws_files`` (credentials, config) are given where the files are not at boto3's default place;
    on Kubernetes they are mounted at ``/home/airflow/.aws`` (the seed's path) instead. An endpoint
    that serves S3 only (the local one: no STS) is named for S3 alone, also for pyarrow's AWS SDK,
    which ignores ``endpoint_url`` in the config file. ``mlflow_credential`` (user, password): what
    MLflow's clients authenticate to the tracking server with, where the target holds one.
    """
    env = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MLFLOW_EXPERIMENT_NAME": spec.mlflow.experiment,
        "MLOPS_REGISTERED_MODEL": spec.mlflow.registered_model,
        "MLOPS_DATA_BUCKET": spec.aws.bucket,
        **aws_profile_env(spec, aws_files),
    }
    if serving_url:
        env[SERVING_URL_ENV] = serving_url  # the template pipeline waits there for its new champion
    if mlflow_credential:
        env.update(zip(MLFLOW_CREDENTIAL_ENV, mlflow_credential, strict=True))
    if s3_endpoint and s3_only_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    elif s3_endpoint and not aws_files:
        env["AWS_ENDPOINT_URL"] = s3_endpoint
    return env


# --- remote task logging (logs.remote) -----------------------------------------------------------------
def remote_log_folder(spec: PlatformSpec) -> str | None:
    """``[logging] remote_base_log_folder``: the prefix inside the platform's bucket; None when off."""
    if spec.logs.remote != "s3":
        return None
    return f"s3://{spec.aws.bucket}/{spec.logs.remote_prefix}"


def remote_logging_config(spec: PlatformSpec) -> dict[tuple[str, str], str]:
    """The ``[logging]`` settings of ``logs.remote`` (the same on every target; {} when off): every task
    log is uploaded when the task ends, and the API server reads it back from S3."""
    folder = remote_log_folder(spec)
    if folder is None:
        return {}
    return {
        ("logging", "remote_logging"): "True",
        ("logging", "remote_base_log_folder"): folder,
        ("logging", "remote_log_conn_id"): LOGS_CONN_ID,
    }


def logs_connection(spec: PlatformSpec, *, s3_endpoint: str | None) -> dict[str, str]:
    """``AIRFLOW_CONN_AIRFLOW_GITOPS_LOGS`` -> the aws Connection remote logging uses ({} when off).

    It holds no credentials: boto3 finds them as DAG code does (``AWS_PROFILE`` and the AWS files of
    :func:`dag_runtime_env`: the generated ones for the local S3 endpoint, the mounted Secret on
    Kubernetes). The region and the S3 endpoint (``s3_endpoint``: the target's, None for real AWS) are
    named in it, so the Connection says where the logs go.
    """
    if remote_log_folder(spec) is None:
        return {}
    extra: dict[str, Any] = {"region_name": spec.aws.region}
    if s3_endpoint:
        extra["service_config"] = {"s3": {"endpoint_url": s3_endpoint}}
    return {conn_env_name(LOGS_CONN_ID): json.dumps({"conn_type": "aws", "extra": extra})}


# --- Secrets (Kubernetes) and the keys in them -------------------------------------------------------
class SecretKey:
    """Key names inside the Secrets, as the official chart (and git-sync) read them."""

    FERNET = "fernet-key"
    API_SECRET = "api-secret-key"
    JWT = "jwt-secret"
    METADATA = "connection"
    GIT_SSH_KEY = "gitSshKey"
    KNOWN_HOSTS = "known_hosts"
    GIT_CONNECTION = "connection"
    AWS_CREDENTIALS = "credentials"
    AWS_CONFIG = "config"
    ADMIN_PASSWORD = "password"
    MLFLOW_USERNAME = "username"
    MLFLOW_PASSWORD = "password"
    # The connections Secret holds one key per declared Connection/Variable, named like its env var.


def secret_keys(spec: PlatformSpec) -> dict[str, list[str]]:
    """Every Secret the platform needs on Kubernetes -> the keys it must hold."""
    names = spec.secrets
    out = {
        names.fernet_key_secret: [SecretKey.FERNET],
        names.metadata_secret: [SecretKey.METADATA],
        names.api_secret_key_secret: [SecretKey.API_SECRET],
        names.jwt_secret_secret: [SecretKey.JWT],
        names.aws_secret: [SecretKey.AWS_CREDENTIALS, SecretKey.AWS_CONFIG],
        names.admin_password_secret: [SecretKey.ADMIN_PASSWORD],
    }
    if secret_config_keys(spec):
        out[names.config_secret] = sorted(secret_config_keys(spec))
    if declared_env_names(spec):
        out[names.connections_secret] = declared_env_names(spec)
    if spec.mlflow.password is not None:
        out[names.mlflow_secret] = [SecretKey.MLFLOW_USERNAME, SecretKey.MLFLOW_PASSWORD]
    git: list[str] = []
    if spec.dags.is_ssh:
        git += [SecretKey.GIT_SSH_KEY, SecretKey.KNOWN_HOSTS]
    if spec.dags.delivery == "bundle":
        git.append(SecretKey.GIT_CONNECTION)
    if git:
        out[names.git_ssh_secret] = git
    return out


def secret_config_keys(spec: PlatformSpec) -> dict[str, str]:
    """``AIRFLOW__SECTION__KEY`` -> value for every ``airflow.config`` entry that looks like a secret."""
    return {
        Setting(section, key, None).env: _cfg(value)
        for section, keys in spec.airflow.config.items()
        for key, value in keys.items()
        if any(word in key for word in SECRET_WORDS)
    }


def user_config(spec: PlatformSpec) -> dict[tuple[str, str], str]:
    """``airflow.config`` as ``{(section, key): str}`` (only tuned defaults and free keys reach here)."""
    return {(section, key): _cfg(value) for section, keys in spec.airflow.config.items() for key, value in keys.items()}


def _cfg(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def common_config(spec: PlatformSpec) -> dict[tuple[str, str], str]:
    """Settings with the same value on every target."""
    return {
        ("core", "load_examples"): _cfg(spec.airflow.load_examples),
        ("core", "dags_are_paused_at_creation"): _cfg(spec.airflow.dags_are_paused_at_creation),
        # How often a bundle is refreshed - and the git-sync variant's dags-folder bundle rescans its folder
        # for new files (Airflow's default 300 s: a pushed DAG, synced by git-sync in 10 s, would wait 5 min).
        ("dag_processor", "refresh_interval"): str(spec.dags.sync_interval),
        **remote_logging_config(spec),
    }
