"""A circuit breaker around the write store: once PostgreSQL is found unreachable, commands
fail at once (503) instead of each waiting out a connection timeout, and a background probe
finds out when it answers again.

- closed: calls go through; a connection failure (not a refusal of the store's own, such as a
  full commit queue or a version conflict) opens the circuit.
- open: calls fail at once with `StoreUnreachable` for `retry_seconds`, while a probe thread
  asks the store every `probe_interval`; the first answer closes the circuit. After
  `retry_seconds` without an answer, the next call is let through as a trial.
- A watcher thread also probes while closed (every `watch_interval`), so an outage opens the
  circuit within about a second even when no command has met it yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import psycopg
from eventsourcing.persistence import OperationalError

from eventkeep.eventstore.group_commit import CommitQueueFull
from eventkeep.metrics import STORE_CIRCUIT_OPEN, STORE_CIRCUIT_TRIPS

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class StoreUnreachable(OperationalError):
    """The circuit is open: the store was unreachable moments ago; nothing was attempted."""


def is_connection_failure(error: BaseException) -> bool:
    if isinstance(error, (CommitQueueFull, StoreUnreachable)):
        return False
    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError, OperationalError))


class CircuitBreaker:
    def __init__(
        self,
        probe: Callable[[], object],
        *,
        retry_seconds: float = 5.0,
        probe_interval: float = 0.25,
        watch_interval: float | None = 1.0,
        name: str = "event store",
    ) -> None:
        self._probe = probe
        self._retry_seconds = retry_seconds
        self._probe_interval = probe_interval
        self._name = name
        self._open_until = 0.0  # monotonic; 0: closed
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-circuit", daemon=True)
        self._watch_interval = watch_interval
        self._thread.start()

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def guard(self, call: Callable[P, R]) -> Callable[P, R]:
        """`call`, failing fast while the circuit is open and opening it on a connection
        failure."""

        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            self.check()
            try:
                return call(*args, **kwargs)
            except Exception as error:
                if is_connection_failure(error):
                    self.trip(error)
                raise

        return guarded

    def guard_async(self, call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """`guard` for a coroutine function."""

        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            self.check()
            try:
                return await call(*args, **kwargs)
            except Exception as error:
                if is_connection_failure(error):
                    self.trip(error)
                raise

        return guarded

    def check(self) -> None:
        """Raises `StoreUnreachable` while the circuit is open (until its trial time)."""
        until = self._open_until
        if until and time.monotonic() < until:
            raise StoreUnreachable(f"the {self._name} is unreachable; retry later")

    def trip(self, error: BaseException | None = None) -> None:
        with self._lock:
            if not self._open_until:
                STORE_CIRCUIT_TRIPS.inc()
                STORE_CIRCUIT_OPEN.set(1)
                log.warning(
                    "%s unreachable (%s): commands fail fast for %.1fs while a probe retries",
                    self._name,
                    error,
                    self._retry_seconds,
                )
            self._open_until = time.monotonic() + self._retry_seconds
        self._wake.set()

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(5)

    def _closed(self) -> None:
        with self._lock:
            if self._open_until:
                log.warning("%s reachable again: commands go through", self._name)
            self._open_until = 0.0
            STORE_CIRCUIT_OPEN.set(0)

    def _run(self) -> None:
        while not self._stopping.is_set():
            interval = self._probe_interval if self.is_open else self._watch_interval
            if interval is None:
                self._wake.wait()
            else:
                self._wake.wait(interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not self.is_open and self._watch_interval is None:
                continue
            try:
                self._probe()
            except Exception as error:
                if is_connection_failure(error) or self.is_open:
                    self.trip(error)
                continue
            self._closed()
