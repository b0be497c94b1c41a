"""
Helpers of the unit tests of L{mqtwist.amqp.protocol.AMQPProtocol}: a
protocol on a L{StringTransport} and a L{Clock}, with a listener that
records what it hands on, and the methods a broker would send.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from txamqp.connection import Method
from txamqp.message import Message

from mqtwist.amqp.protocol import AMQPDelegate, AMQPProtocol
from mqtwist.amqp.spec import loadSpec


class RecordingListener:
    def __init__(self) -> None:
        self.deliveries: list[Message] = []
        self.confirms: list[tuple[int, bool]] = []

    def deliveryReceived(self, channel: Any, message: Message) -> None:
        self.deliveries.append(message)

    def publishConfirmed(self, channel: Any, deliveryTag: int, multiple: bool) -> None:
        self.confirms.append((deliveryTag, multiple))

    def connectionLost(self, reason: Any) -> None:
        pass


def makeProtocol(heartbeat: int = 0) -> tuple[AMQPProtocol, StringTransport, Clock, RecordingListener]:
    clock = Clock()
    protocol = AMQPProtocol(AMQPDelegate(), vhost="/", spec=loadSpec(), heartbeat=heartbeat, clock=clock)
    listener = RecordingListener()
    protocol.setListener(listener)
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()
    return protocol, transport, clock, listener


def method(protocol: AMQPProtocol, name: str, **args: Any) -> Method:
    klass, _, methodName = name.partition(".")
    spec = protocol.spec.classes.byname[klass].methods.byname[methodName]
    return Method(spec, *[args.get(field.name.replace("-", "_")) for field in spec.fields])
