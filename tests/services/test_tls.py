"""Encryption in transit: the TLS settings of EVENTKEEP_POSTGRES_URL reach every connection of
the event store (a wrong CA is refused, the right one gives TLS connections), Redis and Kafka
refuse plaintext when infra/services runs them with TLS, and `eventkeep serve --certfile
--keyfile` answers a real HTTPS request (and nothing in plaintext)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventkeep.bootstrap import build, shop_env
from eventkeep.eventstore.kafka_tls import KafkaTLS
from eventkeep.settings import Settings
from tests.conftest_services import POSTGRES_URL, REDIS_URL, require_env

pytestmark = pytest.mark.services

SECRET = "tls-test-secret-Qm7Zp2Lx9Vb4Nc8Rt1Wy6Hk3"


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A CA of our own (certificate, key): what a client wrongly trusts in the tests."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def server_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca, certificate, key)."""
    ca, ca_key = make_ca(folder, "test-ca")
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return ca, cert, key


def with_params(url: str, **params: str) -> str:
    merged = conninfo_to_dict(url) | params
    return make_conninfo(**{k: str(v) for k, v in merged.items()})


def tls_url() -> str:
    url = require_env(POSTGRES_URL)
    if conninfo_to_dict(url).get("sslmode") != "verify-full":
        pytest.fail(
            f"{POSTGRES_URL} has no sslmode=verify-full: start the services with TLS "
            "(EVENTKEEP_TLS=on, the default of infra/services)",
            pytrace=False,
        )
    return url


def test_the_postgres_url_asks_for_verify_full() -> None:
    params = conninfo_to_dict(tls_url())
    assert params["sslmode"] == "verify-full"
    assert Path(str(params["sslrootcert"])).is_file()


def test_every_connection_of_the_event_store_is_tls(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, postgres_url=tls_url(), claim_secret=SECRET)
    env = shop_env(settings)
    assert "sslrootcert" in env["POSTGRES_CONNINFO"]
    with build(settings, role="test") as system:
        recorder: Any = system.recorder
        recorder.max_notification_id()  # the pool's connection
        with recorder.datastore.get_connection() as connection:
            row = connection.execute(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        assert row["ssl"] is True, row
        # Group commit's own connection and the LISTEN connection take the pool's settings.
        kwargs = recorder.datastore.pool.kwargs
        assert kwargs["sslmode"] == "verify-full" and "sslrootcert" in kwargs


def test_a_wrong_ca_is_refused_by_the_event_store(tmp_path: Path) -> None:
    wrong, _ = make_ca(tmp_path, "not-the-servers-ca")
    url = with_params(tls_url(), sslrootcert=str(wrong))
    settings = Settings(home=tmp_path, postgres_url=url, claim_secret=SECRET, pool_timeout=2)
    # The pool gives up after its timeout (its log names the cause); psycopg alone says it.
    with (
        pytest.raises(Exception, match=r"certificate verify failed|couldn.t get a connection"),
        build(settings, role="test") as system,
    ):
        system.recorder.max_notification_id()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url, connect_timeout=5).close()


def test_postgres_refuses_plaintext() -> None:
    url = with_params(tls_url(), sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(url, connect_timeout=5).close()


def test_redis_speaks_tls_with_a_password_user_only() -> None:
    url = require_env(REDIS_URL)
    assert url.startswith("rediss://"), f"{REDIS_URL} is not a rediss:// URL"
    assert redis.Redis.from_url(url, socket_timeout=5).ping()
    plain = url.replace("rediss://", "redis://", 1).split("?", 1)[0]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2, socket_connect_timeout=2).ping()
    anonymous = "rediss://" + url.split("@", 1)[1]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(anonymous, socket_timeout=5).set("k", "v")


def test_kafka_needs_tls_and_a_client_certificate() -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    tls = KafkaTLS.from_environment()
    assert tls.enabled and tls.certfile, "EVENTKEEP_KAFKA_SSL_* are not set"
    bootstrap = require_env("EVENTKEEP_KAFKA_BOOTSTRAP")
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10_000, **tls.options()
    )
    try:
        admin.list_topics()
    finally:
        admin.close()
    without_certificate = KafkaTLS(cafile=tls.cafile).options()
    for options in ({}, without_certificate):
        with pytest.raises(KafkaError):  # "unable to bootstrap"
            KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000, **options)


# --- the API over HTTPS -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HttpsServer:
    """`eventkeep serve --certfile --keyfile`, embedded, a subprocess."""

    def __init__(self, home: Path, cert: Path, key: Path) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTKEEP_")}
        env |= {"EVENTKEEP_HOME": str(home), "EVENTKEEP_PORT": str(self.port)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventkeep", "serve", "--certfile", str(cert),
             "--keyfile", str(key)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def wait_ready(self, ca: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.lines)
            try:
                url = f"https://127.0.0.1:{self.port}/healthz"
                if (
                    httpx.get(
                        url, verify=ssl.create_default_context(cafile=str(ca)), timeout=1
                    ).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("serve never answered over HTTPS:\n" + "".join(self.lines))

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(20)
        return "".join(self.lines)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[HttpsServer, Path]]:
    ca, cert, key = server_certificate(tmp_path / "tls")
    server = HttpsServer(tmp_path / "home", cert, key)
    try:
        server.wait_ready(ca)
        yield server, ca
    finally:
        server.stop()


def test_serve_answers_https_with_its_certificate(https_server: tuple[HttpsServer, Path]) -> None:
    server, ca = https_server
    answer = httpx.get(
        f"https://127.0.0.1:{server.port}/healthz",
        verify=ssl.create_default_context(cafile=str(ca)),
        timeout=5,
    )
    assert answer.status_code == 200
    assert f"https://127.0.0.1:{server.port}" in "".join(server.lines)
    # A client that does not trust the CA refuses the server; plaintext HTTP gets no answer.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{server.port}/healthz", timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)


def test_serve_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from eventkeep.api.cli import app

    _, cert, _ = server_certificate(tmp_path / "tls")
    result = CliRunner().invoke(
        app,
        ["serve", "--certfile", str(cert)],
        env={"EVENTKEEP_HOME": str(tmp_path / "home"), "EVENTKEEP_POSTGRES_URL": None},
    )
    assert result.exit_code == 2, result.output
    assert "--keyfile" in result.output
