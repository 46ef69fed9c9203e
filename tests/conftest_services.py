"""Addresses of the real services started by `infra/services up` (fail, never skip, without them).

`tests/conftest.py` imports the fixtures from here so that every test may ask for them:

    from tests.conftest_services import kafka_bootstrap, postgres_url, redis_url  # noqa: F401

The plain functions (`require_env`, `service_url`) are for code that runs outside a fixture.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

POSTGRES_URL = "EVENTKEEP_POSTGRES_URL"
REDIS_URL = "EVENTKEEP_REDIS_URL"
KAFKA_BOOTSTRAP = "EVENTKEEP_KAFKA_BOOTSTRAP"

HOW_TO_START = (
    "start the services with `infra/services up` and load their addresses with "
    '`eval "$(infra/services env)"` '
    "(tests of the real services fail rather than skip when these are missing)"
)


def service_url(name: str) -> str | None:
    """The value of the environment variable `name`, or None when it is unset or empty."""
    return os.environ.get(name) or None


def require_env(name: str) -> str:
    """The value of `name`; fails the calling test with how to set it when it is missing."""
    value = service_url(name)
    if value is None:
        pytest.fail(f"{name} is not set: {HOW_TO_START}", pytrace=False)
    return value


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """`postgresql://eventkeep:eventkeep@127.0.0.1:25432/eventkeep` from infra/services."""
    return require_env(POSTGRES_URL)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """`redis://127.0.0.1:26379/0` when started by infra/services."""
    return require_env(REDIS_URL)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """`127.0.0.1:29092` when started by infra/services."""
    return require_env(KAFKA_BOOTSTRAP)


def services(*args: str) -> None:
    """Runs `infra/services ARGS…` (e.g. `down kafka`); a failure shows what the script said."""
    script = Path(__file__).resolve().parents[1] / "infra" / "services"
    done = subprocess.run([str(script), *args], capture_output=True, text=True)
    if done.returncode != 0:
        said = f"{done.stdout}\n{done.stderr}"
        pytest.fail(f"infra/services {' '.join(args)} exited {done.returncode}:\n{said}")
