"""
Tests of L{mqtwist.amqp.protocol.AMQPProtocol}'s frame reader at its
limits: a frame longer than agreed (over real TLS), a peer that does not
speak AMQP 0-9-1, a frame of exactly frame_max.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from helpers_amqpprotocol import RecordingListener, makeProtocol, method
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, DefaultOpenSSLContextFactory, optionsForClientTLS
from twisted.logger import capturedLogs, formatEvent
from txamqp.connection import Body, Frame, Header

from mqtwist.amqp.protocol import AMQPDelegate, AMQPProtocol
from mqtwist.amqp.spec import loadSpec


class _OversizedThenAck(Protocol):
    """
    A TLS server that, once the client's protocol header is in, announces a
    frame longer than the client's limit and sends the first 16 KiB of it
    (one TLS record), then, in a record of its own, bytes that read as a
    publisher confirm (basic.ack, tag 7, channel 1) when taken for the start
    of a frame.
    """

    def dataReceived(self, data: bytes) -> None:
        helper = AMQPProtocol(AMQPDelegate(), vhost="/", spec=loadSpec())
        announced = b"\x03\x00\x01" + (100_000).to_bytes(4, "big")
        ack = helper._pack_frame(Frame(1, method(helper, "basic.ack", delivery_tag=7, multiple=False)))
        self.transport.write(announced + b"x" * (16384 - len(announced)))
        self.transport.write(ack)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.factory.lost.callback(None)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_nothing_read_after_a_frame_too_long_over_tls(certificates: dict[str, str]) -> None:
    """
    Once a frame is announced longer than MAX_LENGTH, the reader has given
    up on the stream (it dropped the frame's start and asked for the
    connection to close), so nothing read afterwards may be taken for
    frames.  Over TLS (amqps://) the connection goes on delivering what it
    decrypts after loseConnection (a TLS record at a time): here the rest
    of the oversized frame must not be read as if a frame started there
    (here, a publisher confirm the broker never sent would reach the
    listener).
    """
    # from the files: Twisted's PrivateCertificate would hand pyOpenSSL the
    # X509 and PKey objects it deprecates
    serverContext = DefaultOpenSSLContextFactory(certificates["key"], certificates["cert"])
    with open(certificates["ca"], "rb") as ca:
        authority = Certificate.loadPEM(ca.read())
    server = Factory.forProtocol(_OversizedThenAck)
    server.lost = Deferred()  # type: ignore[attr-defined]
    port = reactor.listenSSL(0, server, serverContext, interface="127.0.0.1")
    lost: Deferred[None] = Deferred()

    class Listener(RecordingListener):
        def connectionLost(self, reason: Any) -> None:
            lost.callback(None)

    listener = Listener()

    class Client(Factory):
        def buildProtocol(self, addr: Any) -> AMQPProtocol:
            protocol = AMQPProtocol(AMQPDelegate(), vhost="/", spec=loadSpec())
            protocol.setListener(listener)
            protocol.MAX_LENGTH = 4096
            protocol.tuned = True
            return protocol

    endpoint = wrapClientTLS(
        optionsForClientTLS("localhost", trustRoot=authority),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
    )
    try:
        with capturedLogs() as events:
            await endpoint.connect(Client())
            await lost
            await server.lost  # type: ignore[attr-defined]
    finally:
        await port.stopListening()
    assert any("announced a frame of 100008 bytes" in formatEvent(e) for e in events)
    assert listener.confirms == []


def test_a_reply_that_is_not_amqp_0_9_1_is_not_blamed_on_frame_max() -> None:
    """
    Before connection.tune no frame_max has been agreed: a peer that
    answers the protocol header with its own (a broker without AMQP 0-9-1,
    "AMQP" 0 1 0 0, or one that refuses the version, "AMQP" 0 0 9 1) makes
    the first 8 bytes announce a frame of about 1.3 GB.  The error must not
    send the operator to the broker's frame_max: it says that the peer does
    not speak AMQP 0-9-1 (wrong port or broker).
    """
    protocol, transport, _, _ = makeProtocol()
    assert protocol.MAX_LENGTH == 4096  # not tuned yet
    with capturedLogs() as events:
        protocol.dataReceived(b"AMQP\x00\x01\x00\x00")
    (event,) = [e for e in events if e.get("log_namespace", "").startswith("mqtwist.amqp")]
    text = formatEvent(event)
    assert "agreed for this connection (frame_max)" not in text, text
    assert "AMQP 0-9-1" in text or "protocol header" in text, text


def test_a_frame_of_exactly_frame_max_is_read() -> None:
    """
    RabbitMQ cuts body frames to exactly frame_max bytes in all (header and
    end octet included): such a frame, in two reads, is no frame too long.
    """
    protocol, transport, _, listener = makeProtocol()
    protocol.MAX_LENGTH = 4096
    protocol.process_frame(Frame(1, method(protocol, "basic.deliver", consumer_tag="c", delivery_tag=1,
                                           redelivered=False, exchange="", routing_key="q")))
    basic = protocol.spec.classes.byname["basic"]
    protocol.process_frame(Frame(1, Header(basic, 0, 4088)))
    frame = protocol._pack_frame(Frame(1, Body(b"y" * 4088)))
    assert len(frame) == 4096
    protocol.dataReceived(frame[:9])
    protocol.dataReceived(frame[9:])
    (delivered,) = listener.deliveries
    assert delivered.content.body == b"y" * 4088
    assert not transport.disconnecting and protocol._unread == b""


