"""The real node of the test cluster (scripts/kube-node.sh, fixture ``kube_node``): containers really run
(containerd + runc, pods on a private bridge), Services route (kube-proxy), names resolve (CoreDNS),
``kubectl logs/exec/port-forward`` reach the kubelet through the API server's egress proxy, pods reach the
host on the gateway address, and nothing leaves the machine.

Images: the busybox image kube-up.sh makes from Debian's busybox-static (no registry is reachable).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kube_cluster import BUSYBOX_IMAGE, KUBE_UP, NODE_NAME, REAL_NODE_POD_SPEC, KubeCluster

pytestmark = pytest.mark.kubernetes


def kubectl(cluster: KubeCluster, *args: str, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(cluster.kubectl), *args], input=input, capture_output=True, text=True, env=cluster.env(), timeout=timeout
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def ns(kube_node: KubeCluster) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:6]}"
    kubectl(kube_node, "create", "namespace", name)
    yield name
    kubectl(kube_node, "delete", "namespace", name, "--wait=false")


def busybox_pod(name: str, command: str, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            **REAL_NODE_POD_SPEC,
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", command]}
            ],
        },
    }


def apply(cluster: KubeCluster, ns: str, *objs: dict) -> None:
    kubectl(
        cluster, "-n", ns, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    )


def wait_phase(cluster: KubeCluster, ns: str, pod: str, phases: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = json.loads(kubectl(cluster, "-n", ns, "get", "pod", pod, "-o", "json"))
        if obj.get("status", {}).get("phase") in phases:
            return obj
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {pod} not {phases} after {timeout}s: {json.dumps(obj.get('status'))[:1500]}")
        time.sleep(0.5)


def test_the_real_node_is_a_kubelet_with_containerd_next_to_kwok_nodes(kube_node):
    nodes = json.loads(kubectl(kube_node, "get", "nodes", "-o", "json"))["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    real = by_name[NODE_NAME]
    info = real["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    assert info["kubeletVersion"] == "v1.36.5"
    ready = {c["type"]: c["status"] for c in real["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert real["status"]["addresses"][0] == {"address": kube_node.node.gateway, "type": "InternalIP"}
    # tainted: pods that do not ask for it stay on the kwok nodes
    assert {t["key"] for t in real["spec"].get("taints", [])} == {"airflow-gitops.dev/real-node"}
    assert any(n.startswith("kwok-node-") for n in by_name)


def test_a_pod_runs_resolves_services_and_reaches_the_api_server_but_not_outside(kube_node, ns):
    # a web server pod behind a Service, and a client pod that reaches it by name
    server = busybox_pod(
        "web", "mkdir -p /tmp/www && echo hello-from-web >/tmp/www/index.html && httpd -f -p 8080 -h /tmp/www"
    )
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    apply(kube_node, ns, server, svc)
    kubectl(kube_node, "-n", ns, "wait", "--for=condition=Ready", "pod/web", "--timeout=90s")
    # (busybox-static's wget crashes and its nc cannot resolve names: glibc in a static binary; nslookup works)
    script = (
        "resolve() { nslookup \"$1\" | awk '/^Address: / {a=$2} END {print a}'; }; "
        f"web=$(resolve web.{ns}.svc.cluster.local); api=$(resolve kubernetes.default.svc.cluster.local); "
        'echo "web=$web api=$api"; '
        'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "$web" 80; '
        'echo | nc -w 3 "$api" 443 >/dev/null && echo API-OK; '
        # outside this machine: the default route of the machine's uplink (a pod has no way there)
        "if nc -w 3 192.0.2.1 53 </dev/null; then echo LEAK; else echo NO-EGRESS; fi"
    )
    apply(kube_node, ns, busybox_pod("client", script))
    wait_phase(kube_node, ns, "client", {"Succeeded", "Failed"})
    logs = kubectl(kube_node, "-n", ns, "logs", "client")
    svc_ip = kubectl(kube_node, "-n", ns, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
    assert f"web={svc_ip} api=10.96.0.1" in logs, logs
    assert "hello-from-web" in logs, logs
    assert "API-OK" in logs, logs
    assert "NO-EGRESS" in logs and "LEAK" not in logs, logs


def test_pods_reach_a_host_service_on_the_gateway_address(kube_node, ns):
    gw = kube_node.node.gateway

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"hello-from-host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer((gw, 0), Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        apply(
            kube_node,
            ns,
            busybox_pod("client", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {gw} {httpd.server_port}"),
        )
        pod = wait_phase(kube_node, ns, "client", {"Succeeded", "Failed"})
        assert pod["status"]["phase"] == "Succeeded", kubectl(kube_node, "-n", ns, "logs", "client")
        assert kubectl(kube_node, "-n", ns, "logs", "client").endswith("\n\nhello-from-host")
    finally:
        httpd.shutdown()


def test_exec_and_port_forward_go_through_the_api_server_to_the_kubelet(kube_node, ns):
    apply(
        kube_node,
        ns,
        busybox_pod("web", "mkdir -p /tmp/w && echo pf-ok >/tmp/w/index.html && httpd -f -p 8080 -h /tmp/w"),
    )
    kubectl(kube_node, "-n", ns, "wait", "--for=condition=Ready", "pod/web", "--timeout=90s")
    assert kubectl(kube_node, "-n", ns, "exec", "web", "--", "cat", "/tmp/w/index.html") == "pf-ok\n"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pf = subprocess.Popen(
        [str(kube_node.kubectl), "-n", ns, "port-forward", "pod/web", f"{port}:8080"],
        env=kube_node.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=3) as c:
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    body = c.makefile("rb").read().decode()
            except OSError:
                time.sleep(0.3)
        assert body is not None and body.endswith("pf-ok\n"), body
    finally:
        pf.terminate()
        pf.wait(10)


def test_a_deleted_pod_is_stopped_and_a_failing_container_reports_its_exit_code(kube_node, ns):
    apply(kube_node, ns, busybox_pod("fails", "echo about-to-fail; exit 3"))
    pod = wait_phase(kube_node, ns, "fails", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    apply(kube_node, ns, busybox_pod("sleeper", "trap 'exit 0' TERM; sleep 600 & wait"))
    kubectl(kube_node, "-n", ns, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s")
    t0 = time.monotonic()
    kubectl(kube_node, "-n", ns, "delete", "pod", "sleeper", "--timeout=60s")
    assert time.monotonic() - t0 < 30  # SIGTERM reached the container (no 30 s grace-period kill)


def test_a_second_real_node_on_the_machine_is_refused_with_the_fix(kube_node, tmp_path):
    proc = subprocess.run(
        ["bash", str(KUBE_UP), "start", str(tmp_path / "second"), "--real-node"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "a real node already runs on this machine" in proc.stderr and "kube-up.sh stop" in proc.stderr
    assert str(kube_node.dir) in proc.stderr
    # and the running cluster was not touched
    assert kubectl(kube_node, "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[-1].status}") == "True"


def test_a_machine_without_containerd_gets_one_message_and_nothing_started(kube_cluster, tmp_path):
    # PATH: every program of the machine but containerd's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith("containerd") or (bin_dir / name).exists():
                continue
            (bin_dir / name).symlink_to(os.path.join(d, name))
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = subprocess.run(
        ["bash", str(KUBE_UP), "start", str(tmp_path / "c"), "--real-node"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    (line,) = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert "the real node needs containerd containerd-shim-runc-v2" in line and "apt-get install -y containerd" in line
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix == ".pid"]
