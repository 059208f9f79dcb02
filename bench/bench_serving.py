#!/usr/bin/env python
"""Bench serving under load across alias moves (issue 20, "Numbers"): ours against ``mlflow models serve``.

One real MLflow tracking server (SQLite registry, artifacts served by it, webhooks on loopback allowed:
``tests/serving_fixture.py``), two registered versions of a small sklearn model, and ``--moves`` moves of
the ``champion`` alias between them. The same paced load (``--threads`` threads, ``--rate`` requests/s in
total, no retries, each request the same 5 records in MLflow's ``dataframe_records`` format to
``/invocations``) runs against each variant, one after the other:

* ``webhook``: ``python -m airflow_gitops.serving`` with the webhook on (HMAC secret from a 0600 file,
  registered with MLflow at start) and polling every 60 s, so the webhook does the swaps;
* ``in-server``: the same as ``webhook`` with ``serving.load_in_worker: false`` (the new version is
  downloaded, loaded and checked in a thread of the server, not in its worker process);
* ``polling``: the same with the webhook off and polling every ``--poll`` seconds;
* ``baseline``: ``mlflow models serve -m models:/<name>@champion --env-manager local``, stopped and
  started again after each move (SIGTERM, wait for it to exit, start, serve).

Per variant: a steady phase of ``--steady`` requests with no move, then the moves; each move waits
until the new version answers and until ``--per-move`` requests were sent since the move. Figures:

* failed requests: a non-200 answer or a transport error (connection refused while restarting);
* wrong answers: a 200 whose predictions are not the predictions of any registered version, or (ours)
  not those of the version the answer names (the bench loads each version itself to know them);
* move -> served: from just before ``set_registered_model_alias`` to the end of the first answer from
  the new version (ours: the answer names it; baseline: the first answer to a request sent after the
  old process exited);
* downtime per move: the longest gap between two successful answers from the move to served + 0.5 s;
* latency p50/p99 of successful requests (send -> answer, from the client), steady phase vs the swap
  windows (move -> served + 0.5 s), and the requests of the move phase outside the swap windows ("between
  swaps": the same minutes as the swaps, so a busy neighbour weighs on both alike);
* RSS and PSS of the server's process tree (psutil, every 50 ms): median in the steady phase, peak in the swap
  windows.

Not a test: it starts real processes on free loopback ports, state under /tmp/bench-serving-*, stops
them in ``finally`` (also on SIGTERM/SIGINT). It exits non-zero when it cannot measure (a server that
does not start, a move that is not served within ``--timeout``, no successful request in a phase).

    .venv/bin/python bench/bench_serving.py                     # 20 moves, all four variants, ~9 min
    .venv/bin/python bench/bench_serving.py --moves 5 --json serving.json
    .venv/bin/python bench/bench_serving.py --variants webhook,baseline
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from serving_fixture import CLIENT_ENV, MlflowServer, ServingProcess, free_port, log_version, train  # noqa: E402

from airflow_gitops.serving import ENV_LOAD_IN_WORKER  # noqa: E402

VARIANTS = ["webhook", "in-server", "polling", "baseline"]
SWAP_TAIL = 0.5  # seconds after served that still count as "during the swap"
WARMUP = 30  # requests per variant before the steady phase, not counted


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load()}] {msg}", flush=True)


def fail(msg: str) -> None:
    raise SystemExit(f"bench_serving: cannot measure: {msg}")


# --- the load ------------------------------------------------------------------------------------------


class LoadThreads:
    """``threads`` threads sending ``rate`` requests/s in total, on a fixed schedule (request i is due at
    t0 + i/rate; a thread that is late sends at once, never in a burst to catch up beyond that). Runs in
    its own process (``--load-child``, see :class:`Load`); each answer is one JSON line on ``out``."""

    def __init__(self, url: str, body: bytes, rate: float, threads: int, timeout: float, out):
        self.url, self.body, self.rate, self.timeout, self.out = url, body, rate, timeout, out
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.t0 = 0.0

    def run_until_stdin_closes(self) -> None:
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()
        sys.stdin.read()  # the parent closes our stdin to stop us
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                with self._lock:
                    i = self._next
                    self._next += 1
                delay = self.t0 + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                t_send = time.monotonic()
                try:
                    r = client.post(self.url, content=self.body, headers=headers)
                    t_end = time.monotonic()
                    if r.status_code == 200:
                        data = r.json()
                        rec = (t_send, t_end, True, 200, data.get("version"), data.get("predictions"))
                    else:
                        rec = (t_send, t_end, False, r.status_code, None, None)
                except httpx.HTTPError as exc:
                    rec = (t_send, time.monotonic(), False, type(exc).__name__, None, None)
                line = json.dumps(rec) + "\n"
                with self._lock:
                    self.out.write(line)
                    self.out.flush()


class Load:
    """The load generator in a child process of its own, so that what this process does during a move
    (moving the alias, watching for the new version, sampling memory) never delays the load's requests
    or its clock: latencies are the child's (send -> answer on CLOCK_MONOTONIC, the same clock here).
    ``records`` are read back from the child's output file as they come."""

    def __init__(self, url: str, body: bytes, rate: float, threads: int, timeout: float, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.body_file = workdir / "load-body.json"
        self.body_file.write_bytes(body)
        self.out_file = workdir / "load-records.jsonl"
        self.out_file.write_text("")
        self.cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--load-child",
            json.dumps([url, str(self.body_file), rate, threads, timeout, str(self.out_file)]),
        ]
        self.timeout = timeout
        self.records: list[tuple] = []  # (t_send, t_end, ok, status_or_error, version, predictions)
        self.proc: subprocess.Popen | None = None
        self._fh = None
        self._partial = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE)
        self._fh = open(self.out_file)  # noqa: SIM115 - closed in stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(self.timeout + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._read()
        self._fh.close()

    def _read(self) -> None:
        chunk = self._fh.read()
        if not chunk:
            return
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        self.records.extend(tuple(json.loads(line)) for line in lines if line)
        if self.proc is not None and self.proc.poll() not in (None, 0):
            fail(f"the load generator exited with {self.proc.returncode}")

    def sent(self) -> int:
        """Requests answered so far (sent and finished)."""
        self._read()
        return len(self.records)

    def first_ok(self, since: float, version: str | None = None) -> float | None:
        """End time of the first successful answer to a request sent after ``since`` (from ``version``)."""
        self._read()
        best = None
        for t_send, t_end, ok, _, ver, _ in reversed(self.records):
            if t_send < since - 30:  # older than any request that can count (records come in ~send order)
                break
            if ok and t_send >= since and (version is None or ver == version) and (best is None or t_end < best):
                best = t_end
        return best


