"""Real model servers on loopback for the adapter tests.

- `ModelService`: a plain `http.server` on 127.0.0.1 (ephemeral port) with one route per
  behaviour a model server can have: answers (JSON or Open Inference Protocol), HTTP 500,
  NaN, text, a bearer-token check, a first-call 503, and a reply that never comes in time.
  It records every request it received, so tests see what was sent.
- `MLServer`: MLServer with its scikit-learn runtime, in its own venv (`.venv-mlserver/`,
  from tests/risk_models/mlserver-requirements.txt; built here on first use, the way
  `make mlserver` builds it), serving a logistic regression trained in that venv.

Every wait is bounded and every process started here is stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import free_ports

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = ROOT / ".venv-mlserver"
MLSERVER_REQUIREMENTS = Path(__file__).resolve().parent / "mlserver-requirements.txt"
MLSERVER_START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
SLOW_REPLY_SECONDS = 5.0  # longer than any timeout the tests give a model


# ----------------------------------------------------------------------------- http.server


@dataclass
class Received:
    """One request the service got."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ModelService:
    """A local HTTP model service; ``url(path)`` is where each behaviour lives."""

    port: int = 0
    token: str = "test-token-3f9a"
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    _flaky_calls: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for request in self.received if request.path == path)

    def answer(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        """(status, JSON reply) for a request: the behaviour ``path`` names."""
        features = _features_of(body)
        risk = _risk(features)
        if path == "/json/score":
            return 200, {"result": {"probability": risk, "model": "local-json"}}
        if path == "/json/list":
            return 200, {"predictions": [{"score": risk}]}
        if path == "/json/error":
            return 500, {"error": "model crashed"}
        if path == "/json/nan":
            return 200, {"result": {"probability": math.nan}}
        if path == "/json/text":
            return 200, {"result": {"probability": "high"}}
        if path == "/json/bad-request":
            return 422, {"detail": "amount is required"}
        if path == "/json/auth":
            if headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": "unauthorised"}
            return 200, {"result": {"probability": risk}}
        if path == "/json/flaky":
            self._flaky_calls += 1
            if self._flaky_calls == 1:
                return 503, {"error": "warming up"}
            return 200, {"result": {"probability": risk}}
        if path in ("/json/slow", "/v2/models/slow/infer"):
            self.release.wait(SLOW_REPLY_SECONDS)
            return 200, {"result": {"probability": risk}}
        if path == "/v2/models/risk/infer":
            return 200, _oip_reply("risk", [1 - risk, risk], shape=[1, 2])
        if path == "/v2/models/error/infer":
            return 500, {"error": "inference failed"}
        if path == "/v2/models/nan/infer":
            return 200, _oip_reply("nan", [math.nan], shape=[1, 1])
        if path == "/v2/models/text/infer":
            return 200, _oip_reply("text", ["high"], shape=[1, 1], datatype="BYTES")
        return 404, {"error": f"no route {path}"}


def _features_of(body: Any) -> dict[str, float]:
    """The features a request carries: the JSON protocol's mapping, or the OIP tensor."""
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        data = body["inputs"][0].get("data", [])
        return {f"x{i}": float(v) for i, v in enumerate(data)}
    if isinstance(body, dict):
        return {k: float(v) for k, v in body.items() if isinstance(v, int | float)}
    return {}


def _risk(features: dict[str, float]) -> float:
    """A simple, known risk: grows with the first feature (amount) in 0..1."""
    first = next(iter(features.values()), 0.0)
    return round(min(max(first / 1_000_000, 0.0), 1.0), 6)


def _oip_reply(
    name: str, data: list[Any], *, shape: list[int], datatype: str = "FP64"
) -> dict[str, Any]:
    return {
        "model_name": name,
        "model_version": "7",
        "outputs": [{"name": "predict_proba", "shape": shape, "datatype": datatype, "data": data}],
    }


@contextlib.contextmanager
def model_service() -> Iterator[ModelService]:
    """A `ModelService` listening on 127.0.0.1, stopped on exit."""
    service = ModelService()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            service.received.append(Received(self.path, headers, body))
            status, reply = service.answer(self.path, body, headers)
            data = json.dumps(reply).encode()  # NaN stays NaN, as Python servers send it
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    service.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="model-service", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT)


# ----------------------------------------------------------------------------- MLServer


def ensure_mlserver_venv() -> Path:
    """`.venv-mlserver/` with the pinned MLServer, built once (idempotent, locked against a
    second test run doing the same); the path of its Python."""
    python = MLSERVER_VENV / "bin" / "python"
    stamp = MLSERVER_VENV / ".installed"
    lock_path = ROOT / ".venv-mlserver.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = stamp.exists() and stamp.stat().st_mtime >= MLSERVER_REQUIREMENTS.stat().st_mtime
        if not fresh:
            subprocess.run(
                [sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True, timeout=300
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "-r", str(MLSERVER_REQUIREMENTS)],
                check=True,
                timeout=1200,
            )
            stamp.touch()
    return python


# Runs in the MLServer venv (its own scikit-learn): trains the served model on synthetic
# data and prints what it predicts for the probe rows, so tests compare exact numbers.
_TRAIN_SERVED_MODEL = """
import json, sys
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(11)
x = np.column_stack([
    rng.uniform(10_000, 1_000_000, 4000),  # amount
    rng.integers(0, 60, 4000),             # days_past_due
    rng.poisson(0.8, 4000),                # failed_payments_90d
    rng.integers(0, 120, 4000),            # tenure_months
])
z = -1.0 + 3e-6 * x[:, 0] + 0.05 * x[:, 1] + 0.7 * x[:, 2] - 0.03 * x[:, 3]
y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
model = LogisticRegression(max_iter=2000).fit(x, y)
joblib.dump(model, sys.argv[1])
probes = json.loads(sys.argv[2])
print(json.dumps(model.predict_proba(np.array(probes, dtype=float))[:, 1].tolist()))
"""


@dataclass
class MLServer:
    """A running MLServer serving ``model`` (scikit-learn) on 127.0.0.1."""

    http_port: int
    model: str
    version: str
    expected: list[float]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}/infer"

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""


@contextlib.contextmanager
def mlserver(directory: Path, probes: list[list[float]]) -> Iterator[MLServer]:
    """MLServer serving a freshly trained `default_risk` model; stopped on exit."""
    python = ensure_mlserver_venv()
    model_dir = directory / "default_risk"
    model_dir.mkdir(parents=True)
    trained = subprocess.run(
        [
            str(python),
            "-c",
            _TRAIN_SERVED_MODEL,
            str(model_dir / "model.joblib"),
            json.dumps(probes),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    expected = [float(p) for p in json.loads(trained.stdout)]
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "default_risk",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"},
            }
        )
    )
    http_port, grpc_port = free_ports(2)
    (directory / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "parallel_workers": 0,
                "metrics_endpoint": None,
                "debug": False,
            }
        )
    )
    log = directory / "mlserver.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(directory)],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = MLServer(http_port, "default_risk", "v1", expected, process, log)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)


def _wait_until_ready(server: MLServer) -> None:
    ready = f"http://127.0.0.1:{server.http_port}/v2/models/{server.model}/ready"
    deadline = time.monotonic() + MLSERVER_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"MLServer exited ({server.process.returncode}):\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready, timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"MLServer was not ready in time:\n{server.output()}")
        time.sleep(0.3)
