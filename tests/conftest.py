"""Fixtures every test may ask for: the addresses of the real services."""

from tests.conftest_services import kafka_bootstrap, postgres_url, redis_url  # noqa: F401
