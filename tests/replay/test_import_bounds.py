"""Import is a door too: a line holding what the read models cannot (a price, total, stock or
quantity beyond the domain's bounds, a control character in text) refuses the file, naming the
line, and writes nothing; an email differing only in case or Unicode form is one email."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from eventkeep.api.bootstrap import Wiring
from eventkeep.replay.importer import ImportRefused
from tests.replay.conftest import import_history
from tests.replay.test_import_export import change, change_data, first, legacy_lines

PRODUCT_V2 = {"sku": "S-1", "name": "Teapot", "description": "Blue", "category": "kitchen",
              "price": "12.50", "currency": "EUR", "stock": 10}  # fmt: skip


def created(**data: Any) -> Any:
    return change(first("ProductCreated"), schema_version=2, data=PRODUCT_V2 | data)


BAD = {
    "price above the bound": (created(price="999999999999.99"), "price 999999999999.99 is above"),
    "stock above the bound": (created(stock=10**12), "stock 1000000000000 is outside"),
    "stock as a string": (created(stock="10"), "stock '10' is not a whole number"),
    "NUL in a name": (created(name="Tea\u0000pot"), "name holds a control character (U+0000)"),
    "escape in a reason": (
        change_data(first("UserDeactivated"), reason="a\u001bb"),
        "reason holds a control character (U+001B)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_line_beyond_the_bounds_refuses_the_file(
    case: str, wiring: Wiring, tmp_path: Path
) -> None:
    edit, reason = BAD[case]
    lines = legacy_lines()
    edit(lines)
    bad = next(i for i, (a, b) in enumerate(zip(lines, legacy_lines(), strict=True)) if a != b)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    with pytest.raises(ImportRefused) as refused:
        import_history(wiring, path, check_first=True)
    assert refused.value.line == bad + 1
    assert reason in refused.value.reason
    assert not wiring.shop.recorder.max_notification_id()
