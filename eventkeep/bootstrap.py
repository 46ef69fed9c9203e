"""The composition root: the one place that builds eventkeep from its `Settings`.

`build(settings, role=…)` answers an `Eventkeep` whose parts — the shop application and its
write port, the command bus, the API key store, the read models, the cache, the embedded feed,
the query side, the relay and the projector — are each built on first use, for the mode the
settings select, and closed together by `close()`. Every entry point (the HTTP app, each
command of the command line, the benchmarks) gets its parts here; nothing else wires them.

Only entry points import this module (it sits at the top of the dependency graph, beside
`eventkeep.api`): `domain/`, `commands/`, `eventstore/` and `projections/` never do.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from eventkeep.commands.handlers import CommandBus
from eventkeep.commands.ports import WriteStore
from eventkeep.commands.shop import Shop
from eventkeep.deployment_secret import derive, email_claim_key
from eventkeep.domain.catalog import ERASING_EVENT, KEY_OWNERS, KEYED_STREAMS, PERSONAL_FIELDS
from eventkeep.eventstore.feed_mac import FEED_LABEL
from eventkeep.eventstore.hashchain import chain_key
from eventkeep.eventstore.pii import PII_SECRET, PersonalData, PersonalFields
from eventkeep.eventstore.recorder import EventRecorder, RecorderFactory
from eventkeep.eventstore.write_store import ApplicationWriteStore
from eventkeep.projections.cache import Cache, LocalCache, NoCache
from eventkeep.projections.queries import PolledProgress, Queries
from eventkeep.projections.readmodels import ReadModels
from eventkeep.settings import Settings

if TYPE_CHECKING:  # built on demand: `eventkeep keys …` need not load Kafka, nor serve the relay
    from eventkeep.api.keys import ApiKeyStore
    from eventkeep.eventstore.checkpoints import CheckpointFile
    from eventkeep.eventstore.circuit import CircuitBreaker
    from eventkeep.eventstore.kafka_tls import KafkaTLS
    from eventkeep.eventstore.relay import Relay, RelaySettings
    from eventkeep.projections.kafka_feed import KafkaProjector
    from eventkeep.projections.log_feed import LogFeed
    from eventkeep.projections.replica import ReplicaReads
    from eventkeep.replay.checkpointer import PeriodicCheckpoints

# What a process is built for: `relay` and `project` need the distributed mode and Kafka.
Role = Literal[
    "serve", "relay", "project", "replay", "audit", "import", "seed", "keys", "bench", "test"
]
DISTRIBUTED_ROLES: frozenset[Role] = frozenset({"relay", "project"})
# Whose event-store pool checks a connection only when it was not checked in the last second
# (eventstore/pools.py `check_unless_recent`): the loops, which retry a failed statement, and
# the API, whose reads of the store run once more on another connection when the one lent
# was dead (`PostgresDialect`); a ping at every checkout was a round trip per command.
UNLESS_RECENT_ROLES: frozenset[Role] = DISTRIBUTED_ROLES | {"serve"}

# The PostgreSQL role each part connects as (eventstore/roles.py), by what the process is built
# for; each falls back to EVENTKEEP_POSTGRES_URL when its own URL is not set.
DatabaseRole = Literal["writer", "relay", "projector", "query", "auditor"]
DATABASE_ROLES: tuple[DatabaseRole, ...] = ("writer", "relay", "projector", "query", "auditor")
EVENT_STORE_ROLE: dict[Role, DatabaseRole] = {
    "relay": "relay",
    "project": "projector",
    "audit": "auditor",  # reads only; `audit import` writes, as "import" (the writer)
}  # any other process: the writer
READ_MODELS_ROLE: dict[Role, DatabaseRole] = {
    "serve": "query",
    "project": "projector",
    "replay": "projector",
}  # any other process: EVENTKEEP_POSTGRES_URL


class SettingsProblem(Exception):
    """The settings cannot run this role (one line, for the command line to print)."""


def build(settings: Settings, *, role: Role) -> Eventkeep:
    """eventkeep for `role`, from `settings`; nothing connects before a part is used."""
    if role in DISTRIBUTED_ROLES and (
        settings.mode == "embedded" or settings.kafka_bootstrap is None
    ):
        raise SettingsProblem(
            f"`eventkeep {role}` belongs to the distributed mode: set EVENTKEEP_POSTGRES_URL "
            "and EVENTKEEP_KAFKA_BOOTSTRAP (in the embedded mode `eventkeep serve` projects "
            "in-process)"
        )
    if settings.postgres_owner_url is not None and role_urls(settings):
        provision_roles(settings)
    return Eventkeep(settings, role)


class Eventkeep:
    """eventkeep's parts, each built on first use; `close()` closes those that were."""

    def __init__(self, settings: Settings, role: Role) -> None:
        self.settings = settings
        self.role = role

    # --- the write side -------------------------------------------------------------------

    @cached_property
    def shop(self) -> Shop:
        url = database_url(self.settings, EVENT_STORE_ROLE.get(self.role, "writer"))
        env = shop_env(self.settings, postgres_url=url)
        if self.role in UNLESS_RECENT_ROLES:  # no ping at every checkout (see the set)
            env["POOL_CHECKS"] = "unless_recent"
        if url is not None and _user(url) != _user(owner_url(self.settings)):
            # A least-privilege role creates no tables (`eventkeep db roles` made them).
            env["CREATE_TABLE"] = "n"
        return Shop(env=env)

    @property
    def recorder(self) -> EventRecorder:
        """The shop's recorder, typed as eventkeep's stores are (the library types it by its
        base class)."""
        return event_recorder(self.shop)

    @cached_property
    def store(self) -> WriteStore:
        """The write port the command bus uses, over the shop and its recorder."""
        return ApplicationWriteStore(self.shop)

    @cached_property
    def bus(self) -> CommandBus:
        # The claims' HMAC key is derived from the secret, never the secret itself.
        return CommandBus(self.store, claim_secret=email_claim_key(claim_secret(self.settings)))

    @cached_property
    def keys(self) -> ApiKeyStore:
        return build_key_store(self.settings, postgres_url=database_url(self.settings, "writer"))

    # --- the read side --------------------------------------------------------------------

    @cached_property
    def read_models(self) -> ReadModels:
        role = READ_MODELS_ROLE.get(self.role)
        url = database_url(self.settings, role) if role is not None else None
        return build_read_models(
            self.settings, postgres_url=url, long_running=self.role in DISTRIBUTED_ROLES
        )

    @cached_property
    def cache(self) -> Cache:
        if self.settings.mode == "embedded":
            return LocalCache()
        cache = build_cache(self.settings)
        from eventkeep.projections.redis_cache import RedisCache

        if self.role == "serve" and isinstance(cache, RedisCache):
            # An API process keeps Redis's answers near, coherent by Redis's invalidations.
            from eventkeep.projections.near_cache import NearCache

            assert self.settings.redis_url is not None  # a RedisCache has one
            url = self.settings.redis_url.get_secret_value()
            return NearCache(cache, url, timeout=self.settings.redis_timeout)
        return cache

    @cached_property
    def feed(self) -> LogFeed | None:
        """The embedded mode's in-process projector, started; None in the distributed mode
        (there the `project` processes apply the events)."""
        if self.settings.mode != "embedded":
            return None
        from eventkeep.projections.log_feed import LogFeed

        feed = LogFeed(self.recorder, self.read_models, self.cache)
        feed.start()
        return feed

    @cached_property
    def progress(self) -> PolledProgress | None:
        """The distributed mode's read-model progress, polled; None in the embedded mode."""
        if self.settings.mode == "embedded":
            return None
        return PolledProgress(self.read_models, fence=self._fence())

    def _fence(self) -> Callable[[], object] | None:
        """What a poller calls before it publishes progress: the near cache's fence, if any."""
        from eventkeep.projections.near_cache import NearCache

        return self.cache.fence if isinstance(self.cache, NearCache) else None

    @cached_property
    def queries(self) -> Queries:
        progress = self.feed if self.feed is not None else self.progress
        assert progress is not None  # one of the two, by mode
        return Queries(self.read_models, self.cache, progress)

    @cached_property
    def replica(self) -> ReplicaReads | None:
        """The query side over the read replica (EVENTKEEP_POSTGRES_REPLICA_URL), each query
        falling back to `queries` (the primary's); None without a replica."""
        url = replica_url(self.settings)
        if url is None:
            return None
        from eventkeep.projections.database import PostgresDatabase
        from eventkeep.projections.replica import FallbackDatabase, ReplicaHealth, ReplicaReads

        primary = self.queries
        # A standby is read-only: no migration; its tables and progress arrive by replication.
        # A short pool timeout: a replica gone sends its queries to the primary within a second.
        standby = PostgresDatabase(url, timeout=1.0)
        health = ReplicaHealth(PolledProgress(ReadModels(standby), fence=self._fence()))
        database = FallbackDatabase(standby, primary.models.db, health)
        replica = Queries(ReadModels(database), primary.cache, health.progress)
        return ReplicaReads(primary, replica, health, wait=self.settings.replica_wait)

    # --- the distributed mode's processes -------------------------------------------------

    def relay(self) -> Relay:
        return build_relay(self.settings, self.shop)

    def projector(self) -> KafkaProjector:
        from eventkeep.projections.log_feed import fill_from

        # Gaps are filled, and a feed Kafka can no longer give is caught up, from the store.
        self.read_models.fill = fill_from(self.recorder)
        return build_projector(self.settings, self.read_models, store=self.recorder)

    def start_checkpoints(
        self, active: Callable[[], bool] = lambda: True
    ) -> PeriodicCheckpoints | None:
        """Signs checkpoints of the chain periodically in a thread of this process (the
        relay's leader, `active`; the embedded serve), stopped by `close()`; None when
        EVENTKEEP_CHECKPOINT_INTERVAL is 0."""
        if self.settings.checkpoint_interval <= 0:
            return None
        from eventkeep.replay.checkpointer import PeriodicCheckpoints

        worker = PeriodicCheckpoints(
            self.recorder,
            checkpoint_file(self.settings),
            interval=self.settings.checkpoint_interval,
            events=self.settings.checkpoint_events,
            active=active,
        )
        self.__dict__["checkpoints"] = worker.start()
        return worker

    def check(self) -> None:
        """Reaches the event store and the key store now, so that one out of reach is found
        before a process starts (the error names it; see `eventkeep.api.cli.cannot_run`)."""
        self.recorder.max_notification_id()
        self.keys.list()

    def store_breaker(self) -> CircuitBreaker | None:
        """The distributed mode's circuit breaker around the write store (None embedded): its
        probe opens a fresh connection with a one-second timeout, never waits for the pool."""
        if self.settings.postgres_url is None:
            return None
        from eventkeep.eventstore.circuit import CircuitBreaker

        url = cast(str, _merged(self.settings, None))

        def probe() -> None:
            with psycopg.connect(url, connect_timeout=1, autocommit=True) as connection:
                connection.execute("SELECT 1")

        return CircuitBreaker(probe, retry_seconds=self.settings.store_retry_seconds)

    def cache_ping(self) -> Callable[[], object] | None:
        """Asks Redis for a PONG (readiness); None when the mode has no Redis."""
        if self.settings.mode == "embedded" or self.settings.redis_url is None:
            return None
        import redis

        client = redis.Redis.from_url(
            self.settings.redis_url.get_secret_value(), socket_timeout=1, socket_connect_timeout=1
        )
        return client.ping

    # --- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the parts that were built, the readers before what they read."""
        built = self.__dict__
        if built.get("replica") is not None:
            built["replica"].health.progress.stop()
            built["replica"].replica.models.close()
        if built.get("checkpoints") is not None:
            built["checkpoints"].stop()
        if built.get("feed") is not None:
            built["feed"].stop()
        if built.get("progress") is not None:
            built["progress"].stop()
        if hasattr(built.get("cache"), "close"):
            built["cache"].close()  # the near cache's tracking thread
        if hasattr(built.get("store"), "close"):
            built["store"].close()  # the write path's loading threads
        for name in ("read_models", "keys", "shop"):
            if name in built:
                built[name].close()

    def __enter__(self) -> Eventkeep:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- the parts, one function each -----------------------------------------------------------


