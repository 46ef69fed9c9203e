"""The two-mode wiring of the API tests, for tests that drive the shop below HTTP."""

from tests.api.conftest import wiring  # noqa: F401
