"""Reads asked for one key at a time on an event loop, made many keys at a time.

The write path's loads of aggregates not in memory (`ApplicationWriteStore.load_async`): in
W3 most commands are a product's first sight in their process, and each one's own load was
a worker-thread hop, a pooled connection, a statement and its answer. Here the keys asked for
while a read is on its way wait for the next one and go together: ONE call of `read` (in a
worker thread) for all of them, so one hop and one round trip for as many loads as arrived
meanwhile, and batches grow with load as the group committer's do. At most `in_flight` reads
run at a time; when one is free, the keys asked for in the same turn of the event loop still
go together.

`read` answers each key's value, or the exception of that key alone (one stream that cannot be
decoded fails only the commands that asked for it); a read that raises fails every key it
held, as each one's own read would have failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Waiting(Generic[K, V]):
    """One event loop's keys waiting for a read, and its reads on their way."""

    keys: dict[K, list[asyncio.Future[V]]] = field(default_factory=dict)
    reading: int = 0
    scheduled: bool = False


class CoalescedReads(Generic[K, V]):
    def __init__(
        self,
        read: Callable[[list[K]], Mapping[K, V | Exception]],
        *,
        name: str,
        in_flight: int = 2,
        most: int = 500,
    ) -> None:
        if in_flight < 1 or most < 1:
            raise ValueError("coalesced reads need room for one read of one key")
        self._read = read
        self._in_flight = in_flight
        self._most = most  # keys per read
        self._threads = ThreadPoolExecutor(in_flight, thread_name_prefix=name)
        # Per event loop (a server process has one; tests make one per `asyncio.run`).
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waiting[K, V]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, key: K) -> V:
        """`key`'s value, read with every other key asked for meanwhile."""
        loop = asyncio.get_running_loop()
        waiting = self._loops.get(loop)
        if waiting is None:
            waiting = self._loops[loop] = _Waiting()
        answer: asyncio.Future[V] = loop.create_future()
        waiting.keys.setdefault(key, []).append(answer)
        if waiting.reading < self._in_flight and not waiting.scheduled:
            # Next turn of the loop: the keys asked for in this one go in the same read.
            waiting.scheduled = True
            loop.call_soon(self._start, loop, waiting)
        return await answer

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _start(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting[K, V]) -> None:
        waiting.scheduled = False
        while waiting.keys and waiting.reading < self._in_flight:
            batch = {key: waiting.keys.pop(key) for key in list(islice(waiting.keys, self._most))}
            waiting.reading += 1
            try:
                done = self._threads.submit(self._read, list(batch))
            except RuntimeError as error:  # closed
                waiting.reading -= 1
                _answer(batch, error)
                return
            # In the reading thread when it ends: the answers go to the event loop.
            done.add_done_callback(
                functools.partial(_call_soon, loop, self._finish, loop, waiting, batch)
            )

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: _Waiting[K, V],
        batch: dict[K, list[asyncio.Future[V]]],
        done: Future[Mapping[K, V | Exception]],
    ) -> None:
        waiting.reading -= 1
        try:
            try:
                values = done.result()
            except BaseException as error:  # handed to each waiter, as it came
                _answer(batch, error)
            else:
                for key, answers in batch.items():
                    _answer({key: answers}, values.get(key, KeyError(key)))
        finally:  # whatever the answers were, the keys asked for meanwhile are read
            if waiting.keys:
                self._start(loop, waiting)


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object
) -> None:
    # A loop that has closed has nobody waiting for these keys any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _answer(batch: Mapping[K, list[asyncio.Future[V]]], value: V | BaseException) -> None:
    if isinstance(value, StopIteration | StopAsyncIteration):
        # A future refuses these (TypeError): its waiter would never be answered.
        stopped, value = value, RuntimeError(f"the read raised {type(value).__name__}")
        value.__cause__ = stopped
    for answers in batch.values():
        for answer in answers:
            if answer.done():  # its waiter was cancelled
                continue
            if isinstance(value, BaseException):
                answer.set_exception(value)
            else:
                answer.set_result(value)
