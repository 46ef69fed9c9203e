"""An import whose PostgreSQL connection is cut in the middle of a transaction (issue 13.1):
the transaction is lost whole, the ones before it stay whole, and running the file again
completes it with every event once, the chain intact."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest

from eventkeep.bootstrap import Eventkeep
from eventkeep.eventstore import postgres
from eventkeep.replay import importer
from eventkeep.replay.audit import verify
from eventkeep.replay.importer import check_file, import_file
from tests.eventstore.stores import postgres_url
from tests.faults.tcp_proxy import TcpProxy
from tests.replay.conftest import LEGACY

LINES = [orjson.loads(line) for line in LEGACY.read_bytes().splitlines() if line.strip()]


def test_a_connection_cut_mid_import_loses_one_whole_transaction_and_a_rerun_completes(
    built: Eventkeep, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "BULK_EVENTS", 100)
    copy = postgres._PostgresBatch.copy
    copies: list[int] = []

    def cut_at_the_third(batch: Any, insert: Any) -> None:
        copies.append(len(insert.rows))
        if len(copies) == 3:  # the lock held, the head read: the connection goes now
            proxy.cut_all()
        copy(batch, insert)

    monkeypatch.setattr(postgres._PostgresBatch, "copy", cut_at_the_third)
    recorder, claim = built.shop.recorder, built.bus.email_claim
    checked = check_file(LEGACY, recorder, claim, lambda _: None)
    with pytest.raises(psycopg.OperationalError):
        import_file(LEGACY, recorder, claim, lambda _: None, checked)

    written = copies[0] + copies[1]
    with psycopg.connect(postgres_url()) as connection:
        stored = connection.execute("SELECT count(*), max(position) FROM shop_events").fetchone()
    assert stored == (written, written)  # two whole transactions, nothing of the third
    progress = recorder.import_progress(checked.digest)
    assert progress is not None and progress.events == written and not progress.finished

    monkeypatch.setattr(postgres._PostgresBatch, "copy", copy)
    again = check_file(LEGACY, recorder, claim, lambda _: None)
    assert import_file(LEGACY, recorder, claim, lambda _: None, again) == len(LINES) - written
    log = recorder.select_notifications(1, 10_000, decrypt=False)
    assert [e.id for e in log] == list(range(1, len(LINES) + 1))
    assert [(str(e.originator_id), e.originator_version) for e in log] == [
        (line["stream_id"], line["stream_version"]) for line in LINES
    ]
    assert verify(recorder).intact
