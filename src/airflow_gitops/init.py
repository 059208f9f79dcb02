"""``airflow-gitops init``: write a commented ``platform.yaml`` (and, on request, a deploy key)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .errors import PlatformError
from .keystore import generate_deploy_key
from .spec import load_spec

TEMPLATE = """\
# platform.yaml: the one declarative file of airflow-gitops. Every key is optional; the values shown
# are the defaults. Reference: docs/platform-yaml.md. Validate with `airflow-gitops doctor`.

image:                       # the custom image (kubernetes target): apache/airflow + extra packages
  repository: airflow-gitops/airflow-mlops
  tag: latest
  python: "3.12"
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

logs: {persistence: true, existing_claim: airflow-logs, size: 10Gi}
ingress: {enabled: true, host: airflow.local}
kubernetes: {namespace: airflow, release: airflow, chart_version: "1.21.0"}

local:
  state_dir: .airflow-gitops
  ports: {api: 8080, mlflow: 5000, s3: 5055, postgres: 5433}
  parallelism: 4
"""


def init_project(directory: Path, *, deploy_key: bool, force: bool, console: Console) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "platform.yaml"
    if target.exists() and not force:
        console.print(f"{target} exists; keeping it (use --force to overwrite).")
    else:
        target.write_text(TEMPLATE)
        load_spec(target)  # the template must always validate
        console.print(f"Wrote {target}.")
    gitignore = directory / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    wanted = [".airflow-gitops/", "secrets/", "rendered/", "deploy_key", "deploy_key.pub"]
    missing = [w for w in wanted if w not in lines]
    if missing:
        gitignore.write_text("\n".join(lines + missing) + "\n")
    if deploy_key:
        key = directory / "deploy_key"
        if key.exists() and key.stat().st_mode & 0o077:
            raise PlatformError(f"{key} is readable by other users", f"chmod 600 {key}")
        public = generate_deploy_key(key)
        console.print(f"Deploy key: {key} (0600, git-ignored). Add this PUBLIC key to the DAG repository's")
        console.print("deploy keys (read access is enough), then set dags.ssh_key_file: deploy_key")
        console.print(public, highlight=False, soft_wrap=True)
    console.print("Next: `airflow-gitops doctor`, then `airflow-gitops up` (local) or `render`/`deploy`.")
