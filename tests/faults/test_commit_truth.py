"""The truth about a commit (issue 8 item 4): when the connection fails while a batch commits,
every writer is told what the table holds — stored (success), not stored (`CommitNotWritten`,
safe to retry) or, when the store cannot be asked, `CommitOutcomeUnknown` — and never a
failure for an append that is stored. Faults come from a TCP proxy in front of a real
PostgreSQL: a plaintext cluster of this module's own (tests/ops/cluster.py), because the proxy
must read the protocol to cut right after a commit and the shared server accepts TLS only."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore

from eventkeep.eventstore.group_commit import Append, CommitNotWritten, CommitOutcomeUnknown
from eventkeep.eventstore.postgres import PostgresApplicationRecorder
from tests.eventstore.stores import drop_postgres_tables, postgres_params, postgres_url
from tests.faults.tcp_proxy import TcpProxy
from tests.ops.cluster import Cluster


@pytest.fixture(scope="module")
def plaintext_cluster() -> Iterator[Cluster]:
    cluster = Cluster.create(archive_timeout=60)
    yield cluster
    cluster.destroy()


@pytest.fixture(autouse=True)
def on_plaintext_cluster(plaintext_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's store is the plaintext cluster, reached as its owner (no role URLs)."""
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", plaintext_cluster.url)
    for role in ("OWNER", "WRITER", "RELAY", "PROJECTOR", "QUERY", "AUDITOR"):
        monkeypatch.delenv(f"EVENTKEEP_POSTGRES_{role}_URL", raising=False)


@pytest.fixture
def recorder(proxy: TcpProxy) -> Iterator[PostgresApplicationRecorder]:
    drop_postgres_tables()
    params = postgres_params() | {"host": "127.0.0.1", "port": str(proxy.port)}
    # Plaintext through the proxy: it must see the protocol to cut after a commit.
    datastore = PostgresDatastore(**params, pool_size=2, max_overflow=4, connect_timeout=5)
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    recorder.set_commit_timeouts(verify_timeout=3, result_wait=20)
    yield recorder
    recorder.close()
    datastore.close()
    drop_postgres_tables()


# What the message that commits a batch carries: a batch in one trip is one statement, its own
# transaction, with the log's write-lock key among its parameters (no COMMIT is sent); a
# batch on the locked path sends the key with its first statement and COMMIT last.
COMMITS = b"eventkeep append"


def _append(stream: UUID | None = None) -> Append:
    event = StoredEvent(
        originator_id=stream or uuid4(), originator_version=1, topic="Tested", state=b"{}"
    )
    return Append(events=[event], metadata={})


def _stored(stream: UUID) -> list[int]:
    with psycopg.connect(postgres_url()) as connection:
        rows = connection.execute(
            "SELECT position FROM stored_events WHERE stream_id = %s", (stream,)
        ).fetchall()
    return [position for (position,) in rows]


def test_cut_after_commit_is_a_success_when_the_commit_landed(
    recorder: PostgresApplicationRecorder, proxy: TcpProxy
) -> None:
    recorder.append(_append())  # the batch connection is open
    append = _append()
    proxy.cut_after(COMMITS)
    positions = recorder.append(append)
    assert proxy.cuts == 1
    assert _stored(append.events[0].originator_id) == positions


def test_a_batch_in_one_trip_is_one_message_to_the_server(
    recorder: PostgresApplicationRecorder, proxy: TcpProxy
) -> None:
    """Issue 13 item 2: once the committer knows the head, a batch's lock, checks, writes and
    commit are one statement, its own transaction: the client sends one message (no BEGIN,
    SET, lock or COMMIT of their own), so the committer waits for the server once."""
    recorder.append(_append())  # the head is known from now on
    recorder.append(_append())  # the statement is prepared
    sent = proxy.client_messages
    stream = uuid4()
    positions = recorder.append(_append(stream))
    assert proxy.client_messages - sent == 1
    assert _stored(stream) == positions


def test_cut_before_commit_is_not_written(
    recorder: PostgresApplicationRecorder, proxy: TcpProxy
) -> None:
    recorder.append(_append())
    append = _append()
    proxy.cut_before(COMMITS)
    with pytest.raises(CommitNotWritten):
        recorder.append(append)
    assert proxy.cuts == 1
    assert _stored(append.events[0].originator_id) == []
    again = recorder.append(_append(append.events[0].originator_id))  # the retry is safe
    assert _stored(append.events[0].originator_id) == again


