"""The one place that knows which infrastructure is in use: it wires the shop application,
the command bus and the API key store for the mode the settings select."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from eventsourcing.application import Application
from psycopg.conninfo import conninfo_to_dict

from api.ratelimit import RateLimiter, Unlimited, build_limiter
from api.settings import Settings
from commands.messages import Command, CommandContext, CommandResult
from eventstore.api_keys import ApiKeyStore, PostgresApiKeyStore, SqliteApiKeyStore
from eventstore.pii import PII_SECRET

Handle = Callable[[Command, CommandContext], CommandResult]


@dataclass
class Wiring:
    """What the HTTP app runs on. Tests build one around stand-ins; `wire` builds the real one."""

    shop: Application
    handle: Handle
    keys: ApiKeyStore
    limiter: RateLimiter = field(default_factory=Unlimited)

    def close(self) -> None:
        self.keys.close()
        self.shop.close()


def wire(settings: Settings) -> Wiring:
    # Imported here, not above, so that `eventkeep keys …` runs without loading the write side.
    from commands.handlers import CommandBus
    from commands.shop import Shop

    keys = build_key_store(settings)
    shop = Shop(env=shop_env(settings))
    assert settings.claim_secret is not None  # Settings fills or demands it
    bus = CommandBus(shop, claim_secret=settings.claim_secret.get_secret_value().encode())
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    limiter = build_limiter(settings.rate_limit, settings.rate_burst, redis_url)
    return Wiring(shop=shop, handle=bus.handle, keys=keys, limiter=limiter)


def shop_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing library's environment: persistence module and its connection."""
    assert settings.claim_secret is not None  # Settings fills or demands it
    env = {
        # Stored rows keep the catalog's envelope and are upcast on read.
        "MAPPER_TOPIC": "eventstore.mapper:EnvelopeMapper",
        # Wraps the per-user keys of personal data (eventstore.pii).
        PII_SECRET: settings.claim_secret.get_secret_value(),
    }
    if settings.postgres_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        return env | {
            "PERSISTENCE_MODULE": "eventstore.sqlite",
            "SQLITE_DBNAME": str(settings.home / "events.db"),
        }
    url = conninfo_to_dict(settings.postgres_url.get_secret_value())
    return env | {
        "PERSISTENCE_MODULE": "eventstore.postgres",
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