class RssSampler:
    """RSS of a process and its children, every 50 ms; ``pid`` may change (the baseline restarts)."""

    def __init__(self):
        self.pid: int | None = None
        self.samples: list[tuple[float, int, int]] = []  # (t, RSS sum, PSS sum)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            pid = self.pid
            if not pid:
                continue
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
                rss = pss = 0
                for p in procs:
                    try:
                        # RSS counts the pages a process shares (libraries, a fork's) once per process; PSS
                        # divides them among the sharers: the sum over the tree is what it really holds.
                        info = p.memory_full_info()
                        rss += info.rss
                        pss += info.pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                self.samples.append((time.monotonic(), rss, pss))
            except psutil.NoSuchProcess:
                pass


# --- the servers ---------------------------------------------------------------------------------------


class Ours:
    def __init__(self, root: Path, mlflow_uri: str, name: str, *, webhook: bool, poll: float, extra_env=None):
        self.proc = ServingProcess(root, mlflow_uri, name, poll=poll, webhook=webhook, extra_env=extra_env)
        self.url = self.proc.url
        self.webhook = webhook

    def start(self, version: str, timeout: float) -> None:
        self.proc.start()
        try:
            self.proc.wait_version(version, timeout)
        except AssertionError as exc:
            fail(f"our server did not serve v{version}: {exc}\n{self.proc.logs()[-3000:]}")
        state = self.proc.health().get("webhook", "")
        if self.webhook and state != "registered":
            fail(f"our server's webhook is {state!r}, not registered\n{self.proc.logs()[-3000:]}")

    def pid(self) -> int:
        return self.proc.proc.pid

    def move(self, set_alias, version: str, load: Load, timeout: float) -> dict:
        t_move = time.monotonic()
        set_alias(version)
        deadline = t_move + timeout
        while time.monotonic() < deadline:
            served = load.first_ok(t_move, version)
            if served is not None:
                return {"t_move": t_move, "t_served": served}
            if self.proc.proc.poll() is not None:
                fail(f"our server exited ({self.proc.proc.returncode})\n{self.proc.logs()[-3000:]}")
            time.sleep(0.01)
        fail(f"our server did not answer with v{version} within {timeout:.0f} s of the move: {self.proc.health()}")
        raise AssertionError  # unreachable

    def extra(self) -> dict:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            for key in (
                'serving_webhooks_total{result="accepted"}',
                'serving_swaps_total{result="swapped"}',
                'serving_swaps_total{result="refused"}',
            ):
                if line.startswith(key + " "):
                    out[key.split("{")[0].replace("_total", "") + "_" + key.split('"')[1]] = float(line.split()[-1])
        return out

    def stop(self) -> None:
        self.proc.stop()


