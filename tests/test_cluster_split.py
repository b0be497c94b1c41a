"""
A member cut off from the broker (a network split between it and RabbitMQ):
two services of one outbox in this process, one of them connected through a
TCP relay that the test cuts and mends.  The other takes the cut-off member
for gone after C{--cluster-member-timeout}; the cut-off one takes no one for
gone while it hears nothing; once the relay is back it reconnects, says
hello, and both count two members again.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from helpers_endtoend import makeConfig, running
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.protocols.portforward import ProxyFactory

from mqtwist.admin.controls import NotTold, Selector
from mqtwist.cluster.control import SharedBackoff
from mqtwist.service import MailerService


class CuttableRelay:
    """Relays TCP connections to C{host:port} on a port of its own, until cut."""

    def __init__(self, host: str, port: int) -> None:
        self.factory = ProxyFactory(host, port)
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        self.servers: list = []
        buildProtocol = self.factory.buildProtocol

        def build(address):
            server = buildProtocol(address)
            self.servers.append(server)
            return server

        self.factory.buildProtocol = build

    async def cut(self) -> None:
        """Stop listening (new attempts are refused) and drop every relayed connection."""
        await self.listening.stopListening()
        for server in self.servers:
            server.transport.abortConnection()
        self.servers.clear()

    def mend(self) -> None:
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")


async def until(condition, what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout * 20)):
        if condition():
            return
        await deferLater(reactor, 0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


@pytest_twisted.ensureDeferred
async def test_a_member_cut_off_from_the_broker_is_gone_for_the_others_and_comes_back(
    rabbitmq, startSMTPServer, queues
):
    server = await startSMTPServer()
    relay = CuttableRelay(rabbitmq.host, rabbitmq.port)
    # (journals in memory: two services of one process cannot share the default file)
    cluster = {"clusterHeartbeat": 0.5, "clusterMemberTimeout": 3.0, "reconnectMaxDelay": 1.0, "deliveryJournal": ""}
    staying = MailerService(makeConfig(rabbitmq, server, queues, clusterMember="a", **cluster), plugins=[])
    cutConfig = makeConfig(rabbitmq, server, queues, clusterMember="b", **cluster)
    cutConfig.amqp = f"amqp://{rabbitmq.username}:{rabbitmq.password}@127.0.0.1:{relay.port}/"
    cutOff = MailerService(cutConfig, plugins=[])
    try:
        async with running(staying), running(cutOff):
            a, b = staying.cluster, cutOff.cluster
            await until(lambda: a.members.live == b.members.live == ("a", "b"), "both know both")
            await relay.cut()
            await until(lambda: a.members.live == ("a",), "a takes b for gone")
            # b heard nothing for as long: it takes no one for gone
            assert b.members.live == ("a", "b") and not cutOff.broker.connected
            # and what it cannot tell a, it does not pretend to
            with pytest.raises(NotTold) as info:
                cutOff.drain(member="a", by="ops")
            assert str(info.value).startswith("a was not told to drain: this process is not connected to the broker")
            assert cutOff.status()["state"] != "drained"
            relay.mend()
            await until(lambda: a.members.live == ("a", "b"), "b back for a")
            await cutOff.whenConnected()
            assert b.members.live == ("a", "b")
            # a cut is not a goodbye: a's status tells the operator who is there
            assert staying.status()["cluster"] == {"member": "a", "members": ["a", "b"], "settled": True}
    finally:
        await relay.listening.stopListening()




@pytest_twisted.ensureDeferred
async def test_a_starting_member_publishes_while_it_listens_for_the_others(rabbitmq, clients, startSMTPServer, queues):
    """
    While a starting process waits to hear from the outbox's consumers
    (here one that is no mqtwist, which never answers), it does not consume
    yet, but it publishes: its SMTP submission server is not refused.
    """
    server = await startSMTPServer()
    stranger = clients(consumeFrom=queues["outbox"])
    await stranger.whenConnected()
    service = MailerService(
        makeConfig(rabbitmq, server, queues, clusterMember="a", clusterSettle=600.0, deliveryJournal=""), plugins=[]
    )
    service.startService()
    try:
        await until(lambda: service.broker is not None and service.broker._session is not None
                    and service.broker._session.controlHeard, "listening for the others")
        assert not service.cluster.settled and not service.broker.connected
        await service.broker.publish(queues["results"], b'{"published": "while settling"}')
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_member_started_later_holds_the_pauses_in_force(rabbitmq, startSMTPServer, queues):
    server = await startSMTPServer()
    first = MailerService(makeConfig(rabbitmq, server, queues, clusterMember="a", deliveryJournal=""), plugins=[])
    later = MailerService(makeConfig(rabbitmq, server, queues, clusterMember="b", deliveryJournal=""), plugins=[])
    async with running(first):
        first.controls.pause(Selector(domain="paused.test"), 600, "complaints", "ops")
        first.controls.cancel(Selector(tag="old"), float("inf"), "stale list", "ops")
        # and a destination a reply paused
        first.engine.policy.applyShared(SharedBackoff("c", "mx mx.b.test", "pause", 600, "421 try later", None))
        async with running(later):
            await until(lambda: later.controls.pauses() != [], "b told of the pause")
            assert [(c.selector, c.reason, c.by) for c in later.controls.pauses()] == [
                (Selector(domain="paused.test"), "complaints", "ops")
            ]
            assert [(c.selector, c.until) for c in later.controls.cancels()] == [(Selector(tag="old"), float("inf"))]
            assert [(b.destination, b.action) for b in later.engine.policy.backoffsInForce()] == [
                ("mx mx.b.test", "pause")
            ]
