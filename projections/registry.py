"""Every read model, by name: adding one is a module beside this one and a line below
(docs/replay.md shows it)."""

from __future__ import annotations

from dataclasses import dataclass

from eventkeep.projections.daily_sales import DailySales, SalesQueries
from eventkeep.projections.orders import OrderQueries, Orders
from eventkeep.projections.products import ProductQueries, Products
from eventkeep.projections.readmodel import ReadModel, ReadModelQueries
from eventkeep.projections.users import UserQueries, Users


@dataclass(frozen=True)
class Registered:
    model: type[ReadModel]
    queries: type[ReadModelQueries]


READ_MODELS: dict[str, Registered] = {
    entry.model.name: entry
    for entry in (
        Registered(Users, UserQueries),
        Registered(Products, ProductQueries),
        Registered(Orders, OrderQueries),
        Registered(DailySales, SalesQueries),
    )
}
