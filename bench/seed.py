"""The seeder: a shop's worth of history written through the store in bulk (not over HTTP).

Users, products and orders are made by the domain's own methods (so every invariant holds and
the events are the ones commands would record) and saved many aggregates per append, so the
group committer writes thousands of events per transaction. Product popularity is Zipf-like:
a few hot products take most of the orders, as in real shops. Fixed seed: same input, same shop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import accumulate
from uuid import UUID

from eventsourcing.domain import Aggregate

from eventkeep.commands.handlers import CommandBus
from eventkeep.commands.ports import EventMetadata, UniqueClaim
from eventkeep.domain.order import Order
from eventkeep.domain.ordering import cancel_order, place_order
from eventkeep.domain.product import Product
from eventkeep.domain.user import User

FIRST_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia")
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Perlman")
ADJECTIVES = (
    "red", "quiet", "wireless", "ergonomic", "compact", "heavy", "smart", "vintage", "solar",
    "modular", "waterproof", "silent", "portable", "premium", "classic", "tiny",
)  # fmt: skip
NOUNS = (
    "keyboard", "lamp", "chair", "kettle", "speaker", "backpack", "monitor", "drill", "tent",
    "blender", "camera", "guitar", "watch", "desk", "bicycle", "printer", "pillow", "router",
)  # fmt: skip
CATEGORIES = (
    "peripherals", "lighting", "furniture", "kitchen", "audio", "outdoor", "tools", "office",
    "sports", "photo", "music", "home", "garden", "toys", "books", "health",
)  # fmt: skip
STOCK = 1_000_000_000  # never runs out, so every generated order can be placed


@dataclass(frozen=True)
class SeedSizes:
    users: int = 100_000
    products: int = 100_000
    orders: int = 1_000_000
    per_save: int = 500  # aggregates per append


Advance = Callable[[str, int], None]  # (phase, how many more done)


class Seeder:
    def __init__(self, bus: CommandBus, sizes: SeedSizes, seed: int = 42, label: str = "") -> None:
        """`label` tells apart the unique values (emails, SKUs) of seeders run on one store."""
        self._bus = bus
        self._sizes = sizes
        self._rng = random.Random(seed)
        self._label = label
        self.users: list[User] = []
        self.products: list[Product] = []
        self.events = 0

    def email(self, i: int) -> str:
        """The email of the `i`-th seeded user."""
        return f"user{self._label}{i:07d}@seed.example.com"

    def already_seeded(self) -> bool:
        """Whether the store holds this seeder's users already (its first email is taken)."""
        claim = self._bus.email_claim(self.email(0), None)
        return self._bus.store.claim_owner(claim.scope, claim.key) is not None

    def run(self, advance: Advance) -> None:
        self._save_in_chunks("users", self._users(), advance)
        self._save_in_chunks("products", self._products(), advance)
        self._save_orders(advance)

    def _users(self) -> Iterator[User]:
        rng = self._rng
        for i in range(self._sizes.users):
            user = User.register(
                self.email(i),
                rng.choice(FIRST_NAMES),
                rng.choice(LAST_NAMES),
            )
            self.users.append(user)
            yield user

    def _products(self) -> Iterator[Product]:
        rng = self._rng
        categories = _zipf_weights(len(CATEGORIES))
        for i in range(self._sizes.products):
            adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
            words = " ".join(rng.choices(ADJECTIVES + NOUNS, k=8))
            product = Product.create(
                sku=f"SKU-{self._label}{i:07d}",
                name=f"{adjective.title()} {noun} {i}",
                description=f"A {adjective} {noun}: {words}.",
                category=rng.choices(CATEGORIES, cum_weights=categories)[0],
                price=Decimal(rng.randint(100, 50_000)) / 100,
                currency="USD",
                stock=STOCK,
            )
            self.products.append(product)
            yield product

    def _save_in_chunks(self, phase: str, made: Iterator[Aggregate], advance: Advance) -> None:
        chunk: list[Aggregate] = []
        for aggregate in made:
            chunk.append(aggregate)
            if len(chunk) == self._sizes.per_save:
                self._save(chunk, phase, advance)
                chunk = []
        if chunk:
            self._save(chunk, phase, advance)

    def _save(self, aggregates: list[Aggregate], phase: str, advance: Advance) -> None:
        claims = [
            self._bus.email_claim(a.email, a.id)
            for a in aggregates
            if isinstance(a, User) and a.version == 1 and a.email is not None
        ]
        self._write(aggregates, claims)
        advance(phase, len(aggregates))

    def _save_orders(self, advance: Advance) -> None:
        rng = self._rng
        popularity = _zipf_weights(len(self.products))
        pending: list[Order] = []
        touched: dict[UUID, Product] = {}
        for _ in range(self._sizes.orders):
            picks = rng.choices(self.products, cum_weights=popularity, k=rng.randint(1, 3))
            distinct = {p.id: p for p in picks}.values()  # aggregates are not hashable
            lines = [(p, rng.randint(1, 3)) for p in distinct]
            order, changed = place_order(rng.choice(self.users), lines)
            _advance_status(order, changed, rng)
            pending.append(order)
            touched.update((p.id, p) for p in changed)
            if len(pending) == self._sizes.per_save:
                self._save_batch(pending, touched, advance)
                pending, touched = [], {}
        if pending:
            self._save_batch(pending, touched, advance)

    def _save_batch(
        self, orders: list[Order], products: dict[UUID, Product], advance: Advance
    ) -> None:
        self._write([*orders, *products.values()])
        advance("orders", len(orders))

    def _write(self, aggregates: list[Aggregate], claims: list[UniqueClaim] | None = None) -> None:
        events = sum(len(aggregate.pending_events) for aggregate in aggregates)
        self._bus.store.save(aggregates, metadata=_SEEDER, claims=claims or ())
        self.events += events


_SEEDER = EventMetadata(actor="seeder", correlation_id="seed")


def _advance_status(order: Order, products: list[Product], rng: random.Random) -> None:
    """70 % paid, half of those shipped, most shipped delivered; 5 % cancelled."""
    roll = rng.random()
    if roll < 0.05:
        cancel_order(order, products, "changed my mind")
        return
    if roll < 0.75:
        order.pay(str(order.total), f"pay-{rng.getrandbits(32):08x}")
        if roll < 0.40:
            order.ship(f"TRK{rng.getrandbits(40):010x}")
            if roll < 0.30:
                order.deliver()


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    """Cumulative Zipf weights for `random.choices(cum_weights=…)`."""
    return list(accumulate(1 / (rank**s) for rank in range(1, n + 1)))