def claim_secret(settings: Settings) -> bytes:
    assert settings.claim_secret is not None  # Settings fills or demands it
    return settings.claim_secret.get_secret_value().encode()


def chain_secret(settings: Settings) -> bytes:
    """The hash chain's HMAC key: EVENTKEEP_CHAIN_KEY, else HOME/chain-key, made at first use
    from the deployment secret (HKDF with the chain's label) so that it outlives a rotation
    of that secret (the log's hashes cannot be recomputed)."""
    if settings.chain_key is not None:
        return chain_key(settings.chain_key.get_secret_value().encode())
    path = settings.home / "chain-key"
    if not path.exists():
        from eventkeep.private_files import write_private

        write_private(path, chain_key(claim_secret(settings)).hex())
    return bytes.fromhex(path.read_text().strip())


def checkpoint_file(settings: Settings) -> CheckpointFile:
    """The hash chain's signed checkpoints (`eventstore.checkpoints`), signed with a key
    derived from the chain key (which, unlike the deployment secret, is never rotated)."""
    from eventkeep.eventstore.checkpoints import CheckpointFile

    path = settings.checkpoint_file or settings.home / "chain-checkpoints.jsonl"
    return CheckpointFile(path, chain_secret(settings))


def database_url(settings: Settings, role: DatabaseRole) -> str | None:
    """The URL a part connects with as `role`: its own when set, else EVENTKEEP_POSTGRES_URL
    (None in the embedded mode)."""
    return _merged(settings, getattr(settings, f"postgres_{role}_url"))


