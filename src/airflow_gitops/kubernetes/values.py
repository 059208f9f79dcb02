"""``PlatformSpec`` -> ``values.yaml`` for the official Apache Airflow Helm chart (1.21, Airflow 3).

The seed's values, corrected where the chart would silently do something else:

* git-sync: ``ref`` (git-sync v4). The chart also always passes the deprecated ``branch``/``rev``
  (defaults ``v2-2-stable``/``HEAD``) and git-sync lets them override ``ref``, so they are set to the
  same ref. ``knownHosts`` is always set for SSH: without it the chart turns host key checking off.
* the AWS credentials Secret goes to *every* Airflow pod through the chart's top-level
  ``volumes``/``volumeMounts`` (scheduler, dag-processor, triggerer, api-server, KubernetesExecutor
  worker pod template), not ``scheduler.extraVolumes`` alone.
* Fernet key, API secret key and JWT secret come from Secrets we render (stable across redeploys).

No key material ever goes into the values: only Secret *names*.
"""

from __future__ import annotations

import json
from typing import Any

from .. import contract, managed, names
from ..contract import SecretKey
from ..errors import PlatformError
from ..names import (
    ADMIN_USER,
    GIT_CONN_ID,
)
from ..spec import PlatformSpec
from .image import airflow_version

AWS_MOUNT = "/home/airflow/.aws"
GIT_SSH_MOUNT = "/opt/airflow/git-ssh"
AWS_VOLUME = "aws-credentials"
GIT_SSH_VOLUME = "git-ssh"
MLFLOW_PLACEHOLDER = "http://mlflow.mlflow.svc.cluster.local:5000"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


# Every pod of the chart: the image's airflow user (uid 50000, gid 0, as the official image), never root, no
# privilege escalation, no capabilities, the runtime's default seccomp profile: what the namespace's Pod
# Security label ``restricted`` (manifests.POD_SECURITY) demands.
POD_SECURITY_CONTEXT = {
    "runAsUser": 50000,
    "runAsGroup": 0,
    "fsGroup": 0,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
GIT_SYNC_UID, STATSD_UID = 65533, 65534  # the chart's users of git-sync and statsd-exporter
# What a KubernetesExecutor worker pod does not get (worker_pod_template): Airflow 3's tasks reach the
# metadata database only through the API server's Execution API, and Connections/Variables come back
# decrypted from it; DAG code in a worker pod never needs the database URL or these keys.
WORKER_POD_WITHOUT = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW_CONN_AIRFLOW_DB",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__WEBSERVER__SECRET_KEY",
)


def worker_pod_template(chart_pod_template: str) -> str:
    """The chart's own worker pod template (as the chart rendered it) without ``WORKER_POD_WITHOUT``, for the
    chart's ``podTemplate`` (which the chart runs through ``tpl``: written as a literal)."""
    import yaml

    pod = yaml.safe_load(chart_pod_template)
    for container in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in WORKER_POD_WITHOUT]
    return tpl_literal(yaml.safe_dump(pod, sort_keys=False))


def require_repo(spec: PlatformSpec) -> str:
    repo = spec.dags.repo
    if not repo or repo.startswith("/") or repo.startswith("file://"):
        raise PlatformError(
            "dags.repo is not set to a remote Git URL: pods in the cluster cannot read a repository on this machine",
            "set dags.repo in platform.yaml to the DAG repository, e.g. 'git@github.com:org/airflow-dags.git' "
            "(with dags.ssh_key_file and dags.known_hosts_file) or an https URL",
        )
    return repo


def runtime_env(spec: PlatformSpec, warnings: list[str] | None = None) -> dict[str, str]:
    """What DAG code sees on every pod: the contract's runtime env; AWS files at boto3's default place."""
    uri = spec.mlflow.tracking_uri
    if uri is None:
        uri = MLFLOW_PLACEHOLDER
        if warnings is not None:
            warnings.append(
                f"mlflow.tracking_uri is not set: MLFLOW_TRACKING_URI is the placeholder {uri}; "
                "set mlflow.tracking_uri to your MLflow server's in-cluster URL"
            )
    return contract.dag_runtime_env(
        spec, mlflow_uri=uri, s3_endpoint=spec.aws.endpoint_url, serving_url=serving_url(spec)
    )


