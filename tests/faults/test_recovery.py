"""Fast recovery (issue 8 item 7, store side): when every connection to PostgreSQL is cut (as
a restart does), the parts the composition root builds work again at once — pooled connections
are checked before use and dead ones replaced, and the group committer replaces a batch
connection the server dropped while it was idle."""

from __future__ import annotations

import time
from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from eventkeep.bootstrap import Eventkeep
from eventkeep.eventstore.group_commit import Append
from tests.faults.tcp_proxy import TcpProxy


def _append() -> Append:
    event = StoredEvent(originator_id=uuid4(), originator_version=1, topic="T", state=b"{}")
    return Append(events=[event], metadata={})


def test_every_part_works_at_once_after_all_connections_were_cut(
    built: Eventkeep, proxy: TcpProxy
) -> None:
    recorder, keys = built.recorder, built.keys
    recorder.append(_append())
    assert len(recorder.select_notifications(1, 10)) == 1
    keys.list()  # the key store's pool has a connection
    models = built.read_models
    models.position()
    proxy.cut_all()
    time.sleep(0.5)
    started = time.monotonic()
    assert len(recorder.select_notifications(1, 10)) == 1  # no dead pooled connection
    recorder.append(_append())  # the committer's dead connection replaced
    keys.list()
    models.position()
    assert time.monotonic() - started < 10