def replica_url(settings: Settings) -> str | None:
    """The read replica's URL: EVENTKEEP_POSTGRES_REPLICA_URL put over the query role's URL
    (so one without credentials reads as the query role); None without a replica."""
    if settings.postgres_replica_url is None:
        return None
    query = database_url(settings, "query")
    assert query is not None  # Settings refuses a replica without EVENTKEEP_POSTGRES_URL
    params = conninfo_to_dict(query)
    params.update(conninfo_to_dict(settings.postgres_replica_url.get_secret_value()))
    return make_conninfo(**{key: str(value) for key, value in params.items() if value is not None})


def owner_url(settings: Settings) -> str | None:
    """The schema owner's URL: EVENTKEEP_POSTGRES_OWNER_URL, else EVENTKEEP_POSTGRES_URL."""
    return _merged(settings, settings.postgres_owner_url)


def role_urls(settings: Settings) -> dict[DatabaseRole, str]:
    """The roles whose own URL is set (distributed mode), each merged as `database_url`."""
    urls = {role: database_url(settings, role) for role in DATABASE_ROLES}
    return {
        role: url
        for role, url in urls.items()
        if url is not None and getattr(settings, f"postgres_{role}_url") is not None
    }


def _merged(settings: Settings, role_url: SecretStr | None) -> str | None:
    """EVENTKEEP_POSTGRES_URL with the parameters a role's URL gives put over it: a role URL
    with only a user and password (`postgresql://user:password@`) keeps the server, the
    database and the TLS settings of EVENTKEEP_POSTGRES_URL (and follows it when it moves)."""
    if settings.postgres_url is None:
        return None
    params = conninfo_to_dict(settings.postgres_url.get_secret_value())
    if role_url is not None:
        params.update(conninfo_to_dict(role_url.get_secret_value()))
    return make_conninfo(**bounded_connection(settings, params))


