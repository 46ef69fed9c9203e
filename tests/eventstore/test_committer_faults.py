"""The group committer's own faults, in both modes: a failing after-commit step does not leave
writers waiting (their batch committed: they are told so), and the committer goes on."""

from __future__ import annotations

from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from eventkeep.eventstore.group_commit import Append
from tests.eventstore.conftest import MakeRecorder


class _FailsOnce:
    def __init__(self) -> None:
        self.calls = 0

    def wake(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("Set changed size during iteration")


def _append() -> Append:
    event = StoredEvent(originator_id=uuid4(), originator_version=1, topic="T", state=b"{}")
    return Append(events=[event], metadata={})


def test_an_after_commit_failure_answers_the_writers_and_the_committer_goes_on(
    make_recorder: MakeRecorder,
) -> None:
    recorder = make_recorder()
    recorder.set_commit_timeouts(result_wait=10)
    listener = _FailsOnce()
    recorder.wake_after_commit(listener)
    first = recorder.append(_append())  # committed although the step after it failed
    second = recorder.append(_append())
    assert listener.calls == 2
    assert second[0] == first[0] + 1
    assert recorder.max_notification_id() == second[0]
