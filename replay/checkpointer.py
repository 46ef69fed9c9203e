"""Signed checkpoints written by a long-running process itself (`EVENTKEEP_CHECKPOINT_INTERVAL`):
distributed, the active relay (exactly one writer, its advisory lock's holder); embedded,
`eventkeep serve`. A checkpoint is written once the log has grown and either the interval has
passed since the newest checkpoint or the log has grown by `EVENTKEEP_CHECKPOINT_EVENTS`. Each
verifies only the events after the newest checkpoint (`audit.checkpoint(periodic=True)`); a
failure writes nothing, logs the first bad event and sets `eventkeep_audit_verify_ok` to 0
(the verification alert), and is tried again an interval later."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from eventkeep.eventstore.checkpoints import Checkpoint, CheckpointFile
from eventkeep.metrics import record_checkpoint, record_verify
from eventkeep.replay import audit

log = logging.getLogger(__name__)

TICK = 5.0  # longest sleep between two looks at the log's head


class PeriodicCheckpoints:
    def __init__(
        self,
        recorder: Any,
        file: CheckpointFile,
        *,
        interval: float,
        events: int,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self._recorder = recorder
        self._file = file
        self._interval = interval
        self._events = events
        self._active = active
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The newest checkpoint, or this process's start: a restart waits an interval.
        self._position, self._time = 0, time.time()
        valid = [c for c in file.read() if c.valid]
        if valid:
            self._noted(max(valid, key=lambda c: c.position))

    def _noted(self, checkpoint: Checkpoint) -> None:
        self._position = checkpoint.position
        self._time = datetime.fromisoformat(checkpoint.time).timestamp()
        record_checkpoint(checkpoint.position, self._time)

    def due(self) -> bool:
        head = self._recorder.max_notification_id() or 0
        if head <= self._position:
            return False
        return head - self._position >= self._events or time.time() - self._time >= self._interval

    def take(self) -> Checkpoint | None:
        """Verifies the log after the newest checkpoint and signs its head; None (logged, and
        the verification gauge at 0) when it is not intact."""
        verdict, written = audit.checkpoint(self._recorder, self._file, periodic=True)
        if written is None:
            self._time = time.time()  # tried again an interval later, not at every tick
            record_verify(False)
            log.error("no checkpoint written: the log is not intact: %s", verdict.altered)
            return None
        self._noted(written)
        log.info("checkpoint signed at position %s", written.position)
        return written

    def run(self) -> None:
        while not self._stopping.wait(min(self._interval, TICK)):
            if not self._active():
                continue
            try:
                if self.due():
                    self.take()
            except Exception:  # the store out of reach, the file not writable: next tick
                log.exception("periodic checkpoint failed; trying again")

    def start(self) -> PeriodicCheckpoints:
        self._thread = threading.Thread(target=self.run, name="checkpoints", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # a checkpoint under way finishes its walk
