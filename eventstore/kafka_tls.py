"""How eventkeep's Kafka clients reach the brokers: plaintext, or TLS with the brokers'
certificate checked against a CA and, for brokers that require it (mTLS,
`ssl.client.auth=required`), a client certificate.

Every producer, consumer and admin client (the relay, the projectors, the benchmarks, the
tests) takes its security options from `KafkaTLS.options()`: the settings name the files
(EVENTKEEP_KAFKA_SSL_CAFILE, _CERTFILE, _KEYFILE, and _PASSWORD for an encrypted key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KafkaTLS:
    cafile: str | None = None  # the CA that signed the brokers' certificates; None: plaintext
    certfile: str | None = None  # the client certificate (mTLS)
    keyfile: str | None = None  # its private key
    password: str | None = None  # the key's password, when it is encrypted
    check_hostname: bool = True  # the broker's certificate must name the address connected to

    @property
    def enabled(self) -> bool:
        return self.cafile is not None

    def options(self) -> dict[str, Any]:
        """kafka-python's keyword arguments for any client (empty for plaintext)."""
        if self.cafile is None:
            if self.certfile or self.keyfile:
                raise ValueError("a Kafka client certificate needs EVENTKEEP_KAFKA_SSL_CAFILE")
            return {}
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError(
                "set both EVENTKEEP_KAFKA_SSL_CERTFILE and EVENTKEEP_KAFKA_SSL_KEYFILE, or neither"
            )
        options: dict[str, Any] = {
            "security_protocol": "SSL",
            "ssl_cafile": self.cafile,
            "ssl_check_hostname": self.check_hostname,
        }
        if self.certfile:
            options |= {"ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile}
        if self.password:
            options["ssl_password"] = self.password
        return options

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> KafkaTLS:
        """From EVENTKEEP_KAFKA_SSL_* (for code without `Settings`: tests, scripts)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(f"EVENTKEEP_KAFKA_SSL_{name}") or None

        return cls(get("CAFILE"), get("CERTFILE"), get("KEYFILE"), get("PASSWORD"))
