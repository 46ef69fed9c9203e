"""Rate limits per API key: beyond its burst a key gets 429 with Retry-After, other keys do
not; distributed processes share the limit in Redis and fall back to a local one without it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.api.ratelimit import LocalLimiter, RateLimiter, RedisLimiter


@pytest.fixture
def strict(wiring: Wiring, redis_url: str) -> RateLimiter:
    """One request per minute after a burst of 2: in Redis when the mode has it."""
    distributed = wiring.shop.recorder.__class__.__module__ == "eventkeep.eventstore.postgres"
    limiter = RedisLimiter(redis_url, 1 / 60, 2) if distributed else LocalLimiter(1 / 60, 2)
    wiring.limiter = limiter
    return limiter


def test_a_key_beyond_its_burst_is_told_when_to_retry(
    strict: RateLimiter, anonymous: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    ada, bob = bearer(Role.client), bearer(Role.client)
    answers = [anonymous.post("/v1/users", json={}, headers=ada).status_code for _ in range(2)]
    refused = anonymous.post("/v1/users", json={}, headers=ada)

    assert answers == [422, 422]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert anonymous.post("/v1/users", json={}, headers=bob).status_code == 422


def test_without_redis_the_limit_falls_back_to_the_process() -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0", 1 / 60, 2)  # nothing listens there

    outcomes = [limiter.acquire("key") for _ in range(3)]

    assert outcomes[:2] == [None, None]
    assert outcomes[2] is not None and outcomes[2] > 0
