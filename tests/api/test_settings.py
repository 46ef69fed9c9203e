"""Settings pick the mode from the environment; bootstrap turns them into the store's env."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from eventkeep.api.keys import SqliteApiKeyStore
from eventkeep.bootstrap import build_key_store, shop_env
from eventkeep.domain.catalog import ERASING_EVENT, KEY_OWNERS, KEYED_STREAMS, PERSONAL_FIELDS
from eventkeep.eventstore.hashchain import chain_key
from eventkeep.eventstore.pii import PersonalFields
from eventkeep.settings import Settings

SECRET = "s3cret-0123456789abcdefghijklmnopqrstu"  # 32 random bytes or more
URL = "postgresql://writer:p%40ss%3Aword@db.internal:6543/shop"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOME", "POSTGRES_URL", "CLAIM_SECRET", "HOST", "PORT", "POOL_SIZE"):
        monkeypatch.delenv(f"EVENTKEEP_{name}", raising=False)


def test_embedded_is_the_default_and_keeps_a_secret_in_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.mode == "embedded"
    secret_file = tmp_path / "secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert settings.claim_secret is not None
    assert settings.claim_secret.get_secret_value() == secret_file.read_text()
    assert Settings(home=tmp_path).claim_secret == settings.claim_secret


def test_settings_come_from_eventkeep_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path))
    monkeypatch.setenv("EVENTKEEP_PORT", "9100")
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", URL)
    monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", SECRET)
    settings = Settings()
    assert (settings.home, settings.port, settings.mode) == (tmp_path, 9100, "distributed")
    assert not (tmp_path / "secret").exists()


def test_distributed_mode_demands_a_shared_claim_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", URL)
    with pytest.raises(ValidationError, match="EVENTKEEP_CLAIM_SECRET"):
        Settings()


def test_secrets_never_show(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, postgres_url=URL, claim_secret=SECRET)
    shown = f"{settings!r} {settings} {settings.model_dump_json()}"
    assert "p%40ss" not in shown
    assert SECRET not in shown


# The store is told which fields are personal and which event erases them.
PERSONAL = PersonalFields(PERSONAL_FIELDS, ERASING_EVENT, KEY_OWNERS, KEYED_STREAMS).to_env()


def test_embedded_shop_env_points_at_the_home_sqlite_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", postgres_url=None, claim_secret=None)
    env = shop_env(settings)
    secret = (tmp_path / "home" / "secret").read_text()
    # The chain's key: made once from the secret, kept in the home (it outlives a rotation).
    chain = (tmp_path / "home" / "chain-key").read_text()
    assert bytes.fromhex(chain) == chain_key(secret.encode())
    assert env == {
        "PERSISTENCE_MODULE": "eventkeep.eventstore.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "home" / "events.db"),
        "MAPPER_TOPIC": "eventkeep.eventstore.mapper:EnvelopeMapper",
        "PII_SECRET": secret,
        **PERSONAL,
        "COMMIT_RESULT_WAIT": "30.0",
        "COMMIT_VERIFY_TIMEOUT": "10.0",
        "CHAIN_KEY": chain,
    }
    assert secret
    assert isinstance(build_key_store(settings), SqliteApiKeyStore)
    assert (tmp_path / "home" / "api_keys.db").exists()


def test_distributed_shop_env_is_parsed_from_the_url(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        postgres_url=URL,
        claim_secret=SECRET,
        pool_size=7,
    )
    env = shop_env(settings)
    chain = (tmp_path / "chain-key").read_text()
    # Bounded waits on both ends of the connection (eventkeep.bootstrap.bounded_connection).
    assert conninfo_to_dict(env.pop("POSTGRES_CONNINFO")) == {
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "3",
        "keepalives_count": "3",
        "tcp_user_timeout": "20000",
        "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3"
        " -c tcp_keepalives_count=3 -c tcp_user_timeout=20000"
        " -c client_connection_check_interval=10000",
    }
    assert env == {
        "PERSISTENCE_MODULE": "eventkeep.eventstore.postgres",
        "POSTGRES_DBNAME": "shop",
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6543",
        "POSTGRES_USER": "writer",
        "POSTGRES_PASSWORD": "p@ss:word",
        "POSTGRES_POOL_SIZE": "7",
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_LOCK_TIMEOUT": "30",
        "MAPPER_TOPIC": "eventkeep.eventstore.mapper:EnvelopeMapper",
        "PII_SECRET": SECRET,
        **PERSONAL,
        "COMMIT_RESULT_WAIT": "30.0",
        "COMMIT_VERIFY_TIMEOUT": "10.0",
        "CHAIN_KEY": chain,
    }
