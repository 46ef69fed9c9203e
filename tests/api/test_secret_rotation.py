"""`eventkeep keys rotate-secret`, in both modes: after the rotation every event reads as before
with the new secret (personal data included, erased data still erased), the hash chain still
verifies, email claims still hold and release, and the old secret opens nothing any more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from eventkeep.api import cli
from eventkeep.bootstrap import build
from eventkeep.commands.messages import (
    ChangeUserEmail,
    CommandContext,
    ErasePersonalData,
    RegisterUser,
)
from eventkeep.replay import audit
from eventkeep.settings import Settings
from tests.api.conftest import SHOP_TABLES, TEST_SECRET
from tests.conftest_services import POSTGRES_URL, require_env
from tests.eventstore.stores import drop_postgres_tables

NEW_SECRET = "rotated-secret-Lr4Wq8Zx2Vn6Bt0Hy3Jk7Mp5"
CONTEXT = CommandContext(actor="test", correlation_id="rotation")


@pytest.fixture(params=["embedded", "distributed"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    home = tmp_path / "home"
    if request.param == "embedded":
        yield Settings(home=home, postgres_url=None, claim_secret=None)
        return
    drop_postgres_tables(*SHOP_TABLES, "shop_events_data_keys")
    yield Settings(home=home, postgres_url=require_env(POSTGRES_URL), claim_secret=TEST_SECRET)


def send(settings: Settings, command: Any) -> Any:
    with build(settings, role="test") as system:
        return system.bus.handle(command, CONTEXT)


def emails(settings: Settings, ids: list[UUID]) -> list[str | None]:
    with build(settings, role="test") as system:
        return [system.shop.repository.get(i).email for i in ids]


def rotate(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("EVENTKEEP_HOME", str(settings.home))
    if settings.mode == "distributed":
        monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", require_env(POSTGRES_URL))
        monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", settings.claim_secret.get_secret_value())
        monkeypatch.setenv("EVENTKEEP_NEW_CLAIM_SECRET", NEW_SECRET)
    else:
        monkeypatch.delenv("EVENTKEEP_POSTGRES_URL", raising=False)
        monkeypatch.delenv("EVENTKEEP_CLAIM_SECRET", raising=False)
        monkeypatch.delenv("EVENTKEEP_NEW_CLAIM_SECRET", raising=False)
    result = CliRunner().invoke(cli.app, ["keys", "rotate-secret"])
    assert result.exit_code == 0, result.output
    assert "Re-wrapped 2 data keys and re-keyed 2 email claims" in result.output
    if settings.mode == "distributed":
        return settings.model_copy(update={"claim_secret": SecretStr(NEW_SECRET)})
    fresh = Settings(home=settings.home, postgres_url=None, claim_secret=None)
    assert fresh.claim_secret != settings.claim_secret  # HOME/secret was replaced
    assert not (settings.home / "secret.new").exists()
    assert (settings.home / "secret").stat().st_mode & 0o777 == 0o600
    return fresh


def test_after_a_rotation_everything_reads_with_the_new_secret_only(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = send(settings, RegisterUser("ada@example.org", "Ada", "Lovelace")).id
    bob = send(settings, RegisterUser("bob@example.org", "Bob", "B")).id
    eve = send(settings, RegisterUser("eve@example.org", "Eve", "E")).id
    send(settings, ChangeUserEmail(bob, "bobby@example.org"))
    send(settings, ErasePersonalData(eve))
    with build(settings, role="test") as system:
        before = audit.history(system.shop, ada)

    rotated = rotate(settings, monkeypatch)

    assert emails(rotated, [ada, bob, eve]) == ["ada@example.org", "bobby@example.org", None]
    with build(rotated, role="test") as system:
        assert audit.history(system.shop, ada) == before
        assert audit.verify(system.recorder).intact
    # Claims hold under the new key, and release as before.
    with pytest.raises(Exception, match="email"):
        send(rotated, RegisterUser("ADA@example.org", "A", "L"))
    send(rotated, ChangeUserEmail(ada, "ada@example.net"))
    send(rotated, RegisterUser("ada@example.org", "Ada", "Two"))
    carol = send(rotated, RegisterUser("carol@example.org", "Carol", "C")).id
    assert emails(rotated, [carol]) == ["carol@example.org"]
    # The old secret opens nothing any more.
    with pytest.raises(Exception):  # noqa: B017 (the AEAD refuses a key it did not wrap)
        emails(settings, [ada])


def test_a_weak_or_missing_new_secret_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if settings.mode == "embedded":
        monkeypatch.setenv("EVENTKEEP_HOME", str(settings.home))
        monkeypatch.delenv("EVENTKEEP_POSTGRES_URL", raising=False)
        monkeypatch.delenv("EVENTKEEP_CLAIM_SECRET", raising=False)
    else:
        monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", require_env(POSTGRES_URL))
        monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", TEST_SECRET)
        monkeypatch.delenv("EVENTKEEP_NEW_CLAIM_SECRET", raising=False)
        missing = CliRunner().invoke(cli.app, ["keys", "rotate-secret"])
        assert missing.exit_code == 2
        assert "EVENTKEEP_NEW_CLAIM_SECRET" in missing.output
    monkeypatch.setenv("EVENTKEEP_NEW_CLAIM_SECRET", "too-short")
    weak = CliRunner().invoke(cli.app, ["keys", "rotate-secret"])
    assert weak.exit_code == 2
    assert "32 random bytes" in " ".join(weak.output.split())
    assert "Traceback" not in weak.output
