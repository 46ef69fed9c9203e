"""The write port (`commands.ports.WriteStore`) in memory: the command handlers' tests run on
it in milliseconds, beside the same tests on the real stores.

It keeps the promises of the port as the stores do: an append is all or nothing, a stream's
next event must follow its last version (else StreamChangedError), a claim held by another
owner refuses the append, an idempotency key answers once, positions are contiguous.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from eventkeep.commands.ports import (
    ClaimTakenError,
    EventMetadata,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    StreamChangedError,
    UniqueClaim,
)


class InMemoryWriteStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[UUID, list[Any]] = {}
        self._claims: dict[tuple[str, str], UUID] = {}
        self._answers: dict[str, str] = {}  # key -> request hash, answer: kept encoded,
        self._hashes: dict[str, str] = {}  # as a store keeps them
        self.log: list[tuple[int, Any, EventMetadata]] = []

    @property
    def position(self) -> int:
        return len(self.log)

    def history(self, stream_id: UUID) -> list[Any]:
        """The stream's domain events, in version order."""
        with self._lock:
            return copy.deepcopy(self._streams.get(stream_id, []))

    def load(self, stream_id: UUID, *, fresh: bool = False) -> Aggregate | None:
        aggregate: Any = None
        for event in self.history(stream_id):
            aggregate = event.mutate(aggregate)
        return aggregate

    def stored_answer(self, idempotency_key: str) -> IdempotencyRecord | None:
        with self._lock:
            if idempotency_key not in self._answers:
                return None
            answer, request_hash = self._answers[idempotency_key], self._hashes[idempotency_key]
        return IdempotencyRecord.from_stored(idempotency_key, request_hash, answer)

    def claim_owner(self, scope: str, key: str) -> UUID | None:
        with self._lock:
            return self._claims.get((scope, key))

    def save(
        self,
        aggregates: Sequence[Aggregate],
        *,
        metadata: EventMetadata,
        claims: Sequence[UniqueClaim] = (),
        idempotency: IdempotencyRecord | None = None,
    ) -> int:
        events = [event for aggregate in aggregates for event in aggregate.collect_events()]
        with self._lock:
            self._refuse_conflicts(events, claims, idempotency)
            for event in events:
                self._streams.setdefault(event.originator_id, []).append(copy.deepcopy(event))
                self.log.append((len(self.log) + 1, event, metadata))
            for claim in claims:
                if claim.owner is None:
                    self._claims.pop((claim.scope, claim.key), None)
                else:
                    self._claims[(claim.scope, claim.key)] = claim.owner
            if idempotency is not None:
                answered = replace(idempotency.result, position=self.position)
                self._answers[idempotency.key] = replace(
                    idempotency, result=answered
                ).stored_answer()
                self._hashes[idempotency.key] = idempotency.request_hash
            return self.position

    def _refuse_conflicts(
        self,
        events: list[Any],
        claims: Sequence[UniqueClaim],
        idempotency: IdempotencyRecord | None,
    ) -> None:
        versions = {stream_id: len(stream) for stream_id, stream in self._streams.items()}
        for event in events:
            expected = versions.get(event.originator_id, 0) + 1
            if event.originator_version != expected:
                raise StreamChangedError(
                    f"stream {event.originator_id} is at version {expected - 1}"
                )
            versions[event.originator_id] = expected
        for claim in claims:
            owner = self._claims.get((claim.scope, claim.key))
            if claim.owner is not None and owner is not None and owner != claim.owner:
                raise ClaimTakenError(claim.scope, claim.key)
        if idempotency is not None and idempotency.key in self._answers:
            raise IdempotencyKeyUsedError(idempotency.key)
