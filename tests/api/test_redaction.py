"""`redact` scans a line with a pattern only when the line holds what that pattern's match
starts with: it masks exactly what scanning with every pattern masks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eventkeep.api.redaction import _PATTERNS, redact

PIECES = st.sampled_from(
    [
        "ek_0123456789abcdef_", "ek_", "Secret-Part_9", "access_token=", "tok", "&", " ",
        "bearer.", "BEARER.", "BeArEr.", "Bearer ", "bearer ", ",", '"', "'", "é", "İ", "K",
        "ſ", "[redacted]", "x",
    ]
)  # fmt: skip


def scanned_by_every_pattern(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES | st.text(max_size=3), max_size=12).map("".join))
def test_redact_masks_what_every_pattern_masks(text: str) -> None:
    assert redact(text) == scanned_by_every_pattern(text)


def test_a_line_with_nothing_to_mask_is_left_as_it_is() -> None:
    line = '{"event": "request", "route": "/v1/users/{user_id}", "status": 200}'
    assert redact(line) == line
    assert redact("Authorization: BEARER.abc, ek_0123456789abcdef_s3cr3t") == (
        "Authorization: BEARER.[redacted], ek_0123456789abcdef_[redacted]"
    )
