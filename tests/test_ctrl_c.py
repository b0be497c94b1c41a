"""
Ctrl-C in the terminal that runs C{twistd -n mqtwist} (as C{./dev run}
does) with its private RabbitMQ node, while deliveries are in flight: the
node is not in the terminal's foreground process group, so the SIGINT
reaches mqtwist only; mqtwist finishes the deliveries, publishes their
results and acknowledges them while its node still runs, and only then
stops the node.  After a restart no message is delivered a second time.

Before the node had a session of its own, the node stopped at once on the
same Ctrl-C, the results of the deliveries in flight could not be
published, and the restart delivered every one of them again (all 6 of
this test, in two runs out of two).  A Ctrl-C while the node starts stops
it cleanly too.

And a second C{twistd mqtwist} started on the same data directory, as a
second C{./dev run} from the same checkout is, says that a node already
runs there and how to run a second instance, and exits with status 1,
without starting a node or changing the first one's files.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterable

import pytest
import pytest_twisted
from fixtures_rabbitmq import AMQPHelper
from fixtures_smtp import ReceivedMessage
from helpers_localnode import freeLoopbackPort, installed, lockHeld, secondInstanceAdvice, snapshot
from twistdprocess import Twistd, endTwistd, exitStatus, nodeName, startTwistd
from twisted.internet import reactor

from mqtwist.amqp.url import BrokerURL

# txamqp still uses defer.returnValue
pytestmark = [
    installed,
    pytest.mark.filterwarnings("ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"),
]

#: messages in flight when Ctrl-C is pressed
IN_FLIGHT = 6

CTRL_C = b"\x03"


def job(name: str) -> bytes:
    return json.dumps({
        "id": name,
        "recipient": f"{name}@example.com",
        "mime": f"Message-ID: <{name}@ctrl-c.test>\r\nSubject: {name}\r\n\r\nbody of {name}\r\n",
    }).encode()


def messageIds(messages: Iterable[ReceivedMessage]) -> collections.Counter[str]:
    """How many times the server accepted each Message-ID."""
    return collections.Counter(
        re.search(rb"^Message-ID: <([^@]+)@", m.data, re.M).group(1).decode() for m in messages
    )


def events(output: bytearray, level: str) -> list[str]:
    """The lines twistd logged at C{level}."""
    return re.findall(rf"^.*#{level}\] .*$", output.decode(errors="replace"), re.M)


def foregroundProcessGroup(twistd: Twistd) -> int:
    """The process group that a Ctrl-C in twistd's terminal signals."""
    return os.tcgetpgrp(twistd.transport.fileno())


def nodePid(brokerDir: str) -> int:
    """The pid of the node's Erlang VM."""
    with open(os.path.join(brokerDir, "rabbitmq.pid")) as f:
        return int(f.read())


@pytest_twisted.ensureDeferred
async def test_ctrl_c_during_deliveries_delivers_each_message_once(startSMTPServer):
    """
    Ctrl-C while the receiving server holds its replies to six bodies: the
    deliveries end once it answers, their results are published and the
    node stops after them; the restarted mqtwist has nothing to send again.
    """
    # without PIPELINING, a message never follows another on its connection
    # (it would while the other's reply is held): each holds one
    server = await startSMTPServer(holdData=True, pipelining=False)
    # not under pytest's tmp_path: the node runs as the rabbitmq user, who
    # must be able to reach its directory
    brokerDir = tempfile.mkdtemp(prefix="mqtwist-ctrl-c-")
    port = freeLoopbackPort()
    arguments = (
        "--broker-dir", brokerDir, "--broker-port", str(port),
        "--smarthost", f"{server.host}:{server.port}", "--plugins=",
        # every message on a connection of its own: all of them in flight
        "--max-connections-per-destination", str(IN_FLIGHT),
        # in memory: a journal kept across the restart would not send a
        # message again even if the stop had not settled it, and this test
        # is about the stop
        "--delivery-journal=",
    )
    names = [f"m{n}" for n in range(IN_FLIGHT)]
    url = BrokerURL(host="127.0.0.1", port=port)
    first = startTwistd(*arguments, usePTY=True)
    second: Twistd | None = None
    try:
        await first.waitForOutput(b"consuming from: outbox", timeout=120)
        broker = AMQPHelper(url, reactor)
        await broker.connect()
        for name in names:
            await broker.publish("outbox", job(name))
        await broker.close()
        await server.waitUntil(lambda s: len(s.held) == IN_FLIGHT, f"{IN_FLIGHT} bodies held", timeout=60)

        # what the terminal signals is twistd's process group, not the node's
        assert os.getpgid(first.transport.pid) == foregroundProcessGroup(first)
        assert os.getpgid(nodePid(brokerDir)) != foregroundProcessGroup(first)
        assert os.getsid(nodePid(brokerDir)) != os.getsid(first.transport.pid)

        first.transport.write(CTRL_C)
        await first.waitForOutput(f"the deliveries in flight ({IN_FLIGHT})".encode())
        server.release()
        # twistd ends as a program that a Ctrl-C stopped does: by SIGINT
        assert await exitStatus(first) == -signal.SIGINT, first.output.decode(errors="replace")
        firstOutput = first.output.decode(errors="replace")
        assert events(first.output, "error") == events(first.output, "critical") == [], firstOutput
        assert "outbox connection is gone" not in firstOutput
        assert "not confirmed" not in firstOutput
        # the node stopped after the deliveries, as asked
        assert re.search(r"#info\] RabbitMQ node \S+ stopped", firstOutput), firstOutput
        assert firstOutput.index("deliveries in flight") < firstOutput.index("stopping RabbitMQ node")
        assert sorted(messageIds(server.messages)) == names

        second = startTwistd(*arguments, usePTY=True)
        await second.waitForOutput(b"consuming from: outbox", timeout=120)
        broker = AMQPHelper(url, reactor)
        await broker.connect()
        # behind any message the broker gives back: when its result is
        # there, so are theirs
        await broker.publish("outbox", job("last"))
        results = await broker.collect("success", IN_FLIGHT + 1, timeout=60)
        await broker.close()
        second.transport.write(CTRL_C)
        assert await exitStatus(second) == -signal.SIGINT, second.output.decode(errors="replace")
    finally:
        for twistd in (first, second):
            if twistd is not None:
                await endTwistd(twistd)
        shutil.rmtree(brokerDir, ignore_errors=True)

    resultIds = collections.Counter(json.loads(r.body)["id"] for r in results)
    assert resultIds == collections.Counter(names + ["last"])
    delivered = messageIds(server.messages)
    duplicates = {name: count - 1 for name, count in delivered.items() if count > 1}
    assert duplicates == {}, f"{sum(duplicates.values())} duplicates: {duplicates}"
    assert sorted(delivered) == sorted(names + ["last"])


