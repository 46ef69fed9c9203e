"""Settings read from the environment (prefix `EVENTKEEP_`); the only input that picks a mode.

Setting `EVENTKEEP_POSTGRES_URL` selects the distributed mode; without it everything lives in
files under `EVENTKEEP_HOME`. Secrets are `SecretStr` so that a settings object printed or
logged by accident shows `**********`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventkeep.deployment_secret import check as check_secret

Mode = Literal["embedded", "distributed"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTKEEP_", extra="ignore")

    home: Path = Field(
        default=Path(".eventkeep"), description="Folder of the embedded mode's files."
    )
    postgres_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:password@host:port/dbname); "
        "setting it selects the distributed mode.",
    )
    postgres_owner_url: SecretStr | None = Field(
        default=None,
        description="URL of the schema's owner role (not a superuser; CREATEROLE to create the "
        "others): `eventkeep db migrate` and `eventkeep db roles` use it. When set in a process "
        "whose part runs on a role URL below, that process first migrates and grants as the "
        "owner (convenient for development; in production run `db migrate` and `db roles` at "
        "deployment and give processes only their own role's URL). Default: POSTGRES_URL. "
        "This and the role URLs below are put over POSTGRES_URL: one with only a user and "
        "password (postgresql://user:password@) keeps its server, database and TLS settings.",
    )
    postgres_writer_url: SecretStr | None = Field(
        default=None,
        description="URL of the writer role (commands: the log's INSERTs and side tables, the "
        "API key store). Default: POSTGRES_URL.",
    )
    postgres_relay_url: SecretStr | None = Field(
        default=None,
        description="URL of the relay role (reads the log, writes its cursor). "
        "Default: POSTGRES_URL.",
    )
    postgres_projector_url: SecretStr | None = Field(
        default=None,
        description="URL of the projector role (owns and writes the read models, reads the "
        "log; `project` and `replay`). Default: POSTGRES_URL.",
    )
    postgres_query_url: SecretStr | None = Field(
        default=None,
        description="URL of the query role (the API's reads of the read models and of the API "
        "keys). Default: POSTGRES_URL.",
    )
    postgres_replica_url: SecretStr | None = Field(
        default=None,
        description="URL of a streaming replica of the read models' database (a hot standby "
        "made with pg_basebackup): `serve` answers queries from it while it has applied what "
        "the query asks for (X-Min-Position), else from the primary; commands, projectors and "
        "everything else stay on the primary. Put over the query role's URL: one with only a "
        "server and TLS settings (postgresql://host:port/dbname?sslmode=…) keeps that role's "
        "user and password. Unset: every query reads the primary.",
    )
    replica_wait: float = Field(
        default=0.25,
        ge=0,
        le=30,
        description="Longest part of a query's X-Min-Position wait spent on the replica: not "
        "there by then, the query goes to the primary (counted in eventkeep_replica_fallbacks).",
    )
    postgres_auditor_url: SecretStr | None = Field(
        default=None,
        description="URL of the auditor role (reads the log: `eventkeep audit`). "
        "Default: POSTGRES_URL.",
    )
    kafka_bootstrap: str | None = Field(default=None, description="Kafka bootstrap servers.")
    redis_url: SecretStr | None = Field(default=None, description="Redis URL.")
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="CA certificate (PEM) that signed the Kafka brokers' certificates; setting "
        "it makes every Kafka client connect over TLS (security_protocol SSL) and check the "
        "broker's certificate and host name.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None,
        description="Client certificate (PEM) for Kafka brokers that authenticate clients by "
        "certificate (mTLS, ssl.client.auth=required); with KAFKA_SSL_KEYFILE.",
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of KAFKA_SSL_CERTFILE."
    )
    kafka_ssl_password: SecretStr | None = Field(
        default=None, description="Password of KAFKA_SSL_KEYFILE, when it is encrypted."
    )
    kafka_relay_ssl_certfile: Path | None = Field(
        default=None,
        description="The relay's own Kafka client certificate (its ACL principal: create, "
        "describe and write the topics); with KAFKA_RELAY_SSL_KEYFILE. Default: "
        "KAFKA_SSL_CERTFILE.",
    )
    kafka_relay_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of KAFKA_RELAY_SSL_CERTFILE."
    )
    kafka_projector_ssl_certfile: Path | None = Field(
        default=None,
        description="The projectors' own Kafka client certificate (its ACL principal: read "
        "and describe the topics and their consumer groups, never write); with "
        "KAFKA_PROJECTOR_SSL_KEYFILE. Default: KAFKA_SSL_CERTFILE.",
    )
    kafka_projector_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of KAFKA_PROJECTOR_SSL_CERTFILE."
    )

    webhook_allow: str = Field(
        default="",
        description="Addresses or networks (comma-separated, e.g. `10.0.0.0/8,127.0.0.1`) that "
        "webhook URLs may resolve to although they are not public (loopback, private, "
        "link-local, metadata); by default only public addresses are called.",
    )
    webhook_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds a webhook receiver has to answer."
    )
    webhook_attempts: int = Field(
        default=5, ge=1, le=100, description="Failed attempts after which a webhook pauses."
    )
    webhook_backoff: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="Seconds before a webhook's first retry; doubled each retry, plus jitter.",
    )
    webhook_delivery_retention: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="Seconds a delivered webhook delivery's row is kept (dead ones stay until "
        "redelivered); then `serve` prunes it.",
    )
    login_failure_retention: float = Field(
        default=24 * 3600,
        gt=0,
        description="Seconds after its last failed login an account's failure count is "
        "forgotten (pruned; a locked account keeps it until the lock ends).",
    )
    prune_interval: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds between two prunings of webhook deliveries and login failures "
        "(by the one `serve` holding the webhook delivery lock).",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the HTTP server binds.")
    https_certfile: Path | None = Field(
        default=None,
        description="Certificate (PEM, with its chain) of `eventkeep serve`: set, with "
        "HTTPS_KEYFILE, the API is served over HTTPS only (also `serve --certfile`).",
    )
    https_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of HTTPS_CERTFILE (also `serve --keyfile`)."
    )

    claim_secret: SecretStr | None = Field(
        default=None,
        description="Deployment secret, at least 32 random bytes (e.g. `secrets.token_urlsafe(32)`"
        "): the keys of the hash that stores unique values (emails) without plaintext and of "
        "the wrapping of the per-user keys of personal data are derived from it. Embedded mode: "
        "generated once into HOME/secret when unset. "
        "Distributed mode: required, the same in every process.",
    )
    pool_size: int = Field(default=10, ge=1, description="PostgreSQL connections per process.")
    pool_timeout: int = Field(
        default=5, ge=1, description="Seconds to wait for a PostgreSQL connection before 503."
    )
    rate_limit: float = Field(
        default=1000.0,
        ge=0,
        description="Requests per second allowed to each API key (0: no limit); beyond it, 429.",
    )
    rate_burst: int = Field(
        default=2000, ge=1, description="Requests a key may send at once (its burst)."
    )
    min_position_wait: float = Field(
        default=2.0,
        ge=0,
        le=30,
        description="Longest wait for the read models to reach a query's X-Min-Position "
        "before answering 503 PROJECTION_BEHIND.",
    )
    topic_prefix: str = Field(
        default="eventkeep",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Kafka topics are <prefix>.User, <prefix>.Product, <prefix>.Order.",
    )
    topic_partitions: int = Field(
        default=6,
        ge=1,
        le=1000,
        description="Partitions of each topic when the relay creates it (fixed afterwards: "
        "more partitions would move streams between them). The most projector processes "
        "that share the work.",
    )
    projector_group: str = Field(
        default="eventkeep-projectors", description="Kafka consumer group of the projectors."
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a verified API key is trusted without asking the store again "
        "(a revocation takes at most this long to reach other processes).",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body, in bytes: a larger one is refused with 413 before "
        "it is read (a larger Content-Length at once, a chunked body when it passes the limit).",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        description="Largest request line and headers together, in bytes: beyond it, 431 "
        "(the server stops buffering an unfinished head at this size too).",
    )
    max_streams_per_key: int = Field(
        default=8,
        ge=1,
        description="Open WS /v1/stream connections one key may hold in an API process; one "
        "more is closed with 4429.",
    )
    max_in_flight: int = Field(
        default=64,
        ge=0,
        description="Requests one API process answers at once (0: no limit); one more is "
        "refused at once with 503 OVERLOADED and Retry-After instead of waiting in a queue.",
    )
    store_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="After PostgreSQL was found unreachable, commands fail at once (503 "
        "STORE_UNAVAILABLE) for this long while a background probe checks it again.",
    )
    postgres_connect_timeout: int = Field(
        default=5,
        ge=1,
        description="Seconds a new PostgreSQL connection may take (every connection).",
    )
    postgres_keepalive_seconds: int = Field(
        default=10,
        ge=1,
        description="Idle seconds before TCP keepalive probes, on both ends of every "
        "PostgreSQL connection (probes every third of it, 3 unanswered: the connection is dead).",
    )
    postgres_tcp_user_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds sent data may stay unacknowledged before the connection is dropped "
        "(TCP_USER_TIMEOUT, both ends of every PostgreSQL connection): a silent network fails.",
    )
    postgres_statement_timeout: float = Field(
        default=30.0,
        gt=0,
        description="The group committer's statement and lock timeout (seconds): a batch never "
        "waits longer for the log's write lock or for one of its statements.",
    )
    kafka_request_timeout: float = Field(
        default=7.0,
        gt=6.0,
        le=300,
        description="Seconds a Kafka request may take (relay, projector, topic creation; more "
        "than the projectors' 6 s session timeout); then the client retries on a new connection.",
    )
    redis_timeout: float = Field(
        default=0.2,
        gt=0,
        le=30,
        description="Seconds a Redis connect or request of the read-model cache may take; then "
        "the read goes to the read models (a slow Redis never slows a query more than this).",
    )
    chain_key: SecretStr | None = Field(
        default=None,
        description="Key of the hash chain's HMAC (at least 32 bytes), the same in every "
        "process; the database never sees it. Unset: the key derived from the deployment "
        "secret at first use, kept in HOME/chain-key (0600) so that it outlives a rotation of "
        "the secret. Set it explicitly when processes run on several hosts.",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="Append-only file of the hash chain's signed checkpoints (default "
        "HOME/chain-checkpoints.jsonl): outside the database, written by `eventkeep audit "
        "checkpoint` and periodically (CHECKPOINT_INTERVAL) by the active relay or the "
        "embedded serve, read by `eventkeep audit verify` and `POST /v1/audit/verify`. Keep a "
        "copy in append-only storage.",
    )
    checkpoint_interval: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between the signed checkpoints a long-running process writes by "
        "itself (distributed: the active relay; embedded: serve), when the log has grown; "
        "0: none (schedule `eventkeep audit checkpoint` instead).",
    )
    checkpoint_events: int = Field(
        default=100_000,
        ge=1,
        description="A checkpoint is also written, before the interval is up, once the log "
        "has grown by this many events since the last one.",
    )
    feed_refused_keep: int = Field(
        default=10_000,
        ge=1,
        description="Kafka messages a projector refused (MAC missing or wrong) kept in the "
        "read models' database for `eventkeep replay refused list`; the oldest beyond go.",
    )
    commit_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait of a command for its commit: still queued by then, it is "
        "withdrawn (503 STORE_UNAVAILABLE); already committing, 503 COMMIT_OUTCOME_UNKNOWN.",
    )
    commit_verify_seconds: float = Field(
        default=10.0,
        gt=0,
        description="After a commit's connection failed, how long the store is asked "
        "whether the commit is stored before the answer is 503 COMMIT_OUTCOME_UNKNOWN.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the `/metrics` of `eventkeep relay` and `eventkeep project` "
        "(none when unset; `serve` answers `/metrics` itself, behind an admin key).",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the relay's and projector's /metrics bind."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level of the log lines every process writes."
    )
    log_format: Literal["json", "console"] = Field(
        default="json",
        description="json: one JSON object per line (for collectors); console: for people.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def mode(self) -> Mode:
        return "distributed" if self.postgres_url is not None else "embedded"

    @model_validator(mode="after")
    def _replica_needs_primary(self) -> Settings:
        if self.postgres_replica_url is not None and self.postgres_url is None:
            raise ValueError(
                "EVENTKEEP_POSTGRES_REPLICA_URL needs EVENTKEEP_POSTGRES_URL (the primary): "
                "replicas belong to the distributed mode"
            )
        return self

    @model_validator(mode="after")
    def _resolve_claim_secret(self) -> Settings:
        if self.claim_secret is not None:
            check_secret(self.claim_secret.get_secret_value())
            return self
        if self.mode == "distributed":
            # A secret made up per process would hash the same email differently in each.
            raise ValueError(
                "EVENTKEEP_CLAIM_SECRET is required when EVENTKEEP_POSTGRES_URL is set"
            )
        path = self.home / "secret"
        self.claim_secret = SecretStr(check_secret(_load_or_create_secret(path), str(path)))
        return self


def _load_or_create_secret(path: Path) -> str:
    """Reads the embedded mode's secret, creating it (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the home: its owner's alone
    try:
        # O_EXCL: when several processes start at once, exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(value)
    return value
