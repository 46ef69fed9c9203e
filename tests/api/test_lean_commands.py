"""The hot commands' short path (api/lean_commands.py) answers what the full routes answer.

The same requests — valid, invalid bodies, malformed JSON, a body that is not labelled JSON,
unknown fields, bad and missing keys, a wrong role, a customer's unknown token, idempotent
repeats and a reused Idempotency-Key, malformed headers, oversize and chunked bodies, domain
refusals, a query string — go through an app with the short path and through one without it,
each on a fresh store of each mode; every answer (status, every header, the body) is the same
byte for byte but for the ids the store mints, and so are the request log lines, the
request and command metrics. The valid ones took the short path (FastAPI solved no dependency
for them) and nothing was doubled.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi._compat.v2 import ModelField
from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.api.limits import MAX_BODY_BYTES
from eventkeep.api.ratelimit import LocalLimiter
from tests.api.conftest import MODES
from tests.api.shopping import PRODUCT, USER

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Exchange:
    """One run of the script on a fresh store: what each request was answered."""

    app: FastAPI
    key_ids: dict[str, str]  # a key's id: its role
    answers: list[tuple[str, int, list[tuple[bytes, bytes]], bytes]] = field(default_factory=list)
    lean: set[str] = field(default_factory=set)  # requests answered without solving dependencies
    minted: dict[bytes, bytes] = field(default_factory=dict)

    def same_ids(self, raw: bytes) -> bytes:
        """`raw` with each id replaced by its order of first appearance in this run, and each
        API key's id by its role (an Idempotency-Key is scoped by the key's id)."""
        for key_id, role in self.key_ids.items():
            raw = raw.replace(key_id.encode(), f"<{role} key>".encode())

        def placeholder(match: re.Match[bytes]) -> bytes:
            return self.minted.setdefault(match.group(), b"<id %03d>" % len(self.minted))

        return _UUID.sub(placeholder, raw)


class DependencyCount:
    """Counts FastAPI's dependency solving (what the short path skips)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        solve = fastapi.routing.solve_dependencies

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await solve(*args, **kwargs)

        monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)


