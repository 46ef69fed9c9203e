"""`CoalescedReads`: keys asked for one at a time on an event loop, read many at a time in a
worker thread. No database here: `read` is a plain function that records what it was asked
(the write path's use of it, on the real stores, is tests/commands/test_coalesced_loads.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import pytest

from eventkeep.eventstore.coalesced_reads import CoalescedReads

WAIT = 3  # seconds: a bound on a hang, never reached when it works


class Reader:
    """Doubles each key; `broken` keys answer their own exception; `hold` keeps a read
    waiting until it is set."""

    def __init__(self, broken: set[int] = frozenset(), hold: threading.Event | None = None):
        self.calls: list[list[int]] = []
        self.broken = broken
        self.hold = hold
        self.started = threading.Event()

    def __call__(self, keys: list[int]) -> Mapping[int, int | Exception]:
        self.calls.append(sorted(keys))
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT)
        return {key: ValueError(f"no {key}") if key in self.broken else 2 * key for key in keys}


def gathered(reads: CoalescedReads[int, int], keys: list[int]) -> list[object]:
    async def run() -> list[object]:
        return await asyncio.wait_for(
            asyncio.gather(*(reads.get(key) for key in keys), return_exceptions=True), WAIT
        )

    return asyncio.run(run())


def test_keys_asked_for_in_one_turn_are_read_in_one_call() -> None:
    reader = Reader()
    reads = CoalescedReads(reader, name="test-reads")

    assert gathered(reads, [1, 2, 3, 2]) == [2, 4, 6, 4]
    assert reader.calls == [[1, 2, 3]]  # the key asked for twice, read once


def test_a_key_that_fails_fails_only_its_own_waiters() -> None:
    reader = Reader(broken={2})
    reads = CoalescedReads(reader, name="test-reads")

    one, two, three = gathered(reads, [1, 2, 3])

    assert (one, three) == (2, 6)
    assert isinstance(two, ValueError) and str(two) == "no 2"
    assert reader.calls == [[1, 2, 3]]


def test_a_read_that_raises_fails_every_key_it_held_and_the_next_read_is_made() -> None:
    calls: list[list[int]] = []

    def down(keys: list[int]) -> Mapping[int, int | Exception]:
        calls.append(sorted(keys))
        if len(calls) == 1:
            raise ConnectionError("the store is down")
        return {key: key for key in keys}

    reads = CoalescedReads(down, name="test-reads")

    first = gathered(reads, [1, 2])
    assert [type(answer) for answer in first] == [ConnectionError, ConnectionError]
    assert gathered(reads, [1, 2]) == [1, 2]
    assert calls == [[1, 2], [1, 2]]


def test_keys_asked_for_while_reads_are_on_their_way_go_together_in_the_next() -> None:
    """At most `in_flight` reads at a time: what is asked meanwhile waits and grows one read."""
    hold = threading.Event()
    reader = Reader(hold=hold)
    reads = CoalescedReads(reader, name="test-reads", in_flight=1)

    async def run() -> list[int]:
        first = asyncio.ensure_future(reads.get(1))
        await asyncio.to_thread(reader.started.wait, WAIT)  # the first read is on its way
        later = [asyncio.ensure_future(reads.get(key)) for key in (2, 3, 4)]
        await asyncio.sleep(0.01)  # turns of the loop: none of them may start a read
        assert reader.calls == [[1]]
        hold.set()
        return await asyncio.wait_for(asyncio.gather(first, *later), WAIT)

    assert asyncio.run(run()) == [2, 4, 6, 8]
    assert reader.calls == [[1], [2, 3, 4]]


def test_a_waiter_that_stops_waiting_leaves_the_others_their_answers() -> None:
    hold = threading.Event()
    reader = Reader(hold=hold)
    reads = CoalescedReads(reader, name="test-reads")

    async def run() -> tuple[bool, list[int]]:
        gone = asyncio.ensure_future(reads.get(1))
        staying = [asyncio.ensure_future(reads.get(key)) for key in (1, 2)]
        await asyncio.to_thread(reader.started.wait, WAIT)
        gone.cancel()
        hold.set()
        answers = await asyncio.wait_for(asyncio.gather(*staying), WAIT)
        return gone.cancelled(), answers

    assert asyncio.run(run()) == (True, [2, 4])


def test_no_room_for_a_read_is_refused() -> None:
    with pytest.raises(ValueError):
        CoalescedReads(Reader(), name="test-reads", in_flight=0)


def test_a_read_that_raises_stop_iteration_still_answers_every_waiter() -> None:
    """A future refuses StopIteration (TypeError): set as it came, the first waiter's answer
    raised inside the loop's callback and the others were never answered (found by attack)."""

    def stopping(keys: list[int]) -> Mapping[int, int | Exception]:
        raise StopIteration

    answers = gathered(CoalescedReads(stopping, name="test-reads"), [1, 2])

    assert [type(answer) for answer in answers] == [RuntimeError, RuntimeError]
    assert all(isinstance(answer.__cause__, StopIteration) for answer in answers)  # type: ignore[union-attr]


def test_a_key_whose_value_is_stop_iteration_fails_alone_and_later_reads_go_on() -> None:
    def read(keys: list[int]) -> Mapping[int, int | Exception]:
        return {key: StopIteration() if key == 1 else 2 * key for key in keys}

    reads = CoalescedReads(read, name="test-reads")
    one, two = gathered(reads, [1, 2])

    assert isinstance(one, RuntimeError) and two == 4
    assert gathered(reads, [3]) == [6]
