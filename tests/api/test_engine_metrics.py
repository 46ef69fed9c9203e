"""In the app (both modes), `/metrics` holds the engine's metrics beside the HTTP ones: group
commit batches and waits, cache hits and misses, rate-limit refusals, the log's head and each
read model's lag."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.api.ratelimit import LocalLimiter
from tests.api.shopping import USER
from tests.ops.test_process_metrics_and_logs import sample


def test_the_app_metrics_include_the_engine(wiring: Wiring, bearer: Any) -> None:
    # Two requests per key (the admin key's two scrapes), then 429.
    limited = replace(wiring, limiter=LocalLimiter(rate=0.001, burst=2))
    app = create_app(limited)
    admin = bearer(Role.admin)
    with TestClient(app, headers=bearer(Role.client)) as client:
        before = client.get("/metrics", headers=admin).text
        created = client.post("/v1/users", json=USER)
        assert created.status_code == 201
        client.get(f"/v1/users/{created.json()['id']}")  # a cache lookup
        assert client.get(f"/v1/users/{created.json()['id']}").status_code == 429
        after = client.get("/metrics", headers=admin).text

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("eventkeep_rate_limited_total") == 1
    assert grew("eventkeep_group_commit_batch_appends_count") >= 1
    assert grew("eventkeep_group_commit_wait_seconds_count") >= 1
    hits, misses = (
        grew("eventkeep_cache_lookups_total", result="hit"),
        grew("eventkeep_cache_lookups_total", result="miss"),
    )
    assert hits + misses >= 1 or wiring.feed is None  # distributed without Redis: no cache
    assert sample(after, "eventkeep_log_head_position") == float(created.json()["position"])
    for name in ("users", "products", "orders", "daily_sales"):
        assert sample(after, "eventkeep_projection_lag_events", projection=name) is not None
