"""Webhooks: subscriptions to event types, delivered from the global log, signed per Standard
Webhooks.

A subscription (table `webhooks` of the key store's database, migration 3) names a URL, the
event types it wants (`*`: every type) and optionally one stream, and keeps its own checkpoint
(`position`) in the global log. The dispatcher runs in its own threads inside `eventkeep serve`
(never on a request's path: a slow or failing receiver slows no command): one worker per
active subscription follows the log after its checkpoint with the one log follower
(`eventstore/log_follower.py`) and posts each matching event, in log order — so in order per
stream — and moves the checkpoint only past what the receiver accepted: at least once, never
skipping. In the distributed mode every `serve` runs a dispatcher but only the holder of a
PostgreSQL advisory lock delivers (another takes over when its connection goes).

Each request is `POST <url>` with the body `{"type", "timestamp", "data": <export envelope>}`
(personal fields as the query side shows them: readable while the user's key exists, null after
the erasure) and the headers `webhook-id` (`msg_<subscription>_<position>`, the same on every
retry, so a receiver drops repeats), `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed with the
subscription's `whsec_…` secret (shown once; stored sealed with a key derived from the
deployment secret). A timeout, a refused connection or an answer other than 2xx is retried
with exponential backoff and jitter; after `attempts` failures the subscription pauses and the
event waits in its dead-letter list (`webhook_deliveries`, status `dead`) — with everything
after it — until `redeliver` resumes the subscription from it. Delivered rows are pruned after
EVENTKEEP_WEBHOOK_DELIVERY_RETENTION by the leader, every EVENTKEEP_PRUNE_INTERVAL (dead ones
stay).

URLs are checked when a subscription is made and before every request: http or https, and
every address the host resolves to must be public (no loopback, private, link-local — the
cloud metadata address among them —, multicast or reserved address) unless it is in
EVENTKEEP_WEBHOOK_ALLOW (addresses or networks, comma-separated).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventkeep.api.keys import ApiKeyStore
from eventkeep.deployment_secret import derive
from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.log_follower import GlobalLog, LogFollower

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(ValueError):
    """A webhook URL the allow-list does not admit (its message says why)."""


def allow_list(setting: str) -> tuple[Network, ...]:
    """EVENTKEEP_WEBHOOK_ALLOW: addresses or networks, comma-separated."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in setting.split(",")
        if part.strip()
    )


