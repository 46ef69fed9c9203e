"""Free text about a user is personal data: a deactivation's reason is sealed with the user's
data key (never stored in plaintext), readable until the erasure, null after it; an erased
user cannot be deactivated (there is no key left to seal a reason with). An order's
cancellation reason is sealed under the ordering user's key; a stock adjustment's reason under
the product's own (docs/events.md)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from tests.api.shopping import PRODUCT, answer, place_order, register
from tests.api.sinks import files_under, postgres_rows


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


REASON = "moved in with Grace Hopper, call +44 20 7946 0958"


def stored_bytes(wiring: Wiring, home: Path) -> bytes:
    """Everything the event store holds, raw: its files, or every PostgreSQL table's rows
    (bytes columns as their bytes: as text, PostgreSQL would show them in hex)."""
    if wiring.feed is not None:
        return files_under(home)
    return postgres_rows()


def test_a_deactivation_reason_is_sealed_and_erased_with_the_user(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]], tmp_path: Path
) -> None:
    user = register(client, "grace@example.com")
    base = f"/v1/users/{user['id']}"
    answer(client.post(f"{base}/deactivate", json={"reason": REASON}))
    auditor = bearer(Role.auditor)
    history = f"/v1/audit/streams/{user['id']}/events"

    assert ok(client.get(history, headers=auditor))["items"][-1]["data"]["reason"] == REASON
    assert REASON.encode() not in stored_bytes(wiring, tmp_path / "home")

    answer(client.post(f"{base}/reactivate"))
    answer(client.delete(f"{base}/personal-data", headers=bearer(Role.admin)))
    events = ok(client.get(history, headers=auditor))["items"]
    assert [e["data"]["reason"] for e in events if e["event_type"] == "UserDeactivated"] == [None]
    refused = client.post(f"{base}/deactivate", json={"reason": "again"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "PERSONAL_DATA_ERASED"


def test_a_cancellation_reason_is_sealed_under_the_users_key_and_erased_with_the_user(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]], tmp_path: Path
) -> None:
    admin, auditor = bearer(Role.admin), bearer(Role.auditor)
    user = register(client, "grace@example.com")
    product = answer(client.post("/v1/products", json=PRODUCT, headers=admin), 201)
    first = answer(place_order(client, user["id"], product["id"], 1), 201)
    second = answer(place_order(client, user["id"], product["id"], 1), 201)
    answer(client.post(f"/v1/orders/{first['id']}/cancel", json={"reason": REASON}))

    def reason(order: dict[str, Any]) -> Any:
        history = ok(client.get(f"/v1/audit/streams/{order['id']}/events", headers=auditor))
        return history["items"][-1]["data"]["reason"]

    assert reason(first) == REASON
    assert REASON.encode() not in stored_bytes(wiring, tmp_path / "home")
    answer(client.delete(f"/v1/users/{user['id']}/personal-data", headers=admin))
    assert reason(first) is None
    # The user's other order can still be cancelled; its reason is not written.
    answer(client.post(f"/v1/orders/{second['id']}/cancel", json={"reason": REASON}))
    assert reason(second) is None


def test_a_stock_adjustment_reason_is_sealed_under_the_products_key(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]], tmp_path: Path
) -> None:
    admin, auditor = bearer(Role.admin), bearer(Role.auditor)
    product = answer(client.post("/v1/products", json=PRODUCT, headers=admin), 201)
    stock = f"/v1/products/{product['id']}/stock"
    answer(client.post(stock, json={"delta": 1, "reason": REASON}, headers=admin))

    assert REASON.encode() not in stored_bytes(wiring, tmp_path / "home")
    history = ok(client.get(f"/v1/audit/streams/{product['id']}/events", headers=auditor))
    assert history["items"][-1]["data"]["reason"] == REASON  # no erasure reaches a product


@pytest.mark.parametrize("wiring", ["embedded"], indirect=True)  # SQLite's files
def test_an_erased_users_data_key_leaves_the_sqlite_files(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]], tmp_path: Path
) -> None:
    """Secure delete and a checkpoint after the erasure: the wrapped key's bytes are in no
    page and no write-ahead log frame of the embedded store."""
    user = register(client, "grace@example.com")
    home = tmp_path / "home"
    table = wiring.shop.recorder.events_table_name + "_data_keys"
    wrapped = None
    for path in home.rglob("*.db"):
        with closing(sqlite3.connect(path)) as db, contextlib.suppress(sqlite3.OperationalError):
            wrapped = db.execute(f"SELECT * FROM {table}").fetchall() or wrapped
    assert wrapped, "no data key found"
    secrets = [bytes(v) for row in wrapped for v in row if isinstance(v, bytes) and len(v) > 16]
    assert secrets
    answer(client.delete(f"/v1/users/{user['id']}/personal-data", headers=bearer(Role.admin)))
    files = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert not [s for s in secrets if s in files]
