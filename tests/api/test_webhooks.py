"""Webhooks, in both modes, against a real HTTP receiver on 127.0.0.1 that checks every
signature: subscriptions (admin only, secret shown once, SSRF allow-list), delivery in log
order with retries on 5xx and timeouts, pause and dead letters after repeated failures,
redelivery, stream filters, and commands never waiting for a receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.api.webhooks import AdvisoryLeader, DeliveryPolicy, allow_list

POLICY = DeliveryPolicy(timeout=0.5, attempts=3, backoff=0.02, allowed=allow_list("127.0.0.1"))


@dataclass
class Receiver:
    """An HTTP server that verifies Standard Webhooks signatures and answers as told:
    `plan` holds the next answers ("ok", "fail" = 500, "slow" = past the timeout); empty: ok."""

    url: str = ""
    secret: str = ""
    plan: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)  # accepted, in order
    attempts: list[str] = field(default_factory=list)  # every webhook-id, tried or not
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, headers: Any, body: bytes) -> bool:
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [s.partition(",")[2] for s in headers["webhook-signature"].split()]
        fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
        return fresh and any(hmac.compare_digest(expected, s) for s in offered)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with state.lock:
                state.attempts.append(self.headers["webhook-id"])
                step = state.plan.pop(0) if state.plan else "ok"
                if not state.verify(self.headers, body):
                    state.bad_signatures += 1
                    step = "bad"
            if step == "slow":
                time.sleep(POLICY.timeout * 3)
            status = {"ok": 204, "slow": 204, "fail": 500, "bad": 400}[step]
            if step == "ok":
                with state.lock:
                    state.received.append({"id": self.headers["webhook-id"], **orjson.loads(body)})
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def admin(bearer: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return bearer(Role.admin)


@pytest.fixture
def allowed(wiring: Wiring) -> Wiring:
    """The wiring with the test's policy: 127.0.0.1 allowed, short timeouts and back-offs."""
    wiring.webhook_policy = POLICY
    assert wiring.dispatcher is not None
    wiring.dispatcher.policy = POLICY
    return wiring


def subscribe(
    client: TestClient, admin: dict[str, str], receiver: Receiver, **body: Any
) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "event_types": ["UserRegistered"], **body},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    hook = response.json()
    assert hook["secret"].startswith("whsec_")
    receiver.secret = hook["secret"]
    return hook


def register(client: TestClient, n: int) -> str:
    user = {"email": f"user{n}@example.com", "first_name": "U", "last_name": str(n)}
    response = client.post("/v1/users", json=user)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def eventually(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_urls_must_resolve_to_allowed_addresses(
    client: TestClient, admin: dict[str, str], wiring: Wiring
) -> None:
    for url in (
        "http://127.0.0.1:9/hook",  # loopback
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata, link-local
        "http://10.1.2.3/hook",  # private
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ):
        body = {"url": url, "event_types": ["*"]}
        refused = client.post("/v1/webhooks", json=body, headers=admin)
        assert refused.status_code == 422, (url, refused.text)
    wiring.webhook_policy = POLICY
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
    assert client.post("/v1/webhooks", json=body, headers=admin).status_code == 201
    assert client.post("/v1/webhooks", json=body).status_code == 403  # a client key


def test_events_are_delivered_signed_in_order_with_retries(
    client: TestClient, admin: dict[str, str], allowed: Wiring, receiver: Receiver
) -> None:
    hook = subscribe(client, admin, receiver)
    listed = client.get("/v1/webhooks", headers=admin).json()["items"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]

    receiver.plan = ["fail", "fail"]  # the first event: two 500s, then taken
    users = [register(client, n) for n in range(3)]
    client.post(f"/v1/users/{users[0]}/deactivate", json={"reason": "test"})  # not wanted
    eventually(lambda: len(receiver.received) == 3)
    assert [m["data"]["stream_id"] for m in receiver.received] == users
    assert all(m["type"] == "UserRegistered" for m in receiver.received)
    assert receiver.received[0]["data"]["data"]["email"] == "user0@example.com"
    assert receiver.bad_signatures == 0
    first = receiver.received[0]["id"]
    assert receiver.attempts[:3] == [first, first, first]  # the same id on every retry

    receiver.plan = ["slow"]  # a timeout, then taken
    late = register(client, 3)
    eventually(lambda: len(receiver.received) == 4)
    assert receiver.received[3]["data"]["stream_id"] == late
    delivered = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=admin).json()
    assert [d["status"] for d in delivered["items"]] == ["delivered"] * 4
    assert delivered["items"][-1]["attempts"] == 3


