"""Fixtures of the fault tests: PostgreSQL behind a TCP proxy the test can cut, and eventkeep
built on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventkeep.bootstrap import Eventkeep, build
from eventkeep.settings import Settings
from tests.api.conftest import SHOP_TABLES, TEST_SECRET
from tests.eventstore.stores import drop_postgres_tables, postgres_params, postgres_url
from tests.faults.tcp_proxy import TcpProxy


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """The test's PostgreSQL, reached through a proxy that can cut every connection."""
    params = postgres_params()
    proxy = TcpProxy(params["host"], int(params["port"]))
    yield proxy
    proxy.close()


@pytest.fixture
def built(proxy: TcpProxy, tmp_path: Path) -> Iterator[Eventkeep]:
    """eventkeep (distributed, empty shop tables) on PostgreSQL through `proxy`."""
    drop_postgres_tables(*SHOP_TABLES)
    url = make_conninfo(**(conninfo_to_dict(postgres_url()) | {"port": str(proxy.port)}))
    settings = Settings(home=tmp_path, postgres_url=url, claim_secret=TEST_SECRET)
    with build(settings, role="test") as eventkeep:
        yield eventkeep
    drop_postgres_tables(*SHOP_TABLES)
