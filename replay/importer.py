"""`audit import`: history in the export format (docs/replay.md) written into the event store.

Two passes over the file, streamed line by line: the first checks every line and refuses the file
at the first bad one, naming the line and the reason, before anything is written, and keeps a
digest of each page of lines; the second appends, checking the digests (a file changed since its
check is refused) and, for each line, only what depends on the store as it now is (the content
was checked once). What is stored is what the file says — stream ids, versions, original
timestamps, metadata and the *stored* schema version (nothing is upcast on the way in; the one
upcaster chain runs when it is read). Positions are the store's own. Emails get their uniqueness
claims, so commands after the import keep them unique.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import IntegrityError

from eventkeep.domain.bounds import (
    MAX_ORDER_TOTAL,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_STOCK,
    MAX_STOCK_DELTA,
    forbidden_character,
)
from eventkeep.domain.catalog import EVENT_TYPES, STREAM_TYPES, stream_type_of
from eventkeep.domain.upcasters import CURRENT_SCHEMA_VERSIONS, upcast
from eventkeep.domain.user import normalize_email
from eventkeep.eventstore.group_commit import Append, UniqueClaim
from eventkeep.eventstore.recorder import ImportProgress
from eventkeep.eventstore.records import RecordedEvent

MONEY = re.compile(r"^(0|[1-9][0-9]*)\.[0-9]{2}$")
MONEY_FIELDS = ("price", "total", "amount", "unit_price")
# The domain's bounds (domain/bounds.py): an imported event may not hold what the read models
# cannot, any more than a command may.
MONEY_BOUNDS = {"price": MAX_PRICE, "unit_price": MAX_PRICE, "total": MAX_ORDER_TOTAL,
                "amount": MAX_ORDER_TOTAL}  # fmt: skip
COUNT_BOUNDS = {"stock": (0, MAX_STOCK), "delta": (-MAX_STOCK_DELTA, MAX_STOCK_DELTA),
                "quantity": (1, MAX_QUANTITY * 100)}  # fmt: skip
METADATA_FIELDS = ("actor", "correlation_id", "causation_id")
METADATA_KEYS = frozenset(METADATA_FIELDS)
ENVELOPE_FIELDS = frozenset(
    {"stream_id", "stream_type", "stream_version", "event_type", "schema_version",
     "recorded_at", "data", "metadata"}
)  # fmt: skip
APPEND_SIZE = 1000  # events per append, when they share their metadata
# Events per import transaction (whole lines): large enough that the transaction's fixed costs
# vanish, small enough that a concurrent command waits for the log's lock only briefly.
BULK_EVENTS = 5000
READ_AHEAD = 1000  # lines whose streams' versions and emails' owners are read together
EMAIL_EVENTS = ("UserRegistered", "UserEmailChanged")
CLAIMING_EVENTS = frozenset({*EMAIL_EVENTS, "UserPersonalDataErased"})  # take or release one
CHANGED = "the file changed since it was checked"
CONFLICT = (
    "another writer appended to a stream of this line or the next ones since they were checked;"
    " the lines before are written: run the import again to resume"
)

Claim = Callable[[str, UUID | None], UniqueClaim]  # (email, owner or None to release)
Advance = Callable[[int], None]  # bytes of the file done


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stream_text(value: Any) -> str:
    """A stream id in its canonical text (ValueError: not a UUID). An export's ids are
    canonical already: one match instead of parsing and formatting a UUID, on every line of
    both passes."""
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):
        return value
    return str(UUID(str(value)))


class AlreadyImported(ValueError):
    """Every line of the file was imported before (`ImportProgress`): nothing is written."""

    def __init__(self, progress: ImportProgress) -> None:
        super().__init__(
            f"this file was imported already ({progress.events:,} events, the last at "
            f"position {progress.position:,}): nothing written"
        )
        self.progress = progress


class ImportRefused(ValueError):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@functools.cache
def _data_fields(event_type: str) -> frozenset[str]:
    return frozenset(vars(EVENT_TYPES[event_type]).get("__annotations__", {}))


@dataclass
class Checker:
    """The first pass: each line on its own, each stream's version sequence, and emails
    unique within the file and against the store."""

    recorder: Any  # the store's application recorder
    claim: Claim
    versions: dict[str, int] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)  # normalised email -> its stream
    # Claims' owners in the store, read ahead for a page of lines (None: nobody's).
    owners: dict[tuple[str, str], UUID | None] = field(default_factory=dict)

    def read_ahead(self, texts: list[bytes], written: list[bool] | None = None) -> list[Any]:
        """Reads from the store, in one statement each, the last versions of the streams and
        the owners of the emails these lines name that were not read yet: `check` then asks
        the store nothing per line (a round trip per new stream bound the import). Returns
        each line parsed (None: not JSON), for `check` not to parse it again. Lines
        `written` already (by an import resumed) are parsed and nothing is read for them."""
        streams: set[str] = set()
        claims: set[tuple[str, str]] = set()
        parsed: list[Any] = []
        for index, text in enumerate(texts):
            try:
                envelope = orjson.loads(text)
            except orjson.JSONDecodeError:
                envelope = None
            parsed.append(envelope)
            if written is not None and written[index]:
                continue
            try:
                stream_id = stream_text(envelope["stream_id"])
            except (TypeError, KeyError, ValueError):
                continue  # `check` refuses it, naming the line
            if stream_id not in self.versions:
                streams.add(stream_id)
            data = envelope.get("data")
            email = data.get("email") if isinstance(data, dict) else None
            if isinstance(email, str) and envelope.get("event_type") in EMAIL_EVENTS:
                claim = self.claim(email, None)
                if (claim.scope, claim.key) not in self.owners:
                    claims.add((claim.scope, claim.key))
        found = self.recorder.last_versions(sorted(streams))
        self.versions.update({s: found.get(s, 0) for s in streams})
        owners = self.recorder.claim_owners(sorted(claims))
        self.owners.update({c: owners.get(c) for c in claims})
        return parsed

    def check(self, number: int, text: bytes, parsed: Any = None) -> dict[str, Any]:
        """The line checked and parsed (`parsed`: the line parsed already, None: not)."""

        def refuse(reason: str) -> ImportRefused:
            return ImportRefused(number, reason)

        try:
            envelope = orjson.loads(text) if parsed is None else parsed
        except orjson.JSONDecodeError as error:
            raise refuse(f"not JSON ({error})") from None
        if not isinstance(envelope, dict):
            raise refuse("not a JSON object")
        missing = ENVELOPE_FIELDS - envelope.keys()
        if missing:
            raise refuse(f"missing {', '.join(sorted(missing))}")
        event_type, stream_type = envelope["event_type"], envelope["stream_type"]
        if event_type not in EVENT_TYPES:
            raise refuse(f"unknown event type {event_type!r}")
        if (
            stream_type not in STREAM_TYPES
            or stream_type_of(EVENT_TYPES[event_type]) != stream_type
        ):
            raise refuse(f"{event_type} does not belong to stream type {stream_type!r}")
        try:
            stream_id = stream_text(envelope["stream_id"])
        except ValueError:
            raise refuse(f"stream_id {envelope['stream_id']!r} is not a UUID") from None
        current = CURRENT_SCHEMA_VERSIONS.get(event_type, 1)
        schema = envelope["schema_version"]
        if not (isinstance(schema, int) and 1 <= schema <= current):
            raise refuse(f"{event_type} has no schema version {schema!r} (current {current})")
        self._check_version(stream_id, envelope["stream_version"], refuse)
        try:
            recorded = datetime.fromisoformat(str(envelope["recorded_at"]).replace("Z", "+00:00"))
        except ValueError:
            raise refuse(f"recorded_at {envelope['recorded_at']!r} is not RFC 3339") from None
        if recorded.tzinfo is None:
            raise refuse("recorded_at has no time zone")
        metadata = envelope["metadata"]
        if not isinstance(metadata, dict) or not metadata.keys() >= METADATA_KEYS:
            raise refuse(f"metadata needs {', '.join(METADATA_FIELDS)}")
        self._check_data(envelope, refuse)
        if event_type in EMAIL_EVENTS:
            self._check_email(stream_id, envelope["data"].get("email"), refuse)
        return envelope | {"stream_id": stream_id, "recorded_at": recorded}

    def recheck(self, number: int, text: bytes, parsed: Any = None) -> dict[str, Any]:
        """A line `check` accepted before (its page's digest says so): parsed as `check`
        gives it, and checked again only against the store as it now is (each stream's
        versions continue the store's; an email is not another user's there)."""
        envelope = orjson.loads(text) if parsed is None else parsed
        stream_id = stream_text(envelope["stream_id"])

        def refuse(reason: str) -> ImportRefused:
            return ImportRefused(number, reason)

        self._check_version(stream_id, envelope["stream_version"], refuse)
        recorded = datetime.fromisoformat(str(envelope["recorded_at"]).replace("Z", "+00:00"))
        email = envelope["data"].get("email") if envelope["event_type"] in EMAIL_EVENTS else None
        if isinstance(email, str):
            self._check_stored_owner(stream_id, email, refuse)
        return envelope | {"stream_id": stream_id, "recorded_at": recorded}

    def _check_version(self, stream_id: str, version: Any, refuse: Callable) -> None:
        if stream_id not in self.versions:
            last = self.recorder.select_events(UUID(stream_id), desc=True, limit=1)
            self.versions[stream_id] = last[0].originator_version if last else 0
        expected = self.versions[stream_id] + 1
        if version != expected:
            raise refuse(
                f"stream {stream_id} version {version!r} breaks its sequence (expected {expected})"
            )
        self.versions[stream_id] = expected

    @staticmethod
    def _check_data(envelope: dict[str, Any], refuse: Callable) -> None:
        if not isinstance(envelope["data"], dict):
            raise refuse("data is not an object")
        try:
            data = upcast(envelope)["data"]
        except (KeyError, TypeError, ValueError, ArithmeticError) as error:
            raise refuse(
                f"data does not fit {envelope['event_type']} v{envelope['schema_version']}"
                f" ({type(error).__name__}: {error})"
            ) from None
        missing = _data_fields(envelope["event_type"]) - data.keys()
        if missing:
            raise refuse(f"data lacks {', '.join(sorted(missing))}")
        amounts = [data.get(name) for name in MONEY_FIELDS if name in data]
        amounts += [line.get("unit_price") for line in data.get("lines", ())]
        for amount in amounts:
            if not (isinstance(amount, str) and MONEY.match(amount)):
                raise refuse(f"bad money amount {amount!r} (a decimal string like 12.50)")
        Checker._check_bounds(data, refuse)

    @staticmethod
    def _check_bounds(data: dict[str, Any], refuse: Callable) -> None:
        values = [(name, data[name]) for name in data]
        values += [(name, v) for line in data.get("lines", ()) for name, v in line.items()]
        for name, value in values:
            if name in MONEY_BOUNDS and Decimal(value) > MONEY_BOUNDS[name]:
                raise refuse(f"{name} {value} is above {MONEY_BOUNDS[name]}")
            if name in COUNT_BOUNDS:
                low, high = COUNT_BOUNDS[name]
                if not (isinstance(value, int) and not isinstance(value, bool)):
                    raise refuse(f"{name} {value!r} is not a whole number")
                if not low <= value <= high:
                    raise refuse(f"{name} {value} is outside {low}..{high}")
            if isinstance(value, str) and (char := forbidden_character(value, multiline=True)):
                raise refuse(f"{name} holds a control character (U+{ord(char):04X})")

    def _check_email(self, stream_id: str, email: Any, refuse: Callable) -> None:
        if email is None:
            return
        if not isinstance(email, str):
            raise refuse("email is not a string")
        owner = self.emails.setdefault(normalize_email(email), stream_id)
        if owner != stream_id:
            raise refuse(f"email {email!r} already belongs to stream {owner}")
        self._check_stored_owner(stream_id, email, refuse)

    def _check_stored_owner(self, stream_id: str, email: str, refuse: Callable) -> None:
        claim = self.claim(email, None)
        wanted = (claim.scope, claim.key)
        if wanted in self.owners:
            stored = self.owners[wanted]
        else:
            stored = self.recorder.claim_owner(claim.scope, claim.key)
        if stored is not None and str(stored) != stream_id:
            raise refuse(f"email {email!r} already belongs to user {stored} in the store")


def lines_of(path: Path, whole: Any = None) -> Iterator[tuple[int, bytes, int]]:
    """(line number, text, bytes read so far); blank lines are skipped. `whole`: a hashlib
    object updated with every byte read."""
    done = 0
    with path.open("rb") as file:
        for number, text in enumerate(file, start=1):
            done += len(text)
            if whole is not None:
                whole.update(text)
            if text.strip():
                yield number, text, done


def file_digest(path: Path) -> str:
    """The file's SHA-256 (hex): which file an import's progress is of."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


Line = tuple[int, bytes, int]  # (line number, text, bytes read so far)


Page = tuple[list[Line], bytes, list[Any]]  # lines, their digest, each parsed (None: not JSON)


def read_ahead(path: Path, checker: Checker, written: int = 0, whole: Any = None) -> Iterator[Page]:
    """`lines_of` in pages of `READ_AHEAD` lines, each with its digest (`_digest`) and its
    lines parsed, the store read for each page before it is checked (not for the lines up to
    line `written`, which an import resumed wrote before)."""
    page: list[Line] = []

    def done() -> Page:
        texts = [text for _, text, _ in page]
        return page, _digest(page), checker.read_ahead(texts, [n <= written for n, _, _ in page])

    for line in lines_of(path, whole):
        page.append(line)
        if len(page) == READ_AHEAD:
            yield done()
            page = []
    if page:
        yield done()


def _digest(page: list[Line]) -> bytes:
    """SHA-256 of a page's lines with their numbers: another line, or the same one moved,
    gives another digest."""
    digest = hashlib.sha256()
    for number, text, _ in page:
        digest.update(b"%d:%d:" % (number, len(text)))
        digest.update(text)
    return digest.digest()


@dataclass(frozen=True)
class CheckedFile:
    """What the check of a file proved: its size and the digest of each page of lines, for
    the write to see that it writes what was checked."""

    path: Path
    count: int  # lines checked (those an earlier run wrote are not)
    size: int
    pages: tuple[bytes, ...]
    digest: str  # the whole file's (`file_digest`)
    progress: ImportProgress | None  # of an earlier run of the same file, to resume


def progress_of(path: Path, recorder: Any) -> tuple[str, ImportProgress | None]:
    """The file's digest and how far an earlier import of it got; raises AlreadyImported
    when it finished."""
    digest = file_digest(path)
    progress = recorder.import_progress(digest)
    if progress is not None and progress.finished:
        raise AlreadyImported(progress)
    return digest, progress


def check_file(path: Path, recorder: Any, claim: Claim, advance: Advance) -> CheckedFile:
    """Checks every line not written by an earlier run of the same file; raises
    ImportRefused at the first bad one, AlreadyImported when every line was written."""
    digest, progress = progress_of(path, recorder)
    written = progress.lines if progress else 0
    checker = Checker(recorder, claim)
    count = 0
    digests = []
    size = path.stat().st_size
    whole = hashlib.sha256()
    for page, page_digest, parsed in read_ahead(path, checker, written, whole):
        for (number, text, _), envelope in zip(page, parsed, strict=True):
            if number > written:
                checker.check(number, text, envelope)
                count += 1
        advance(page[-1][2])  # per page: a progress bar's update costs as much as a check
        digests.append(page_digest)
    if whole.hexdigest() != digest:
        raise ImportRefused(1, CHANGED)
    return CheckedFile(path, count, size, tuple(digests), digest, progress)


def import_file(
    path: Path,
    recorder: Any,
    claim: Claim,
    advance: Advance,
    checked: CheckedFile | None = None,
) -> int:
    """Writes the file in large transactions (`recorder.import_batch`: the events loaded in
    bulk, BULK_EVENTS a transaction, of whole lines, in the file's order), consecutive events
    with the same metadata in one append; returns the events written.

    Each transaction records how many lines of the file are written: a run that failed (a
    connection lost, a refusal) leaves whole transactions, and running the same file again
    resumes after the last one (`ImportProgress`); once every line is written, a re-run
    writes nothing (AlreadyImported).

    Without `checked`, each line is checked in full as it goes. With it (the file's check,
    `check_file`), the file's content is not checked again: its size must be the checked
    one before anything is written, and each page's digest the checked page's before any of
    its lines is written (else ImportRefused: the file changed since it was checked); each
    line is checked again only against the store as it now is (`Checker.recheck`)."""
    if checked is not None and (checked.path != path or path.stat().st_size != checked.size):
        raise ImportRefused(1, CHANGED)
    if checked is None:
        digest, progress = progress_of(path, recorder)
    else:
        digest, progress = checked.digest, checked.progress
    written = progress.lines if progress else 0

    def appends() -> Iterator[tuple[Append, int]]:
        """Each append with the number of the file's last line it holds."""
        checker = Checker(recorder, claim)
        pending: list[RecordedEvent] = []
        claims: list[UniqueClaim] = []
        metadata: dict[str, Any] = {}
        emails: dict[str, str] = {}  # stream -> its current email, released when it changes
        check = checker.check if checked is None else checker.recheck
        pages = last = 0
        for page, digest, parsed in read_ahead(path, checker, written):
            if checked is not None and (
                pages >= len(checked.pages) or checked.pages[pages] != digest
            ):
                raise ImportRefused(page[0][0], CHANGED)
            pages += 1
            for (number, text, _), line in zip(page, parsed, strict=True):
                if number <= written:  # by an earlier run: only whose email each user has
                    _claims(line | {"stream_id": stream_text(line["stream_id"])}, emails, claim)
                    continue
                envelope = check(number, text, line)
                if pending and (envelope["metadata"] != metadata or len(pending) >= APPEND_SIZE):
                    yield Append(pending, metadata, claims), last
                    pending, claims = [], []
                metadata = envelope["metadata"]
                pending.append(_recorded(envelope))
                claims += _claims(envelope, emails, claim)
                last = number
            advance(page[-1][2])
        if checked is not None and pages != len(checked.pages):
            raise ImportRefused(1, CHANGED)
        if pending:
            yield Append(pending, metadata, claims), last

    # One transaction is written (in a thread: the database's share of it overlaps reading
    # the next one) while the next is read and checked; each waits for the one before.
    events = before = progress.events if progress else 0
    with ThreadPoolExecutor(1, thread_name_prefix="eventkeep-import") as writer:
        writing: Future[ImportProgress] | None = None
        first = submitted = written  # the line before the one being written; the last sent

        def settle() -> None:
            """Waits for the transaction being written; its failure ends the import, nothing
            after it is written."""
            if writing is None:
                return
            try:
                writing.result()
            except IntegrityError as error:  # a version another writer took since the check
                raise ImportRefused(first + 1, f"{CONFLICT} ({error})") from None

        def write(batch: list[Append], lines: int, *, finished: bool) -> None:
            nonlocal writing, events, first, submitted
            settle()
            first, submitted = submitted, lines
            writing = writer.submit(
                recorder.import_batch,
                batch,
                digest=digest,
                lines=lines,
                events_before=events,
                finished=finished,
            )
            events += sum(len(append.events) for append in batch)

        batch: list[Append] = []
        size = lines = 0
        for append, last in appends():
            if size + len(append.events) > BULK_EVENTS and batch:
                write(batch, lines, finished=False)
                batch, size = [], 0
            batch.append(append)
            size += len(append.events)
            lines = last
        write(batch, max(lines, written), finished=True)
        settle()
    return events - before


def _recorded(envelope: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        originator_id=UUID(envelope["stream_id"]),
        originator_version=envelope["stream_version"],
        topic=envelope["event_type"],
        state=orjson.dumps(envelope["data"]),
        stream_type=envelope["stream_type"],
        schema_version=envelope["schema_version"],
        recorded_at=envelope["recorded_at"],
    )


def _claims(envelope: dict[str, Any], emails: dict[str, str], claim: Claim) -> list[UniqueClaim]:
    stream_id, event_type = envelope["stream_id"], envelope["event_type"]
    if event_type not in CLAIMING_EVENTS:
        return []
    made = []
    if event_type in ("UserEmailChanged", "UserPersonalDataErased") and stream_id in emails:
        made.append(claim(emails.pop(stream_id), None))
    email = envelope["data"].get("email") if event_type != "UserPersonalDataErased" else None
    if event_type in ("UserRegistered", "UserEmailChanged") and email:
        made.append(claim(email, UUID(stream_id)))
        emails[stream_id] = email
    return made
