"""Catch-up-then-live subscriptions to the global log that never rely on a wake-up alone.

The library's subscription waits for a notification with no timeout (its issue #305): one lost
NOTIFY and a reader stalls until the next write. Here every wait also times out, so a reader
re-polls at least every `poll_interval` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import ApplicationRecorder, ListenNotifySubscription


class PollingSubscription(ListenNotifySubscription[ApplicationRecorder]):
    poll_interval = 0.2

    def __init__(
        self, recorder: ApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)

    def wake(self) -> None:
        """Called when something was committed: pull now rather than at the next poll."""
        self._has_been_notified.set()

    def _loop_on_pull(self) -> None:
        try:
            self._pull()
            while not self._has_been_stopped:
                self._has_been_notified.wait(timeout=self.poll_interval)
                self._pull()
        except BaseException as error:
            if self._thread_error is None:
                self._thread_error = error
            self.stop()
