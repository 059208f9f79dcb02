"""The serving process against a real MLflow server (SQLite registry, artifacts through the server, real
webhooks over loopback): bad input, hot swap under load, a refused version, rollback, forged webhooks,
nothing to serve at start, the registry going away."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from serving_fixture import MlflowServer, ServingProcess, client_credentials, log_version, train

from airflow_gitops.serving import ENV_WEBHOOK_NAME, WEBHOOK_PATH
from airflow_gitops.serving.webhook import sign


@pytest.fixture(scope="module", autouse=True)
def _mlflow_credentials():
    """MLflow's clients here send the fixture servers' credential (their authentication is on)."""
    with client_credentials():
        yield


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture
def model_name():
    return "m_" + uuid.uuid4().hex[:8]


@pytest.fixture
def serve(tmp_path, mlflow_server):
    started = []

    def _start(name, **kw):
        proc = ServingProcess(tmp_path / f"serving{len(started)}", mlflow_server.uri, name, **kw).start()
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.stop()


ROWS = [{"a": 0.5, "b": -1.0, "n": 2}, {"a": -2.0, "b": 0.3, "n": 0}]


def own_prediction(uri, name, version, rows):
    """What the model itself predicts (loaded here, in the test, not through the server)."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    frame = pd.DataFrame(rows).astype({"a": "float64", "b": "float64", "n": "int64"})
    return model.predict(frame).tolist()