def bounded_connection(settings: Settings, params: dict[str, Any]) -> dict[str, str]:
    """Connection parameters with bounded waits (those the URL does not set itself): connect
    timeout, TCP keepalives and TCP_USER_TIMEOUT on the client's socket, and the same asked of
    the server for its end (a frozen client's session, and its advisory locks, end too)."""
    keepalive = settings.postgres_keepalive_seconds
    interval = max(1, keepalive // 3)
    user_timeout = int(settings.postgres_tcp_user_timeout * 1000)
    bounded: dict[str, Any] = {
        "connect_timeout": settings.postgres_connect_timeout,
        "keepalives": 1,
        "keepalives_idle": keepalive,
        "keepalives_interval": interval,
        "keepalives_count": 3,
        "tcp_user_timeout": user_timeout,
    }
    server = (
        f"-c tcp_keepalives_idle={keepalive} -c tcp_keepalives_interval={interval}"
        f" -c tcp_keepalives_count=3 -c tcp_user_timeout={user_timeout}"
        f" -c client_connection_check_interval={min(user_timeout, keepalive * 1000)}"
    )
    merged = bounded | params
    merged["options"] = f"{server} {params['options']}" if params.get("options") else server
    return {key: str(value) for key, value in merged.items()}


def _user(url: str | None) -> str | None:
    return str(conninfo_to_dict(url).get("user")) if url is not None else None


def provision_roles(settings: Settings) -> list[str]:
    """As the owner: migrates the event store and the key store, creates the roles whose URL
    is set and grants them their privileges (`eventkeep db roles`; see eventstore/roles.py);
    with a projector URL, also creates the read models as the projector (their owner)."""
    from eventkeep.api.keys import KEY_STORE_SCHEMA
    from eventkeep.eventstore.roles import logins_from, provision, tables_of

    owner = owner_url(settings)
    assert owner is not None, "distributed mode"
    urls = role_urls(settings)
    # The shop opened as the owner creates every table it uses (the library's snapshots too).
    Shop(env=shop_env(settings, postgres_url=owner)).close()
    done = provision(
        owner,
        logins_from(urls),
        events_tables=(f"{Shop.name.lower()}_events",),
        migrate_first=(KEY_STORE_SCHEMA,),
        api_tables=tables_of(KEY_STORE_SCHEMA),
    )
    if "projector" in urls:  # readable by the query role: the projector's default privileges
        models = ReadModels.open(postgres_url=urls["projector"])
        try:
            models.migrate()
        finally:
            models.close()
    return done


def projector_read_models(settings: Settings) -> ReadModels:
    """The read models as a projector writes them: on its role's connection (the query side's,
    `Eventkeep.read_models` of `serve`, may only read them)."""
    return build_read_models(
        settings, postgres_url=database_url(settings, "projector"), long_running=True
    )


def build_read_models(
    settings: Settings, *, postgres_url: str | None = None, long_running: bool = False
) -> ReadModels:
    if settings.postgres_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        models = ReadModels.open(sqlite_path=settings.home / "readmodels.db")
    else:
        url = postgres_url or _merged(settings, None)
        models = ReadModels.open(postgres_url=url, long_running=long_running)
    models.migrate()
    return models


def build_cache(settings: Settings) -> Cache:
    """Redis when set; without it, no cache in the distributed mode (see NoCache)."""
    if settings.redis_url is None:
        return NoCache()
    from eventkeep.projections.redis_cache import RedisCache

    return RedisCache(settings.redis_url.get_secret_value(), timeout=settings.redis_timeout)


# Whose Kafka client certificate a client presents (its ACL principal): the relay's, a
# projector's, or the default one (EVENTKEEP_KAFKA_SSL_CERTFILE: tools, benchmarks, tests).
KafkaRole = Literal["relay", "projector"]


def relay_settings(settings: Settings, kafka_role: KafkaRole = "relay") -> RelaySettings:
    """The Kafka feed's settings, shared by the relay and the projectors; each presents its
    own role's certificate when the settings name one."""
    from eventkeep.eventstore.relay import RelaySettings

    assert settings.kafka_bootstrap is not None, "checked by build()"
    return RelaySettings(
        bootstrap=settings.kafka_bootstrap,
        topic_prefix=settings.topic_prefix,
        partitions=settings.topic_partitions,
        tls=kafka_tls(settings, kafka_role),
        request_timeout=settings.kafka_request_timeout,
        feed_key=derive(claim_secret(settings), FEED_LABEL),
    )


def kafka_tls(settings: Settings, kafka_role: KafkaRole | None = None) -> KafkaTLS:
    """The Kafka clients' TLS files from the settings (plaintext when no CA is named): the
    role's own certificate and key when both are set (a role's key is never encrypted: no
    password), else the default ones."""
    from eventkeep.eventstore.kafka_tls import KafkaTLS

    def path(value: Path | None) -> str | None:
        return str(value) if value is not None else None

    if kafka_role is not None:
        certfile = getattr(settings, f"kafka_{kafka_role}_ssl_certfile")
        keyfile = getattr(settings, f"kafka_{kafka_role}_ssl_keyfile")
        if certfile is not None and keyfile is not None:
            return KafkaTLS(
                cafile=path(settings.kafka_ssl_cafile),
                certfile=path(certfile),
                keyfile=path(keyfile),
            )
    password = settings.kafka_ssl_password
    return KafkaTLS(
        cafile=path(settings.kafka_ssl_cafile),
        certfile=path(settings.kafka_ssl_certfile),
        keyfile=path(settings.kafka_ssl_keyfile),
        password=password.get_secret_value() if password is not None else None,
    )


def event_recorder(shop: Shop) -> EventRecorder:
    recorder = shop.recorder
    assert isinstance(recorder, EventRecorder), "shop_env selects eventkeep's stores"
    return recorder


def build_relay(settings: Settings, shop: Shop) -> Relay:
    from eventkeep.eventstore.relay import Relay

    url = database_url(settings, "relay")
    assert url is not None, "checked by build()"
    return Relay(event_recorder(shop), url, relay_settings(settings))


def build_projector(
    settings: Settings,
    models: ReadModels,
    *,
    store: EventRecorder | None = None,
    personal: PersonalData | None = None,
) -> KafkaProjector:
    """A projector; it opens the messages' sealed fields with the store's data keys
    (`personal`, default the store's)."""
    from eventkeep.projections.kafka_feed import KafkaProjector

    return KafkaProjector(
        models,
        build_cache(settings),
        relay_settings(settings, "projector"),
        group=settings.projector_group,
        store=store,
        personal=personal or (store.personal_data if store is not None else None),
        refused_keep=settings.feed_refused_keep,
    )


def build_key_store(settings: Settings, *, postgres_url: str | None = None) -> ApiKeyStore:
    from eventkeep.api.keys import PostgresApiKeyStore, SqliteApiKeyStore

    if settings.postgres_url is None:
        return SqliteApiKeyStore(
            settings.home / "api_keys.db", cache_seconds=settings.key_cache_seconds
        )
    return PostgresApiKeyStore(
        postgres_url or cast(str, _merged(settings, None)),
        cache_seconds=settings.key_cache_seconds,
        pool_timeout=settings.pool_timeout,
    )


# What the library passes to its connections itself (the connect timeout is the pool's).
_LIBRARY_PARAMETERS = frozenset({"dbname", "host", "port", "user", "password", "connect_timeout"})


def shop_env(settings: Settings, *, postgres_url: str | None = None) -> dict[str, str]:
    """The eventsourcing library's environment: persistence module and its connection
    (`postgres_url`, default EVENTKEEP_POSTGRES_URL)."""
    env = {
        # Stored rows keep the catalog's envelope and are upcast on read.
        "MAPPER_TOPIC": "eventkeep.eventstore.mapper:EnvelopeMapper",
        # Wraps the per-user keys of personal data (eventstore.pii), and tells the store which
        # fields are personal and which event erases them.
        PII_SECRET: claim_secret(settings).decode(),
        # The hash chain's HMAC key (eventstore/hashchain.py), never stored in the database.
        RecorderFactory.CHAIN_KEY: chain_secret(settings).hex(),
        **PersonalFields(PERSONAL_FIELDS, ERASING_EVENT, KEY_OWNERS, KEYED_STREAMS).to_env(),
        # No library aggregate cache: the write path keeps its own, trusted without a query
        # (eventstore/write_store.py); other loads read the store.
        # Bounded waits of the group committer (eventstore/group_commit.py).
        RecorderFactory.COMMIT_RESULT_WAIT: str(settings.commit_wait_seconds),
        RecorderFactory.COMMIT_VERIFY_TIMEOUT: str(settings.commit_verify_seconds),
    }
    if settings.postgres_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        return env | {
            "PERSISTENCE_MODULE": "eventkeep.eventstore.sqlite",
            "SQLITE_DBNAME": str(settings.home / "events.db"),
        }
    url = conninfo_to_dict(postgres_url or cast(str, _merged(settings, None)))
    # The URL's other parameters (TLS: sslmode, sslrootcert, sslcert, sslkey…) reach every
    # connection of the store through the factory (eventstore/postgres.py).
    options = {k: str(v) for k, v in url.items() if k not in _LIBRARY_PARAMETERS}
    if options:
        env["POSTGRES_CONNINFO"] = make_conninfo(**options)
    return env | {
        "PERSISTENCE_MODULE": "eventkeep.eventstore.postgres",
        "POSTGRES_DBNAME": str(url.get("dbname", "")),
        "POSTGRES_HOST": str(url.get("host", "localhost")),
        "POSTGRES_PORT": str(url.get("port", "5432")),
        "POSTGRES_USER": str(url.get("user", "")),
        "POSTGRES_PASSWORD": str(url.get("password", "")),
        "POSTGRES_POOL_SIZE": str(settings.pool_size),
        "POSTGRES_CONNECT_TIMEOUT": str(settings.pool_timeout),
        # Pooled connections are checked before use (a dead one is dropped and replaced),
        # and the group committer's lock and statements are bounded.
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_LOCK_TIMEOUT": str(max(1, round(settings.postgres_statement_timeout))),
    }
