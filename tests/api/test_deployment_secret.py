"""The deployment secret: at least 32 random bytes, refused clearly otherwise; the email-claim
key and the data-key wrapping key are derived from it with HKDF under distinct labels, and
neither is the secret itself."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from eventkeep.api import cli
from eventkeep.bootstrap import build
from eventkeep.deployment_secret import DATA_KEY_WRAPPING, derive, email_claim_key
from eventkeep.settings import Settings

URL = "postgresql://eventkeep:eventkeep@127.0.0.1:1/nowhere"
STRONG = "Zq8w3E5r7T9y1U2i4O6p8A0s2D4f6G8h"


@pytest.mark.parametrize("weak", ["x", "local-services-secret", "a" * 64, "abab" * 16])
def test_a_weak_secret_is_refused_saying_how_to_make_one(tmp_path: Path, weak: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(home=tmp_path, postgres_url=URL, claim_secret=weak)
    message = str(refused.value)
    assert "EVENTKEEP_CLAIM_SECRET" in message
    assert "secrets.token_urlsafe(32)" in message


def test_a_strong_secret_is_taken(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, postgres_url=URL, claim_secret=STRONG)
    assert settings.claim_secret is not None


def test_the_embedded_secret_is_made_strong_and_a_weak_file_is_refused(tmp_path: Path) -> None:
    made = Settings(home=tmp_path / "a", postgres_url=None, claim_secret=None)
    assert made.claim_secret is not None and len(made.claim_secret.get_secret_value()) >= 43
    weak_home = tmp_path / "b"
    weak_home.mkdir()
    (weak_home / "secret").write_text("short")
    with pytest.raises(ValidationError, match="secret"):
        Settings(home=weak_home, postgres_url=None, claim_secret=None)


def test_the_command_line_refuses_a_weak_secret_in_one_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path))
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", URL)
    monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", "local-services-secret")
    result = CliRunner().invoke(cli.app, ["keys", "list"])
    assert result.exit_code == 2
    assert "32 random bytes" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_claims_and_wrapping_use_keys_derived_under_distinct_labels(tmp_path: Path) -> None:
    secret = STRONG.encode()
    claim_key, wrapping_key = email_claim_key(secret), derive(secret, DATA_KEY_WRAPPING)
    assert len({claim_key, wrapping_key, secret}) == 3
    assert len(claim_key) == len(wrapping_key) == 32
    settings = Settings(home=tmp_path, postgres_url=None, claim_secret=STRONG)
    system = build(settings, role="serve")  # type: ignore[arg-type]
    try:
        claim = system.bus.email_claim("Ada@Example.org", None)
    finally:
        system.close()
    with_derived = hmac.new(claim_key, b"ada@example.org", hashlib.sha256).hexdigest()
    with_secret = hmac.new(secret, b"ada@example.org", hashlib.sha256).hexdigest()
    assert claim.key == with_derived != with_secret