class Baseline:
    """``mlflow models serve`` on one port, restarted on each move."""

    def __init__(self, root: Path, mlflow_uri: str, name: str):
        self.root, self.name = root, name
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bindir = str(Path(sys.executable).parent)  # `uvicorn`, which mlflow execs, is in the same venv
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{bindir}:{os.environ['PATH']}"}
        self.cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{name}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = root / "mlflow-models-serve.log"

    def _spawn(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== start {self.starts}\n".encode())
            out.flush()
            # its own session: the CLI and the uvicorn it starts are stopped together, by our pid only
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=out, cwd=self.root, start_new_session=True
            )

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # the uvicorn child may outlive the CLI for a moment: wait until nobody holds the port
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        fail(f"mlflow models serve (group {self.proc.pid}) did not exit within 30 s")

    def _wait_ping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"mlflow models serve exited ({self.proc.returncode})\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        fail(f"mlflow models serve did not answer /ping within {timeout:.0f} s\n{self.log_path.read_text()[-3000:]}")

    def start(self, version: str, timeout: float) -> None:
        self._spawn()
        self._wait_ping(timeout)

    def pid(self) -> int:
        return self.proc.pid

    def move(self, set_alias, version: str, load: Load, timeout: float) -> dict:
        t_move = time.monotonic()
        set_alias(version)
        self._kill()
        t_down = time.monotonic()
        self._spawn()
        self._wait_ping(timeout)
        t_ping = time.monotonic()
        deadline = t_move + timeout
        while time.monotonic() < deadline:
            served = load.first_ok(t_down)  # sent after the old process was gone: the new one answered
            if served is not None:
                return {"t_move": t_move, "t_served": served, "stop_s": t_down - t_move, "restart_s": t_ping - t_down}
            time.sleep(0.01)
        fail(f"mlflow models serve answered /ping but no request within {timeout:.0f} s of the move")
        raise AssertionError  # unreachable

    def extra(self) -> dict:
        return {"starts": self.starts}

    def stop(self) -> None:
        self._kill()


