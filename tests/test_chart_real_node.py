"""The official chart with our values on the REAL node (fixture ``kube_node``): every pod runs our images
(the users' Dockerfile built by ``airflow-gitops image build`` on a Debian-made base, git-sync and the
StatsD exporter built from source: scripts/kube-images.sh), against host services on the node's gateway
address (PostgreSQL, an sshd Git remote with a deploy key and a pinned host key).

The seed-equivalent platform.yaml: KubernetesExecutor, git-sync over SSH (or the Airflow 3 bundle), the
external PostgreSQL, the AWS credentials Secret, the logs PVC, the fixed Fernet key. It differs from a
user's only in the image references and in where the pods may run (the real node's selector/toleration).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from k8s_specs import CHART_TGZ, shared_file
from kube_cluster import REAL_NODE_POD_SPEC, KubeCluster
from pg_fixture import start_postgres
from serving_fixture import MLFLOW_PASSWORD, MlflowServer, client_credentials
from sshd import start_sshd
from typer.testing import CliRunner

from airflow_gitops.cli import app
from airflow_gitops.keystore import MLFLOW_USER

pytestmark = pytest.mark.kubernetes

ROOT = Path(__file__).resolve().parents[1]
KUBE_IMAGES = ROOT / "scripts" / "kube-images.sh"
AIRFLOW_IMAGE = ("localhost/airflow-gitops/airflow-mlops", "node-test")
# Debian bookworm's python3.11, the test base's (scripts/kube-images.sh BASE_PYTHON)
BASE_PYTHON = "3.11.2"
AWS_KEY_ID = "AKIAAIRFLOWGITOPSWXYZ"  # not a real key: boto3 only has to find it in the mounted file
runner = CliRunner()

HELLO_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def hello_real_node():
    @task
    def hello():
        return "hello"
    hello()

hello_real_node()
"""

# Reads the Connection the test creates through the API before `helm uninstall` (issue 19: the seed's
# reason for a fixed Fernet key) and returns a digest of its password, never the password itself.
FERNET_READER_DAG = """
import hashlib
from datetime import datetime
from airflow.sdk import BaseHook, dag, task

@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def fernet_reader():
    @task
    def read():
        return hashlib.sha256(BaseHook.get_connection("fernet_probe").password.encode()).hexdigest()
    read()

fernet_reader()
"""


def kubectl(cluster: KubeCluster, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(cluster.kubectl), *args], capture_output=True, text=True, env=cluster.env(), timeout=timeout
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def pods_of(cluster: KubeCluster, ns: str, selector: str) -> list[dict]:
    """The namespace's pods ``selector`` (a label selector) picks, as the API server returns them."""
    return json.loads(kubectl(cluster, "-n", ns, "get", "pods", "-l", selector, "-o", "json"))["items"]


