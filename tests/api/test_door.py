"""Limits before work, in both modes: body and header sizes, the key before the body,
correlation ids kept short and plain; security headers on every answer and docs served from
the package."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventkeep.api.keys import Role
from eventkeep.api.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES
from tests.api.shopping import PRODUCT, USER, answer, register


def refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_a_body_over_the_limit_is_413_before_it_is_read(client: TestClient) -> None:
    big = {**PRODUCT, "description": "x" * (MAX_BODY_BYTES + 1)}
    refused(client.post("/v1/products", json=big), 413, "PAYLOAD_TOO_LARGE")
    answer(client.post("/v1/products", json=PRODUCT), 201)  # the next request is served


def _streamed(app: FastAPI, headers: dict[str, str], total: int) -> tuple[int, dict, int]:
    """Sends a chunked body of `total` bytes through the ASGI app; answers the status, the
    body and how many bytes the app pulled."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        chunk = b"x" * 65536
        while pulled < total:
            pulled += len(chunk)
            yield chunk

    async def send() -> tuple[int, dict, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                "/v1/users", content=body(), headers={"Content-Type": "application/json", **headers}
            )
            return response.status_code, response.json(), pulled

    return asyncio.run(send())


def test_a_chunked_body_is_cut_off_at_the_limit(app: FastAPI, bearer: Any) -> None:
    status, body, pulled = _streamed(app, bearer(Role.client), 30 * 1024 * 1024)
    assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert pulled <= MAX_BODY_BYTES + 2 * 65536


@pytest.mark.parametrize("authorization", [None, "Bearer ek_not_a_key", "Basic abc"])
def test_a_command_without_a_valid_key_is_refused_before_its_body_is_read(
    app: FastAPI, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, pulled = _streamed(app, headers, 30 * 1024 * 1024)
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")
    assert pulled <= 65536  # at most what the transport sends before the app asks


def test_a_30_mb_body_without_a_key_is_refused_fast(anonymous: TestClient) -> None:
    response = anonymous.post(
        "/v1/users",
        content=b"x" * (30 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (401, 413), response.text


def test_headers_over_the_limit_are_431(client: TestClient) -> None:
    response = client.get("/v1/products", headers={"X-Filler": "x" * MAX_HEADER_BYTES})
    refused(response, 431, "HEADERS_TOO_LARGE")
    long_query = client.get("/v1/products", params={"q": "x" * MAX_HEADER_BYTES})
    refused(long_query, 431, "HEADERS_TOO_LARGE")


def test_a_correlation_id_too_long_or_odd_is_replaced_not_echoed(client: TestClient) -> None:
    for bad in ("x" * 500_000, "x" * 129, "a b", "<script>", "ü"):
        response = client.get("/healthz", headers={"X-Correlation-ID": bad.encode()})
        echoed = response.headers["X-Correlation-ID"]
        assert echoed != bad
        assert re.fullmatch(r"[0-9a-f-]{36}", echoed)
    plain = "order-42:retry.1_A"
    assert (
        client.get("/healthz", headers={"X-Correlation-ID": plain}).headers["X-Correlation-ID"]
        == plain
    )
    # A command with an odd correlation id is taken, under a new id.
    response = client.post("/v1/users", json=USER, headers={"X-Correlation-ID": "y" * 300})
    answer(response, 201)
    assert response.headers["X-Correlation-ID"] != "y" * 300


def test_every_answer_has_the_security_headers(
    client: TestClient, anonymous: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    answers = [
        client.get(f"/v1/users/{user['id']}"),
        client.get("/v1/products"),
        client.post("/v1/users", json=USER),  # an error
        anonymous.get("/v1/users"),  # 401
        anonymous.get("/healthz"),
        anonymous.get("/openapi.json"),
        anonymous.get("/v1/audit/streams/" + user["id"] + "/events", headers=bearer(Role.auditor)),
    ]
    for response in answers:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store", response.request.url
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_the_docs_load_nothing_from_elsewhere(anonymous: TestClient) -> None:
    page = anonymous.get("/docs")
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text  # no inline script: the policy would block it
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/docs/assets/") for source in sources)
    for source in sources:
        asset = anonymous.get(source)
        assert asset.status_code == 200, source
        assert asset.content
    bundle = anonymous.get("/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text
    assert bundle.headers["Content-Type"].startswith("text/javascript")
    assert anonymous.get("/docs/assets/..%2Fcore.py").status_code == 404
    assert anonymous.get("/redoc").status_code == 404


def _reference_headers(given: list[tuple[bytes, bytes]], correlation_id: str) -> list[Any]:
    """The answer's headers as the general path writes them (one MutableHeaders pass per
    header): what the layers' quick path for the common answer must write byte for byte."""
    from starlette.datastructures import MutableHeaders

    from eventkeep.api.headers import ALWAYS, API_POLICY

    message: dict[str, Any] = {"type": "http.response.start", "headers": list(given)}
    headers = MutableHeaders(scope=message)
    for name, value in ALWAYS.items():
        headers[name] = value
    if "cache-control" not in headers:
        headers["cache-control"] = "no-store"
    if "content-security-policy" not in headers:
        headers["content-security-policy"] = API_POLICY
    MutableHeaders(scope=message)["X-Correlation-ID"] = correlation_id
    return message["headers"]


@pytest.mark.parametrize(
    "given",
    [
        [(b"content-type", b"application/json"), (b"x-projection-position", b"7")],
        [(b"content-type", b"text/plain"), (b"cache-control", b"public, max-age=60")],
        [(b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"default-src 'self'")],
        [(b"x-correlation-id", b"set-by-the-route"), (b"content-length", b"2")],
        [],
    ],
)
def test_the_security_and_correlation_headers_are_written_as_the_general_path_writes_them(
    given: list[tuple[bytes, bytes]],
) -> None:
    """SecurityHeaders and CorrelationId append their headers at once to an answer that names
    none of them (most answers); the result is byte for byte what their general path writes."""
    from eventkeep.api.correlation import CorrelationId
    from eventkeep.api.headers import SecurityHeaders

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(given)})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/products",
        "headers": [(b"x-correlation-id", b"client-id-1")],
    }
    asyncio.run(CorrelationId(SecurityHeaders(route))(scope, receive, send))
    assert sent[0]["headers"] == _reference_headers(given, "client-id-1")
