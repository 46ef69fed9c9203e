"""The `eventkeep` command line, run in-process with Typer's runner."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from uvicorn.importer import import_from_string

from eventkeep.api import cli
from eventkeep.api.admission_protocol import AdmittingHttpToolsProtocol
from eventkeep.api.keys import Role
from eventkeep.bootstrap import build_key_store
from eventkeep.settings import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("EVENTKEEP_POSTGRES_URL", raising=False)
    monkeypatch.delenv("EVENTKEEP_CLAIM_SECRET", raising=False)
    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def store() -> Any:
    return build_key_store(Settings())


def run(*args: str) -> Any:
    return runner.invoke(cli.app, list(args))


def test_keys_create_prints_the_key_alone_on_its_last_line() -> None:
    result = run("keys", "create", "--role", "analyst", "--name", "bi")
    assert result.exit_code == 0, result.output
    key = result.output.splitlines()[-1]
    verified = store().verify(key)
    assert verified is not None
    assert (verified.role, verified.name) == (Role.analyst, "bi")


def test_keys_create_refuses_an_unknown_role() -> None:
    result = run("keys", "create", "--role", "root")
    assert result.exit_code == 2


def test_keys_create_refuses_the_customer_role_clearly() -> None:
    """Customers log in; no key has their role (it once ended in a ValueError traceback)."""
    result = run("keys", "create", "--role", "customer")
    assert result.exit_code == 2, result.output
    assert "customer logs in" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert store().list() == []


def test_keys_list_shows_ids_and_roles_never_secrets() -> None:
    key = run("keys", "create", "--role", "auditor").output.splitlines()[-1]
    key_id, secret = key.split("_", 2)[1:]
    result = run("keys", "list")
    assert result.exit_code == 0
    assert key_id in result.output and "auditor" in result.output and "active" in result.output
    assert secret not in result.output


def test_keys_revoke() -> None:
    key = run("keys", "create", "--role", "client").output.splitlines()[-1]
    key_id = key.split("_")[1]
    assert run("keys", "revoke", key_id).exit_code == 0
    assert store().verify(key) is None
    again = run("keys", "revoke", key_id)
    assert again.exit_code == 1
    assert "No active key" in again.output


@pytest.mark.parametrize(
    "command, says",
    [
        ((), ["EVENTKEEP_HOME", "EVENTKEEP_POSTGRES_URL", "EVENTKEEP_KAFKA_BOOTSTRAP", "serve"]),
        (("serve",), ["--host", "--port", "--workers", "EVENTKEEP_HOST", "EVENTKEEP_PORT"]),
        (("keys",), ["create", "list", "revoke"]),
        (("keys", "create"), ["--role", "--name", "client", "admin", "last line"]),
        (("keys", "list"), ["never the secrets"]),
        (("keys", "revoke"), ["key_id", "The key's id"]),
    ],
)
def test_help_explains_each_command(command: tuple[str, ...], says: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    for words in says:
        assert words in result.output


def bootstrap_key(result: Any) -> str:
    """The key serve wrote to the 0600 file whose path it printed (never the key itself)."""
    path = Path(result.output.splitlines()[-1])
    assert path.stat().st_mode & 0o777 == 0o600
    key = path.read_text().strip()
    assert key.startswith("ek_") and key not in result.output
    return key


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **options: calls.append(options))
    return calls


def test_serve_prints_urls_and_a_fresh_bootstrap_admin_key(served: list[dict[str, Any]]) -> None:
    first = run("serve", "--port", "8123")
    assert first.exit_code == 0, first.output
    assert "http://127.0.0.1:8123" in first.output
    assert "http://127.0.0.1:8123/docs" in first.output
    first_key = bootstrap_key(first)
    assert store().verify(first_key).role == Role.admin

    second_key = bootstrap_key(run("serve"))

    assert store().verify(first_key) is None
    assert store().verify(second_key) is not None
    assert [(call["port"], call["workers"], call["factory"]) for call in served] == [
        (8123, 1, True),
        (8000, 1, True),
    ]
    # Its connections refuse at the admission limit (tests/api/test_admission_protocol.py).
    assert {import_from_string(call["http"]) for call in served} == {AdmittingHttpToolsProtocol}


def test_embedded_serve_runs_one_process(served: list[dict[str, Any]]) -> None:
    result = run("serve", "--workers", "2")
    assert result.exit_code == 2
    assert "one process" in result.output
    assert served == []


def test_a_bad_setting_is_reported_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", "postgresql://db/shop")
    result = run("keys", "list")
    assert result.exit_code == 2
    assert "EVENTKEEP_CLAIM_SECRET" in result.output
    assert "Traceback" not in result.output


UNREACHABLE = "postgresql://eventkeep:eventkeep@127.0.0.1:1/nowhere"


def said(result: Any) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "command",
    [
        ("replay", "status"),
        ("replay", "rebuild"),
        ("audit", "verify"),
        ("audit", "export", "history.jsonl"),
        ("seed", "--users", "1", "--products", "1", "--orders", "0"),
        ("keys", "list"),
        ("keys", "create", "--role", "client"),
        ("serve",),
    ],
    ids=" ".join,
)
def test_an_unreachable_postgresql_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    served: list[dict[str, Any]],
    command: tuple[str, ...],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", UNREACHABLE)
    monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", "test-secret-9f3Kq2xV7mZ1bR8tL4wN6yH0")
    monkeypatch.setenv("EVENTKEEP_POOL_TIMEOUT", "1")
    monkeypatch.chdir(tmp_path)

    result = run(*command)

    assert result.exit_code == 2, result.output
    assert said(result) == [said(result)[0]], result.output
    assert "cannot reach PostgreSQL at 127.0.0.1:1/nowhere" in result.output
    assert "Traceback" not in result.output
    assert served == []


@pytest.mark.parametrize("command", [("replay", "status"), ("seed",), ("keys", "list")])
def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.setenv("EVENTKEEP_POOL_SIZE", "none")
    result = run(*command)
    assert result.exit_code == 2
    assert said(result) == [said(result)[0]], result.output
    assert "EVENTKEEP_POOL_SIZE" in result.output


@pytest.mark.parametrize("command", ["relay", "project"])
def test_distributed_processes_refuse_the_embedded_mode_in_one_line(command: str) -> None:
    result = run(command)
    assert result.exit_code == 2
    assert said(result) == [said(result)[0]], result.output
    assert "EVENTKEEP_POSTGRES_URL" in result.output


def test_a_second_serve_on_a_busy_port_leaves_the_running_bootstrap_key(
    served: list[dict[str, Any]],
) -> None:
    with socket.socket() as running:  # the first server, still serving on its port
        running.bind(("127.0.0.1", 0))
        running.listen()
        port = str(running.getsockname()[1])
        running.close()
        first = run("serve", "--port", port)
        key = bootstrap_key(first)
        with socket.socket() as listening:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind(("127.0.0.1", int(port)))
            listening.listen()

            second = run("serve", "--port", port)

    assert second.exit_code == 2
    assert said(second) == [said(second)[0]], second.output
    assert f"cannot serve on 127.0.0.1:{port}" in second.output
    assert store().verify(key) is not None  # the running server's key still works
    assert len(served) == 1


def test_seed_run_twice_refuses_the_second_time_in_one_line() -> None:
    sizes = ("--users", "3", "--products", "2", "--orders", "4", "--per-save", "2")
    first = run("seed", *sizes)
    assert first.exit_code == 0, first.output

    second = run("seed", *sizes)

    assert second.exit_code == 1
    assert said(second) == [said(second)[0]], second.output
    assert "seeded already" in second.output
    assert "Traceback" not in second.output


def test_the_export_bar_ends_full_with_its_rate(tmp_path: Path) -> None:
    assert run("seed", "--users", "3", "--products", "2", "--orders", "4").exit_code == 0
    target = tmp_path / "history.jsonl"

    result = run("audit", "export", str(target))

    assert result.exit_code == 0, result.output
    events = len(target.read_text().splitlines())
    final = [line for line in said(result) if "exporting" in line][-1]
    assert f"{events}/{events}" in final
    rate = final.split(f"{events}/{events}")[1].split("events/s")[0].strip().replace(",", "")
    assert float(rate) > 0
