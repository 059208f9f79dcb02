"""A mocked Kubernetes API server: no real kube-apiserver can run here, so tests that talk to
"a cluster" use this small in-process HTTP server speaking the few core/v1 endpoints the kubernetes
client calls (GET/POST/PUT of namespaced objects, /version). Tests using it say so in their name
(``..._mock_k8s_api...``).

``mock_k8s_api`` points ``KUBECONFIG`` at it and yields the handler class: ``.store`` maps API paths
to objects, ``.writes`` records every create/replace.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class MockK8sApi(BaseHTTPRequestHandler):
    store: dict[str, dict] = {}
    writes: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict):
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _not_found(self):
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_GET(self):
        path = self.path.split("?")[0]
        if path.rstrip("/") == "/version":
            return self._send(200, VERSION)
        obj = self.store.get(path)
        return self._send(200, obj) if obj else self._not_found()

    def _body(self) -> dict:
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "stringData" in doc:  # what the real API server does
            doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in doc.pop("stringData").items()}
        return doc

    def do_POST(self):
        doc = self._body()
        path = self.path.split("?")[0] + "/" + doc["metadata"]["name"]
        self.writes.append(f"create {path}")
        self.store[path] = doc
        self._send(201, doc)

    def do_PUT(self):
        doc = self._body()
        path = self.path.split("?")[0]
        self.writes.append(f"replace {path}")
        self.store[path] = doc
        self._send(200, doc)


@pytest.fixture
def mock_k8s_api(tmp_path, monkeypatch):
    MockK8sApi.store, MockK8sApi.writes = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), MockK8sApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mock", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "u"}}],
                "current-context": "mock",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield MockK8sApi
    server.shutdown()