def test_serves_champion_and_describes_it(mlflow_server, serve, model_name):
    v = log_version(mlflow_server.uri, model_name, seed=1)
    srv = serve(model_name)
    srv.wait_version(v)
    r = httpx.post(f"{srv.url}/predict", json=ROWS)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == own_prediction(mlflow_server.uri, model_name, v, ROWS)
    assert r.json()["version"] == v and r.headers["x-model-version"] == v
    # MLflow's /invocations formats give the same answer.
    split = {"dataframe_split": {"columns": ["a", "b", "n"], "data": [[r_["a"], r_["b"], r_["n"]] for r_ in ROWS]}}
    for body in ({"dataframe_records": ROWS}, split):
        inv = httpx.post(f"{srv.url}/invocations", json=body)
        assert inv.status_code == 200 and inv.json()["predictions"] == r.json()["predictions"], inv.text
    info = httpx.get(f"{srv.url}/model").json()
    assert info["served"]["version"] == v and info["served"]["git_commit"] == "c0ffee0001"
    assert info["served"]["run_id"] and info["served"]["name"] == model_name
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert f"serving_model_version {float(v)}" in metrics
    assert 'serving_requests_total{endpoint="predict",status="200"} 1.0' in metrics
    # The imported modules and the first model are out of the cyclic GC's scans (no ~90 ms full
    # collections during swaps; bench/bench_serving.py measures the effect).
    logs = srv.logs()
    assert "objects frozen out of the garbage collector's scans (start)" in logs, logs[-2000:]
    assert f"(first model v{v} served)" in logs, logs[-2000:]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[]", 400, "empty batch"),
        (b"", 400, "empty body"),
        (json.dumps([{"a": 1.0, "b": 2.0}]).encode(), 422, "missing column 'n'"),
        (json.dumps([{"a": 1.0, "b": 2.0, "n": 1, "zzz": 3}]).encode(), 422, "unknown column 'zzz'"),
        (json.dumps([{"a": "x", "b": 2.0, "n": 1}]).encode(), 422, "column 'a' must be a number"),
        (json.dumps([{"a": 1.0, "b": 2.0, "n": 1.5}]).encode(), 422, "column 'n' must be an integer"),
        (b'[{"a": NaN, "b": 2.0, "n": 1}]', 422, "NaN is not a number"),
        (b'[{"a": 1e999, "b": 2.0, "n": 1}]', 422, "only finite numbers"),
        (b'[{"a": -Infinity, "b": 2.0, "n": 1}]', 422, "-Infinity is not a number"),
        (b"[1, 2]", 422, "record 0 is a int"),
        (b'{"rows": []}', 400, "records"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_the_server_is_unharmed(mlflow_server, serve, model_name, body, status, words):
    v = log_version(mlflow_server.uri, model_name, seed=2)
    srv = serve(model_name, max_body=64 * 1024)
    srv.wait_version(v)
    r = httpx.post(f"{srv.url}/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert httpx.post(f"{srv.url}/predict", json=ROWS).status_code == 200


def test_a_50_mb_body_is_refused_413(mlflow_server, serve, model_name):
    v = log_version(mlflow_server.uri, model_name, seed=3)
    srv = serve(model_name)
    srv.wait_version(v)
    big = b"[" + b'{"a": 1.0, "b": 2.0, "n": 1},' * (50 * 1024 * 1024 // 30) + b'{"a": 1.0, "b": 2.0, "n": 1}]'
    r = httpx.post(f"{srv.url}/predict", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    r = httpx.post(f"{srv.url}/predict", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert httpx.post(f"{srv.url}/predict", json=ROWS).status_code == 200


def test_nothing_to_serve_at_start_is_503_with_reason_then_serves_when_alias_appears(mlflow_server, serve, model_name):
    srv = serve(model_name, poll=0.5)
    # The first registry check may still be under way when the port opens (seen under CI load):
    # wait for its verdict, then it must be the missing alias.
    deadline = time.monotonic() + 15
    while True:
        h = httpx.get(f"{srv.url}/health")
        if h.json().get("reason") != "no model loaded yet" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert h.status_code == 503 and "no alias 'champion'" in h.json()["reason"], h.text
    r = httpx.post(f"{srv.url}/predict", json=ROWS)
    assert r.status_code == 503 and "no alias" in r.json()["error"]
    v = log_version(mlflow_server.uri, model_name, seed=4)
    srv.wait_version(v, timeout=30)
    assert srv.proc.poll() is None  # never exited: no crash loop
    assert httpx.post(f"{srv.url}/predict", json=ROWS).status_code == 200


def _load(url: str, stop: threading.Event, out: dict):
    with httpx.Client(timeout=10) as c:
        while not stop.is_set():
            try:
                r = c.post(f"{url}/predict", json=ROWS)
                out["ok" if r.status_code == 200 else "failed"].append(r.status_code)
                if r.status_code == 200:
                    out["versions"].add(r.json()["version"])
            except httpx.HTTPError as exc:
                out["failed"].append(repr(exc))


def test_hot_swap_under_concurrent_load_fails_no_request_and_follows_webhook(mlflow_server, serve, model_name):
    v1 = log_version(mlflow_server.uri, model_name, seed=5)
    srv = serve(model_name, poll=60)  # polling too slow to matter: the webhook does the swap
    srv.wait_version(v1)
    out = {"ok": [], "failed": [], "versions": set()}
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(srv.url, stop, out)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        served = [v1]
        for seed in (6, 7, 8):
            v = log_version(mlflow_server.uri, model_name, seed=seed)
            took = srv.wait_version(v, timeout=20)
            assert took < 15, took
            served.append(v)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert out["failed"] == [], out["failed"][:5]
    assert len(out["ok"]) > 50 and out["versions"] >= set(served[1:])
    assert out["versions"] <= set(served), out["versions"]  # every answer from a version that was served
    assert "webhook:" in srv.logs()


def test_a_stopped_server_removes_its_webhook(mlflow_server, serve, model_name):
    """A webhook left behind keeps MLflow retrying a dead endpoint (~7 s each in a pool of 10 workers):
    enough of them delayed the next server's swap past 20 s. Stopping removes ours."""
    from mlflow.tracking import MlflowClient

    v = log_version(mlflow_server.uri, model_name, seed=14)
    srv = serve(model_name)
    srv.wait_version(v)
    name = srv.env[ENV_WEBHOOK_NAME]
    client = MlflowClient(mlflow_server.uri)

    def urls():
        found, token = [], None
        while True:
            page = client.list_webhooks(max_results=100, page_token=token)
            found += [h.url for h in page if h.name == name]
            token = page.token
            if not token:
                return found

    assert urls() == [srv.url + WEBHOOK_PATH]
    srv.stop()
    assert urls() == []
    assert "webhook " + repr(name) + " removed" in srv.logs()


def test_broken_version_is_refused_old_keeps_serving_and_rollback_works(mlflow_server, serve, model_name, tmp_path):
    from mlflow.tracking import MlflowClient

    v1 = log_version(mlflow_server.uri, model_name, seed=9)
    srv = serve(model_name, poll=1)
    srv.wait_version(v1)
    bad = log_version(mlflow_server.uri, model_name, seed=10, broken=True, workdir=tmp_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not srv.health()["refused"]:
        time.sleep(0.1)
    h = srv.health()
    assert h["served_version"] == v1 and h["alias_version"] == bad
    assert h["refused"][0]["version"] == bad and "broken on purpose" in h["refused"][0]["reason"]
    r = httpx.post(f"{srv.url}/predict", json=ROWS)
    assert r.status_code == 200 and r.json()["version"] == v1
    # A good new version, then the alias moved back: rollback the same way.
    v3 = log_version(mlflow_server.uri, model_name, seed=11)
    srv.wait_version(v3)
    assert srv.health()["refused"] == []
    MlflowClient(mlflow_server.uri).set_registered_model_alias(model_name, "champion", v1)
    srv.wait_version(v1)
    r = httpx.post(f"{srv.url}/predict", json=ROWS)
    assert r.json()["predictions"] == own_prediction(mlflow_server.uri, model_name, v1, ROWS)


def test_forged_webhook_is_refused_and_logged(mlflow_server, serve, model_name):
    v = log_version(mlflow_server.uri, model_name, seed=12)
    srv = serve(model_name)
    srv.wait_version(v)
    payload = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": model_name, "alias": "champion", "version": "99"},
        }
    ).encode()
    now = str(int(time.time()))
    cases = {
        "bad signature": sign("not-the-secret", "d1", now, payload),
        "a replay?": sign(srv.secret, "d1", str(int(time.time()) - 3600), payload),
    }
    for why, signature in cases.items():
        ts = now if why == "bad signature" else str(int(time.time()) - 3600)
        r = httpx.post(
            f"{srv.url}{WEBHOOK_PATH}",
            content=payload,
            headers={
                "X-MLflow-Signature": signature,
                "X-MLflow-Timestamp": ts,
                "X-MLflow-Delivery-Id": "d1",
                "content-type": "application/json",
            },
        )
        assert r.status_code == 401 and why in r.json()["error"], r.text
    r = httpx.post(f"{srv.url}{WEBHOOK_PATH}", content=payload)
    assert r.status_code == 401 and "missing" in r.json()["error"]
    time.sleep(0.5)
    assert "refused a webhook delivery" in srv.logs() and "bad signature" in srv.logs()
    assert 'serving_webhooks_total{result="refused"} 3.0' in httpx.get(f"{srv.url}/metrics").text
    # The genuine secret is accepted (and the server stays on its version: the alias did not move).
    good = sign(srv.secret, "d2", now, payload)
    r = httpx.post(
        f"{srv.url}{WEBHOOK_PATH}",
        content=payload,
        headers={"X-MLflow-Signature": good, "X-MLflow-Timestamp": now, "X-MLflow-Delivery-Id": "d2"},
    )
    assert r.status_code == 200 and r.json()["accepted"] is True
    assert srv.health()["served_version"] == v


def test_registry_down_keeps_serving_and_reports_it(tmp_path, model_name):
    server = MlflowServer(tmp_path / "own-mlflow").start()
    srv = None
    try:
        v = log_version(server.uri, model_name, seed=13)
        srv = ServingProcess(tmp_path / "s", server.uri, model_name, poll=0.5).start()
        srv.wait_version(v)
        server.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and srv.health()["registry"] == "ok":
            time.sleep(0.2)
        h = httpx.get(f"{srv.url}/health")
        assert h.status_code == 200 and h.json()["registry"].startswith("unreachable"), h.text
        assert httpx.post(f"{srv.url}/predict", json=ROWS).status_code == 200
    finally:
        if srv:
            srv.stop()
        server.stop()


def test_started_before_the_registry_it_registers_its_webhook_once_the_registry_answers(tmp_path, model_name):
    """`up` starts serving and MLflow at once: the webhook must not be lost to that race (polling is 300 s
    here, so only the webhook can make the new version served within the wait)."""
    server = MlflowServer(tmp_path / "late-mlflow")
    srv = ServingProcess(tmp_path / "s", server.uri, model_name, poll=300).start()
    try:
        assert srv.health()["webhook"].startswith("not registered"), srv.health()
        server.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and srv.health()["webhook"] != "registered":
            time.sleep(0.2)
        assert srv.health()["webhook"] == "registered", srv.logs()[-2000:]
        v = log_version(server.uri, model_name, seed=21)
        srv.wait_version(v, timeout=20)
    finally:
        srv.stop()
        server.stop()


def test_signature_validation_in_process():
    """The validation layer alone, on a real fitted model (no server): types are cast to the signature."""
    import mlflow
    from mlflow.models import infer_signature

    from airflow_gitops.serving.model import BadInput, LoadedModel, columns_of

    model, x = train(1)
    sig = infer_signature(x.head(5), model.predict(x.head(5)))

    class Meta:
        def get_input_schema(self):
            return sig.inputs

    class Wrapped:
        metadata = Meta()
        input_example = None

        def predict(self, frame):
            return model.predict(frame)

    m = LoadedModel("x", "1", None, None, Wrapped(), columns_of(Wrapped()), 0, 0, 0)
    assert [c.name for c in m.columns] == ["a", "b", "n"]
    assert (
        m.predict([{"a": 1, "b": 2, "n": 3}])
        == model.predict(x.head(0).__class__({"a": [1.0], "b": [2.0], "n": [3]})).tolist()
    )
    with pytest.raises(BadInput, match="must be true or false|must be a number"):
        m.predict([{"a": True, "b": 2, "n": 3}])
    assert mlflow  # imported: the signature types come from MLflow itself


# --- verify's serving rows (checks/serving.py) against the real server ----------------------------------
def _rows(srv, uri):
    from airflow_gitops.checks.serving import serving_rows

    return [(r.name, str(r.status), r.saw) for r in serving_rows(srv.url, {"MLFLOW_TRACKING_URI": uri})]


def test_verify_rows_no_model_yet_refused_version_and_a_good_prediction(mlflow_server, serve, model_name, tmp_path):
    from k8s_specs import spec_in

    from airflow_gitops.checks.kube_containers import health_row
    from airflow_gitops.checks.serving import serving_rows

    spec = spec_in(tmp_path)

    def pod_row():  # the Kubernetes target's row for one pod, from this real server's /health
        r = httpx.get(f"{srv.url}/health", timeout=5)
        row = health_row("serving-0", r.status_code, r.json(), spec)
        return str(row.status), row.saw

    srv = serve(model_name, poll=0.5)
    ((name, status, saw),) = _rows(srv, mlflow_server.uri)
    assert (name, status) == ("verify.serving", "skip") and "is not set" in saw
    assert pod_row()[0] == "skip"  # a fresh platform: nothing registered yet
    v1 = log_version(mlflow_server.uri, model_name, seed=31)
    srv.wait_version(v1)
    assert pod_row() == ("ok", f"serving-0: serving {model_name}@champion v{v1}, the alias's version")
    (served, prediction) = _rows(srv, mlflow_server.uri)
    assert served[:2] == ("verify.serving", "ok") and f"v{v1}" in served[2]
    assert prediction[:2] == ("verify.serving.prediction", "ok") and "the model's own prediction" in prediction[2]
    bad = log_version(mlflow_server.uri, model_name, seed=32, broken=True, workdir=tmp_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not srv.health()["refused"]:
        time.sleep(0.1)
    ((name, status, saw),) = _rows(srv, mlflow_server.uri)
    assert status == "warn" and f"v{bad} was refused" in saw and "broken on purpose" in saw and f"v{v1} keeps" in saw
    status, saw = pod_row()
    assert status == "warn" and f"serving v{v1}; the alias's v{bad} was refused" in saw and "broken on purpose" in saw
    srv.stop()
    (row,) = serving_rows(srv.url, {"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert str(row.status) == "fail" and "nothing answers" in row.saw and "logs serving" in row.fix


def test_freeze_heap_takes_live_objects_out_of_gc_scans_and_gil_slices_are_restored():
    import gc
    import sys

    from airflow_gitops.serving.watcher import freeze_heap, short_gil_slices

    marker = [object()]  # a tracked container made before the freeze
    assert any(o is marker for o in gc.get_objects())
    try:
        assert freeze_heap("test") >= 1
        assert not any(o is marker for o in gc.get_objects())  # frozen: a full collection does not scan it
    finally:
        gc.unfreeze()
    before = sys.getswitchinterval()
    with short_gil_slices(0.0005):
        assert sys.getswitchinterval() == pytest.approx(min(before, 0.0005))
    assert sys.getswitchinterval() == before


def test_the_loading_worker_killed_is_replaced_and_downloads_are_cleaned(mlflow_server, serve, model_name):
    """The new version's download + first check run in a worker process (fetcher.py). Killed, it is
    replaced at the next move; only the served and the previous version's folders stay; stopping the
    server stops the worker and removes the folders."""
    import re
    from pathlib import Path

    import psutil

    v1 = log_version(mlflow_server.uri, model_name, seed=21)
    srv = serve(model_name, poll=1)
    srv.wait_version(v1)
    server = psutil.Process(srv.proc.pid)
    (root,) = set(re.findall(r"downloaded under (\S+) by", srv.logs()))

    def workers():
        kids = []
        for p in server.children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and any("spawn_main" in a for a in p.cmdline()):
                    kids.append(p)
            except psutil.Error:  # ended meanwhile
                pass
        return kids

    def worker():
        kids = workers()
        assert len(kids) == 1, kids
        return kids[0]

    def folders():
        return {d.name.split("-")[0] for d in Path(root).iterdir()}

    def gone(proc):
        try:
            return proc.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by the server
        except psutil.NoSuchProcess:
            return True

    first = worker()
    first.kill()
    deadline = time.monotonic() + 30  # replaced at the next look (poll every 1 s), before any move
    while not gone(first) or [p.pid for p in workers()] in ([], [first.pid]):
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)
    v2 = log_version(mlflow_server.uri, model_name, seed=22)
    srv.wait_version(v2, timeout=60)
    assert worker().pid != first.pid
    assert f"the model-loading process (pid {first.pid}) had died" in srv.logs()
    r = httpx.post(f"{srv.url}/predict", json=ROWS)
    assert r.status_code == 200 and r.json()["predictions"] == own_prediction(mlflow_server.uri, model_name, v2, ROWS)
    v3 = log_version(mlflow_server.uri, model_name, seed=23)
    srv.wait_version(v3, timeout=60)
    assert folders() == {f"v{v2}", f"v{v3}"}  # v1's folder went when v3 came
    last = worker()
    srv.stop()
    assert gone(last)  # stopped with the server
    assert not Path(root).exists()


def test_without_the_worker_a_version_loads_in_the_server_and_swaps(mlflow_server, serve, model_name):
    """serving.load_in_worker: false -> no worker process; loads and swaps in the server itself."""
    import psutil

    from airflow_gitops import serving

    v1 = log_version(mlflow_server.uri, model_name, seed=31)
    srv = serve(model_name, poll=60, extra_env={serving.ENV_LOAD_IN_WORKER: "0"})
    srv.wait_version(v1)
    v2 = log_version(mlflow_server.uri, model_name, seed=32)
    srv.wait_version(v2, timeout=60)
    kids = psutil.Process(srv.proc.pid).children(recursive=True)
    assert not [p for p in kids if any("spawn_main" in a for a in p.cmdline())]
    assert "downloaded under" not in srv.logs()
    r = httpx.post(f"{srv.url}/predict", json=ROWS)
    assert r.json()["predictions"] == own_prediction(mlflow_server.uri, model_name, v2, ROWS)