@pytest.fixture(scope="module")
def images(kube_node: KubeCluster, tmp_path_factory) -> dict[str, str]:
    """Build (or take from the cache) the images and import them into the node: name -> image ref."""
    d = tmp_path_factory.mktemp("images")
    repo, tag = AIRFLOW_IMAGE
    # logs.remote: s3 as the git-sync variant has it: the image carries the amazon provider (its S3 log handler).
    # image.python with the base's patch level: the lock pins beautifulsoup4's soupsieve by it (>= 3.11.5).
    image_spec = {"image": {"repository": repo, "tag": tag, "python": BASE_PYTHON}, "logs": {"remote": "s3"}}
    (d / "platform.yaml").write_text(yaml.safe_dump(image_spec))
    proc = subprocess.run(
        ["bash", str(KUBE_IMAGES), "build", str(d / "platform.yaml")], capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, f"scripts/kube-images.sh build failed:\n{proc.stderr[-3000:]}"
    refs, archives = {}, []
    for line in proc.stdout.split("\n"):
        if "=" in line and " REF=" in line:
            left, ref = line.split(" REF=")
            name, archive = left.split("=", 1)
            refs[name] = ref.strip()
            archives.append(Path(archive))
    assert {"airflow", "git-sync", "statsd-exporter"} <= set(refs), proc.stdout
    kube_node.import_images(*archives)
    return refs


@pytest.fixture(scope="module")
def services(kube_node: KubeCluster, tmp_path_factory):
    """PostgreSQL and an sshd Git remote on the node's gateway address (the pods' way to the host)."""
    node = kube_node.node
    pg, stop_pg = start_postgres(host=node.gateway, allow=node.pod_cidr, log_connections=True)
    git, sshd = start_sshd(tmp_path_factory.mktemp("node-git"), host=node.gateway)
    try:
        yield SimpleNamespace(pg=pg, git=git)
    finally:
        sshd.terminate()
        sshd.wait(10)
        stop_pg()


@pytest.fixture(scope="module")
def ml_services(kube_node: KubeCluster, tmp_path_factory):
    """The seed's neighbours for its pipeline, on the gateway address: an S3 endpoint (rclone, the local
    target's) holding the bucket, and an MLflow tracking server (SQLite store, artifacts proxied by it)."""
    from airflow_gitops.binaries import venv_bin

    gw = kube_node.node.gateway
    root = tmp_path_factory.mktemp("ml-services")
    (root / "s3" / "mlops-data").mkdir(parents=True)
    secret = f"real-node-{os.urandom(8).hex()}"
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind((gw, 0))
            ports.append(sock.getsockname()[1])
    s3_port, mlflow_port = ports
    log = open(root / "services.log", "ab")  # noqa: SIM115 - closed below
    s3 = subprocess.Popen(
        [venv_bin("rclone"), "serve", "s3", "--addr", f"{gw}:{s3_port}", str(root / "s3"), "--vfs-cache-mode", "off"],
        env={**os.environ, "RCLONE_AUTH_KEY": f'"{AWS_KEY_ID},{secret}"', "RCLONE_CONFIG": "/dev/null"},
        stdout=log,
        stderr=log,
    )
    # The user's own MLflow, with a login (its basic-auth app, as the local target runs it): the pods send
    # the one platform.yaml gives as mlflow.username / mlflow.password (seed_spec).
    mlflow = MlflowServer(root / "mlflow", host=gw, port=mlflow_port)
    try:
        mlflow.start()
        yield SimpleNamespace(
            secret=secret, s3_url=f"http://{gw}:{s3_port}", mlflow_uri=mlflow.uri, root=root, mlflow=mlflow
        )
    finally:
        s3.terminate()
        s3.wait(30)
        mlflow.stop()
        log.close()


def _template_dags() -> dict[str, str]:
    from airflow_gitops.dag_repo import template_dir

    base = template_dir()
    return {str(p.relative_to(base)): p.read_text() for p in (base / "dags").rglob("*.py")}


def seed_spec(
    tmp: Path, cluster: KubeCluster, services, images: dict[str, str], *, ns: str, delivery: str, ml=None
) -> Path:
    """``ml``: the ml_services fixture: the template's pipeline in the repository, its S3 and MLflow."""
    git, pg = services.git, services.pg
    files = {"dags/hello_real_node.py": HELLO_DAG, "README.md": "DAGs\n", **(_template_dags() if ml else {})}
    if not ml:  # the bundle variant proves the Fernet key across helm uninstall + deploy
        files["dags/fernet_reader.py"] = FERNET_READER_DAG
    repo_url = git.new_repo(f"dags-{ns}", files)
    shutil.copy(git.key_path, tmp / "deploy_key")
    (tmp / "deploy_key").chmod(0o600)
    (tmp / "known_hosts").write_text(git.known_hosts_line + "\n")
    (tmp / "aws_credentials").write_text(
        f"[default]\naws_access_key_id = {AWS_KEY_ID}\n"
        f"aws_secret_access_key = {ml.secret if ml else f'not-a-real-secret-{ns}'}\n"
    )
    (tmp / "aws_credentials").chmod(0o600)
    if ml:  # the MLflow server's login, by reference (platform.yaml refuses it inline)
        (tmp / "mlflow_password").write_text(MLFLOW_PASSWORD + "\n")
        (tmp / "mlflow_password").chmod(0o600)
    logs = tmp / "logs-volume"
    logs.mkdir()
    os.chown(logs, 50000, 0)  # the image's airflow user (uid 50000, gid 0) writes the task logs
    logs.chmod(0o2775)
    # A PersistentVolume for the logs claim deploy creates (what an RWX storage class would provide).
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{ns}-logs"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "manual",
            "claimRef": {"namespace": ns, "name": "airflow-logs"},
            "hostPath": {"path": str(logs), "type": "Directory"},
        },
    }
    subprocess.run(
        [str(cluster.kubectl), "apply", "-f", "-"], input=json.dumps(pv), text=True, env=cluster.env(), check=True
    )
    git_sync_ref, statsd_ref = images["git-sync"], images["statsd-exporter"]
    data = {
        "image": {"repository": AIRFLOW_IMAGE[0], "tag": AIRFLOW_IMAGE[1], "python": BASE_PYTHON},
        "airflow": {"executor": "KubernetesExecutor"},
        "dags": {
            "repo": repo_url,
            "branch": "main",
            "sub_path": "dags",
            "depth": 1,
            "sync_interval": 10,
            "ssh_key_file": "deploy_key",
            "known_hosts_file": "known_hosts",
            "delivery": delivery,
        },
        "database": {"url": pg.create_database(ns.replace("-", "_"))},
        "aws": {
            "credentials_file": "aws_credentials",
            "region": "ap-northeast-2",
            "bucket": "mlops-data",
            **({"endpoint_url": ml.s3_url} if ml else {}),
        },
        "mlflow": (
            {"tracking_uri": ml.mlflow_uri, "username": MLFLOW_USER, "password": {"from_file": "mlflow_password"}}
            if ml
            else {"tracking_uri": f"http://{cluster.node.gateway}:5000"}
        ),
        "logs": {
            "persistence": True,  # the seed's PVC; and, where S3 runs, every task log also goes to the bucket
            "existing_claim": "airflow-logs",
            "size": "1Gi",
            "storage_class": "manual",
            **({"remote": "s3", "remote_prefix": "airflow-logs"} if ml else {}),
        },
        "ingress": {"host": "airflow.local"},
        # serving needs an MLflow to follow: only where the test runs one
        "serving": {"enabled": bool(ml), "poll_interval": 2},
        "kubernetes": {
            "namespace": ns,
            "release": "airflow",
            "chart": str(shared_file(CHART_TGZ)),
            "node_selector": REAL_NODE_POD_SPEC["nodeSelector"],
            "tolerations": REAL_NODE_POD_SPEC["tolerations"],
            "git_sync_image": git_sync_ref,
            "statsd_image": statsd_ref,
        },
    }
    (tmp / "platform.yaml").write_text(yaml.safe_dump(data))
    return tmp / "platform.yaml"


def port_forward(cluster: KubeCluster, ns: str, target: str, remote: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(cluster.kubectl), "-n", ns, "port-forward", target, f"{port}:{remote}"],
        env=cluster.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def http(url: str, data: dict | None = None, token: str | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read().decode() or "null")