def script(send: Callable[..., dict[str, Any]], ids: Callable[[str], str]) -> None:
    """The requests, in order; `send(label, method, path, role=..., **request)` answers the
    JSON of a 2xx (or {}), `ids(label)` the id a labelled answer named."""
    client, analyst, admin = Role.client, Role.analyst, Role.admin
    user = send("register", "POST", "/v1/users", client, json=USER)
    send("register taken", "POST", "/v1/users", client, json=USER)
    send("register bad email", "POST", "/v1/users", client, json={**USER, "email": "x"})
    send("register unknown field", "POST", "/v1/users", client, json={**USER, "age": 3})
    send("register not json", "POST", "/v1/users", client, content=b'{"email": ')
    send("register empty", "POST", "/v1/users", client, content=b"")
    send("register as text", "POST", "/v1/users", client, content=b"{}", json_type=False)
    send("register bad key", "POST", "/v1/users", "ek_nope", json=USER)
    send("register no key", "POST", "/v1/users", None, json=USER)
    send("register customer token", "POST", "/v1/users", "ekc_nope", json=USER)
    send("register wrong role", "POST", "/v1/users", analyst, json=USER)
    second = {**USER, "email": "second@example.com"}
    once = {"Idempotency-Key": "k-1"}
    send("register idempotent", "POST", "/v1/users", client, json=second, headers=once)
    send("register repeat", "POST", "/v1/users", client, json=second, headers=once)
    other = {**USER, "email": "third@example.com"}
    send("register reused key", "POST", "/v1/users", client, json=other, headers=once)
    send(
        "register long key",
        "POST",
        "/v1/users",
        client,
        json=other,
        headers={"Idempotency-Key": "k" * 201},
    )
    send(
        "register bad causation",
        "POST",
        "/v1/users",
        client,
        json=other,
        headers={"X-Causation-ID": "not ok"},
    )
    send(
        "register with causation",
        "POST",
        "/v1/users",
        client,
        json=other,
        headers={"X-Causation-ID": "cause-1"},
    )
    send("register query", "POST", "/v1/users?dry=1", client, json=other)
    oversize = b'{"email": "' + b"x" * MAX_BODY_BYTES + b'"}'
    send("register oversize", "POST", "/v1/users", client, content=oversize)
    send(
        "register chunked",
        "POST",
        "/v1/users",
        client,
        content=iter(
            [b'{"email": "chunked@example.com", ', b'"first_name": "A", "last_name": ""}']
        ),
    )
    send(
        "register with password",
        "POST",
        "/v1/users",
        client,
        json={**USER, "email": "customer@example.com", "password": "correct horse battery"},
    )
    send("register as admin", "POST", "/v1/users", admin, json={**USER, "email": "a@example.com"})

    product = send("create product", "POST", "/v1/products", client, json=PRODUCT)
    send("create product bad price", "POST", "/v1/products", client, json={**PRODUCT, "price": "1"})
    send("create product wrong role", "POST", "/v1/products", analyst, json=PRODUCT)
    stock = f"/v1/products/{product['id']}/stock"
    take = {"delta": -1, "reason": "sold"}
    send("stock", "POST", stock, client, json=take)
    send("stock if-match", "POST", stock, client, json=take, headers={"If-Match": '"2"'})
    send("stock stale if-match", "POST", stock, client, json=take, headers={"If-Match": "1"})
    send("stock bad if-match", "POST", stock, client, json=take, headers={"If-Match": "v1"})
    send("stock too much", "POST", stock, client, json={"delta": -1000, "reason": "sold"})
    send("stock bool delta", "POST", stock, client, json={"delta": True, "reason": "sold"})
    send("stock float delta", "POST", stock, client, json={"delta": 1.0, "reason": "sold"})
    send("stock no reason", "POST", stock, client, json={"delta": 1})
    upper = f"/v1/products/{product['id'].upper()}/stock"
    send("stock upper-case id", "POST", upper, client, json=take)
    send("stock bad id", "POST", "/v1/products/nope/stock", client, json=take)
    unknown = "/v1/products/00000000-0000-4000-8000-000000000000/stock"
    send("stock unknown product", "POST", unknown, client, json=take)
    send("stock wrong role", "POST", stock, analyst, json=take)
    send("stock bad key", "POST", stock, "ek_nope", json=take)
    again = {"Idempotency-Key": "s-1"}
    send("stock idempotent", "POST", stock, client, json=take, headers=again)
    send("stock repeat", "POST", stock, client, json={"reason": "sold", "delta": -1}, headers=again)
    send("stock reused key", "POST", stock, client, json={**take, "delta": -2}, headers=again)
    price = f"/v1/products/{product['id']}/price"
    send("price", "POST", price, client, json={"price": "39.90", "currency": "EUR"})
    send("price bad currency", "POST", price, client, json={"price": "39.90", "currency": "eur"})

    lines = [{"product_id": product["id"], "quantity": 2}]
    order = send(
        "place order",
        "POST",
        "/v1/orders",
        client,
        json={"user_id": ids("register"), "lines": lines},
    )
    send(
        "place order no lines",
        "POST",
        "/v1/orders",
        client,
        json={"user_id": user["id"], "lines": []},
    )
    send(
        "place order unknown product",
        "POST",
        "/v1/orders",
        client,
        json={
            "user_id": user["id"],
            "lines": [{"product_id": unknown.split("/")[3], "quantity": 1}],
        },
    )
    send(
        "place order customer token",
        "POST",
        "/v1/orders",
        "ekc_nope",
        json={"user_id": user["id"], "lines": lines},
    )
    pay = f"/v1/orders/{order['id']}/pay"
    send("pay wrong amount", "POST", pay, client, json={"amount": "1.00", "payment_ref": "p-1"})
    send("pay bad amount", "POST", pay, client, json={"amount": "1", "payment_ref": "p-1"})
    send("pay", "POST", pay, client, json={"amount": "79.80", "payment_ref": "p-1"})
    send("ship", "POST", f"/v1/orders/{order['id']}/ship", client, json={"tracking_number": "t-1"})
    send("deliver", "POST", f"/v1/orders/{order['id']}/deliver", client)
    send("deliver with body", "POST", f"/v1/orders/{order['id']}/deliver", client, json={"x": 1})
    send(
        "cancel delivered",
        "POST",
        f"/v1/orders/{order['id']}/cancel",
        client,
        json={"reason": "late"},
    )
    second_order = send(
        "place order 2", "POST", "/v1/orders", admin, json={"user_id": user["id"], "lines": lines}
    )
    send(
        "cancel", "POST", f"/v1/orders/{second_order['id']}/cancel", client, json={"reason": "late"}
    )
    send(
        "cancel wrong role",
        "POST",
        f"/v1/orders/{second_order['id']}/cancel",
        analyst,
        json={"reason": "x"},
    )


