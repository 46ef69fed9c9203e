"""A small TCP proxy for fault tests: forwards 127.0.0.1 connections to a real server and, on
demand, cuts every connection, cuts one right after forwarding a client message containing a
marker (COMMIT: the server commits, its answer never arrives), refuses new connections,
delays or freezes traffic.

The marker is found in the plaintext protocol: the proxied connections must not use TLS.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closing = False
        self.refusing = False  # new connections are closed at once
        self.delay = 0.0  # seconds before each forwarded chunk
        self._thawed = threading.Event()
        self._thawed.set()
        # One-shot: cut the connection after (or instead of) forwarding a client message
        # containing the marker.
        self._cut_marker: bytes | None = None
        self._cut_before = False
        self.cuts = 0
        self.client_messages = 0  # client chunks forwarded to the server (one per send)
        self._muted: set[int] = set()  # ids of client sockets whose answers are held back
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @classmethod
    def to(cls, url: str) -> TcpProxy:
        """A proxy to the server of a URL (postgresql://, redis://, rediss://)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 0)

    def url(self, url: str) -> str:
        """`url` going through the proxy: the same user, password, database and options
        (an ACL user's credentials must survive: without them a RESP3 client's handshake
        is refused with "HELLO must be called with the client already authenticated")."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}"))

    # --- faults ------------------------------------------------------------------------

    def cut_all(self) -> None:
        """Closes every open connection (both sides); new ones are accepted."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def cut_after(self, marker: bytes = b"COMMIT") -> None:
        """The next client message containing `marker` reaches the server, then both sides
        of its connection are closed before the server's answer is relayed."""
        self._cut_marker, self._cut_before = marker, False

    def cut_before(self, marker: bytes = b"COMMIT") -> None:
        """The next client message containing `marker` is dropped and its connection closed."""
        self._cut_marker, self._cut_before = marker, True

    def freeze(self) -> None:
        """Stops relaying in both directions; connections stay open (a silent network)."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Every connection cut and new ones refused inside the block."""
        self.refusing = True
        self.cut_all()
        try:
            yield
        finally:
            self.refusing = False

    def close(self) -> None:
        self._closing = True
        self._thawed.set()
        self._listener.close()
        self.cut_all()

    # --- relaying ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self._upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            for source, target, upstream in ((client, server, True), (server, client, False)):
                pair = (client, server)
                threading.Thread(
                    target=self._pump, args=(source, target, upstream, pair), daemon=True
                ).start()

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        upstream: bool,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                self._thawed.wait()
                if self.delay:
                    time.sleep(self.delay)
                marker = self._cut_marker
                if upstream and marker is not None and marker in chunk:
                    self._cut_marker = None
                    self.cuts += 1
                    if not self._cut_before:
                        # The server gets the message and answers; the answer is held back,
                        # and the connection closed once the server has surely read it.
                        self._muted.add(id(pair[0]))
                        target.sendall(chunk)
                        time.sleep(0.3)
                    break
                if not upstream and id(pair[0]) in self._muted:
                    continue
                if upstream:
                    self.client_messages += 1
                target.sendall(chunk)
        except OSError:
            pass
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        self._muted.discard(id(pair[0]))
        _close(*pair)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
