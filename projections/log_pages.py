"""The log read ahead as pages of upcast envelopes, for the bulk paths (rebuild, catch-up):
the next page is read, decoded and upcast by a thread while the caller folds this one (the
store's round trips overlap the fold; `EventRecorder.select_envelopes` reads the rows straight
into envelopes).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Container, Iterator, Sequence
from typing import Any, Protocol

from eventkeep.domain.upcasters import is_current, upcast

Page = list[dict[str, Any]]
# Pages read ahead of the fold (each up to a batch of ~5000 events: memory stays bounded).
READ_AHEAD_PAGES = 2


class EnvelopeLog(Protocol):
    """The log as the bulk paths read it (`EventRecorder`)."""

    def select_envelopes(
        self,
        after: int,
        limit: int,
        until: int | None = None,
        stream_types: Sequence[str] = (),
        *,
        only: Container[str] | None = None,
    ) -> Page: ...

    def max_notification_id(self) -> int | None: ...


def upcast_pages(
    global_log: EnvelopeLog,
    after: int,
    batch_size: int,
    *,
    until: int | None = None,
    stream_types: Sequence[str] = (),
    only: Container[str] | None = None,
) -> Iterator[Page]:
    """The log after `after` (up to `until`; only `stream_types`, if given) as pages of at
    most `batch_size` upcast envelopes, in position order, the next page read and upcast by
    a thread while the caller handles this one. Personal fields are opened for the event
    types `only` names (`ReadModels.read_sealed`: what the read models read), if given."""
    ready: queue.Queue[Page | BaseException | None] = queue.Queue(maxsize=READ_AHEAD_PAGES)
    stop = threading.Event()

    def read() -> None:
        try:
            position = after
            while not stop.is_set() and (
                page := global_log.select_envelopes(
                    position, batch_size, until, stream_types, only=only
                )
            ):
                # The envelopes are this reader's own: one already current is not copied.
                ready.put([e if is_current(e) else upcast(e) for e in page])
                position = page[-1]["position"]
            ready.put(None)
        except BaseException as error:  # handed to the caller, raised there
            ready.put(error)

    reader = threading.Thread(target=read, name="log-reader", daemon=True)
    reader.start()
    try:
        while (page := ready.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get_nowait()
            reader.join(0.05)