# The requests the short path answers itself (the rest it hands to the full route).
LEAN = {
    "register",
    "register taken",
    "register idempotent",
    "register repeat",
    "register reused key",
    "register with causation",
    "register with password",
    "register as admin",
    "create product",
    "stock",
    "stock if-match",
    "stock stale if-match",
    "stock too much",
    "stock unknown product",
    "stock idempotent",
    "stock repeat",
    "stock reused key",
    "price",
    "place order",
    "place order unknown product",
    "pay wrong amount",
    "pay",
    "ship",
    "deliver",
    "deliver with body",
    "cancel delivered",
    "place order 2",
    "cancel",
}


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class RequestLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record)


@pytest.fixture
def request_lines() -> Iterator[RequestLines]:
    access = logging.getLogger("eventkeep.request")
    handler, level = RequestLines(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    yield handler
    access.removeHandler(handler)
    access.setLevel(level)


def run(
    wiring: Wiring, lean: bool, monkeypatch: pytest.MonkeyPatch, lines: RequestLines
) -> tuple[Exchange, list[tuple[Any, ...]]]:
    app = create_app(wiring, lean_commands=lean)
    roles = (Role.client, Role.analyst, Role.admin)
    issued = {role: wiring.keys.create(role, f"lean {role}") for role in roles}
    keys = {role: key.secret_key for role, key in issued.items()}
    by_key = {key.key.id: role.value for role, key in issued.items()}
    exchange = Exchange(app, by_key)
    solved = DependencyCount(monkeypatch)
    named: dict[str, dict[str, Any]] = {}
    first_line = len(lines.lines)
    with TestClient(app, raise_server_exceptions=False) as client:

        def send(
            label: str,
            method: str,
            path: str,
            role: Role | str | None,
            *,
            json_type: bool = True,
            headers: dict[str, str] | None = None,
            **request: Any,
        ) -> dict[str, Any]:
            sent = {"X-Correlation-ID": f"c-{len(exchange.answers)}", **(headers or {})}
            if role is not None:
                sent["Authorization"] = f"Bearer {keys[role] if isinstance(role, Role) else role}"
            if "content" in request:
                sent["Content-Type"] = "text/plain" if json_type is False else "application/json"
            before = solved.calls
            answer = client.request(method, path, headers=sent, **request)
            if solved.calls == before:
                exchange.lean.add(label)
            exchange.answers.append(
                (label, answer.status_code, answer.headers.raw, exchange.same_ids(answer.content))
            )
            body = answer.json() if 200 <= answer.status_code < 300 and answer.content else {}
            named[label] = body
            return body

        script(send, lambda label: str(named[label]["id"]))
    logged = [
        (
            line.correlation_id,  # type: ignore[attr-defined]
            by_key.get(line.actor, line.actor),  # type: ignore[attr-defined]
            line.method,  # type: ignore[attr-defined]
            line.route,  # type: ignore[attr-defined]
            line.status,  # type: ignore[attr-defined]
        )
        for line in lines.lines[first_line:]
    ]
    return exchange, logged


def samples(app: FastAPI, name: str) -> Counter[Any]:
    counted: Counter[Any] = Counter()
    for metric in app.state.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                counted[tuple(sorted(sample.labels.items()))] += int(sample.value)
    return counted


def test_the_short_path_answers_what_the_full_routes_answer(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request_lines: RequestLines
) -> None:
    runs = {}
    for lean in (True, False):
        wiring = MODES[mode](tmp_path / f"home-{lean}")
        try:
            runs[lean] = run(wiring, lean, monkeypatch, request_lines)
        finally:
            wiring.close()
    (short, short_lines), (full, full_lines) = runs[True], runs[False]
    assert [a[0] for a in short.answers] == [a[0] for a in full.answers]
    for got, wanted in zip(short.answers, full.answers, strict=True):
        assert got == wanted, got[0]
    # The short path answered these, and only these (the door refuses bad keys and oversize
    # bodies before either path, without solving a dependency).
    assert full.lean <= short.lean
    assert short.lean - full.lean == LEAN
    answers = {label: body for label, _, _, body in short.answers}
    assert answers["register repeat"] == answers["register idempotent"]  # nothing doubled
    assert answers["stock repeat"] == answers["stock idempotent"]
    assert short_lines == full_lines
    for name in (
        "eventkeep_http_requests_total",
        "eventkeep_http_request_duration_seconds_count",
        "eventkeep_commands_total",
    ):
        assert samples(short.app, name) == samples(full.app, name), name


def test_a_refusal_by_the_rate_limiter_is_the_routes(
    wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short path asks the limiter once per command it sends; when it refuses, the route
    answers the 429 (asking again, which changes nothing)."""
    monkeypatch.setattr(wiring, "limiter", LocalLimiter(rate=0.01, burst=2))
    asked = Counter[str]()
    acquire = wiring.limiter.acquire

    def counted(key_id: str) -> float | None:
        asked[key_id] += 1
        return acquire(key_id)

    monkeypatch.setattr(wiring.limiter, "acquire", counted)
    key = wiring.keys.create(Role.client, "limited").secret_key
    with TestClient(create_app(wiring), headers={"Authorization": f"Bearer {key}"}) as client:
        statuses = [
            client.post("/v1/users", json={**USER, "email": f"u{n}@example.com"}).status_code
            for n in range(4)
        ]
        refused = client.post("/v1/users", json={**USER, "email": "late@example.com"})
    assert statuses[:3] == [201, 201, 429]  # a burst of 2, then 1 per 100 s
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) >= 1
    # Two sent on the short path (one ask each); each refusal asked twice (short path, route).
    assert sum(asked.values()) == 2 + 3 * 2


def test_a_hot_commands_answer_is_written_without_validating_it_again(
    wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher made the `CommandAnswer` moments ago: the short path encodes it (byte
    for byte as the route's response field would: the test above) without the field's
    validation and serialisation."""
    used = Counter[str]()

    def counting(name: str) -> Any:
        original = getattr(ModelField, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if name == "serialize_json" or kwargs.get("loc", ("",))[0] == "response":
                used[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in ("validate", "serialize_json"):
        monkeypatch.setattr(ModelField, name, counting(name))
    key = wiring.keys.create(Role.admin, "answers").secret_key
    with TestClient(create_app(wiring), headers={"Authorization": f"Bearer {key}"}) as client:
        product = client.post("/v1/products", json=PRODUCT).json()["id"]  # the key verified
        used.clear()
        adjusted = client.post(f"/v1/products/{product}/stock", json={"delta": 1, "reason": "r"})
    assert adjusted.status_code == 200, adjusted.text
    assert adjusted.json()["version"] == 2
    assert used == Counter()
