"""What `serve` keeps that grows is pruned (issue 12): delivered webhook deliveries after
EVENTKEEP_WEBHOOK_DELIVERY_RETENTION (dead ones stay for the operator), and the login-failure
rows of accounts not locked whose last failure is older than EVENTKEEP_LOGIN_FAILURE_RETENTION;
by the webhook dispatcher's leader, every EVENTKEEP_PRUNE_INTERVAL. Both modes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventkeep.api.accounts import LoginRefused
from eventkeep.api.bootstrap import Wiring
from tests.api.conftest import MODES

HOUR = 3600.0


@pytest.fixture(params=sorted(MODES))
def pruning(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Wiring]:
    built = MODES[request.param](
        tmp_path / "home",
        webhook_delivery_retention=HOUR,
        login_failure_retention=HOUR,
        prune_interval=0.2,
    )
    yield built
    built.close()


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def test_old_deliveries_and_forgotten_login_failures_are_pruned(pruning: Wiring) -> None:
    keys = pruning.keys
    deliveries = [
        ("old-delivered", "delivered", ago(2 * HOUR)),
        ("new-delivered", "delivered", ago(60)),
        ("old-dead", "dead", ago(2 * HOUR)),
        ("old-redelivering", "redelivering", ago(2 * HOUR)),
    ]
    failures = [
        ("old", None, ago(2 * HOUR)),
        ("recent", None, ago(60)),
        ("old-locked", ago(-HOUR), ago(2 * HOUR)),  # locked for another hour
        ("old-lock-over", ago(60), ago(2 * HOUR)),
        ("before-the-migration", None, None),
    ]
    keys.execute(
        [
            (
                "INSERT INTO webhook_deliveries (id, webhook_id, position, event_type, stream_id,"
                " status, attempts, last_error, updated_at) VALUES (%s, 'w', 1, 'E', 's', %s, 1,"
                " NULL, %s)",
                row,
            )
            for row in deliveries
        ]
        + [
            (
                "INSERT INTO login_failures (account, failures, locked_until, last_failed_at)"
                " VALUES (%s, 2, %s, %s)",
                row,
            )
            for row in failures
        ]
    )
    # A login failing now goes through the real path: its row carries its time, and stays.
    assert pruning.accounts is not None
    with pytest.raises(LoginRefused):
        pruning.accounts.authenticate("nobody@example.org", "wrong password", None)

    def left() -> tuple[set[str], set[str]]:
        kept = keys.execute([("SELECT id FROM webhook_deliveries", ())])
        counted = keys.execute([("SELECT account FROM login_failures", ())])
        return {r[0] for r in kept}, {r[0] for r in counted}

    deadline = time.monotonic() + 30  # pruned every 0.2 s: a bound against a hang
    while "old-delivered" in left()[0] or "old" in left()[1]:
        assert time.monotonic() < deadline, f"nothing pruned: {left()}"
        time.sleep(0.1)
    kept, counted = left()
    assert kept == {"new-delivered", "old-dead", "old-redelivering"}
    assert counted == {"recent", "old-locked", pruning.accounts.account("nobody@example.org")}
