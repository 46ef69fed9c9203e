"""How a coroutine awaits the group committer's answer (`group_commit._answer_within`): the
answer set in the committer's thread, a bounded wait, and neither the timeout nor a waiter
that stops waiting withdrawing the append (the committer decides that, `_timed_out`). The
committer's own future, no database: the appends' paths on the real stores are
tests/faults/test_commit_truth.py."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from eventkeep.eventstore.group_commit import _answer_within

WAIT = 30  # seconds: a bound on a hang, never reached when it works


def test_the_answer_set_in_another_thread_is_awaited() -> None:
    done: Future[list[int]] = Future()

    async def run() -> list[int]:
        threading.Timer(0.01, done.set_result, ([7, 8],)).start()
        return await _answer_within(done, WAIT)

    assert asyncio.run(run()) == [7, 8]


def test_a_refusal_is_raised_as_it_came() -> None:
    done: Future[list[int]] = Future()
    done.set_exception(ValueError("refused"))

    with pytest.raises(ValueError, match="refused"):
        asyncio.run(_answer_within(done, WAIT))


def test_no_answer_in_time_is_a_timeout_that_leaves_the_append_to_the_caller() -> None:
    done: Future[list[int]] = Future()

    with pytest.raises(TimeoutError):
        asyncio.run(_answer_within(done, 0.01))
    assert not done.done()  # not withdrawn here: `_timed_out` decides
    done.set_result([1])  # a late answer finds nobody waiting, and harms nothing


def test_a_waiter_that_stops_waiting_does_not_withdraw_the_append() -> None:
    done: Future[list[int]] = Future()

    async def run() -> None:
        waiter = asyncio.ensure_future(_answer_within(done, WAIT))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        done.set_result([3])  # committed all the same
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert done.result() == [3]


def test_an_append_withdrawn_by_the_committer_cancels_its_waiter() -> None:
    done: Future[list[int]] = Future()

    async def run() -> None:
        waiter = asyncio.ensure_future(_answer_within(done, WAIT))
        await asyncio.sleep(0.01)
        done.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, WAIT)

    asyncio.run(run())