def check_url(url: str, allowed: Iterable[Network]) -> None:
    """Refuses a URL that is not http(s) or whose host resolves to any address that is not
    public, unless that address is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("the URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UrlRefused("the URL must not hold credentials")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UrlRefused(f"the host {parts.hostname} does not resolve") from None
    allowed = tuple(allowed)
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if any(address in network for network in allowed):
            continue
        if not address.is_global or address.is_multicast:
            raise UrlRefused(
                f"the host resolves to {address}, which is not a public address"
                " (EVENTKEEP_WEBHOOK_ALLOW admits such addresses)"
            )


# --- signing -----------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- the subscriptions -------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    id: str
    url: str
    event_types: tuple[str, ...]
    stream_id: str | None
    status: str  # active | paused
    position: int
    created_at: str

    def wants(self, event: Any) -> bool:
        if self.stream_id is not None and str(event.originator_id) != self.stream_id:
            return False
        return "*" in self.event_types or event.event_type in self.event_types

    def shown(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "event_types": list(self.event_types),
            "stream_id": self.stream_id,
            "status": self.status,
            "position": self.position,
            "created_at": self.created_at,
        }


_COLUMNS = "id, url, event_types, stream_id, status, position, created_at"


def _webhook(row: tuple[Any, ...]) -> Webhook:
    hook_id, url, types, stream_id, status, position, created_at = row[:7]
    return Webhook(
        hook_id, url, tuple(orjson.loads(types)), stream_id, status, int(position), created_at
    )


class WebhookStore:
    """The subscriptions and their deliveries, in the key store's database."""

    def __init__(self, keys: ApiKeyStore, secret: bytes) -> None:
        self._keys = keys
        self._sealing = AESGCM(derive(secret, b"eventkeep webhook secrets v1"))

    def create(
        self, url: str, event_types: list[str], stream_id: str | None, position: int
    ) -> tuple[Webhook, str]:
        hook_id, secret = secrets.token_hex(8), new_secret()
        nonce = secrets.token_bytes(12)
        sealed = base64.b64encode(nonce + self._sealing.encrypt(nonce, secret.encode(), None))
        created = datetime.now(UTC).isoformat()
        self._keys.execute(
            [
                (
                    "INSERT INTO webhooks (id, url, event_types, stream_id, status, position,"
                    " created_at, secret_sealed) VALUES (%s, %s, %s, %s, 'active', %s, %s, %s)",
                    (
                        hook_id,
                        url,
                        orjson.dumps(event_types).decode(),
                        stream_id,
                        position,
                        created,
                        sealed.decode(),
                    ),
                )
            ]
        )
        hook = Webhook(hook_id, url, tuple(event_types), stream_id, "active", position, created)
        return hook, secret

    def secret_of(self, hook_id: str) -> str | None:
        rows = self._keys.execute(
            [("SELECT secret_sealed FROM webhooks WHERE id = %s", (hook_id,))]
        )
        if not rows:
            return None
        raw = base64.b64decode(rows[0][0])
        return self._sealing.decrypt(raw[:12], raw[12:], None).decode()

    def list(self) -> list[Webhook]:
        rows = self._keys.execute(
            [(f"SELECT {_COLUMNS} FROM webhooks ORDER BY created_at, id", ())]
        )
        return [_webhook(row) for row in rows]

    def get(self, hook_id: str) -> Webhook | None:
        rows = self._keys.execute([(f"SELECT {_COLUMNS} FROM webhooks WHERE id = %s", (hook_id,))])
        return _webhook(rows[0]) if rows else None

    def delete(self, hook_id: str) -> bool:
        rows = self._keys.execute(
            [
                ("DELETE FROM webhook_deliveries WHERE webhook_id = %s", (hook_id,)),
                ("DELETE FROM webhooks WHERE id = %s RETURNING id", (hook_id,)),
            ]
        )
        return bool(rows)

    def advance(self, hook_id: str, position: int) -> None:
        self._keys.execute(
            [
                (
                    "UPDATE webhooks SET position = %s WHERE id = %s AND position < %s",
                    (position, hook_id, position),
                )
            ]
        )

    def record(
        self, hook: Webhook, event: Any, status: str, attempts: int, error: str | None
    ) -> None:
        message_id = message_id_of(hook, event)
        now = datetime.now(UTC).isoformat()
        statements: builtins.list[tuple[str, tuple[Any, ...]]] = [
            ("DELETE FROM webhook_deliveries WHERE id = %s", (message_id,)),
            (
                "INSERT INTO webhook_deliveries (id, webhook_id, position, event_type, stream_id,"
                " status, attempts, last_error, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    message_id,
                    hook.id,
                    event.id,
                    event.event_type,
                    str(event.originator_id),
                    status,
                    attempts,
                    error,
                    now,
                ),
            ),
        ]
        if status == "dead":
            statements.append(("UPDATE webhooks SET status = 'paused' WHERE id = %s", (hook.id,)))
        self._keys.execute(statements)

    def deliveries(self, hook_id: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        rows = self._keys.execute(
            [
                (
                    "SELECT id, position, event_type, stream_id, status, attempts, last_error,"
                    " updated_at FROM webhook_deliveries WHERE webhook_id = %s"
                    " ORDER BY position DESC LIMIT %s",
                    (hook_id, limit),
                )
            ]
        )
        keys = ("id", "position", "event_type", "stream_id", "status", "attempts", "last_error")
        return [dict(zip((*keys, "updated_at"), row, strict=True)) for row in rows]

    def prune(self, retention: float) -> int:
        """Drops the deliveries that succeeded more than `retention` seconds ago (dead and
        redelivering ones stay for the operator); returns how many."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=retention)).isoformat()
        rows = self._keys.execute(
            [
                (
                    "DELETE FROM webhook_deliveries WHERE status = 'delivered'"
                    " AND updated_at < %s RETURNING id",
                    (cutoff,),
                )
            ]
        )
        return len(rows)

    def resume(self, hook_id: str) -> bool:
        """Redelivery: the paused subscription delivers again from its checkpoint (the dead
        event first)."""
        rows = self._keys.execute(
            [
                (
                    "UPDATE webhook_deliveries SET status = 'redelivering'"
                    " WHERE webhook_id = %s AND status = 'dead'",
                    (hook_id,),
                ),
                ("UPDATE webhooks SET status = 'active' WHERE id = %s RETURNING id", (hook_id,)),
            ]
        )
        return bool(rows)


def message_id_of(hook: Webhook, event: Any) -> str:
    return f"msg_{hook.id}_{event.id}"


# --- the dispatcher ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout: float = 5.0  # seconds per request
    attempts: int = 5  # failures in a row that pause a subscription
    backoff: float = 1.0  # seconds before the first retry; doubled each time, with jitter
    allowed: tuple[Network, ...] = ()
    delivered_retention: float = 7 * 24 * 3600  # seconds a delivered delivery's row is kept
    prune_interval: float = 3600.0  # seconds between two prunings (by the leader)


class WebhookDispatcher:
    """Delivers every active subscription's events from its own threads (see the module)."""

    def __init__(
        self,
        store: WebhookStore,
        global_log: GlobalLog,
        policy: DeliveryPolicy,
        *,
        leader: Callable[[], bool] | None = None,
        poll_interval: float = 0.2,
        chores: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._store = store
        self._log = global_log
        self.policy = policy
        self._leader = leader
        self._poll = poll_interval
        self._stopping = threading.Event()
        self._workers: dict[str, threading.Thread] = {}
        self._leading = leader is None
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._client = httpx.Client(timeout=policy.timeout, follow_redirects=False)
        # Pruning, by the leader only (one process at a time): the delivered deliveries, and
        # what else serve keeps that grows (`chores`: the login failures).
        self._chores = [lambda: store.prune(policy.delivered_retention), *chores]
        self._pruned_at = -float("inf")

    def start(self) -> WebhookDispatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        for worker in list(self._workers.values()):
            worker.join(self.policy.timeout + 5)
        self._client.close()
        close = getattr(self._leader, "close", None)
        if close is not None:
            close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # the store is down: try again shortly
                self._leading = self._leader() if self._leader is not None else True
                if self._leading:
                    self._prune_when_due()
                    for hook in self._store.list():
                        worker = self._workers.get(hook.id)
                        if hook.status == "active" and (worker is None or not worker.is_alive()):
                            self._workers[hook.id] = worker = threading.Thread(
                                target=self._deliver_all,
                                args=(hook.id,),
                                name=f"webhook-{hook.id}",
                                daemon=True,
                            )
                            worker.start()
            self._stopping.wait(self._poll)

    def _prune_when_due(self) -> None:
        if time.monotonic() - self._pruned_at < self.policy.prune_interval:
            return
        self._pruned_at = time.monotonic()
        for chore in self._chores:
            try:
                chore()
            except Exception:  # the store out of reach: the next interval
                log.warning("pruning failed; trying again in %.0fs", self.policy.prune_interval)

    def _deliver_all(self, hook_id: str) -> None:
        """Follows the log after the subscription's checkpoint until it pauses or goes."""
        hook = self._store.get(hook_id)
        if hook is None:
            return
        follower = LogFollower(
            self._log,
            hook.position,
            batch_size=100,
            poll_interval=self._poll,
            stopping=self._stopping,
        )
        for batch in follower.batches():
            hook = self._store.get(hook_id)
            if hook is None or hook.status != "active" or not self._leading:
                return
            for event in batch:
                if hook.wants(event) and not self._deliver(hook, event):
                    return  # paused: the event waits in the dead-letter list
                self._store.advance(hook.id, event.id)
            follower.advance_to(batch[-1].id)

    def _deliver(self, hook: Webhook, event: Any) -> bool:
        secret = self._store.secret_of(hook.id)
        if secret is None:
            return False
        envelope = upcast(to_envelope(event))
        body = orjson.dumps(
            {"type": event.event_type, "timestamp": envelope["recorded_at"], "data": envelope}
        )
        message_id = message_id_of(hook, event)
        error = None
        for attempt in range(1, self.policy.attempts + 1):
            if self._stopping.is_set():
                return False
            error = self._attempt(hook, message_id, body, secret)
            if error is None:
                self._store.record(hook, event, "delivered", attempt, None)
                return True
            log.info("webhook %s: %s failed (%s), attempt %d", hook.id, message_id, error, attempt)
            if attempt < self.policy.attempts:
                delay = self.policy.backoff * 2 ** (attempt - 1)
                self._stopping.wait(delay + random.uniform(0, delay / 2))
        self._store.record(hook, event, "dead", self.policy.attempts, error)
        log.warning(
            "webhook %s paused: %s failed %d times", hook.id, message_id, self.policy.attempts
        )
        return False

    def _attempt(self, hook: Webhook, message_id: str, body: bytes, secret: str) -> str | None:
        """None when the receiver took it, else why not."""
        try:
            check_url(hook.url, self.policy.allowed)
        except UrlRefused as refused:
            return f"refused URL: {refused}"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
        }
        try:
            answer = self._client.post(
                hook.url, content=body, headers=headers, timeout=self.policy.timeout
            )
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as failure:
            return f"{type(failure).__name__}"
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code}"


class AdvisoryLeader:
    """True while this process holds the PostgreSQL advisory lock of webhook delivery, on a
    connection of its own (a process whose connection dies loses it; another takes over).
    A process that does not hold it asks again on the same connection: opening one for each
    ask (every poll, 5 a second) cost each such API worker a PostgreSQL connection and its
    authentication 5 times a second, a few % of a core, beside every request it served."""

    LOCK = 0x65_6B_77_68  # "ekwh"

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: Any = None
        self._held = False

    def __call__(self) -> bool:
        import psycopg

        try:
            if self._connection is None or self._connection.closed:
                self._held = False
                self._connection = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            if self._held:
                self._connection.execute("SELECT 1")  # the lock lives as long as the session
                return True
            held = self._connection.execute(
                "SELECT pg_try_advisory_lock(%s)", (self.LOCK,)
            ).fetchone()
            self._held = bool(held and held[0])
            return self._held
        except Exception:
            self.close()
            return False

    def close(self) -> None:
        self._held = False
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
