"""The shop wired in both modes, driven through its command bus (no HTTP)."""

from __future__ import annotations

from tests.api.conftest import wiring  # noqa: F401  (the shop wired in both modes)
