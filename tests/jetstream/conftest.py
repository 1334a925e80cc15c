"""What the JetStream tests share: a connection to the test run's server."""
from __future__ import annotations

import pytest

from grafos.mq.topic import TopicManager


@pytest.fixture
def js(nats_url):
    m = TopicManager.connect(nats_url)
    yield m
    m.close()
