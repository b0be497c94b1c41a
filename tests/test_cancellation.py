"""
Deliveries cancelled together, as the service's stop cancels those still in
flight: what one of them gives back is not taken by another that is about
to be cancelled too.  Against real SMTP servers on loopback addresses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from helpers_deferred import outcome
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.task import deferLater

from mqtwist.config import Config, SMTPTimeouts
from mqtwist.content.message import Message
from mqtwist.service import deliveryEngine


class ConnectionsNoted:
    """
    The reactor, noting the address of every C{connectTCP}: a connection
    attempt cancelled within the turn that made it never reaches a server,
    so only the reactor sees it.
    """

    def __init__(self) -> None:
        self.connected: list[str] = []

    def connectTCP(self, host: str, port: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
        self.connected.append(host)
        return reactor.connectTCP(host, port, factory, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


def message(recipient: str) -> Message:
    return Message.fromJSON(json.dumps({
        "recipient": recipient, "envelope": "s@example.org", "mime": "Subject: x\r\n\r\nx\r\n",
    }))


@pytest.mark.parametrize("phase", ["connecting", "sending"])
@pytest.mark.parametrize("waiting", ["destination", "slot"])
@pytest_twisted.ensureDeferred
async def test_deliveries_cancelled_together_start_no_connection(mailHosts, phase, waiting):
    """
    One delivery in progress (connecting to a server that never greets, or
    waiting for the reply to its message) and one waiting for what it holds
    (its destination's only connection, or the engine's only slot),
    cancelled one after another, the one in progress first: the waiting one
    starts no connection and ends with CancelledError; what they held is
    given back on the next turn.
    """
    if phase == "connecting":
        busy = mailHosts.scripted("127.0.0.3", greet=lambda n: None)
    else:
        busy = mailHosts.scripted("127.0.0.3", messageDelay=600)
    other = mailHosts.scripted("127.0.0.4", greet=lambda n: None)
    config = Config(
        mxPort=mailHosts.port, ehloName="client.test", maxConnectionsPerDestination=1,
        concurrency=2 if waiting == "destination" else 1,
        destinationBacklog=10, stuckAfter=600, stuckAfterOthers=0, timeouts=SMTPTimeouts(greeting=600),
    )
    noted = ConnectionsNoted()
    engine = deliveryEngine(config, [], noted)
    deliveries = []
    try:
        deliveries.append(engine.deliver(message("a@[127.0.0.3]")))
        if phase == "connecting":
            await busy.waitUntil(lambda: len(busy.connections) == 1, "the first delivery's connection")
        else:
            await busy.waitUntil(lambda: len(busy.messageTimes) == 1, "the first delivery's message")
        waiter = engine.deliver(message("b@[127.0.0.3]" if waiting == "destination" else "c@[127.0.0.4]"))
        deliveries.append(waiter)
        ended: list[Any] = []
        waiter.addBoth(lambda result: (ended.append(result), result)[1])
        assert not ended and len(engine.slots.waiting) == (waiting == "slot")
    finally:
        # as the service's stop does with the deliveries in flight
        for delivery in deliveries:
            delivery.cancel()
        await engine.close()
    inProgress, waiter = [await outcome(d) for d in deliveries]
    assert inProgress == (ConnectingCancelledError if phase == "connecting" else CancelledError)
    assert waiter == CancelledError
    assert noted.connected == ["127.0.0.3"]
    assert len(busy.connections) == 1 and not other.connections
    await deferLater(reactor, 0, lambda: None)
    assert engine.slots.tokens == config.concurrency and not engine.slots.waiting
    # every permit went back: the policy forgot the destinations
    assert not engine.policy._states
