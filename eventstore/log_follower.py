"""Following the global log: the one loop every reader of the log uses (the embedded feed, the
relay, the rebuild reader, the WebSocket stream).

A `LogFollower` reads the log after its position in batches. The caller says how far it got
(`advance_to`), so a batch it could not handle (Kafka down, a failed transaction) is read
again, never skipped. When it reaches the end of the log it waits for a `CommitSignal`: woken
early by a commit, in this process (the SQLite store's `wake_after_commit`) or any other
(PostgreSQL `NOTIFY`, on one listening connection per process), and never longer than its poll
interval, so a lost wake-up delays a reader by one interval at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol

import anyio.to_thread

from eventkeep.eventstore.records import LoggedEvent

log = logging.getLogger(__name__)


class GlobalLog(Protocol):
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[LoggedEvent]: ...


class CommitSignal:
    """Counts the commits this process heard of; waiters sleep until the count moves (or their
    timeout runs out). Threads wait on a condition, coroutines on an event of their loop."""

    def __init__(self) -> None:
        self._count = 0
        self._condition = threading.Condition()
        self._loops: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self.closed = False

    @property
    def count(self) -> int:
        return self._count

    def wake(self) -> None:
        """Something was committed (or the waiters should stop waiting)."""
        with self._condition:
            self._count += 1
            self._condition.notify_all()
            waiting = list(self._loops.values())
        for loop, event in waiting:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(event.set)

    def wait(self, seen: int, timeout: float) -> None:
        """Returns when the count is no longer `seen`, or after `timeout` seconds."""
        with self._condition:
            self._condition.wait_for(lambda: self._count != seen, timeout)

    async def wait_async(self, seen: int, timeout: float) -> None:
        event = asyncio.Event()
        key = id(event)
        self._loops[key] = (asyncio.get_running_loop(), event)
        try:
            if self._count == seen:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._loops.pop(key, None)

    def close(self) -> None:
        self.closed = True
        self.wake()


_signals: weakref.WeakKeyDictionary[Any, CommitSignal] = weakref.WeakKeyDictionary()
_signals_lock = threading.Lock()


def commit_signal(global_log: Any) -> CommitSignal:
    """The signal of this log, shared by every follower of it in this process: registered for
    the store's in-process commits, and listening to PostgreSQL's NOTIFY when the log is there
    (one connection of its own, whatever the number of followers)."""
    with _signals_lock:
        with contextlib.suppress(TypeError):  # not weakly referable: a signal of its own
            if (signal := _signals.get(global_log)) is not None:
                return signal
        signal = CommitSignal()
        with contextlib.suppress(TypeError):
            _signals[global_log] = signal
    if (register := getattr(global_log, "wake_after_commit", None)) is not None:
        register(signal)  # held weakly by the store; strongly here, as long as the log lives
    channel = getattr(global_log, "channel_name", None)
    pool = getattr(getattr(global_log, "datastore", None), "pool", None)
    if channel is not None and pool is not None:
        threading.Thread(
            target=_listen,
            args=(dict(pool.kwargs), channel, weakref.ref(signal)),
            name="log-notify",
            daemon=True,
        ).start()
    return signal


def _listen(params: dict[str, Any], channel: str, signal_ref: weakref.ref[CommitSignal]) -> None:
    """Wakes the signal on each NOTIFY of the log's channel; reconnects after a failure; ends
    when the signal is closed or gone (it is never held across a wait)."""
    import psycopg
    from psycopg.sql import SQL, Identifier

    params = {k: v for k, v in params.items() if k != "row_factory"}
    while _alive(signal_ref):
        try:
            with psycopg.connect(**params, autocommit=True, connect_timeout=5) as connection:
                connection.execute(SQL("LISTEN {}").format(Identifier(channel)))
                while _alive(signal_ref):
                    for _ in connection.notifies(timeout=1.0, stop_after=1):
                        if (signal := signal_ref()) is not None:
                            signal.wake()
                        del signal
        except Exception as error:  # PostgreSQL away: followers poll meanwhile
            log.debug("LISTEN %s failed (%s); retrying", channel, error)
            time.sleep(1.0)


def _alive(signal_ref: weakref.ref[CommitSignal]) -> bool:
    signal = signal_ref()
    return signal is not None and not signal.closed


class LogFollower:
    """Reads the log after `position`, `batch_size` events at a time; see the module's text.

    `batches()` (threads) and `batches_async()` (coroutines) yield the next batch after the
    position, as long as the follower is not stopped; the caller `advance_to`s the position it
    handled. A batch not advanced past is yielded again. `live=False` ends at the log's end
    (or at `until`) instead of waiting for more.
    """

    def __init__(
        self,
        global_log: GlobalLog,
        position: int = 0,
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.05,
        signal: CommitSignal | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self._log = global_log
        self.position = position
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._signal = signal
        # Shared with the owner when given: its own stop ends the follower too.
        self._stopping = stopping or threading.Event()

    @property
    def signal(self) -> CommitSignal:
        if self._signal is None:
            self._signal = commit_signal(self._log)
        return self._signal

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ends `batches()` at its next step; wakes it if it waits."""
        self._stopping.set()
        if self._signal is not None:
            self._signal.wake()

    def pause(self, seconds: float) -> None:
        """Sleeps `seconds` (a back-off after a failure), or less when stopped."""
        self._stopping.wait(seconds)

    def advance_to(self, position: int) -> None:
        """Everything up to `position` is handled: the next batch starts after it."""
        self.position = max(self.position, position)

    def rewind_to(self, position: int) -> None:
        """What came after `position` was not handled after all (a pipelined send failed):
        the next batch starts after it again."""
        self.position = position

    def read(self, until: int | None = None) -> Sequence[LoggedEvent]:
        """The next batch after the position (up to `until`), without waiting; maybe empty."""
        return self._log.select_notifications(
            self.position, self.batch_size, stop=until, inclusive_of_start=False
        )

    def wait(self, seen: int) -> None:
        """Sleeps until a commit after the signal count `seen`, a stop, or the poll interval."""
        if not self._stopping.is_set():
            self.signal.wait(seen, self.poll_interval)

    def batches(
        self,
        *,
        live: bool = True,
        until: int | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> Iterator[list[Any]]:
        """Batches after the position; `on_idle` runs each time the log's end was reached."""
        while not self._stopping.is_set():
            if until is not None and self.position >= until:
                return
            seen = self.signal.count if live else 0
            batch = list(self.read(until))
            if batch:
                yield batch
                if len(batch) == self.batch_size:
                    continue  # more is likely waiting: read on
            if not live:
                if not batch:
                    return
                continue
            if on_idle is not None:
                on_idle()
            self.wait(seen)

    async def batches_async(self) -> AsyncIterator[list[Any]]:
        """`batches()` for a coroutine: reads in a worker thread, waits on the event loop."""
        signal = self.signal
        while not self._stopping.is_set():
            seen = signal.count
            batch = list(await anyio.to_thread.run_sync(self.read))
            if batch:
                yield batch
                if len(batch) == self.batch_size:
                    continue
            if not self._stopping.is_set():
                await signal.wait_async(seen, self.poll_interval)
