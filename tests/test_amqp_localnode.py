"""
The private RabbitMQ node: a missing package, a directory the node cannot
reach, and a restart on the same data directory.
"""

import os
import shutil
import tempfile

import pytest
import pytest_twisted
from twisted.internet import reactor

from fixtures_rabbitmq import AMQPHelper
from mqtwist.amqp.localnode import (
    LocalRabbitMQ,
    LocalRabbitMQService,
    RabbitMQNotInstalled,
    RabbitMQStartFailed,
)

# txamqp still uses defer.returnValue
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
)


@pytest.fixture
def dataDir():
    # not pytest's tmp_path: its parents are private to root, and the node
    # runs as the rabbitmq user
    path = tempfile.mkdtemp(prefix="mqtwist-test-node-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_twisted.inlineCallbacks
def test_not_installed_says_how_to_fix(dataDir):
    node = LocalRabbitMQ(dataDir, rabbitmqBin="/nonexistent/rabbitmq", reactor=reactor)
    with pytest.raises(RabbitMQNotInstalled) as info:
        yield node.start()
    message = str(info.value)
    assert "/nonexistent/rabbitmq/rabbitmq-server is missing" in message
    assert "apt-get install rabbitmq-server" in message
    assert "--amqp" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the node to another user")
@pytest_twisted.inlineCallbacks
def test_unreachable_data_directory(dataDir):
    os.chmod(dataDir, 0o700)
    node = LocalRabbitMQ(os.path.join(dataDir, "node"), reactor=reactor)
    with pytest.raises(RabbitMQStartFailed) as info:
        yield node.start()
    assert f"cannot enter {dataDir}" in str(info.value)
    assert "chmod o+x" in str(info.value)


@pytest.mark.skipif(
    not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"),
    reason="rabbitmq-server is not installed",
)
@pytest_twisted.inlineCallbacks
def test_restart_on_same_directory_keeps_durable_queues(dataDir):
    first = LocalRabbitMQService(LocalRabbitMQ(dataDir, reactor=reactor))
    second = LocalRabbitMQService(LocalRabbitMQ(dataDir, reactor=reactor))
    try:
        first.startService()
        url = yield first.whenStarted()
        helper = AMQPHelper(url, reactor)
        yield helper.connect()
        yield helper.declare("kept", {"x-max-priority": 5})
        yield helper.publish("kept", b"survives a restart")
        yield helper.close()
        yield first.stopService()
        assert not os.path.exists(os.path.join(dataDir, "rabbitmq.pid"))

        second.startService()
        url = yield second.whenStarted()
        assert second.node.nodeName == first.node.nodeName
        helper = AMQPHelper(url, reactor)
        yield helper.connect()
        received = yield helper.fetch("kept")
        yield helper.close()
        assert [r.body for r in received] == [b"survives a restart"]
    finally:
        for service in (first, second):
            if service.running:
                yield service.stopService()