@pytest.mark.parametrize("delivery", ["git-sync", "bundle"])
def test_the_seed_platform_runs_on_the_real_node(kube_node, images, services, tmp_path, delivery, request):
    ns = f"seed-{delivery}"
    # The seed's own delivery (git-sync) also runs the seed's pipeline, a pod per task (issue 19).
    ml = request.getfixturevalue("ml_services") if delivery == "git-sync" else None
    spec_file = seed_spec(tmp_path, kube_node, services, images, ns=ns, delivery=delivery, ml=ml)
    figures: dict = {"delivery": delivery}  # for bench/bench_kubernetes.py (printed, never asserted on)
    env_before = os.environ.copy()
    os.environ["KUBECONFIG"] = str(kube_node.kubeconfig)
    os.environ["PATH"] = f"{kube_node.bin_dir}{os.pathsep}{os.environ['PATH']}"
    try:
        t0 = time.monotonic()
        result = runner.invoke(app, ["deploy", "-f", str(spec_file), "--out", str(tmp_path / "out")])
        deploy_s = time.monotonic() - t0
        if result.exit_code != 0:
            pods = kubectl(kube_node, "-n", ns, "get", "pods", "-o", "wide")
            pytest.fail(f"deploy failed after {deploy_s:.0f}s:\n{result.output[-4000:]}\n{pods}")
        print(f"deploy ({delivery}) on the real node: {deploy_s:.0f}s")
        figures["deploy_ready_s"] = deploy_s
        deployed = yaml.safe_load((tmp_path / "out" / "values.yaml").read_text())
        figures["values"] = {
            "git-sync period": deployed["dags"]["gitSync"].get("period"),
            "git-sync depth": deployed["dags"]["gitSync"].get("depth"),
            "[dag_processor] refresh_interval": deployed["config"].get("dag_processor", {}).get("refresh_interval"),
            "worker pod securityContext": json.dumps(deployed["securityContexts"]["pod"]),
        }

        pods = json.loads(kubectl(kube_node, "-n", ns, "get", "pods", "-o", "json"))["items"]
        ours = set(images.values())
        for pod in pods:
            assert pod["spec"]["nodeName"] == kube_node.node.name, pod["metadata"]["name"]
            for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
                assert c["image"] in ours, (pod["metadata"]["name"], c["name"], c["image"])
        running = [p for p in pods if p["status"]["phase"] == "Running"]
        serving_pods = [p for p in running if p["metadata"]["labels"].get("component") == "serving"]
        for pod in running:
            statuses = pod["status"]["containerStatuses"]
            if pod in serving_pods:  # Ready = a model is loaded: none is registered yet
                assert not any(s["ready"] for s in statuses), (pod["metadata"]["name"], statuses)
                continue
            assert all(s["ready"] for s in statuses), (pod["metadata"]["name"], statuses)
        assert len(serving_pods) == (2 if ml else 0), [p["metadata"]["name"] for p in serving_pods]
        components = {p["metadata"]["labels"].get("component") for p in running}
        assert {"scheduler", "api-server", "dag-processor", "triggerer", "statsd"} <= components, components
        # The migration and create-user Jobs (helm hooks, deleted once they succeed) ran to completion.
        status = subprocess.run(
            [str(kube_node.helm), "-n", ns, "status", "airflow", "-o", "json"],
            capture_output=True,
            text=True,
            env=kube_node.env(),
            check=True,
        )
        hooks = {h["name"]: h.get("last_run", {}).get("phase") for h in json.loads(status.stdout)["hooks"]}
        assert hooks.get("airflow-run-airflow-migrations") == "Succeeded", hooks
        assert hooks.get("airflow-create-user") == "Succeeded", hooks

        # The API server through kubectl port-forward; the generated admin password logs in.
        pf, base = port_forward(kube_node, ns, "svc/airflow-api-server", 8080)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, health = http(f"{base}/api/v2/monitor/health")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            assert health["metadatabase"]["status"] == "healthy", health
            from airflow_gitops.keystore import ADMIN_PASSWORD
            from airflow_gitops.spec import load_spec

            password = (load_spec(spec_file).secrets_dir / ADMIN_PASSWORD).read_text().strip()
            status, token = http(f"{base}/auth/token", {"username": "admin", "password": password})
            assert status in (200, 201) and token.get("access_token"), token
            with pytest.raises(urllib.error.HTTPError):
                http(f"{base}/auth/token", {"username": "admin", "password": "admin"})
            deadline = time.monotonic() + 180
            while True:
                _, dags = http(f"{base}/api/v2/dags", token=token["access_token"])
                if "hello_real_node" in {d["dag_id"] for d in dags["dags"]}:
                    break
                assert time.monotonic() < deadline, dags
                time.sleep(3)
            (dag,) = [d for d in dags["dags"] if d["dag_id"] == "hello_real_node"]
            assert dag["is_paused"] is False  # dags_are_paused_at_creation: false

            # KubernetesExecutor: the task runs in a pod of its own, created and deleted for it.
            auth = token["access_token"]
            _, run = http(f"{base}/api/v2/dags/hello_real_node/dagRuns", {"logical_date": None}, token=auth)
            run_url = f"{base}/api/v2/dags/hello_real_node/dagRuns/{run['dag_run_id']}"
            seen_pods: dict[str, str] = {}
            deadline = time.monotonic() + 300
            while True:
                for p in json.loads(
                    kubectl(kube_node, "-n", ns, "get", "pods", "-l", "kubernetes_executor=True", "-o", "json")
                )["items"]:
                    seen_pods[p["metadata"]["name"]] = p["spec"].get("nodeName") or ""
                _, state = http(run_url, token=auth)
                if state["state"] in ("success", "failed"):
                    break
                assert time.monotonic() < deadline, (state, seen_pods)
                time.sleep(1)
            _, tis = http(f"{run_url}/taskInstances", token=auth)
            assert state["state"] == "success", (state, tis)
            assert seen_pods and set(seen_pods.values()) <= {kube_node.node.name, ""}, seen_pods
            # the task's log, written by the worker pod to the logs volume, read back through the API server
            _, log = http(f"{run_url}/taskInstances/hello/logs/1", token=auth)
            assert "Done. Returned value was: hello" in json.dumps(log), log
            deadline = time.monotonic() + 120
            while kubectl(kube_node, "-n", ns, "get", "pods", "-l", "kubernetes_executor=True", "-o", "name").strip():
                assert time.monotonic() < deadline, "the task pod was not deleted after the task"
                time.sleep(2)
            if ml:
                figures["pipeline"] = _pipeline_a_pod_per_task(kube_node, ns, base, auth, ml, services.pg)
                figures["release_memory"] = _release_memory(kube_node, ns)
                _faults_mid_run(kube_node, ns, base, auth)
        finally:
            pf.terminate()
            pf.wait(10)

        if not ml:
            _fernet_key_survives_uninstall_and_deploy(kube_node, ns, spec_file, tmp_path, services)

        # verify reads the running containers; every row is green.
        result = runner.invoke(app, ["verify", "--target", "kubernetes", "-f", str(spec_file), "--json"])
        report = json.loads(result.stdout)
        rows = {c["name"]: c for c in report["checks"]}
        failed = [c for c in report["checks"] if c["status"] == "fail"]
        if ml:  # the seed's table from inside a worker pod: the template's platform_selfcheck DAG
            assert result.exit_code == 0 and not failed, failed
            assert rows["task.selfcheck"]["status"] == "ok", rows["task.selfcheck"]
            (worker,) = re.findall(r"in worker pod (\S+)", rows["task.selfcheck"]["saw"])
            assert not worker.startswith("airflow-"), worker  # not a pod of the release's Deployments
            for name in ("task.aws_identity", "task.s3_write_read", "task.mlflow", "task.metadata_db"):
                assert rows[name]["status"] == "ok" and f"in worker pod {worker}" in rows[name]["saw"], rows[name]
            print(f"\nverify: the self-check ran in worker pod {worker}: " + rows["task.selfcheck"]["saw"])
        else:  # this repository has no platform_selfcheck DAG: verify says so, and nothing else fails
            assert result.exit_code != 0 and [c["name"] for c in failed] == ["task.selfcheck"], failed
            assert "platform_selfcheck is not in Airflow" in rows["task.selfcheck"]["saw"], rows["task.selfcheck"]
        for name in (
            "verify.container.api",
            "verify.container.database",
            "verify.container.dags",
            "verify.container.aws",
        ):
            assert rows[name]["status"] == "ok", rows[name]
        assert "WXYZ" in rows["verify.container.aws"]["saw"]
        for job in ("airflow-run-airflow-migrations", "airflow-create-user"):
            assert rows[f"verify.job.{job}"]["status"] == "ok", rows.get(f"verify.job.{job}")
        if delivery == "git-sync":
            assert rows["verify.container.git_sync"]["status"] == "ok"
            assert "== the branch head" in rows["verify.container.git_sync"]["saw"]
        figures["push_to_synced_s"], figures["push_to_listed_s"] = _push_a_dag(kube_node, ns, services, delivery, auth)
        if os.environ.get("AIRFLOW_GITOPS_BENCH_JSON"):  # bench/bench_kubernetes.py collects the figures
            with open(os.environ["AIRFLOW_GITOPS_BENCH_JSON"], "a") as fh:
                fh.write(json.dumps(figures) + "\n")
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        subprocess.run(
            [str(kube_node.helm), "-n", ns, "uninstall", "airflow", "--wait", "--timeout", "120s"],
            env=kube_node.env(),
            capture_output=True,
        )
        subprocess.run(
            [str(kube_node.kubectl), "delete", "namespace", ns, "--wait=true", "--timeout=120s"],
            env=kube_node.env(),
            capture_output=True,
        )
        subprocess.run([str(kube_node.kubectl), "delete", "pv", f"{ns}-logs"], env=kube_node.env(), capture_output=True)