# --- one variant ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def run_variant(
    kind: str, args, base: Path, mlflow_uri: str, name: str, versions: list[str], expected: dict[str, list], set_alias
) -> dict:
    body = json.dumps({"dataframe_records": args.rows}).encode()
    set_alias(versions[0])
    if kind == "baseline":
        server = Baseline(base / kind, mlflow_uri, name)
    else:
        server = Ours(
            base / kind,
            mlflow_uri,
            name,
            webhook=kind != "polling",
            poll=args.poll if kind == "polling" else 60.0,
            # in-server: serving.load_in_worker false, the new version loads in the server's own process
            extra_env={ENV_LOAD_IN_WORKER: "0"} if kind == "in-server" else None,
        )
    rss = RssSampler()
    load_before = load()
    loadgen = None
    moves: list[dict] = []
    t_start = time.monotonic()
    try:
        server.start(versions[0], args.timeout)
        log(f"[{kind}] serving v{versions[0]} at {server.url} ({time.monotonic() - t_start:.1f} s)")
        rss.pid = server.pid()
        rss.start()
        loadgen = Load(
            f"{server.url}/invocations", body, args.rate, args.threads, args.request_timeout, base / kind / "load"
        )
        loadgen.start()

        def until_sent(n: int, what: str) -> None:
            deadline = time.monotonic() + n / args.rate * 3 + 30
            while loadgen.sent() < n:
                if time.monotonic() > deadline:
                    fail(f"[{kind}] the load did not send {n} requests in time ({what})")
                time.sleep(0.01)

        until_sent(WARMUP, "warm-up")
        t_steady0 = time.monotonic()
        until_sent(WARMUP + args.steady, "steady phase")
        t_steady1 = time.monotonic()
        for k in range(args.moves):
            target = versions[(k + 1) % len(versions)]
            n0 = loadgen.sent()
            m = server.move(set_alias, target, loadgen, args.timeout)
            rss.pid = server.pid()
            m["to"] = target
            m["served_s"] = m["t_served"] - m["t_move"]
            until_sent(n0 + args.per_move, f"move {k + 1}")
            moves.append(m)
            log(f"[{kind}] move {k + 1}/{args.moves} -> v{target}: served after {m['served_s']:.3f} s")
        time.sleep(SWAP_TAIL)
        extra = server.extra()
    finally:
        if loadgen:
            loadgen.stop()
        rss.stop()
        server.stop()
    out = summarize(kind, loadgen.records, rss.samples, (t_steady0, t_steady1), moves, expected, extra, t_start)
    out["load_before"] = load_before
    return out


