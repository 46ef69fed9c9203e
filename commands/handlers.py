"""Command handlers: load, decide (one domain call), save — plus the rules around them.

`CommandBus.handle` answers a retried command (same idempotency key and request) with its
first answer and no new events, checks `If-Match`, and retries read-decide-write a few times
when a concurrent append to the same stream won (or the aggregate came from a stale copy in
memory: the store evicted it and the retry loads it afresh), so hot streams do not fail
spuriously.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from uuid import UUID

import anyio
import anyio.to_thread
from eventsourcing.domain import Aggregate

from eventkeep.commands import messages as m
from eventkeep.commands.copies import private_copy
from eventkeep.commands.errors import EmailTaken, IdempotencyKeyReused, NotFound, VersionConflict
from eventkeep.commands.ports import (
    AwaitableWriteStore,
    ClaimTakenError,
    EventMetadata,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    StreamChangedError,
    UniqueClaim,
    WriteStore,
)
from eventkeep.domain.order import Order
from eventkeep.domain.ordering import cancel_order, place_order, products_of
from eventkeep.domain.product import Product
from eventkeep.domain.user import User, normalize_email

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")
# Set while `handle_async` decides on the event loop: a load must not ask the database; it
# takes the aggregates read for this decision (by `load_async`), else those in memory.
_MEMORY_ONLY: ContextVar[dict[UUID, Aggregate | None] | None] = ContextVar(
    "memory_only", default=None
)
# Loads awaited for one decision before it goes to a worker thread instead (a decision
# loads its aggregates one at a time: an order's user, then each product).
_LOAD_ROUNDS = 8


class _NotInMemory(Exception):
    """A load the event loop may not make (see `_MEMORY_ONLY`)."""

    def __init__(self, stream_id: UUID) -> None:
        super().__init__(str(stream_id))
        self.stream_id = stream_id


Handle = Callable[[m.Command, m.CommandContext], m.CommandResult]  # what `CommandBus.handle` is
# The worker threads of awaited commands' steps that ask the database (as many as anyio's
# default limiter lets run; made as needed).
_THREADS = ThreadPoolExecutor(40, thread_name_prefix="eventkeep-command")


async def in_a_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread, with the caller's context variables (the
    request's log fields). anyio's `to_thread.run_sync` does the same with a capacity
    limiter and a cancel scope around it: about twice the event loop's CPU per hop, and
    most W3 commands make one (a product not yet in memory). For reads only: cancelled, the
    caller stops waiting while the read runs to its end."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _THREADS, functools.partial(copy_context().run, function, *args)
    )


EMAIL_SCOPE = "user_email"


@dataclass
class Decision:
    """What a handler decided: the aggregate the command is about, everything it changed,
    and the unique keys it claims or releases."""

    target: Aggregate
    changed: list[Aggregate]
    claims: list[UniqueClaim] = field(default_factory=list)
    created: bool = False


class CommandBus:
    def __init__(self, store: WriteStore, claim_secret: bytes, *, attempts: int = 5) -> None:
        self.store = store
        # A runtime Protocol check costs ~0.1 ms: made once, not per command.
        self._awaitable = isinstance(store, AwaitableWriteStore)
        self._claim_secret = claim_secret
        self._attempts = attempts
        self._handlers: dict[type[m.Command], Callable[[Any], Decision]] = {
            m.RegisterUser: self._register_user,
            m.ChangeUserEmail: self._change_email,
            m.DeactivateUser: lambda c: self._on(
                User, c.user_id, c, lambda u: u.deactivate(c.reason)
            ),
            m.ReactivateUser: lambda c: self._on(User, c.user_id, c, User.reactivate),
            m.ErasePersonalData: self._erase_personal_data,
            m.CreateProduct: self._create_product,
            m.ChangeProductDetails: lambda c: self._on(
                Product, c.product_id, c, lambda p: p.rename(c.name, c.description)
            ),
            m.ChangeProductPrice: lambda c: self._on(
                Product, c.product_id, c, lambda p: p.change_price(c.price, c.currency)
            ),
            m.AdjustStock: lambda c: self._on(
                Product, c.product_id, c, lambda p: p.adjust_stock(c.delta, c.reason)
            ),
            m.DiscontinueProduct: lambda c: self._on(Product, c.product_id, c, Product.discontinue),
            m.PlaceOrder: self._place_order,
            m.PayOrder: lambda c: self._on(
                Order, c.order_id, c, lambda o: o.pay(c.amount, c.payment_ref)
            ),
            m.ShipOrder: lambda c: self._on(
                Order, c.order_id, c, lambda o: o.ship(c.tracking_number)
            ),
            m.DeliverOrder: lambda c: self._on(Order, c.order_id, c, Order.deliver),
            m.CancelOrder: self._cancel_order,
        }

    # --- the rules around every command ---------------------------------------------------

    def handle(self, command: m.Command, context: m.CommandContext) -> m.CommandResult:
        key = context.idempotency_key
        if key is not None and (answered := self._answered(key, context)) is not None:
            return answered
        for attempt in range(self._attempts):
            try:
                return self._decide_and_save(command, context)
            except IdempotencyKeyUsedError:
                return self._answered_after_all(context)
            except (StreamChangedError, ClaimTakenError) as refusal:
                time.sleep(self._backoff(refusal, command, attempt))
        raise self._kept_losing()

    async def handle_async(self, command: m.Command, context: m.CommandContext) -> m.CommandResult:
        """`handle` for a coroutine, with the same rules: no thread waits for the commit
        (batches grow with the requests in flight), and a command whose aggregates are all in
        memory is decided on the event loop; an aggregate not in memory is awaited from the
        store (`load_async`: loads asked for at the same moment share one statement), and
        a step that must ask the database otherwise (an idempotency look-up, a key to seal
        with) runs in a worker thread. Needs an `AwaitableWriteStore`; else the whole command
        runs in a worker thread."""
        if not self._awaitable:
            return await anyio.to_thread.run_sync(self.handle, command, context)
        store = cast(AwaitableWriteStore, self.store)  # checked once, in __init__
        key = context.idempotency_key
        if key is not None:
            answered = await in_a_thread(self._answered, key, context)
            if answered is not None:
                return answered
        for attempt in range(self._attempts):
            try:
                decision = await self._decide_awaited(store, command)
                position = await store.save_async(
                    decision.changed, **self._save_arguments(decision, context)
                )
                return self._result(decision, position)
            except IdempotencyKeyUsedError:
                return await in_a_thread(self._answered_after_all, context)
            except (StreamChangedError, ClaimTakenError) as refusal:
                await anyio.sleep(self._backoff(refusal, command, attempt))
        raise self._kept_losing()

    def _backoff(self, refusal: Exception, command: m.Command, attempt: int) -> float:
        """Seconds before deciding again after `refusal`; raises what the client is told
        when deciding again cannot help."""
        if isinstance(refusal, ClaimTakenError):
            raise EmailTaken("the email is used by another user") from None
        expected: int | None = getattr(command, "expected_version", None)
        if expected is not None:
            raise VersionConflict(
                "the stream changed since the version given in If-Match", expected=expected
            ) from None
        return random.uniform(0, 0.002 * 2**attempt)

    def _answered_after_all(self, context: m.CommandContext) -> m.CommandResult:
        """The stored answer of an idempotency key found used while committing."""
        assert context.idempotency_key is not None
        answered = self._answered(context.idempotency_key, context)
        assert answered is not None, "a used key has a stored answer"
        return answered

    def _kept_losing(self) -> VersionConflict:
        return VersionConflict(
            "concurrent changes to the same stream kept winning; try again",
            attempts=self._attempts,
        )

    def _answered(self, key: str, context: m.CommandContext) -> m.CommandResult | None:
        found = self.store.stored_answer(key)
        if found is None:
            return None
        if found.request_hash != context.request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with another request", idempotency_key=key
            )
        return found.result

    def _decide_and_save(self, command: m.Command, context: m.CommandContext) -> m.CommandResult:
        decision = self._decide(command)
        position = self.store.save(decision.changed, **self._save_arguments(decision, context))
        return self._result(decision, position)

    def _decide(self, command: m.Command) -> Decision:
        return self._handlers[type(command)](command)

    async def _decide_awaited(self, store: AwaitableWriteStore, command: m.Command) -> Decision:
        """The decision on the event loop, from aggregates in memory or awaited from the
        store as the decision finds it needs them (each load asks afresh: If-Match is judged
        against what it read); past `_LOAD_ROUNDS` loads, in a worker thread."""
        loaded: dict[UUID, Aggregate | None] = {}
        for _ in range(_LOAD_ROUNDS):
            memory_only = _MEMORY_ONLY.set(loaded)
            try:
                return self._decide(command)
            except _NotInMemory as missing:
                needed = missing.stream_id
            finally:
                _MEMORY_ONLY.reset(memory_only)
            loaded[needed] = await store.load_async(needed)
        return await in_a_thread(self._decide, command)

    def _save_arguments(self, decision: Decision, context: m.CommandContext) -> dict[str, Any]:
        idempotency = None
        if context.idempotency_key is not None:
            idempotency = IdempotencyRecord(
                key=context.idempotency_key,
                request_hash=context.request_hash or "",
                result=self._result(decision, 0),
            )
        return {
            "metadata": EventMetadata(context.actor, context.correlation_id, context.causation_id),
            "claims": decision.claims,
            "idempotency": idempotency,
        }

    @staticmethod
    def _result(decision: Decision, position: int) -> m.CommandResult:
        target = decision.target
        return m.CommandResult(
            id=target.id, version=target.version, position=position, created=decision.created
        )

    # --- loading --------------------------------------------------------------------------

    def _load(self, kind: type[A], stream_id: UUID, expected_version: int | None = None) -> A:
        loaded = _MEMORY_ONLY.get()
        if loaded is not None:
            if stream_id in loaded:  # read from the store for this decision
                aggregate = loaded[stream_id]
                aggregate = None if aggregate is None else private_copy(aggregate)
            else:
                aggregate = cast(AwaitableWriteStore, self.store).cached(stream_id)
                if aggregate is None or (
                    expected_version is not None
                    and (not isinstance(aggregate, kind) or aggregate.version != expected_version)
                ):  # not in memory, or If-Match is judged against the stored stream
                    raise _NotInMemory(stream_id)
        else:
            aggregate = self.store.load(stream_id)
            if expected_version is not None and (
                not isinstance(aggregate, kind) or aggregate.version != expected_version
            ):  # perhaps a stale copy in memory: If-Match is judged against the stored stream
                aggregate = self.store.load(stream_id, fresh=True)
        if not isinstance(aggregate, kind):
            raise NotFound(
                f"no {kind.__name__.lower()} {stream_id}", kind=kind.__name__, id=str(stream_id)
            )
        if expected_version is not None and aggregate.version != expected_version:
            raise VersionConflict(
                "the stream is at another version than If-Match says",
                expected=expected_version,
                actual=aggregate.version,
            )
        return aggregate

    def _on(
        self, kind: type[A], stream_id: UUID, command: Any, change: Callable[[A], None]
    ) -> Decision:
        """The common case: one aggregate, one domain call."""
        aggregate = self._load(kind, stream_id, command.expected_version)
        change(aggregate)
        return Decision(aggregate, [aggregate])

    def _email_key(self, email: str) -> str:
        digest = hmac.new(self._claim_secret, normalize_email(email).encode(), hashlib.sha256)
        return digest.hexdigest()

    def email_claim(self, email: str, owner: UUID | None) -> UniqueClaim:
        """The claim that keeps `email` unique (owner None releases it); bulk loaders use it."""
        return UniqueClaim(EMAIL_SCOPE, self._email_key(email), owner)

    # --- handlers that need more than one call ---------------------------------------------

    def _register_user(self, c: m.RegisterUser) -> Decision:
        user = User.register(c.email, c.first_name, c.last_name)
        return Decision(user, [user], [self.email_claim(c.email, user.id)], created=True)

    def _change_email(self, c: m.ChangeUserEmail) -> Decision:
        user = self._load(User, c.user_id, c.expected_version)
        old = user.email
        user.change_email(c.email)
        claims = [self.email_claim(c.email, user.id)]
        if old is not None and self._email_key(old) != claims[0].key:
            claims.append(self.email_claim(old, None))
        return Decision(user, [user], claims)

    def _erase_personal_data(self, c: m.ErasePersonalData) -> Decision:
        user = self._load(User, c.user_id, c.expected_version)
        email = user.email
        user.erase_personal_data()
        released = [self.email_claim(email, None)] if email else []
        return Decision(user, [user], released)

    def _create_product(self, c: m.CreateProduct) -> Decision:
        product = Product.create(
            c.sku, c.name, c.description, c.category, c.price, c.currency, c.stock
        )
        return Decision(product, [product], created=True)

    def _place_order(self, c: m.PlaceOrder) -> Decision:
        user = self._load(User, c.user_id)
        ids = dict.fromkeys(line.product_id for line in c.lines)
        products = {product_id: self._load(Product, product_id) for product_id in ids}
        lines = [(products[line.product_id], line.quantity) for line in c.lines]
        order, changed = place_order(user, lines)
        return Decision(order, [order, *changed], created=True)

    def _cancel_order(self, c: m.CancelOrder) -> Decision:
        order = self._load(Order, c.order_id, c.expected_version)
        products = [self._load(Product, UUID(pid)) for pid in products_of(order)]
        cancel_order(order, products, c.reason)
        return Decision(order, [order, *products])