def _push_a_dag(cluster: KubeCluster, ns: str, services, delivery: str, auth: str) -> tuple[float | None, float]:
    """Push a second DAG: (push -> git-sync's worktree at the commit (git-sync only), push -> listed by the API)."""
    pushed = time.monotonic()
    sha = services.git.push(
        services.git.url(services.git.root / "repos" / f"dags-{ns}.git"),
        {"dags/second.py": HELLO_DAG.replace("hello_real_node", "second_dag")},
        "a second DAG",
    )
    synced = None
    if delivery == "git-sync":  # the commit reaches the git-sync container (period 10 s)
        gs_pod = pods_of(cluster, ns, "component=dag-processor")[0]["metadata"]["name"]
        deadline = time.monotonic() + 90
        while True:
            head = kubectl(
                cluster, "-n", ns, "exec", gs_pod, "-c", "git-sync", "--", "git", "-C", "/git/repo", "rev-parse", "HEAD"
            )
            if head.strip() == sha:
                break
            assert time.monotonic() < deadline, f"git-sync still at {head.strip()}, pushed {sha}"
            time.sleep(1)
        synced = time.monotonic() - pushed
    pf, base = port_forward(cluster, ns, "svc/airflow-api-server", 8080)
    try:
        deadline = pushed + 2 * 10 + 60  # two sync periods (10 s) + the DAG processor's parse
        while True:
            try:
                _, dags = http(f"{base}/api/v2/dags", token=auth)
                if "second_dag" in {d["dag_id"] for d in dags["dags"]}:
                    break
            except OSError:  # the port-forward not up yet
                pass
            assert time.monotonic() < deadline, (
                f"second_dag not listed {time.monotonic() - pushed:.0f} s after the push"
            )
            time.sleep(1)
        listed = time.monotonic() - pushed
    finally:
        pf.terminate()
        pf.wait(10)
    print(
        f"\n{delivery}: pushed {sha[:12]}"
        + (f", in the git-sync container after {synced:.1f} s" if synced is not None else "")
        + f", second_dag listed by the API after {listed:.1f} s (sync period 10 s, the seed's wait)"
    )
    return synced, listed


