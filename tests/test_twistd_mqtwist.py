"""
C{twistd mqtwist} as a user runs it: with a plugin from a separate
distribution, and with the private RabbitMQ node it starts when no broker
URL is given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest_twisted
from fixtures_rabbitmq import AMQPHelper
from fixtures_smtp import unusedPort
from test_amqp_localnode import nicenessOfThreads
from twisted.internet import reactor
from twistdprocess import brokerArguments, startTwistd

from mqtwist.amqp.url import BrokerURL

THIRD_PARTY_PLUGIN = '''
"""Signs every body with the remote host's name, a little later."""

from twisted.internet.task import deferLater
from zope.interface import implementer

from mqtwist import CONTINUE
from mqtwist.interfaces import IDataPlugin


@implementer(IDataPlugin)
class Signature:
    name = "signature"

    def smtpOutData(self, context, connection, message):
        def sign():
            message.setMime(message.mime + b"-- sent via " + connection.hostname.encode() + b"\\r\\n")
            return CONTINUE

        return deferLater(context.reactor, 0.001, sign)


signature = Signature()
'''


def writeDistribution(top: Path) -> Path:
    """
    A third-party distribution's files: an C{mqtwist/plugins/} folder with
    no C{__init__.py}, as the README tells plugin authors to ship it.
    """
    plugins = top / "mqtwist" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "signature_plugin.py").write_text(textwrap.dedent(THIRD_PARTY_PLUGIN))
    return top


@pytest_twisted.ensureDeferred
async def test_installed_third_party_plugin_changes_bodies(rabbitmq, amqp, smtpServer, tmp_path):
    site = writeDistribution(tmp_path / "site")
    env = {"PYTHONPATH": str(site)}
    listing = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "mqtwist", "--list-plugins"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "signature" in listing.stdout and "signature_plugin" in listing.stdout

    base = f"thirdparty-{uuid.uuid4().hex[:8]}"
    await amqp.declare(f"{base}.outbox")
    await amqp.declare(f"{base}.success")
    for n in range(20):
        job = {"id": f"t{n}", "recipient": f"r{n}@example.com", "mime": f"Subject: {n}\r\n\r\nbody {n}\r\n"}
        await amqp.publish(f"{base}.outbox", json.dumps(job).encode())
    twistd = startTwistd(
        *brokerArguments(rabbitmq),
        "--smarthost", f"{smtpServer.host}:{smtpServer.port}",
        "--plugins", "signature",
        "--outbox", f"{base}.outbox", "--success", f"{base}.success",
        env=env,
    )
    try:
        results = await amqp.collect(f"{base}.success", 20)
    finally:
        twistd.transport.signalProcess("TERM")
        await twistd.ended
    assert len(results) == 20
    mtas = {json.loads(r.body)["results"][0]["mta"] for r in results}
    (mta,) = mtas
    byRecipient = {m.rcptTos[0]: m.data for m in smtpServer.messages}
    for n in range(20):
        assert byRecipient[f"r{n}@example.com"] == f"Subject: {n}\r\n\r\nbody {n}\r\n-- sent via {mta}\r\n".encode()


@pytest_twisted.ensureDeferred
async def test_private_rabbitmq_node_when_no_broker_is_given(smtpServer):
    # not under pytest's tmp_path: the node runs as the rabbitmq user, who
    # must be able to reach its directory
    brokerDir = tempfile.mkdtemp(prefix="mqtwist-private-node-")
    port = unusedPort()
    twistd = startTwistd(
        "--broker-dir", brokerDir, "--broker-port", str(port),
        "--smarthost", f"{smtpServer.host}:{smtpServer.port}", "--plugins=",
    )
    helper = AMQPHelper(BrokerURL(host="127.0.0.1", port=port), reactor)
    try:
        await twistd.waitForOutput(b"consuming from: outbox", timeout=120)
        # the node leaves the CPU to mqtwist first, by default
        assert set(nicenessOfThreads(brokerDir)) == {10}
        await helper.connect()
        job = {"id": "p1", "recipient": "r@example.com", "mime": "Subject: p\r\n\r\nprivate\r\n"}
        await helper.publish("outbox", json.dumps(job).encode())
        (result,) = await helper.collect("success", 1, timeout=60)
        await helper.close()
    finally:
        twistd.transport.signalProcess("TERM")
        await twistd.ended
        shutil.rmtree(brokerDir, ignore_errors=True)
    assert json.loads(result.body)["results"][0]["result"] == "accepted"
    assert smtpServer.messages[0].data == b"Subject: p\r\n\r\nprivate\r\n"
    assert b"mqtwist stopped" in twistd.output
