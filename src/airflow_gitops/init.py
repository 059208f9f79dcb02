"""``airflow-gitops init``: write a commented ``platform.yaml`` (and, on request, a deploy key)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import yaml
from rich.console import Console

from .errors import PlatformError
from .keystore import generate_deploy_key
from .spec import parse_spec
from .spec.models import Ports

TEMPLATE = """\
# platform.yaml: the one declarative file of airflow-gitops. Every key is optional; the values shown
# are the defaults. Reference: docs/platform-yaml.md. Validate with `airflow-gitops doctor`.

image:                       # the custom image (kubernetes target): apache/airflow + extra packages
  repository: airflow-gitops/airflow-mlops
  tag: latest
  python: "3.11"               # the Python the local platform runs: the image gets the tested versions
  extra_requirements: [mlflow, pandas, pyarrow, scikit-learn, boto3]   # pinned from uv.lock on render

airflow:
  executor: KubernetesExecutor     # kubernetes target; the local target always runs LocalExecutor
  load_examples: false
  dags_are_paused_at_creation: false
  config: {}                       # extra [section] key overrides, e.g. {core: {default_task_retries: 1}}

dags:
  repo: null                 # null: a local bare repo in the state dir, seeded with the example DAGs.
                             # e.g. git@github.com:ORG/airflow-dags.git (then ssh_key_file + known_hosts_file)
  branch: main
  sub_path: dags
  depth: 1
  sync_interval: null        # seconds between syncs; null: 1 for the local repo, 10 (the seed's) for a remote
  ssh_key_file: null         # deploy key, private half, 0600 (`airflow-gitops init --deploy-key`)
  known_hosts_file: null     # pinned host key: ssh-keyscan HOST > known_hosts (check the fingerprint!)
  delivery: git-sync         # kubernetes: git-sync sidecars (the seed's) or bundle (Airflow 3 GitDagBundle)

database:
  url: null                  # null: local PostgreSQL. External: '${AIRFLOW_DB_URL}' (read from the env)

aws:
  credentials_file: null     # null: generated for the local S3 endpoint. Real AWS: ~/.aws/credentials
  profile: default
  region: us-east-1
  endpoint_url: null
  bucket: mlops-data

mlflow:
  tracking_uri: null         # null: a local MLflow server. Kubernetes: e.g. http://mlflow.mlflow.svc:5000
  experiment: airflow-gitops
  registered_model: mlops-classifier

# Serves models:/<model>@<alias>, hot-swapped when the alias moves (MLflow webhook; polling as fallback).
serving:
  enabled: true
  model: null                # null: mlflow.registered_model
  alias: champion
  poll_interval: 10          # seconds
  webhook: true
  max_body_bytes: 1048576
  load_in_worker: true       # a new version loads in a worker process (false: ~180 MiB less, slower swaps)

# Task logs: the seed's PVC (Kubernetes). remote: s3 also puts them in s3://<aws.bucket>/<remote_prefix>/,
# which task pods on several nodes need when no ReadWriteMany storage class exists.
logs: {persistence: true, existing_claim: airflow-logs, size: 10Gi, remote: null, remote_prefix: airflow-logs}
ingress: {enabled: true, host: airflow.local}
kubernetes: {namespace: airflow, release: airflow, chart_version: "1.21.0"}

local:
  state_dir: .airflow-gitops
  ports: {PORTS}
  parallelism: 4

# Airflow Connections, Variables and pools, applied by `up` / `airflow-gitops sync` (a Secret on
# Kubernetes). Secrets by reference only: '${ENV_VAR}' or {from_file: PATH}, never inline.
connections: {}
#  warehouse: {conn_type: postgres, host: db.internal, login: etl, password: '${WAREHOUSE_PASSWORD}'}
variables: {}
#  model_threshold: "0.9"
#  api_token: {from_file: secrets/api_token}
pools: {}
#  training: {slots: 2, description: GPU-less training slots}
"""
# The default ports, from the spec's own defaults (one place: spec.Ports).
TEMPLATE = TEMPLATE.replace("{PORTS}", "{" + ", ".join(f"{k}: {v}" for k, v in Ports().model_dump().items()) + "}")


def _writable_folder(directory: Path) -> None:
    """Refuse a folder that is a file, or lies under a file, before anything is written."""
    for p in (directory, *directory.absolute().parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = f"{directory} is a file" if p == directory else f"{p} (a parent of {directory}) is a file"
                raise PlatformError(
                    f"{what}, not a folder; init writes platform.yaml into a folder",
                    "pass a folder: `airflow-gitops init DIR` (the default is the current folder)",
                )
            return


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path``, never through a symbolic link (O_NOFOLLOW)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _symlink_error(path) from None
        raise PlatformError(f"cannot write {path} ({err.strerror})", "choose a folder you can write to") from None


def _symlink_error(path: Path) -> PlatformError:
    return PlatformError(
        f"{path} is a symbolic link; init does not write through it (that would overwrite its target)",
        f"remove the link (rm {path}) and run init again, or edit the real file it points to",
    )


def init_project(directory: Path, *, deploy_key: bool, force: bool, console: Console) -> None:
    _writable_folder(directory)
    target = directory / "platform.yaml"
    write = force or not target.exists()
    if write and target.is_symlink():
        raise _symlink_error(target)
    if target.exists() and not target.is_file():
        raise PlatformError(f"{target} exists and is not a file", "move it away, then run init again")
    if write:  # the template must always validate, here too (e.g. a '%' in the folder's name): check first
        parse_spec(yaml.safe_load(TEMPLATE), source=str(target), base_dir=directory.absolute())
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PlatformError(f"cannot create {directory} ({err.strerror})", "choose a folder you can write to") from None
    if not write:
        console.print(f"{target} exists; keeping it (use --force to overwrite).")
    else:
        _write(target, TEMPLATE)
        console.print(f"Wrote {target}.")
    gitignore = directory / ".gitignore"
    try:
        text = gitignore.read_text(encoding="utf-8", errors="surrogateescape") if gitignore.exists() else ""
    except OSError as err:
        raise PlatformError(f"cannot read {gitignore} ({err.strerror})", "make it a readable file") from None
    lines = text.splitlines()
    wanted = [".airflow-gitops/", "secrets/", "rendered/", "deploy_key", "deploy_key.pub"]
    missing = [w for w in wanted if w not in lines]
    if missing:
        try:
            gitignore.write_text("\n".join(lines + missing) + "\n", encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            raise PlatformError(f"cannot write {gitignore} ({err.strerror})", "make it a writable file") from None
    if deploy_key:
        key = directory / "deploy_key"
        if key.exists() and key.stat().st_mode & 0o077:
            raise PlatformError(f"{key} is readable by other users", f"chmod 600 {key}")
        public = generate_deploy_key(key)
        console.print(f"Deploy key: {key} (0600, git-ignored). Add this PUBLIC key to the DAG repository's")
        console.print("deploy keys (read access is enough), then set dags.ssh_key_file: deploy_key")
        console.print(public, highlight=False, soft_wrap=True)
    console.print("Next: `airflow-gitops doctor`, then `airflow-gitops up` (local) or `render`/`deploy`.")