def _api_session(cluster: KubeCluster, ns: str, spec_file: Path):
    """Port-forward to the API server and log in as the generated admin: (process, base URL, token)."""
    from airflow_gitops.keystore import ADMIN_PASSWORD
    from airflow_gitops.spec import load_spec

    pf, base = port_forward(cluster, ns, "svc/airflow-api-server", 8080)
    deadline = time.monotonic() + 90
    while True:
        try:
            http(f"{base}/api/v2/monitor/health")
            break
        except OSError:
            if time.monotonic() > deadline:
                pf.terminate()
                raise
            time.sleep(1)
    password = (load_spec(spec_file).secrets_dir / ADMIN_PASSWORD).read_text().strip()
    _, token = http(f"{base}/auth/token", {"username": "admin", "password": password})
    return pf, base, token["access_token"]


def _fernet_key_survives_uninstall_and_deploy(cluster, ns, spec_file, tmp_path, services) -> None:
    """The seed keeps one Fernet key in a Secret so that `helm delete` + `install` keeps encrypted
    Connections readable. Here: a Connection created through the API is stored encrypted in the external
    database; `helm uninstall` removes every pod; `deploy` again; a task in a new worker pod reads it."""
    import hashlib
    import secrets as pysecrets

    probe = pysecrets.token_urlsafe(24)
    pf, base, auth = _api_session(cluster, ns, spec_file)
    try:
        status, _ = http(
            f"{base}/api/v2/connections",
            {"connection_id": "fernet_probe", "conn_type": "generic", "password": probe},
            token=auth,
        )
        assert status in (200, 201), status
    finally:
        pf.terminate()
        pf.wait(10)
    db = ns.replace("-", "_")
    conn = services.pg.connect(db)
    with conn.cursor() as cur:
        cur.execute("SELECT is_encrypted, password FROM connection WHERE conn_id = 'fernet_probe'")
        encrypted, stored = cur.fetchone()
    conn.close()
    assert encrypted is True and probe not in stored, "the Connection's password is not encrypted at rest"

    t0 = time.monotonic()
    subprocess.run(
        [str(cluster.helm), "-n", ns, "uninstall", "airflow", "--wait", "--timeout", "180s"],
        env=cluster.env(),
        capture_output=True,
        check=True,
    )
    deadline = time.monotonic() + 180  # the release's pods end their grace period: none is left running
    while left := kubectl(cluster, "-n", ns, "get", "pods", "-l", "release=airflow", "-o", "name").strip():
        assert time.monotonic() < deadline, f"pods left 180 s after helm uninstall: {left}"
        time.sleep(2)
    result = runner.invoke(app, ["deploy", "-f", str(spec_file), "--out", str(tmp_path / "out-again")])
    assert result.exit_code == 0, result.output[-4000:]
    print(f"helm uninstall + deploy again: {time.monotonic() - t0:.0f}s")

    assert _probe_digest(cluster, ns, spec_file) == hashlib.sha256(probe.encode()).hexdigest()
    _fernet_rotation_in_the_pods(cluster, ns, spec_file, probe)


def _probe_digest(cluster, ns, spec_file) -> str:
    """Run fernet_reader (a task in a new worker pod) and return the digest of the Connection's password."""
    pf, base, auth = _api_session(cluster, ns, spec_file)
    try:
        deadline = time.monotonic() + 180
        while True:
            _, dags = http(f"{base}/api/v2/dags", token=auth)
            if "fernet_reader" in {d["dag_id"] for d in dags["dags"]}:
                break
            assert time.monotonic() < deadline, dags
            time.sleep(3)
        _, run = http(f"{base}/api/v2/dags/fernet_reader/dagRuns", {"logical_date": None}, token=auth)
        run_url = f"{base}/api/v2/dags/fernet_reader/dagRuns/{run['dag_run_id']}"
        deadline = time.monotonic() + 300
        while True:
            _, state = http(run_url, token=auth)
            if state["state"] in ("success", "failed"):
                break
            assert time.monotonic() < deadline, state
            time.sleep(2)
        _, log = http(f"{run_url}/taskInstances/read/logs/1", token=auth)
        assert state["state"] == "success", json.dumps(log)[-3000:]
        _, xcom = http(f"{run_url}/taskInstances/read/xcomEntries/return_value", token=auth)
        got = xcom["value"]
        return json.loads(got) if isinstance(got, str) and got.startswith('"') else got  # serialized or not
    finally:
        pf.terminate()
        pf.wait(10)


