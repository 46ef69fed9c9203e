"""eventkeep built by its composition root in both modes, for the seeder's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventkeep.bootstrap import Eventkeep, build
from tests.api.conftest import SHOP_TABLES, distributed_settings, embedded_settings
from tests.eventstore.stores import drop_postgres_tables


@pytest.fixture(params=["embedded", "distributed"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Eventkeep]:
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "home")
    else:
        drop_postgres_tables(*SHOP_TABLES)
        settings = distributed_settings(tmp_path / "home")
    with build(settings, role="test") as built:
        yield built
