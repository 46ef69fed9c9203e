"""eventkeep: a CQRS / event-sourced engine for a shop's users, products and orders.

The repository keeps one folder per idea at its top (`domain/`, `commands/`, `eventstore/`,
`projections/`, `api/`, `replay/`, `bench/`); they install as subpackages of this one
(`eventkeep.domain`, …, see `setup.py`), so nothing but `eventkeep` lands in site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eventkeep")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