def _fernet_rotation_in_the_pods(cluster, ns, spec_file, probe) -> None:
    """rotate-fernet-key --target kubernetes with the real re-encryption in the scheduler pod (kwok has
    no containers; tests/test_kubernetes_cluster.py runs a stand-in there): step 1 puts NEW,OLD in the
    Secret and restarts the pods; `airflow rotate-fernet-key` in the scheduler pod re-encrypts; step 2
    proves every value decrypts with NEW alone and drops OLD; a task then still reads the Connection."""
    import hashlib

    from airflow_gitops.fernetkeys import key_file, read_keys
    from airflow_gitops.spec import load_spec

    spec = load_spec(spec_file)
    old = read_keys(key_file(spec))
    assert len(old) == 1
    t0 = time.monotonic()
    step1 = runner.invoke(app, ["rotate-fernet-key", "--target", "kubernetes", "-f", str(spec_file)])
    assert step1.exit_code == 0 and "Step 1 of 2" in step1.output, step1.output
    keys = read_keys(key_file(spec))
    assert len(keys) == 2 and keys[1] == old[0]
    kubectl(cluster, "-n", ns, "rollout", "status", "deploy/airflow-scheduler", "--timeout=300s", timeout=320)
    early = runner.invoke(app, ["rotate-fernet-key", "--target", "kubernetes", "-f", str(spec_file)])
    assert early.exit_code == 1 and "not re-encrypted with the new key yet" in early.output, early.output
    kubectl(
        cluster, "-n", ns, "exec", "deploy/airflow-scheduler", "-c", "scheduler", "--",
        "airflow", "rotate-fernet-key", timeout=300,
    )  # fmt: skip
    step2 = runner.invoke(app, ["rotate-fernet-key", "--target", "kubernetes", "-f", str(spec_file)])
    assert step2.exit_code == 0 and "Step 2 of 2" in step2.output, step2.output
    assert read_keys(key_file(spec)) == keys[:1]
    secret = json.loads(kubectl(cluster, "-n", ns, "get", "secret", spec.secrets.fernet_key_secret, "-o", "json"))
    import base64

    in_cluster = base64.b64decode(next(iter(secret["data"].values()))).decode().strip()
    assert in_cluster == keys[0].decode(), "the Secret does not hold the new key alone"
    for deploy in ("airflow-scheduler", "airflow-api-server", "airflow-dag-processor"):  # restarted by step 2
        kubectl(cluster, "-n", ns, "rollout", "status", f"deploy/{deploy}", "--timeout=300s", timeout=320)
    took = time.monotonic() - t0
    print(f"rotate-fernet-key on the real node (both steps, re-encryption in the scheduler pod): {took:.0f}s")
    for attempt in range(3):  # the port-forward may have caught a pod of the release as it was replaced
        try:
            digest = _probe_digest(cluster, ns, spec_file)
            break
        except OSError:
            if attempt == 2:
                raise
            time.sleep(10)
    assert digest == hashlib.sha256(probe.encode()).hexdigest()


PIPELINE_TASKS = ["ingest", "validate", "train", "evaluate", "log_to_mlflow", "register", "served"]