def test_a_failing_receiver_pauses_the_subscription_until_redelivery(
    client: TestClient, admin: dict[str, str], allowed: Wiring, receiver: Receiver
) -> None:
    hook = subscribe(client, admin, receiver)
    receiver.plan = ["fail"] * POLICY.attempts
    first = register(client, 0)

    def paused() -> bool:
        listed = client.get("/v1/webhooks", headers=admin).json()["items"]
        return bool(listed[0]["status"] == "paused")

    eventually(paused)
    dead = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=admin).json()["items"]
    assert [(d["status"], d["stream_id"], d["last_error"]) for d in dead] == [
        ("dead", first, "HTTP 500")
    ]
    started = time.perf_counter()
    second = register(client, 1)  # waits behind the dead letter; the command does not
    assert time.perf_counter() - started < POLICY.timeout
    time.sleep(0.5)
    assert receiver.received == []

    resumed = client.post(f"/v1/webhooks/{hook['id']}/redeliver", headers=admin)
    assert resumed.status_code == 202 and resumed.json()["status"] == "active"
    eventually(lambda: len(receiver.received) == 2)
    assert [m["data"]["stream_id"] for m in receiver.received] == [first, second]
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=admin).status_code == 204
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=admin).status_code == 404
    gone = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=admin)
    assert gone.status_code == 404


def test_a_stream_filter_and_a_slow_receiver_never_slow_commands(
    client: TestClient, admin: dict[str, str], allowed: Wiring, receiver: Receiver
) -> None:
    wanted = register(client, 0)
    subscribe(client, admin, receiver, stream_id=wanted, event_types=["*"])
    receiver.plan = ["slow"] * 2
    other = register(client, 1)
    started = time.perf_counter()
    for n in range(2, 6):
        register(client, n)
    assert time.perf_counter() - started < 2 * POLICY.timeout  # the receiver hangs meanwhile
    changed = client.post(f"/v1/users/{wanted}/deactivate", json={"reason": "test"})
    assert changed.status_code == 200, changed.text
    eventually(lambda: len(receiver.received) == 1)
    time.sleep(0.3)
    assert [m["type"] for m in receiver.received] == ["UserDeactivated"]
    assert all(m["data"]["stream_id"] != other for m in receiver.received)


def test_a_worker_not_leading_asks_for_the_lock_again_on_its_own_connection(
    postgres_url: str,
) -> None:
    """Webhook delivery has one leader (a PostgreSQL advisory lock); every other API worker
    asks for the lock at each poll. It asks on the connection it keeps, instead of opening
    and authenticating a new one five times a second, and takes over when the leader goes."""
    leader, follower = AdvisoryLeader(postgres_url), AdvisoryLeader(postgres_url)

    def soon(ask: Callable[[], bool]) -> bool:
        """A session's end frees its lock once its server process is gone, not at close."""
        deadline = time.monotonic() + 10
        while not ask():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    try:
        assert soon(leader)  # a lock left by a session that just ended is freed shortly
        assert not follower()
        asked_on = follower._connection.info.backend_pid
        assert not follower()
        assert follower._connection.info.backend_pid == asked_on  # no new connection
        leader.close()  # the leader's session ends, and its lock with it
        assert soon(follower)
        assert follower._connection.info.backend_pid == asked_on
        assert follower()  # kept while its session lives
        assert not leader()
    finally:
        leader.close()
        follower.close()
