"""The one place that knows which infrastructure is in use: it wires the shop application,
the command bus, the API key store and the query side for the mode the settings select, and
builds the relay and the projector processes of the distributed mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from eventsourcing.application import Application
from psycopg.conninfo import conninfo_to_dict

from eventkeep.api.ratelimit import RateLimiter, Unlimited, build_limiter
from eventkeep.api.settings import Settings
from eventkeep.commands.messages import Command, CommandContext, CommandResult
from eventkeep.eventstore.api_keys import ApiKeyStore, PostgresApiKeyStore, SqliteApiKeyStore
from eventkeep.eventstore.pii import PII_SECRET
from eventkeep.eventstore.relay import Relay, RelaySettings
from eventkeep.projections.cache import Cache, LocalCache, NoCache
from eventkeep.projections.kafka_feed import KafkaProjector
from eventkeep.projections.log_feed import LogFeed
from eventkeep.projections.queries import PolledProgress, Queries
from eventkeep.projections.readmodels import ReadModels

Handle = Callable[[Command, CommandContext], CommandResult]


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

    def close(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        if self.poller is not None:
            self.poller.stop()
        self.queries.models.close()
        self.keys.close()
        self.shop.close()


def wire(settings: Settings) -> Wiring:
    # Imported here, not above, so that `eventkeep keys …` runs without loading the write side.
    from eventkeep.commands.handlers import CommandBus
    from eventkeep.commands.shop import Shop

    keys = build_key_store(settings)
    shop = Shop(env=shop_env(settings))
    assert settings.claim_secret is not None  # Settings fills or demands it
    bus = CommandBus(shop, claim_secret=settings.claim_secret.get_secret_value().encode())
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    limiter = build_limiter(settings.rate_limit, settings.rate_burst, redis_url)
    models = build_read_models(settings)
    if settings.mode == "embedded":
        cache = LocalCache()
        feed = LogFeed(shop.recorder, models, cache)
        feed.start()
        queries = Queries(models, cache, feed)
        return Wiring(shop, bus.handle, keys, queries, limiter, feed, settings.min_position_wait)
    progress = PolledProgress(models)
    queries = Queries(models, build_cache(settings), progress)
    return Wiring(
        shop,
        bus.handle,
        keys,
        queries,
        limiter,
        min_position_wait=settings.min_position_wait,
        poller=progress,
    )


def build_read_models(settings: Settings) -> ReadModels:
    if settings.postgres_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        models = ReadModels.open(sqlite_path=settings.home / "readmodels.db")
    else:
        models = ReadModels.open(postgres_url=settings.postgres_url.get_secret_value())
    models.migrate()
    return models


def build_cache(settings: Settings) -> Cache:
    """Redis when set; without it, no cache in the distributed mode (see NoCache)."""
    if settings.redis_url is None:
        return NoCache()
    from eventkeep.projections.redis_cache import RedisCache

    return RedisCache(settings.redis_url.get_secret_value())


def relay_settings(settings: Settings) -> RelaySettings:
    assert settings.kafka_bootstrap is not None, "checked by the caller"
    return RelaySettings(
        bootstrap=settings.kafka_bootstrap,
        topic_prefix=settings.topic_prefix,
        partitions=settings.topic_partitions,
    )


def build_relay(settings: Settings, shop: Application) -> Relay:
    assert settings.postgres_url is not None, "checked by the caller"
    return Relay(shop.recorder, settings.postgres_url.get_secret_value(), relay_settings(settings))


def build_projector(settings: Settings, models: ReadModels) -> KafkaProjector:
    return KafkaProjector(
        models, build_cache(settings), relay_settings(settings), group=settings.projector_group
    )


def shop_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing library's environment: persistence module and its connection."""
    assert settings.claim_secret is not None  # Settings fills or demands it
    env = {
        # Stored rows keep the catalog's envelope and are upcast on read.
        "MAPPER_TOPIC": "eventkeep.eventstore.mapper:EnvelopeMapper",
        # Wraps the per-user keys of personal data (eventstore.pii).
        PII_SECRET: settings.claim_secret.get_secret_value(),
        # Recently used aggregates stay in memory and are fast-forwarded with the events
        # stored since (one query instead of snapshot + events); a stale copy cannot win, the
        # append's version check refuses it and the bus retries on a fresh load.
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
    }
    if settings.postgres_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        return env | {
            "PERSISTENCE_MODULE": "eventkeep.eventstore.sqlite",
            "SQLITE_DBNAME": str(settings.home / "events.db"),
        }
    url = conninfo_to_dict(settings.postgres_url.get_secret_value())
    return env | {
        "PERSISTENCE_MODULE": "eventkeep.eventstore.postgres",
        "POSTGRES_DBNAME": str(url.get("dbname", "")),
        "POSTGRES_HOST": str(url.get("host", "localhost")),
        "POSTGRES_PORT": str(url.get("port", "5432")),
        "POSTGRES_USER": str(url.get("user", "")),
        "POSTGRES_PASSWORD": str(url.get("password", "")),
        "POSTGRES_POOL_SIZE": str(settings.pool_size),
        "POSTGRES_CONNECT_TIMEOUT": str(settings.pool_timeout),
    }


def build_key_store(settings: Settings) -> ApiKeyStore:
    if settings.postgres_url is None:
        return SqliteApiKeyStore(
            settings.home / "api_keys.db", cache_seconds=settings.key_cache_seconds
        )
    return PostgresApiKeyStore(
        settings.postgres_url.get_secret_value(),
        cache_seconds=settings.key_cache_seconds,
        pool_timeout=settings.pool_timeout,
    )