def _pipeline_a_pod_per_task(cluster: KubeCluster, ns: str, base: str, auth: str, ml, pg) -> None:
    """The template's ml_training_pipeline: every task in a worker pod of its own (our image, the real
    node), boto3 in the pods writing the bucket, MLflow registering the model and moving the alias; the
    pods deleted afterwards, a task's log still readable through the API."""
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + 180
    while True:  # listed once the DAG processor has parsed the template (it came with the first commit)
        _, dags = http(f"{base}/api/v2/dags", token=auth)
        if "ml_training_pipeline" in {d["dag_id"] for d in dags["dags"]}:
            break
        assert time.monotonic() < deadline, dags
        time.sleep(3)
    t0 = time.monotonic()
    _, run = http(f"{base}/api/v2/dags/ml_training_pipeline/dagRuns", {"logical_date": None}, token=auth)
    run_url = f"{base}/api/v2/dags/ml_training_pipeline/dagRuns/{run['dag_run_id']}"
    pods: dict[str, dict] = {}  # pod name -> task, node, image, phase
    deadline = time.monotonic() + 900
    while True:
        for p in pods_of(cluster, ns, "kubernetes_executor=True,dag_id=ml_training_pipeline"):
            statuses = p["status"].get("containerStatuses") or [{}]
            pods[p["metadata"]["name"]] = {
                "task": p["metadata"]["labels"].get("task_id"),
                "node": p["spec"].get("nodeName"),
                "image": statuses[0].get("imageID") or p["spec"]["containers"][0]["image"],
                "phase": p["status"]["phase"],
                "ip": p["status"].get("podIP") or pods.get(p["metadata"]["name"], {}).get("ip"),
                "env": {e["name"] for c in p["spec"]["containers"] for e in c.get("env") or []},
                "pod": p,  # the last state seen: its timestamps for the figures
            }
        _, state = http(run_url, token=auth)
        if state["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, (state, pods)
        time.sleep(1)
    wall = time.monotonic() - t0
    _, tis = http(f"{run_url}/taskInstances", token=auth)
    states = {t["task_id"]: t["state"] for t in tis["task_instances"]}
    if state["state"] != "success":
        failed = [t for t, st in states.items() if st != "success"]
        logs = {t: http(f"{run_url}/taskInstances/{t}/logs/1", token=auth)[1] for t in failed[:1]}
        pytest.fail(f"ml_training_pipeline {state['state']}: {states}\n{json.dumps(logs)[-4000:]}")
    print(f"\nml_training_pipeline on the real node: {wall:.0f} s, a pod per task:")
    for name, info in sorted(pods.items(), key=lambda kv: PIPELINE_TASKS.index(kv[1]["task"])):
        print(f"  {info['task']:14} {name:50} {info['node']} {info['image'][-19:]} {info['phase']}")
    assert states == dict.fromkeys(PIPELINE_TASKS, "success"), states
    by_task = {info["task"] for info in pods.values()}
    assert by_task == set(PIPELINE_TASKS), pods  # each task in its own pod (a short one may be seen only once)
    assert {info["node"] for info in pods.values()} == {cluster.node.name}, pods
    # Hardened worker pods (issue 22): no metadata database URL and no key in their environment, and still
    # every task ran (the namespace enforces Pod Security "restricted": the API server admitted each pod).
    leaked = {
        name: info["env"] & {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY"}
        for name, info in pods.items()
    }
    assert not any(leaked.values()), leaked
    labels = json.loads(kubectl(cluster, "get", "namespace", ns, "-o", "json"))["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels
    _database_connections_by_pod(cluster, ns, pg, pods)
    figures = {"wall_s": wall, "tasks": _pod_timings(pods, tis["task_instances"])}
    # MLflow: the run logged from the pods, the model registered, the alias moved; the data in the bucket
    # (each task pod had MLflow's login from the Secret secrets.mlflow_secret: the server refuses any other)
    without_login = {name: info["task"] for name, info in pods.items() if "MLFLOW_TRACKING_PASSWORD" not in info["env"]}
    assert not without_login, without_login
    client = MlflowClient(ml.mlflow_uri)
    _, reg = http(f"{run_url}/taskInstances/register/xcomEntries/return_value", token=auth)
    registered = json.loads(reg["value"]) if isinstance(reg["value"], str) else reg["value"]
    assert registered["promoted"] is True, registered
    with client_credentials():
        champion = client.get_model_version_by_alias("mlops-classifier", "champion")
    assert champion.version == registered["version"]
    assert champion.tags["git.commit"] == state["bundle_version"] or state["bundle_version"] is None, champion.tags
    datasets = list((ml.root / "s3" / "mlops-data" / "datasets").rglob("raw.parquet"))
    assert datasets, "ingest wrote nothing into the bucket"
    # the pods are gone; their logs are not
    deadline = time.monotonic() + 120
    while kubectl(cluster, "-n", ns, "get", "pods", "-l", "kubernetes_executor=True", "-o", "name").strip():
        assert time.monotonic() < deadline, "the task pods were not deleted after the run"
        time.sleep(2)
    _, log = http(f"{run_url}/taskInstances/register/logs/1", token=auth)
    assert "promoted to 'champion'" in json.dumps(log), log
    # logs.remote: s3 (issue 19 §2): each task pod uploaded its log to the bucket through the S3 endpoint
    deadline = time.monotonic() + 60  # uploaded when the task ends, a little after the run shows success
    while True:
        uploaded = list((ml.root / "s3" / "mlops-data" / "airflow-logs").rglob("*.log"))
        tasks = {t for t in PIPELINE_TASKS if any(f"task_id={t}" in str(f) for f in uploaded)}
        if tasks == set(PIPELINE_TASKS):
            break
        assert time.monotonic() < deadline, f"task logs in the bucket: {sorted(map(str, uploaded))[:10]}"
        time.sleep(2)
    register_log = next(f for f in uploaded if "task_id=register" in str(f))  # the one run so far
    assert "promoted to 'champion'" in register_log.read_text()
    # serving: the `served` task saw the Service answer with the new champion; each pod is Ready now
    _, served = http(f"{run_url}/taskInstances/served/xcomEntries/return_value", token=auth)
    served = json.loads(served["value"]) if isinstance(served["value"], str) else served["value"]
    assert served == {"served": registered["version"]}, served
    deadline = time.monotonic() + 60
    while True:
        serving = pods_of(cluster, ns, "component=serving")
        ready = [
            p for p in serving if all(c["ready"] for c in p["status"].get("containerStatuses") or [{"ready": False}])
        ]
        if len(ready) == 2:
            break
        assert time.monotonic() < deadline, [p["status"].get("containerStatuses") for p in serving]
        time.sleep(2)
    return figures


def _ts(value: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _pod_timings(pods: dict[str, dict], task_instances: list[dict]) -> dict[str, dict]:
    """Per task, from its worker pod's last seen state and its task instance (seconds; the pod's timestamps
    have a resolution of 1 s): created -> scheduled, the git-sync init container (the clone), container
    started -> the task started (Python, the task SDK, the DAG's imports), the task's run, -> pod finished."""
    tis = {t["task_id"]: t for t in task_instances}
    out = {}
    for info in pods.values():
        p, task = info["pod"], info["task"]
        ti = tis.get(task) or {}
        created = _ts(p["metadata"]["creationTimestamp"])
        cond = {c["type"]: _ts(c.get("lastTransitionTime")) for c in p["status"].get("conditions") or []}
        inits = {
            c["name"]: c.get("state", {}).get("terminated") or {}
            for c in p["status"].get("initContainerStatuses") or []
        }
        main = (p["status"].get("containerStatuses") or [{}])[0].get("state", {})
        main_state = main.get("terminated") or main.get("running") or {}
        started, finished = _ts(main_state.get("startedAt")), _ts(main_state.get("finishedAt"))
        ti_start, ti_end = _ts(ti.get("start_date")), _ts(ti.get("end_date"))
        clone = inits.get("git-sync-init") or {}
        row = {
            "pod": p["metadata"]["name"],
            "scheduled_s": (cond.get("PodScheduled") or created) - created if created else None,
            "clone_s": (_ts(clone.get("finishedAt")) - _ts(clone.get("startedAt"))) if clone.get("startedAt") else None,
            "created_to_running_s": started - created if started and created else None,
            "running_to_task_start_s": ti_start - started if ti_start and started else None,
            "task_s": ti.get("duration"),
            "task_end_to_pod_end_s": finished - ti_end if finished and ti_end else None,
            "created_to_finished_s": finished - created if finished and created else None,
        }
        if task not in out or (row["created_to_finished_s"] or 0) > (out[task]["created_to_finished_s"] or 0):
            out[task] = row
    return out


def _release_memory(cluster: KubeCluster, ns: str) -> dict[str, int]:
    """Working-set bytes per pod of the namespace, from the kubelet's summary API (cAdvisor), idle."""
    summary = json.loads(kubectl(cluster, "get", "--raw", f"/api/v1/nodes/{cluster.node.name}/proxy/stats/summary"))
    return {
        p["podRef"]["name"]: sum((c.get("memory") or {}).get("workingSetBytes") or 0 for c in p.get("containers") or [])
        for p in summary.get("pods") or []
        if p["podRef"]["namespace"] == ns
    }


def _database_connections_by_pod(cluster: KubeCluster, ns: str, pg, workers: dict[str, dict]) -> None:
    """The seed's PostgreSQL row: the external server's connection log (log_connections) shows the release's
    pods by their addresses - the scheduler, API server and DAG processor use the metadata database; Airflow 3's
    worker pods talk to the Execution API instead."""
    import collections
    import re

    db = ns.replace("-", "_")
    seen = collections.Counter(
        m.group(1)
        for m in re.finditer(
            r"^\[([0-9.]+)/" + re.escape(db) + r"\]LOG:  connection authorized", pg.log_file.read_text(), re.M
        )
    )
    release = pods_of(cluster, ns, "release=airflow")
    by_component = {
        p["metadata"]["labels"].get("component"): p["status"].get("podIP")
        for p in release
        if p["status"]["phase"] == "Running"
    }
    print(f"\nPostgreSQL {pg.host}:{pg.port}/{db}: connections authorized, by pod address:")
    for component, ip in sorted(by_component.items(), key=lambda kv: str(kv[0])):
        print(f"  {component or '?':16} {ip or '-':15} {seen.get(ip, 0)}")
    for name, info in sorted(workers.items()):
        print(f"  worker {info['task']:9} {info['ip'] or '-':15} {seen.get(info['ip'], 0)}  ({name})")
    others = {
        ip: n for ip, n in seen.items() if ip not in set(by_component.values()) | {w["ip"] for w in workers.values()}
    }
    print(f"  other addresses  {others or '-'} (pods gone since: migrations Job, create-user Job, replaced pods)")
    for component in ("scheduler", "api-server", "dag-processor"):
        assert seen.get(by_component.get(component), 0) > 0, (component, by_component, dict(seen))
    # Airflow 3's tasks use the Execution API: no worker pod opened a database connection (and since issue 22
    # their pods have no database URL at all: the pipeline above succeeded without one).
    assert {w["task"]: seen.get(w["ip"], 0) for w in workers.values() if seen.get(w["ip"], 0)} == {}, dict(seen)
    assert all(ip.startswith(cluster.node.pod_cidr.rsplit(".", 1)[0]) for ip in seen), seen  # pods, not the host


def _faults_mid_run(cluster: KubeCluster, ns: str, base: str, auth: str) -> None:
    """A second run of the pipeline: its running ``train`` worker pod is deleted (the task is retried), then
    the scheduler pod (its Deployment replaces it; the new scheduler adopts the run): the run succeeds."""

    def pods(selector: str) -> list[dict]:
        return pods_of(cluster, ns, selector)

    def wait(what: str, predicate, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while not (found := predicate()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)
        return found

    _, run = http(f"{base}/api/v2/dags/ml_training_pipeline/dagRuns", {"logical_date": None}, token=auth)
    run_url = f"{base}/api/v2/dags/ml_training_pipeline/dagRuns/{run['dag_run_id']}"
    train = "kubernetes_executor=True,dag_id=ml_training_pipeline,task_id=train"
    (victim,) = wait(
        "the train pod to run",
        lambda: [p["metadata"]["name"] for p in pods(train) if p["status"]["phase"] == "Running"][:1],
    )
    kubectl(cluster, "-n", ns, "delete", "pod", victim, "--grace-period=0", "--wait=false")
    t_worker = time.monotonic()
    wait(
        "train to be retried",
        lambda: [
            p
            for p in pods(train)
            if p["metadata"]["name"] != victim and p["status"]["phase"] in ("Running", "Succeeded")
        ],
    )
    (scheduler,) = [p["metadata"]["name"] for p in pods("component=scheduler")]
    wait("evaluate to start", lambda: pods("kubernetes_executor=True,dag_id=ml_training_pipeline,task_id=evaluate"))
    kubectl(cluster, "-n", ns, "delete", "pod", scheduler, "--wait=false")
    t_scheduler = time.monotonic()

    def finished():
        _, state = http(run_url, token=auth)
        return state if state["state"] in ("success", "failed") else None

    state = wait("the run to finish", finished, 600)
    _, tis = http(f"{run_url}/taskInstances", token=auth)
    tries = {t["task_id"]: (t["state"], t["try_number"]) for t in tis["task_instances"]}
    print(
        f"\nfaults: worker pod of train deleted, scheduler pod {scheduler} deleted: run {state['state']} "
        f"{time.monotonic() - t_scheduler:.0f} s after the scheduler's deletion "
        f"({time.monotonic() - t_worker:.0f} s after the worker's); tries {tries}"
    )
    assert state["state"] == "success", tries
    assert tries["train"] == ("success", 2), tries  # the deleted pod's try failed, the retry succeeded
    new = [p["metadata"]["name"] for p in pods("component=scheduler")]
    assert new and scheduler not in new, new


def test_an_image_the_node_cannot_get_is_one_message_naming_the_stuck_pods(kube_node, images, services, tmp_path):
    ns = "seed-noimage"
    spec_file = seed_spec(tmp_path, kube_node, services, images, ns=ns, delivery="git-sync")
    data = yaml.safe_load(spec_file.read_text())
    data["image"]["tag"] = "never-built"
    spec_file.write_text(yaml.safe_dump(data))
    env_before = os.environ.copy()
    os.environ["KUBECONFIG"] = str(kube_node.kubeconfig)
    os.environ["PATH"] = f"{kube_node.bin_dir}{os.pathsep}{os.environ['PATH']}"
    try:
        result = runner.invoke(app, ["deploy", "-f", str(spec_file), "--out", str(tmp_path / "out"), "--timeout", "45"])
        assert result.exit_code == 1, result.output
        out = " ".join(result.output.split())
        assert "Traceback" not in result.output
        assert "Pods not ready" in out or "not ready" in out, out
        assert "airflow-run-airflow-migrations" in out and ("ImagePull" in out or "ErrImage" in out), out
        assert "Fix:" in result.output
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        cleanup = [
            [str(kube_node.helm), "-n", ns, "uninstall", "airflow", "--wait", "--timeout", "120s"],
            [str(kube_node.kubectl), "delete", "namespace", ns, "--wait=true", "--timeout=120s"],
            [str(kube_node.kubectl), "delete", "pv", f"{ns}-logs"],
        ]
        for cmd in cleanup:
            subprocess.run(cmd, env=kube_node.env(), capture_output=True)