@pytest_twisted.ensureDeferred
async def test_ctrl_c_while_the_node_starts():
    """
    Ctrl-C before the node is up: mqtwist stops the node (it did not get the
    SIGINT), without an error, and the data directory is free again.
    """
    brokerDir = tempfile.mkdtemp(prefix="mqtwist-ctrl-c-")
    twistd = startTwistd(
        "--broker-dir", brokerDir, "--broker-port", str(freeLoopbackPort()),
        "--smarthost", "127.0.0.1:25", "--plugins=", "--delivery-journal=",
        usePTY=True,
    )
    try:
        await twistd.waitForOutput(b"starting private RabbitMQ node", timeout=60)
        twistd.transport.write(CTRL_C)
        assert await exitStatus(twistd) == -signal.SIGINT, twistd.output.decode(errors="replace")
    finally:
        await endTwistd(twistd)
    output = twistd.output.decode(errors="replace")
    free = not lockHeld(brokerDir)
    shutil.rmtree(brokerDir, ignore_errors=True)
    assert free
    assert events(twistd.output, "error") == events(twistd.output, "critical") == [], output
    assert re.search(r"#info\] RabbitMQ node \S+ stopped", output), output
    assert "mqtwist stopped" in output


@pytest_twisted.ensureDeferred
async def test_second_twistd_on_the_same_data_directory_says_a_node_runs_there(smtpServer):
    brokerDir = tempfile.mkdtemp(prefix="mqtwist-second-")
    port = freeLoopbackPort()
    # the journal in memory: each process's own, so that what the second
    # meets first is the node of the first
    arguments = (
        "--broker-dir", brokerDir, "--broker-port", str(port),
        "--smarthost", f"{smtpServer.host}:{smtpServer.port}", "--plugins=", "--delivery-journal=",
    )
    first = startTwistd(*arguments)
    second: Twistd | None = None
    try:
        await first.waitForOutput(b"consuming from: outbox", timeout=120)
        before = snapshot(brokerDir)
        kept = {path: before[path] for path in before if os.path.basename(path) in (
            ".erlang.cookie", "rabbitmq.pid", "mqtwist.lock", "enabled_plugins"
        )}
        assert len(kept) == 4, sorted(before)

        second = startTwistd(*arguments)
        status = await exitStatus(second)
        output = second.output.decode(errors="replace")
        assert status == 1, output
        node = nodeName(first.output.decode(errors="replace"))
        (critical,) = events(second.output, "critical")
        assert critical.endswith(
            "[mqtwist.service.MailerService#critical] mqtwist cannot deliver without its broker: "
            f"private RabbitMQ node {node} was not started: a node already runs on its data directory "
            f"{brokerDir}, started by process {first.transport.pid}, with AMQP on 127.0.0.1:{port}. "
            + secondInstanceAdvice(port)
        ), output
        # it neither started a node nor said that one is up
        assert "starting private RabbitMQ node" not in output
        assert " is up" not in output
        assert events(second.output, "error") == [] and "Traceback" not in output
        assert not os.path.exists(os.path.join(brokerDir, "erl_crash.dump"))
        assert {path: snapshot(brokerDir)[path] for path in kept} == kept

        # and the first still delivers
        broker = AMQPHelper(BrokerURL(host="127.0.0.1", port=port), reactor)
        await broker.connect()
        await broker.publish("outbox", job("after"))
        (result,) = await broker.collect("success", 1, timeout=60)
        await broker.close()
        assert json.loads(result.body)["id"] == "after"
    finally:
        for twistd in (first, second):
            if twistd is not None and not twistd.ended.called:
                twistd.transport.signalProcess("TERM")
                await twistd.ended
        shutil.rmtree(brokerDir, ignore_errors=True)
