"""A real `eventkeep serve` (embedded, a subprocess) used on every endpoint writes no API key
and not the deployment secret to its output, keys in a WebSocket URL included; the bootstrap
admin key is in a 0600 file whose path is printed; everything under EVENTKEEP_HOME is 0600 in
0700 folders, also what an older version left readable."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

FAKE_KEY = "ek_0123456789abcdef_" + "A" * 43


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("EVENTKEEP_") or k == "EVENTKEEP_TEST"
        }
        env |= {"EVENTKEEP_HOME": str(home), "EVENTKEEP_PORT": str(self.port)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventkeep", "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.lines)
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("serve never became ready:\n" + "".join(self.lines))

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(20)
        self._reader.join(5)
        return "".join(self.lines)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    # What an older version left: a home and an export anyone on the host could read.
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    old = home / "export.jsonl"
    old.write_text("{}\n")
    old.chmod(0o644)
    return home


@pytest.fixture
def server(home: Path) -> Iterator[Server]:
    served = Server(home)
    try:
        served.wait_ready()
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()


def ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in (statuses or (200, 201)), response.text
    return response.json()


def use_every_endpoint(base: str, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=auth, timeout=10) as api:
        user = ok(api.post("/v1/users", json={"email": "ada@example.org", "first_name": "Ada",
                                               "last_name": "Lovelace"}))  # fmt: skip
        uid = user["id"]
        ok(api.post(f"/v1/users/{uid}/email", json={"email": "ada@example.com"}))
        ok(api.post(f"/v1/users/{uid}/deactivate", json={"reason": "asked"}))
        ok(api.post(f"/v1/users/{uid}/reactivate"))
        product = ok(api.post("/v1/products", json={"sku": "S-1", "name": "Teapot",
                     "description": "Blue", "category": "kitchen", "price": "12.50",
                     "currency": "EUR", "stock": 10}))  # fmt: skip
        pid = product["id"]
        ok(api.post(f"/v1/products/{pid}/details", json={"name": "Pot", "description": "Red"}))
        ok(api.post(f"/v1/products/{pid}/price", json={"price": "10.00", "currency": "EUR"}))
        ok(api.post(f"/v1/products/{pid}/stock", json={"delta": 5, "reason": "delivery"}))
        lines = [{"product_id": pid, "quantity": 1}]
        order = ok(api.post("/v1/orders", json={"user_id": uid, "lines": lines}))
        oid = order["id"]
        ok(api.post(f"/v1/orders/{oid}/pay", json={"amount": "10.00", "payment_ref": "p-1"}))
        ok(api.post(f"/v1/orders/{oid}/ship", json={"tracking_number": "t-1"}))
        ok(api.post(f"/v1/orders/{oid}/deliver"))
        other = ok(api.post("/v1/orders", json={"user_id": uid, "lines": lines}))
        last = ok(api.post(f"/v1/orders/{other['id']}/cancel", json={"reason": "no"}))
        wait = {"X-Min-Position": str(last["position"])}
        ok(api.get(f"/v1/users/{uid}", headers=wait))
        ok(api.get("/v1/users", params={"email": "ada@example.com"}))
        ok(api.get(f"/v1/users/{uid}/orders"))
        ok(api.get("/v1/products", params={"q": "pot", "limit": 1}))
        ok(api.get(f"/v1/products/{pid}"))
        ok(api.get(f"/v1/orders/{oid}"))
        ok(api.get("/v1/stats/sales", params={"from": "2000-01-01", "to": "2100-01-01"}))
        ok(api.get("/v1/projections"))
        ok(api.get(f"/v1/audit/streams/{uid}/events"))
        ok(api.get(f"/v1/audit/streams/{uid}/state", params={"version": 1}))
        ok(api.post("/v1/audit/verify"))
        ok(api.delete(f"/v1/users/{uid}/personal-data"))
        ok(api.post(f"/v1/products/{pid}/discontinue"))
        assert api.get("/metrics").status_code == 200
        for path in ("/docs", "/openapi.json", "/healthz", "/readyz"):
            assert api.get(path).status_code == 200
        # Errors: a wrong key, a key in the query, not found, invalid, too large.
        bad = {"Authorization": f"Bearer {FAKE_KEY}"}
        ok(api.get("/v1/products", headers=bad), 401)
        ok(api.post("/v1/users", json={}, headers=bad), 401)
        ok(api.get("/v1/products", params={"access_token": key}), 422)
        ok(api.get(f"/v1/orders/{uid}"), 404)
        ok(api.post("/v1/users", json={"email": "x"}), 422)
        # Answered and closed while the body is still on its way is a refusal too.
        with contextlib.suppress(httpx.TransportError):
            ok(api.post("/v1/users", content=b"x" * 2_000_000), 413)
    ws = base.replace("http", "ws") + "/v1/stream"
    with connect(ws, additional_headers=auth) as stream:
        assert stream.recv(timeout=10)
    with connect(ws, subprotocols=["eventkeep", f"bearer.{key}"]) as stream:  # type: ignore[list-item]
        assert stream.recv(timeout=10)
    for url in (f"{ws}?access_token={key}", f"{ws}?access_token={FAKE_KEY}"):
        with pytest.raises((InvalidStatus, WebSocketException)), connect(url) as stream:
            stream.recv(timeout=10)


def test_no_key_or_secret_in_the_output_and_every_file_private(server: Server, home: Path) -> None:
    printed = (home / "bootstrap-admin-key").resolve()
    assert f"{printed}\n" in server.lines
    key = printed.read_text().strip()
    use_every_endpoint(server.base, key)
    output = server.stop()

    secret = (home / "secret").read_text().strip()
    assert len(secret) >= 32
    for value in (key, key.rsplit("_", 1)[1], FAKE_KEY, FAKE_KEY.rsplit("_", 1)[1], secret):
        assert value not in output, f"{value[:6]}… is in the output:\n{output}"
    assert "eventkeep (embedded mode) serving on" in output

    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = [path for path in home.rglob("*")]
    assert any(path.name.endswith("-wal") for path in files) or any(
        path.suffix == ".db" for path in files
    )
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_an_export_is_written_for_its_owner_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from eventkeep.api import cli

    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path / "home"))
    for name in ("EVENTKEEP_POSTGRES_URL", "EVENTKEEP_CLAIM_SECRET", "EVENTKEEP_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    previous = os.umask(0o022)  # as a shell would start it
    try:
        result = CliRunner().invoke(cli.app, ["audit", "export", str(tmp_path / "out.jsonl")])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