def summarize(kind, records, samples, steady, moves, expected, extra, t_start) -> dict:
    windows = [(m["t_move"], m["t_served"] + SWAP_TAIL) for m in moves]

    def in_window(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    counted = [r for r in records if r[0] >= steady[0]]
    failed = [r for r in counted if not r[2]]
    wrong = 0
    for r in counted:
        if not r[2]:
            continue
        matches = [v for v, p in expected.items() if p == r[5]]
        if not matches or (r[4] is not None and r[4] not in matches):
            wrong += 1
    steady_lat = [r[1] - r[0] for r in counted if r[2] and steady[0] <= r[0] < steady[1]]
    swap_lat = [r[1] - r[0] for r in counted if r[2] and in_window(r[0])]
    # The same moves' requests outside the swap windows: sent over the same minutes as swap_lat, so the
    # machine's neighbours weigh on both alike (the steady phase comes before, under other neighbours).
    between_lat = [r[1] - r[0] for r in counted if r[2] and r[0] >= steady[1] and not in_window(r[0])]
    # where in its move the slowest requests of the swap windows were sent (from the move, and from served)
    slowest = []
    for r in sorted((r for r in counted if r[2] and in_window(r[0])), key=lambda r: r[0] - r[1])[:10]:
        m = next(m for m in moves if m["t_move"] <= r[0] <= m["t_served"] + SWAP_TAIL)
        slowest.append(
            {
                "ms": ms(r[1] - r[0]),
                "sent_after_move_s": round(r[0] - m["t_move"], 3),
                "sent_after_served_s": round(r[0] - m["t_served"], 3),
                "version": r[4],
            }
        )
    if not steady_lat:
        fail(f"[{kind}] no successful request in the steady phase")
    if moves and not swap_lat:
        fail(f"[{kind}] no successful request during the swaps")
    downtime = []
    for a, b in windows:
        oks = sorted(r[1] for r in records if r[2] and a - 5 <= r[1] <= b)
        before = [t for t in oks if t < a]
        after = [t for t in oks if t >= a]
        points = ([before[-1]] if before else []) + after
        gaps = [y - x for x, y in zip(points, points[1:], strict=False)]
        downtime.append(max(gaps) if gaps else None)
    rss_steady = [v for t, v, _ in samples if steady[0] <= t < steady[1]]
    rss_swap = [v for t, v, _ in samples if in_window(t)]
    pss_steady = [v for t, _, v in samples if steady[0] <= t < steady[1]]
    pss_swap = [v for t, _, v in samples if in_window(t)]
    served = [m["served_s"] for m in moves]
    down = [d for d in downtime if d is not None]
    failed_kinds: dict[str, int] = {}
    for r in failed:
        failed_kinds[str(r[3])] = failed_kinds.get(str(r[3]), 0) + 1
    out = {
        "requests": len(counted),
        "failed": len(failed),
        "failed_kinds": failed_kinds,
        "wrong_answers": wrong,
        "moves": len(moves),
        "served_s": {
            "median": statistics.median(served) if served else None,
            "max": max(served, default=None),
            "all": [round(s, 3) for s in served],
        },
        "downtime_s": {
            "median": statistics.median(down) if down else None,
            "max": max(down, default=None),
            "all": [round(d, 3) for d in down],
        },
        "latency_ms": {
            "steady": {
                "n": len(steady_lat),
                "p50": ms(pct(steady_lat, 0.5)),
                "p99": ms(pct(steady_lat, 0.99)),
                "max": ms(max(steady_lat)),
            },
            "between_swaps": {
                "n": len(between_lat),
                "p50": ms(pct(between_lat, 0.5)),
                "p99": ms(pct(between_lat, 0.99)),
                "max": ms(max(between_lat, default=None)),
            },
            "swap": {
                "n": len(swap_lat),
                "p50": ms(pct(swap_lat, 0.5)),
                "p99": ms(pct(swap_lat, 0.99)),
                "max": ms(max(swap_lat, default=None)),
            },
        },
        "slowest_during_swaps": slowest,
        "rss_mib": {
            "steady_median": round(statistics.median(rss_steady) / 2**20, 1) if rss_steady else None,
            "swap_peak": round(max(rss_swap) / 2**20, 1) if rss_swap else None,
            "pss_steady_median": round(statistics.median(pss_steady) / 2**20, 1) if pss_steady else None,
            "pss_swap_peak": round(max(pss_swap) / 2**20, 1) if pss_swap else None,
        },
        "seconds": round(time.monotonic() - t_start, 1),
        "load_after": load(),
        **(
            {"restart_s": [round(m["restart_s"], 3) for m in moves], "stop_s": [round(m["stop_s"], 3) for m in moves]}
            if moves and "restart_s" in moves[0]
            else {}
        ),
        **extra,
    }
    lat = out["latency_ms"]
    out["swap_p99_over_steady_p99"] = (
        round(lat["swap"]["p99"] / lat["steady"]["p99"], 2) if lat["swap"]["p99"] and lat["steady"]["p99"] else None
    )
    b = lat["between_swaps"]["p99"]
    out["swap_p99_over_between_p99"] = round(lat["swap"]["p99"] / b, 2) if lat["swap"]["p99"] and b else None
    return out


# --- setup, report -------------------------------------------------------------------------------------


def register(
    uri: str, name: str, seeds: list[int], workdir: Path, estimators: int
) -> tuple[list[str], dict[str, list], list]:
    """Register one version per seed; the records the load sends and what each version predicts on them
    (loaded here from the registry, not through a server)."""
    import contextlib
    import logging
    import warnings

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its pickle/pip/schema warnings, once per version
    warnings.filterwarnings("ignore", module="mlflow")
    with (
        open(workdir / "register.log", "a") as quiet,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        versions = [
            log_version(uri, name, seed, alias=None, workdir=workdir, n_estimators=estimators) for seed in seeds
        ]
    _, x = train(seeds[0])  # the frame the first version's signature (its first 5 rows) came from
    x = x.astype({"a": "float64", "b": "float64", "n": "int64"})
    mlflow.set_tracking_uri(uri)
    models = {v: mlflow.pyfunc.load_model(f"models:/{name}/{v}") for v in versions}
    # 5 of its rows on which the versions' predictions tell them apart, so an answer shows who gave it
    preds = {v: m.predict(x) for v, m in models.items()}
    pick: list[int] = []

    def distinct(idx: list[int]) -> int:
        return len({tuple(preds[v][j] for j in idx) for v in versions})

    for i in range(len(x)):
        if distinct(pick) == len(versions) or len(pick) == 5:
            break
        if distinct([*pick, i]) > distinct(pick):
            pick.append(i)
    pick += [i for i in range(len(x)) if i not in pick][: 5 - len(pick)]
    frame = x.iloc[pick]
    rows = json.loads(frame.to_json(orient="records"))
    expected = {v: m.predict(frame).tolist() for v, m in models.items()}
    if len({json.dumps(p) for p in expected.values()}) != len(versions):
        fail(f"the versions predict the same on the load's records ({expected}): a swap would not be visible")
    return versions, expected, rows


def fmt(v, unit: str = "", nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def ratio(ours, base) -> str:
    if ours is None or base is None:
        return "-"
    if ours == 0:
        return "0 vs 0" if base == 0 else f"0 vs {base:g}"
    return f"{base / ours:.1f}×"


def print_table(res: dict) -> None:
    v = res["variants"]
    cols = [k for k in VARIANTS if k in v]
    base = v.get("baseline")
    rows = [
        ("requests (counted)", lambda r: r["requests"], None),
        ("failed requests", lambda r: r["failed"], "ratio"),
        ("wrong answers", lambda r: r["wrong_answers"], None),
        ("move -> served, median (s)", lambda r: r["served_s"]["median"], "ratio"),
        ("move -> served, max (s)", lambda r: r["served_s"]["max"], "ratio"),
        ("downtime per move, median (s)", lambda r: r["downtime_s"]["median"], "ratio"),
        ("downtime per move, max (s)", lambda r: r["downtime_s"]["max"], "ratio"),
        ("p50 steady (ms)", lambda r: r["latency_ms"]["steady"]["p50"], "ratio"),
        ("p99 steady (ms)", lambda r: r["latency_ms"]["steady"]["p99"], "ratio"),
        ("p50 during swaps (ms)", lambda r: r["latency_ms"]["swap"]["p50"], "ratio"),
        ("p99 during swaps (ms)", lambda r: r["latency_ms"]["swap"]["p99"], "ratio"),
        ("max steady (ms)", lambda r: r["latency_ms"]["steady"]["max"], "ratio"),
        ("max during swaps (ms)", lambda r: r["latency_ms"]["swap"]["max"], "ratio"),
        ("p50 between swaps (ms)", lambda r: r["latency_ms"]["between_swaps"]["p50"], "ratio"),
        ("p99 between swaps (ms)", lambda r: r["latency_ms"]["between_swaps"]["p99"], "ratio"),
        ("p99 swap / p99 steady", lambda r: r["swap_p99_over_steady_p99"], None),
        ("p99 swap / p99 between swaps", lambda r: r["swap_p99_over_between_p99"], None),
        (
            "load average before / after",
            lambda r: f"{r['load_before'].split('/')[0]} / {r['load_after'].split('/')[0]}",
            None,
        ),
        ("RSS steady, median (MiB)", lambda r: r["rss_mib"]["steady_median"], "ratio"),
        ("RSS peak during swaps (MiB)", lambda r: r["rss_mib"]["swap_peak"], "ratio"),
        ("PSS steady, median (MiB)", lambda r: r["rss_mib"]["pss_steady_median"], "ratio"),
        ("PSS peak during swaps (MiB)", lambda r: r["rss_mib"]["pss_swap_peak"], "ratio"),
    ]
    ours_cols = [c for c in cols if c != "baseline"]
    head = "| | " + " | ".join(cols) + " |" + "".join(f" baseline / {c} |" for c in ours_cols if base)
    print("\n" + head)
    print("|---" * (1 + len(cols) + (len(ours_cols) if base else 0)) + "|")
    for label, get, kind in rows:
        cells = [fmt(get(v[c]), nd=3 if "(s)" in label else 2 if "/" in label else 1) for c in cols]
        line = f"| {label} | " + " | ".join(cells) + " |"
        if base:
            for c in ours_cols:
                line += f" {ratio(get(v[c]), get(base)) if kind else '-'} |"
        print(line)
    print(
        f"\n{res['moves']} alias moves between v{', v'.join(res['versions'])}; load {res['rate']:g} req/s from "
        f"{res['threads']} threads, {res['steady']} steady requests, >= {res['per_move']} per move; "
        f"polling variant every {res['poll']:g} s; random forests of {res['estimators']} trees; "
        f"{res['nproc']} cores, load average at start {res['load_start']}"
    )


def load_child(spec: str) -> int:
    url, body_file, rate, threads, timeout, out_file = json.loads(spec)
    with open(out_file, "a") as out:
        LoadThreads(url, Path(body_file).read_bytes(), rate, threads, timeout, out).run_until_stdin_closes()
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--load-child":
        return load_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=20, help="alias moves per variant (default 20)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--no-webhook", action="store_true", help="leave out the webhook variant (polling only)")
    ap.add_argument("--poll", type=float, default=2.0, help="poll interval of the polling variant (default 2 s)")
    ap.add_argument("--rate", type=float, default=50, help="requests per second in total (default 50)")
    ap.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--steady", type=int, default=500, help="requests in the steady phase (default 500)")
    ap.add_argument("--per-move", type=int, default=100, help="at least this many requests per move (default 100)")
    ap.add_argument("--versions", type=int, default=2, help="registered versions the alias cycles through")
    ap.add_argument(
        "--estimators", type=int, default=100, help="trees per random forest (default 100, the template's model)"
    )
    ap.add_argument("--timeout", type=float, default=120, help="max seconds for a start or a move to be served")
    ap.add_argument("--request-timeout", type=float, default=10, help="client timeout per request (default 10 s)")
    ap.add_argument("--json", default=None, help="write the results here ('-': print them)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    variants = [x.strip() for x in args.variants.split(",") if x.strip()]
    if args.no_webhook:
        variants = [x for x in variants if x != "webhook"]
    unknown = [x for x in variants if x not in VARIANTS]
    if unknown or not variants:
        sys.exit(f"bench_serving: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.moves < 1 or args.versions < 2 or args.rate <= 0 or args.threads < 1:
        sys.exit("bench_serving: --moves >= 1, --versions >= 2, --rate > 0 and --threads >= 1 are needed")
    os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
    os.environ.update(CLIENT_ENV)  # the fixture MLflow server's credential (its authentication is on)
    base = Path(tempfile.mkdtemp(prefix="bench-serving-", dir="/tmp"))
    res: dict = {
        "nproc": os.cpu_count(),
        "load_start": load(),
        "state": str(base),
        "moves": args.moves,
        "rate": args.rate,
        "threads": args.threads,
        "steady": args.steady,
        "per_move": args.per_move,
        "poll": args.poll,
        "estimators": args.estimators,
        "variants": {},
    }
    log(f"state under {base}; variants {variants}")
    mlflow_server = MlflowServer(base / "mlflow").start()
    try:
        from mlflow.tracking import MlflowClient

        name = "bench_" + uuid.uuid4().hex[:8]
        versions, expected, rows = register(
            mlflow_server.uri, name, list(range(1, args.versions + 1)), base, args.estimators
        )
        args.rows = rows
        res.update(versions=versions, model=name)
        client = MlflowClient(mlflow_server.uri)
        log(f"registered {name} v{', v'.join(versions)}")

        def set_alias(version: str) -> None:
            client.set_registered_model_alias(name, "champion", version)

        for kind in variants:
            res["variants"][kind] = r = run_variant(
                kind, args, base, mlflow_server.uri, name, versions, expected, set_alias
            )
            log(f"[{kind}] {json.dumps({k: r[k] for k in ('requests', 'failed', 'wrong_answers', 'served_s')})}")
    finally:
        mlflow_server.stop()
    print_table(res)
    if args.json == "-":
        print(json.dumps(res, indent=2))
    else:
        out = Path(args.json) if args.json else base / "results.json"
        out.write_text(json.dumps(res, indent=2))
        log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
