"""The registry of the event catalog: which class each stored event type and stream type is."""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from eventkeep.domain.order import Order
from eventkeep.domain.product import Product
from eventkeep.domain.user import User

STREAM_TYPES: dict[str, type[Aggregate]] = {"User": User, "Product": Product, "Order": Order}

EVENT_TYPES: dict[str, type] = {
    name: member
    for aggregate in STREAM_TYPES.values()
    for name, member in vars(aggregate).items()
    if isinstance(member, type)
    and issubclass(member, Aggregate.Event)
    and name not in ("Created", "Event")  # the library's per-aggregate base classes
}


def event_type_of(event_class: type) -> str:
    return event_class.__name__


def stream_type_of(event_class: type) -> str:
    return event_class.__qualname__.split(".")[0]


# Personal data: encrypted at rest with a key per user, unreadable once that key is erased.
PERSONAL_FIELDS: dict[str, frozenset[str]] = {
    "UserRegistered": frozenset({"email", "first_name", "last_name", "full_name"}),
    "UserEmailChanged": frozenset({"email"}),
    # Free text about a user may name people (a relative, a phone number): sealed like the rest.
    "UserDeactivated": frozenset({"reason"}),
    # An order's cancellation reason is about its user: sealed under that user's key.
    "OrderCancelled": frozenset({"reason"}),
    # A stock adjustment's reason names no user the shop knows: sealed under the product's own
    # stream key (encrypted in every copy; no erasure reaches it, see docs/events.md).
    "ProductStockAdjusted": frozenset({"reason"}),
}
# Event types sealed under another stream's key: the data field that names that stream.
KEY_OWNERS: dict[str, str] = {"OrderCancelled": "user_id"}
# Stream types with personal fields under their own key: each stream gets its key with its
# first event, stored by that event's own append (a product's first stock adjustment asks the
# store for nothing).
KEYED_STREAMS = frozenset(
    stream_type_of(EVENT_TYPES[event_type])
    for event_type in PERSONAL_FIELDS
    if event_type not in KEY_OWNERS
)
ERASING_EVENT = "UserPersonalDataErased"