def test_unknown_when_the_store_cannot_be_asked(
    recorder: PostgresApplicationRecorder, proxy: TcpProxy
) -> None:
    recorder.append(_append())
    append = _append()
    proxy.cut_after(COMMITS)
    # The store is unreachable from the moment of the cut until the bound has passed.
    refuse = threading.Timer(0.05, lambda: setattr(proxy, "refusing", True))
    refuse.start()
    started = time.monotonic()
    with pytest.raises(CommitOutcomeUnknown):
        recorder.append(append)
    assert time.monotonic() - started < 10
    proxy.refusing = False
    assert len(_stored(append.events[0].originator_id)) == 1  # it did land


@pytest.mark.parametrize("waiting", ["in a thread", "on an event loop"])
def test_a_writer_waits_a_bounded_time_on_a_frozen_connection(
    recorder: PostgresApplicationRecorder, proxy: TcpProxy, waiting: str
) -> None:
    recorder.append(_append())
    recorder.set_commit_timeouts(result_wait=1.5)
    proxy.freeze()
    try:
        answers: list[BaseException | list[int]] = []

        def write() -> None:
            try:
                answers.append(recorder.append(_append()))
            except Exception as error:
                answers.append(error)

        async def write_awaiting(delay: float) -> None:
            await asyncio.sleep(delay)
            try:
                answers.append(await recorder.append_async(_append()))
            except Exception as error:
                answers.append(error)

        async def both_awaiting() -> None:
            await asyncio.gather(write_awaiting(0), write_awaiting(0.3))

        started = time.monotonic()
        if waiting == "on an event loop":
            asyncio.run(both_awaiting())
        else:
            writers = [threading.Thread(target=write) for _ in range(2)]
            for writer in writers:
                writer.start()
                time.sleep(0.3)
            for writer in writers:
                writer.join(10)
        assert time.monotonic() - started < 5
        kinds = sorted(type(answer).__name__ for answer in answers)
        # The batch on the wire: unknown; the one still queued is withdrawn.
        assert kinds == ["CommitNotWritten", "CommitOutcomeUnknown"]
    finally:
        proxy.thaw()


def test_every_answer_matches_the_table_under_cuts(
    recorder: PostgresApplicationRecorder, proxy: TcpProxy
) -> None:
    """8 writers, the connection cut after or before a commit, or every connection cut, at
    random moments: each success is stored with its positions, each CommitNotWritten is
    absent, and nothing else is answered."""
    answers: dict[UUID, Any] = {}
    stop = time.monotonic() + 8
    rng = random.Random(8)

    def write() -> None:
        while time.monotonic() < stop:
            append = _append()
            stream = append.events[0].originator_id
            try:
                answers[stream] = recorder.append(append)
            except (CommitNotWritten, CommitOutcomeUnknown, psycopg.OperationalError) as error:
                answers[stream] = error

    writers = [threading.Thread(target=write) for _ in range(8)]
    for writer in writers:
        writer.start()
    while time.monotonic() < stop:
        time.sleep(rng.uniform(0.1, 0.4))
        rng.choice(
            [
                lambda: proxy.cut_after(COMMITS),
                lambda: proxy.cut_before(COMMITS),
                lambda: proxy.cut_after(b"COMMIT"),
                proxy.cut_all,
            ]
        )()
    for writer in writers:
        writer.join(30)
    assert proxy.cuts >= 5
    with psycopg.connect(postgres_url()) as connection:
        stored: dict[UUID, list[int]] = {}
        for stream, position in connection.execute(
            "SELECT stream_id, position FROM stored_events ORDER BY position"
        ):
            stored.setdefault(stream, []).append(position)
    failures = {type(a).__name__ for a in answers.values() if isinstance(a, BaseException)}
    assert failures <= {"CommitNotWritten", "CommitOutcomeUnknown"}, failures
    assert "CommitNotWritten" in failures
    for stream, answer in answers.items():
        if isinstance(answer, list):
            assert stored.get(stream) == answer, stream
        elif isinstance(answer, CommitNotWritten):
            assert stream not in stored, stream
    assert set(stored) <= set(answers)
