"""Every process exposes its metrics and writes structured logs:

- a real `eventkeep serve --workers 2` (distributed) answers `/metrics` with every worker's
  requests added up, whichever worker the scrape reaches; its output holds one JSON line per
  request with the correlation id, the actor (the key's id, never the key), the route
  template, the status and the duration, at INFO;
- `eventkeep relay` and `eventkeep project` serve `/metrics` on EVENTKEEP_METRICS_PORT: the
  relay says it leads and how far behind it is, the projector each read model's lag.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventkeep.api.keys import Role
from eventkeep.bootstrap import build
from tests.api.conftest import SHOP_TABLES, TEST_SECRET
from tests.api.shopping import USER
from tests.conftest_services import POSTGRES_URL, require_env
from tests.eventstore.stores import drop_postgres_tables


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text `text` (labels: a subset to match)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class Process:
    """An eventkeep command run as a subprocess, its merged output kept line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventkeep", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def wait_for(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.lines)
            try:
                answer = httpx.get(url, headers=headers, timeout=2)
                if answer.status_code == 200:
                    return answer
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} never answered:\n" + "".join(self.lines))

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        time.sleep(0.2)
        return "".join(self.lines)


@pytest.fixture
def distributed_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    drop_postgres_tables(*SHOP_TABLES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTKEEP_")}
    env |= {
        "EVENTKEEP_POSTGRES_URL": require_env(POSTGRES_URL),
        "EVENTKEEP_CLAIM_SECRET": TEST_SECRET,
        "EVENTKEEP_HOME": str(tmp_path / "home"),
        "EVENTKEEP_LOG_FORMAT": "json",
    }
    yield env


def test_serve_with_two_workers_adds_up_their_metrics_and_logs_each_request(
    distributed_env: dict[str, str],
) -> None:
    port = _free_port()
    env = distributed_env | {"EVENTKEEP_PORT": str(port)}
    from eventkeep.settings import Settings

    with build(Settings(_env_file=None, **_settings_of(env)), role="keys") as system:
        admin = system.keys.create(Role.admin, "metrics")
        client = system.keys.create(Role.client, "logs")
    server = Process(["serve", "--workers", "2"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_for(f"{base}/readyz")
        requests = 40
        for _ in range(requests):  # new connections: the kernel spreads them over the workers
            assert httpx.get(f"{base}/healthz").status_code == 200
        created = httpx.post(
            f"{base}/v1/users",
            json=USER,
            headers={
                "Authorization": f"Bearer {client.secret_key}",
                "X-Correlation-ID": "trace-me-42",
            },
        )
        assert created.status_code == 201, created.text
        admin_headers = {"Authorization": f"Bearer {admin.secret_key}"}
        counted = []
        for _ in range(6):  # several scrapes, answered by either worker: always the sum
            text = httpx.get(f"{base}/metrics", headers=admin_headers).text
            counted.append(
                sample(text, "eventkeep_http_requests_total", route="/healthz", status="200")
            )
        assert counted == [float(requests)] * 6, counted
        assert sample(text, "eventkeep_log_head_position") == 1.0
        assert sample(text, "eventkeep_group_commit_batch_appends_count") == 1.0
    finally:
        output = server.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests_logged = [line for line in lines if line.get("event") == "request"]
    command = next(line for line in requests_logged if line.get("route") == "/v1/users")
    assert command["correlation_id"] == "trace-me-42"
    assert command["actor"] == client.key.id
    assert command["status"] == 201
    assert command["method"] == "POST"
    assert command["level"] == "info"
    assert command["duration_ms"] > 0
    assert {"timestamp", "logger"} <= set(command)
    assert client.secret_key not in output and admin.secret_key not in output
    assert TEST_SECRET not in output


def _settings_of(env: dict[str, str]) -> dict[str, Any]:
    return {
        "postgres_url": env["EVENTKEEP_POSTGRES_URL"],
        "claim_secret": env["EVENTKEEP_CLAIM_SECRET"],
        "home": Path(env["EVENTKEEP_HOME"]),
    }


def test_relay_and_projector_serve_their_own_metrics(distributed_env: dict[str, str]) -> None:
    unique = uuid.uuid4().hex[:10]
    env = distributed_env | {
        "EVENTKEEP_KAFKA_BOOTSTRAP": os.environ.get("EVENTKEEP_KAFKA_BOOTSTRAP", "127.0.0.1:9"),
        "EVENTKEEP_TOPIC_PREFIX": f"m{unique}",
        "EVENTKEEP_PROJECTOR_GROUP": f"g{unique}",
    }
    relay_port, project_port = _free_port(), _free_port()
    relay = Process(["relay"], env | {"EVENTKEEP_METRICS_PORT": str(relay_port)})
    project = Process(["project"], env | {"EVENTKEEP_METRICS_PORT": str(project_port)})
    try:
        deadline = time.monotonic() + 30
        while True:  # the relay leads once it holds the lock of its prefix
            text = relay.wait_for(f"http://127.0.0.1:{relay_port}/metrics").text
            if sample(text, "eventkeep_relay_active") == 1.0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sample(text, "eventkeep_relay_active") == 1.0, text
        assert sample(text, "eventkeep_relay_lag_events") is not None
        assert sample(text, "eventkeep_log_head_position") is not None
        projected = project.wait_for(f"http://127.0.0.1:{project_port}/metrics").text
        for name in ("users", "products", "orders", "daily_sales"):
            assert sample(projected, "eventkeep_projection_lag_events", projection=name) is not None
        assert sample(projected, "eventkeep_projected_events_total") is not None
    finally:
        relay_output = relay.stop()
        project.stop()
    assert any('"relay active"' in line for line in relay_output.splitlines()), relay_output


def test_audit_verify_writes_its_outcome_for_the_alert(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTKEEP_")}
    env["EVENTKEEP_HOME"] = str(tmp_path / "home")
    metrics = tmp_path / "verify.prom"
    done = subprocess.run(
        [sys.executable, "-m", "eventkeep", "audit", "verify", "--metrics-file", str(metrics)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = metrics.read_text()
    assert sample(text, "eventkeep_audit_verify_ok") == 1.0
    assert (sample(text, "eventkeep_audit_verify_timestamp_seconds") or 0) > time.time() - 60


def test_log_level_and_format_settings(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from eventkeep.logs import configure

    request_log = logging.getLogger("eventkeep.request")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure("WARNING", "json")
        request_log.info("request", extra={"route": "/v1/users"})
        request_log.warning("slow", extra={"route": "/v1/users"})
        lines = capsys.readouterr().err.splitlines()
        assert [json.loads(line)["event"] for line in lines] == ["slow"]
        configure("INFO", "console")
        request_log.info("request", extra={"route": "/v1/users", "status": 201})
        line = capsys.readouterr().err.strip()
        assert "request" in line and "route=/v1/users" in line and not line.startswith("{")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
