"""The service fixtures, also available here until tests/conftest.py imports them for all tests."""

from tests.conftest_services import kafka_bootstrap, postgres_url, redis_url

__all__ = ["kafka_bootstrap", "postgres_url", "redis_url"]
