"""What the HTTP app runs on (`Wiring`), assembled from the composition root
(`eventkeep.bootstrap.build`) plus the HTTP layer's own part, the rate limiter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from eventsourcing.application import Application

from eventkeep.api.accounts import Accounts
from eventkeep.api.keys import ApiKeyStore
from eventkeep.api.ratelimit import RateLimiter, Unlimited, build_limiter
from eventkeep.api.webhooks import (
    AdvisoryLeader,
    DeliveryPolicy,
    WebhookDispatcher,
    WebhookStore,
    allow_list,
)
from eventkeep.bootstrap import Eventkeep, build, checkpoint_file, claim_secret, database_url
from eventkeep.commands.handlers import Handle
from eventkeep.commands.messages import Command, CommandContext, CommandResult
from eventkeep.eventstore.checkpoints import CheckpointFile
from eventkeep.eventstore.circuit import CircuitBreaker
from eventkeep.projections.log_feed import LogFeed
from eventkeep.projections.queries import PolledProgress, Queries
from eventkeep.projections.replica import ReplicaReads
from eventkeep.settings import Settings

# Logins per second (and burst) per address and per account, shared through Redis when set.
LOGIN_RATE, LOGIN_BURST = 0.5, 10

__all__ = ["CommandHandle", "Handle", "Wiring", "wire"]

AsyncHandle = Callable[[Command, CommandContext], Awaitable[CommandResult]]


@dataclass(frozen=True)
class CommandHandle:
    """The command bus's entry, blocking and awaitable (the same rules and breaker). The API
    awaits `awaitable`, so a request waiting for its commit holds no thread; a plain `Handle`
    (a test's stand-in) is run in a worker thread instead."""

    blocking: Handle
    awaitable: AsyncHandle

    def __call__(self, command: Command, context: CommandContext) -> CommandResult:
        return self.blocking(command, context)


@dataclass
class Wiring:
    """What the HTTP app runs on. Tests build one around stand-ins; `wire` builds the real one."""

    shop: Application
    handle: Handle
    keys: ApiKeyStore
    queries: Queries
    limiter: RateLimiter = field(default_factory=Unlimited)
    feed: LogFeed | None = None  # the embedded mode's in-process projector
    min_position_wait: float = 2.0  # seconds a query waits for its X-Min-Position
    poller: PolledProgress | None = None  # the distributed mode's read-model progress
    replica: ReplicaReads | None = None  # queries from a read replica, when one is set
    max_in_flight: int = 0  # requests answered at once; more are refused with 503 (0: any)
    max_streams_per_key: int = 8  # open WS /v1/stream per key in a process; more: 4429
    breaker: CircuitBreaker | None = None  # the distributed mode's, around the write store
    cache_ping: Callable[[], object] | None = None  # Redis, when the cache is there
    accounts: Accounts | None = None  # customers' logins (api/accounts.py)
    webhooks: WebhookStore | None = None  # subscriptions (api/webhooks.py)
    webhook_policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    dispatcher: WebhookDispatcher | None = None  # delivers them, in threads of its own
    built: Eventkeep | None = None  # what `wire` built, closed with the wiring
    # The hash chain's signed checkpoints, which `POST /v1/audit/verify` compares the log with.
    checkpoints: CheckpointFile | None = None

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.breaker is not None:
            self.breaker.close()
        if self.built is not None:
            self.built.close()
            return
        if self.feed is not None:
            self.feed.stop()
        if self.poller is not None:
            self.poller.stop()
        self.queries.models.close()
        self.keys.close()
        self.shop.close()


def wire(settings: Settings) -> Wiring:
    """The HTTP app's wiring, built by the composition root for `serve`."""
    system = build(settings, role="serve")
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    webhooks = WebhookStore(system.keys, claim_secret(settings))
    policy = DeliveryPolicy(
        timeout=settings.webhook_timeout,
        attempts=settings.webhook_attempts,
        backoff=settings.webhook_backoff,
        allowed=allow_list(settings.webhook_allow),
        delivered_retention=settings.webhook_delivery_retention,
        prune_interval=settings.prune_interval,
    )
    # Every serve runs a dispatcher; in the distributed mode only the advisory lock's holder
    # delivers.
    writer = database_url(settings, "writer")
    leader = AdvisoryLeader(writer) if writer is not None else None
    accounts = Accounts(
        system.keys,
        claim_secret(settings),
        build_limiter(LOGIN_RATE, LOGIN_BURST, redis_url),
        cache_seconds=settings.key_cache_seconds,
    )
    # The dispatcher's leader also prunes the login failures (one process at a time).
    retention = settings.login_failure_retention
    dispatcher = WebhookDispatcher(
        webhooks,
        system.recorder,
        policy,
        leader=leader,
        chores=[lambda: accounts.prune_failures(retention)],
    ).start()
    breaker = system.store_breaker()
    if system.feed is not None:  # embedded: this process is everything, checkpoints too
        system.start_checkpoints()
    return Wiring(
        shop=system.shop,
        handle=CommandHandle(system.bus.handle, system.bus.handle_async)
        if breaker is None
        else CommandHandle(
            breaker.guard(system.bus.handle), breaker.guard_async(system.bus.handle_async)
        ),
        keys=system.keys,
        queries=system.queries,
        limiter=build_limiter(settings.rate_limit, settings.rate_burst, redis_url),
        feed=system.feed,
        min_position_wait=settings.min_position_wait,
        poller=system.progress,
        replica=system.replica,
        built=system,
        checkpoints=checkpoint_file(settings),
        webhooks=webhooks,
        webhook_policy=policy,
        dispatcher=dispatcher,
        accounts=accounts,
        max_in_flight=settings.max_in_flight,
        max_streams_per_key=settings.max_streams_per_key,
        breaker=breaker,
        cache_ping=system.cache_ping(),
    )