def serving_name(spec: PlatformSpec) -> str:
    """The serving component's Deployment and Service (kubernetes/serving.py)."""
    return f"{spec.kubernetes.release}-serving"


def serving_url(spec: PlatformSpec) -> str | None:
    """Where pods reach the serving component (its Service, port 80); None when serving is off."""
    if not spec.serving.enabled:
        return None
    return f"http://{serving_name(spec)}.{spec.kubernetes.namespace}.svc"


def aws_volume(spec: PlatformSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) of the AWS credentials Secret at boto3's default place, on every pod that reads S3
    (the chart's pods and the serving pods alike)."""
    volume = {"name": AWS_VOLUME, "secret": {"secretName": spec.secrets.aws_secret, "defaultMode": 0o440}}
    return volume, {"name": AWS_VOLUME, "mountPath": AWS_MOUNT, "readOnly": True}


def placement(spec: PlatformSpec) -> dict[str, Any]:
    """``nodeSelector`` / ``tolerations`` from kubernetes.* (the chart's values and a pod spec use the same keys)."""
    k8s = spec.kubernetes
    out: dict[str, Any] = {}
    if k8s.node_selector:
        out["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        out["tolerations"] = [t.model_dump(exclude_none=True) for t in k8s.tolerations]
    return out


def tpl_literal(value: str) -> str:
    """``value`` as a Helm template that renders to exactly ``value``: the chart runs every ``config`` value
    through ``tpl``, so Airflow's own Jinja (``{{ ti.dag_id }}``) would fail and ``{{ .Values.x }}`` would be
    evaluated. Each ``{{`` becomes the action ``{{ "{{" }}``; a lone ``}}`` is plain text to Go templates."""
    return value.replace("{{", '{{ "{{" }}')


def airflow_config(spec: PlatformSpec) -> dict[str, dict[str, str]]:
    """The chart's ``config``: the settings common to both targets and ``airflow.config`` (minus the
    entries that hold secrets: those come from a Secret, see ``secret_env``), each written for ``tpl``."""
    secret = contract.secret_config_keys(spec)
    config: dict[str, dict[str, str]] = {"core": {"auth_manager": FAB_AUTH_MANAGER}}
    for (section, key), value in {**contract.user_config(spec), **contract.common_config(spec)}.items():
        if names.Setting(section, key, None).env not in secret:
            config.setdefault(section, {})[key] = tpl_literal(value)
    return config


def secret_env(spec: PlatformSpec) -> list[dict[str, str]]:
    """The chart's ``secret``: ``AIRFLOW__*`` variables read from our Secrets on every Airflow pod."""
    names = spec.secrets
    out = [
        {"envName": env, "secretName": names.config_secret, "secretKey": env}
        for env in contract.secret_config_keys(spec)
    ]
    if spec.dags.delivery == "bundle":
        out.append(
            {
                "envName": contract.conn_env_name(GIT_CONN_ID),
                "secretName": names.git_ssh_secret,
                "secretKey": SecretKey.GIT_CONNECTION,
            }
        )
    # platform.yaml's connections and variables: Airflow reads AIRFLOW_CONN_* / AIRFLOW_VAR_* from the
    # environment before its database, so they need no database object (nor a marker).
    out += [
        {"envName": env, "secretName": names.connections_secret, "secretKey": env}
        for env in contract.declared_env_names(spec)
    ]
    # mlflow.username / mlflow.password: MLflow's clients in tasks send them to the user's MLflow server.
    out += [
        {"envName": env, "secretName": names.mlflow_secret, "secretKey": key} for env, key in mlflow_login_env(spec)
    ]
    return out


def mlflow_login_env(spec: PlatformSpec) -> list[tuple[str, str]]:
    """(variable, key of secrets.mlflow_secret) for MLflow's login, where platform.yaml gives one."""
    if spec.mlflow.password is None:
        return []
    keys = (SecretKey.MLFLOW_USERNAME, SecretKey.MLFLOW_PASSWORD)
    return list(zip(contract.MLFLOW_CREDENTIAL_ENV, keys, strict=True))


POOLS_ENV = "AIRFLOW_GITOPS_POOLS"
CONNECTIONS_CHECKSUM = "airflow-gitops/connections-checksum"
LOGIN_CHECKSUM = "airflow-gitops/mlflow-login-checksum"  # the Airflow pods' and the serving pods'
# The chart has no pools setting and runs no hook of ours, so the create-user job (a post-install /
# post-upgrade hook, after the migration job) applies them with Airflow's own CLI: import the declared
# pools (created or updated), then delete the ones carrying the marker that platform.yaml no longer
# declares. Pools made by hand (no marker) are left alone. No '{{': the chart templates these args.
POOLS_SCRIPT = f"""d=$(mktemp -d) && printf '%s' "${POOLS_ENV}" > "$d/want.json" \
&& airflow pools import "$d/want.json" && airflow pools export "$d/now.json" \
&& python - "$d" <<'EOF'
import json, subprocess, sys
want = json.load(open(sys.argv[1] + "/want.json"))
now = json.load(open(sys.argv[1] + "/now.json"))
for name, pool in sorted(now.items()):
    if name not in want and (pool.get("description") or "").rstrip().endswith({managed.MARKER!r}):
        subprocess.run(["airflow", "pools", "delete", name], check=True)
EOF"""


def create_user_job(spec: PlatformSpec) -> dict[str, Any]:
    """The chart's create-user job, with OUR generated password instead of the chart's admin/admin.

    The password comes from the admin Secret as an env var and reaches ``airflow users create`` on its
    standard input (``printf`` is a shell builtin): it is in no rendered object and no process's argv.
    """
    password_env = "AIRFLOW_GITOPS_ADMIN_PASSWORD"
    script = (
        f'printf \'%s\\n%s\\n\' "${password_env}" "${password_env}" | '
        f"airflow users create --role Admin --username {ADMIN_USER} --email {ADMIN_USER}@localhost "
        "--firstname Airflow --lastname Admin"
        # Then platform.yaml's pools (always: an emptied `pools:` deletes the managed ones); the job
        # fails when either step fails.
        f"; rc=$?\n{POOLS_SCRIPT}\n[ $? -eq 0 ] && exit $rc || exit 1"
    )
    return {
        "enabled": True,
        # Never the chart's default: nothing reads it (the args below do not), and it is not 'admin'.
        "defaultUser": {"username": ADMIN_USER, "password": ""},
        "env": [
            {
                "name": password_env,
                "valueFrom": {
                    "secretKeyRef": {"name": spec.secrets.admin_password_secret, "key": SecretKey.ADMIN_PASSWORD}
                },
            },
            # Pool names, slots and descriptions: no secret in them.
            {"name": POOLS_ENV, "value": managed.pools_json(spec)},
        ],
        "args": ["bash", "-c", script],
    }


def build_values(
    spec: PlatformSpec,
    *,
    known_hosts: str | None = None,
    chart_defaults: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    pod_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The chart values. ``known_hosts`` is the pinned known_hosts text (public, not a secret).

    ``chart_defaults`` (the chart's own ``values.yaml``) lets an older chart without
    ``dagProcessor.dagBundleConfigList`` get the bundle list as plain Airflow config instead.
    """
    warnings = warnings if warnings is not None else []
    repo = require_repo(spec)
    names = spec.secrets
    version = airflow_version()
    ssh = spec.dags.is_ssh

    config = airflow_config(spec)

    aws_vol, aws_mount = aws_volume(spec)
    volumes: list[dict[str, Any]] = [aws_vol]
    mounts: list[dict[str, Any]] = [aws_mount]

    values: dict[str, Any] = {
        "executor": spec.airflow.executor,
        "airflowVersion": version,
        "defaultAirflowTag": version,
        "images": {
            "airflow": {
                "repository": spec.image.repository,
                "tag": spec.image.tag,
                **({"digest": spec.image.digest} if spec.image.digest else {}),
                "pullPolicy": spec.image.pull_policy,
            }
        },
        "fernetKeySecretName": names.fernet_key_secret,
        "apiSecretKeySecretName": names.api_secret_key_secret,
        "jwtSecretName": names.jwt_secret_secret,
        "postgresql": {"enabled": False},
        "data": {"metadataSecretName": names.metadata_secret},
        "env": [
            {"name": k, "value": v}
            for k, v in {
                **runtime_env(spec, warnings),
                # logs.remote: s3 - the Connection remote logging uses (region, endpoint; no secret in it: the
                # credentials are the mounted AWS Secret's, as for DAG code).
                **contract.logs_connection(spec, s3_endpoint=spec.aws.endpoint_url),
            }.items()
        ],
        "volumes": volumes,
        "volumeMounts": mounts,
        "securityContexts": {"pod": POD_SECURITY_CONTEXT, "containers": CONTAINER_SECURITY_CONTEXT},
        "config": config,
        "logs": {
            "persistence": (
                {"enabled": True, "existingClaim": spec.logs.existing_claim}
                if spec.logs.persistence
                else {"enabled": False}
            )
        },
    }
    k8s = spec.kubernetes
    values.update(placement(spec))
    for key, ref in (("gitSync", k8s.git_sync_image), ("statsd", k8s.statsd_image)):
        if ref:
            repository, tag = ref.rsplit(":", 1)
            values["images"][key] = {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}
    values["statsd"] = {"securityContexts": {"pod": {**POD_SECURITY_CONTEXT, "runAsUser": STATSD_UID}}}
    if secret_env(spec):
        values["secret"] = secret_env(spec)
    if pod_annotations:
        # Pods read AIRFLOW_CONN_*/AIRFLOW_VAR_* and MLflow's login when they start: a changed value must roll them.
        values["airflowPodAnnotations"] = dict(pod_annotations)
    values["createUserJob"] = create_user_job(spec)
    if spec.airflow.executor == "CeleryExecutor":
        values["redis"] = {"enabled": True}

    if spec.ingress.enabled:
        host: dict[str, Any] = {"name": spec.ingress.host}
        if spec.ingress.tls_secret:
            host["tls"] = {"enabled": True, "secretName": spec.ingress.tls_secret}
        api_ingress: dict[str, Any] = {"enabled": True, "path": "/", "pathType": "Prefix", "hosts": [host]}
        if spec.ingress.ingress_class:
            api_ingress["ingressClassName"] = spec.ingress.ingress_class
        values["ingress"] = {"apiServer": api_ingress}

    if spec.dags.delivery == "git-sync":
        ref = spec.dags.branch
        git_sync: dict[str, Any] = {
            "enabled": True,
            "repo": repo,
            "ref": ref,
            # Deprecated, but the chart always sets them and they override `ref`: make them agree.
            "branch": ref,
            "rev": "HEAD",
            "subPath": spec.dags.subdir,
            "depth": spec.dags.depth,
            "period": f"{spec.dags.sync_interval}s",
            "securityContexts": {"container": {"runAsUser": GIT_SYNC_UID, **CONTAINER_SECURITY_CONTEXT}},
        }
        if ssh:
            if not known_hosts:
                raise PlatformError(
                    "git-sync over SSH needs the Git host's key pinned; without it the chart turns host key "
                    "checking off",
                    "set dags.known_hosts_file (ssh-keyscan -p PORT HOST > known_hosts, verify the fingerprint)",
                )
            git_sync["sshKeySecret"] = names.git_ssh_secret
            git_sync["knownHosts"] = known_hosts.strip() + "\n"
        values["dags"] = {"gitSync": git_sync}
    else:
        values["dags"] = {"gitSync": {"enabled": False}}
        bundles = contract.bundle_config(spec)
        if chart_defaults is not None and "dagBundleConfigList" not in (chart_defaults.get("dagProcessor") or {}):
            config.setdefault("dag_processor", {})["dag_bundle_config_list"] = tpl_literal(json.dumps(bundles))
            warnings.append("this chart has no dagProcessor.dagBundleConfigList; the bundle list is set as config")
        else:
            values["dagProcessor"] = {"dagBundleConfigList": bundles}
        # The git connection (repo URL, key file path, known_hosts path: no key material) comes from the
        # git Secret as AIRFLOW_CONN_* (secret_env); the key and known_hosts are mounted from it.
        if ssh:
            volumes.append(
                {"name": GIT_SSH_VOLUME, "secret": {"secretName": names.git_ssh_secret, "defaultMode": 0o440}}
            )
            mounts.append({"name": GIT_SSH_VOLUME, "mountPath": GIT_SSH_MOUNT, "readOnly": True})
    return values


def git_connection(spec: PlatformSpec) -> str:
    """The git Connection for GitDagBundle: SSH key and known_hosts are files mounted from the Secret."""
    require_repo(spec)
    return contract.git_connection(
        spec,
        key_file=f"{GIT_SSH_MOUNT}/{SecretKey.GIT_SSH_KEY}",
        known_hosts_file=f"{GIT_SSH_MOUNT}/{SecretKey.KNOWN_HOSTS}",
    )
