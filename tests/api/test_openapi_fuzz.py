"""schemathesis over the OpenAPI description, with every check and an admin key, in both
modes: no request it generates (valid or not) answers a 500, a status the description does not
list, a body or content type other than described, or takes what it should refuse. The example
count is bounded so that a mode runs in well under a minute."""

from __future__ import annotations

from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role

EXAMPLES = 40
# A request can be valid by the schema and still break a rule the schema cannot say: a cursor
# this API did not give (400), a business rule (422, e.g. a payment of another amount), a
# version conflict (409), a stream that does not exist (404).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # 503 PROJECTION_BEHIND is the documented answer to a position not reached yet.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
            "positive_data_acceptance": {
                "expected-statuses": [
                    *("2xx", "400", "401", "403", "404", "409", "422", "429", "503")
                ]
            },
        }
    }
)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis' lazy schemas still read pytest < 9's private `_nodeid`.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def admin_key(wiring: Wiring) -> str:
    return wiring.keys.create(Role.admin, "schemathesis").secret_key


@pytest.fixture
def api(wiring: Wiring) -> schemathesis.schemas.BaseSchema:
    # A short X-Min-Position wait: the generated positions are mostly far ahead (503).
    app = create_app(replace(wiring, min_position_wait=0.01))
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)


# GraphQL answers in its own shape, over its own language: tests/api/test_graphql.py.
schema = schemathesis.pytest.from_fixture("api").exclude(path="/v1/graphql")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests every run: a failure here is a finding, not luck
)
def test_the_api_keeps_to_its_description(case: schemathesis.Case, admin_key: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {admin_key}"})
