"""Kafka ACLs (issue 10 item 4): with mTLS the brokers know each client's certificate, and
KRaft's authorizer gives each role only its part. The relay's certificate creates, describes
and writes the topics; a projector's reads them and its consumer groups and cannot produce
(TopicAuthorizationFailed); the admin's (infra/services env's default) is a super user. The
relay and projectors of the composition root present their role's certificate."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAuthorizationFailedError

from eventkeep.bootstrap import kafka_tls, relay_settings
from eventkeep.settings import Settings
from tests.conftest_services import KAFKA_BOOTSTRAP, require_env


@pytest.fixture
def settings() -> Settings:
    settings = Settings(claim_secret="acl-test-secret-4Hq9zW2mX7pL1vR8tK3n")
    require_env(KAFKA_BOOTSTRAP)
    for role in ("relay", "projector"):
        assert getattr(settings, f"kafka_{role}_ssl_certfile") is not None, (
            f"infra/services env exports EVENTKEEP_KAFKA_{role.upper()}_SSL_CERTFILE"
        )
    return settings


@pytest.fixture
def topic(settings: Settings) -> Iterator[str]:
    name = f"acl-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_tls(settings).options()
    )
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        yield name
        admin.delete_topics([name])
    finally:
        admin.close()


def send(settings: Settings, options: dict[str, object], topic: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        max_block_ms=15000,
        request_timeout_ms=15000,
        retries=0,
        **options,
    )
    try:
        producer.send(topic, key=b"k", value=b"v").get(timeout=20)
    finally:
        producer.close(timeout=5)


def test_a_projectors_certificate_cannot_produce_and_the_relays_can(
    settings: Settings, topic: str
) -> None:
    projector = relay_settings(settings, "projector").tls
    relay = relay_settings(settings, "relay").tls
    assert projector.certfile == str(settings.kafka_projector_ssl_certfile)
    assert relay.certfile == str(settings.kafka_relay_ssl_certfile)
    with pytest.raises(TopicAuthorizationFailedError):
        send(settings, projector.options(), topic)
    send(settings, relay.options(), topic)

    # The projector reads what the relay wrote, in a consumer group of its own.
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"g-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
        **projector.options(),
    )
    try:
        consumer.subscribe([topic])
        message = next(iter(consumer))
        assert message.value == b"v"
        consumer.commit()
        assert consumer.committed(TopicPartition(topic, 0)) == message.offset + 1
    finally:
        consumer.close()
