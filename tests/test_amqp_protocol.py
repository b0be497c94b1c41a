"""
Unit tests of L{mqtwist.amqp.protocol.AMQPProtocol}'s frame handling: content
assembled from its frames, heartbeats sent and checked from timestamps.
(Against a real broker: C{test_amqp_client.py}.)
"""

from __future__ import annotations

from helpers_amqpprotocol import makeProtocol, method
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from txamqp.connection import Body, Frame, Header

from mqtwist.amqp.protocol import AMQPProtocol


def test_deliveryAssembledFromItsFrames() -> None:
    """
    A basic.deliver reaches the listener once its header and every body
    frame have arrived, with the body as bytes, even when a frame of
    another channel comes in between.
    """
    protocol, _, _, listener = makeProtocol()
    basic = protocol.spec.classes.byname["basic"]
    deliver = method(
        protocol, "basic.deliver", consumer_tag="c", delivery_tag=7, redelivered=False,
        exchange="", routing_key="outbox",
    )
    protocol.process_frame(Frame(2, deliver))
    protocol.process_frame(Frame(2, Header(basic, 0, 10, priority=3)))
    protocol.process_frame(Frame(2, Body(b"01234")))
    protocol.process_frame(Frame(1, method(protocol, "basic.ack", delivery_tag=4, multiple=True)))
    assert listener.deliveries == []
    assert listener.confirms == [(4, True)]
    protocol.process_frame(Frame(2, Body("56789")))
    (delivered,) = listener.deliveries
    assert delivered.delivery_tag == 7
    assert delivered.content.body == b"0123456789"
    assert delivered.content.properties == {"priority": 3}


def test_emptyBody() -> None:
    protocol, _, _, listener = makeProtocol()
    basic = protocol.spec.classes.byname["basic"]
    deliver = method(
        protocol, "basic.deliver", consumer_tag="c", delivery_tag=1, redelivered=True,
        exchange="", routing_key="outbox",
    )
    protocol.process_frame(Frame(2, deliver))
    protocol.process_frame(Frame(2, Header(basic, 0, 0)))
    (delivered,) = listener.deliveries
    assert delivered.content.body == b""


def wireDeliveries(protocol: AMQPProtocol, count: int) -> bytes:
    """
    The bytes of C{count} deliveries (method, header, body frames, the
    bodies of two frames each) with a publisher confirm after each.
    """
    basic = protocol.spec.classes.byname["basic"]
    frames = []
    for tag in range(1, count + 1):
        body = b"%d:" % tag + bytes(range(256)) * 20
        frames += [
            Frame(1, method(protocol, "basic.deliver", consumer_tag="c", delivery_tag=tag,
                            redelivered=False, exchange="", routing_key="outbox")),
            Frame(1, Header(basic, 0, len(body), delivery_mode=2)),
            Frame(1, Body(body[:3000])),
            Frame(1, Body(body[3000:])),
            Frame(2, method(protocol, "basic.ack", delivery_tag=tag, multiple=False)),
        ]
    return b"".join(protocol._pack_frame(frame) for frame in frames)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=9000), max_size=30))
def test_framesReadHoweverTheBytesAreCut(cuts: list[int]) -> None:
    """
    However the bytes arrive (one read, a byte at a time, cut anywhere), the
    same deliveries and confirms come out, in order, with nothing left over.
    """
    protocol, _, _, listener = makeProtocol()
    protocol.MAX_LENGTH = 131072
    data = wireDeliveries(protocol, 6)
    positions = sorted({min(cut * (i + 1), len(data)) for i, cut in enumerate(cuts)} | {len(data)})
    start = 0
    for end in positions:
        protocol.dataReceived(data[start:end])
        start = end
    assert [d.delivery_tag for d in listener.deliveries] == [1, 2, 3, 4, 5, 6]
    assert [d.content.body[:2] for d in listener.deliveries] == [b"%d:" % n for n in range(1, 7)]
    assert all(len(d.content.body) == 2 + 256 * 20 for d in listener.deliveries)
    assert listener.confirms == [(n, False) for n in range(1, 7)]
    assert protocol._unread == b""


def test_framesOneByteAtATime() -> None:
    protocol, _, _, listener = makeProtocol()
    protocol.MAX_LENGTH = 131072
    data = wireDeliveries(protocol, 2)
    for i in range(len(data)):
        protocol.dataReceived(data[i : i + 1])
    assert [d.delivery_tag for d in listener.deliveries] == [1, 2]
    assert listener.confirms == [(1, False), (2, False)]


def test_frameLongerThanAgreedClosesTheConnection() -> None:
    """
    A frame announced longer than the frame_max agreed at tune time is
    not waited for: the connection is closed (and reopened by its
    service), and nothing of it is handed on.
    """
    protocol, transport, _, listener = makeProtocol()
    protocol.MAX_LENGTH = 4096
    data = protocol._pack_frame(Frame(1, Body(b"x" * 4089)))
    protocol.dataReceived(data[:20])
    assert transport.disconnecting
    fine, fineTransport, _, _ = makeProtocol()
    fine.MAX_LENGTH = 4096
    fine.dataReceived(fine._pack_frame(Frame(1, Body(b"x" * 4088)))[:20])
    assert not fineTransport.disconnecting
    assert listener.deliveries == []


def heartbeats(transport: StringTransport) -> int:
    # a heartbeat frame: type 8, channel 0, size 0, frame end
    return transport.value().count(b"\x08\x00\x00\x00\x00\x00\x00\xce")


def test_heartbeatOnlyWhenIdle() -> None:
    """
    A heartbeat goes out when nothing was sent for half the interval (so
    the broker never waits a whole interval), and none while frames are
    being sent.
    """
    protocol, transport, clock, _ = makeProtocol(heartbeat=10)
    protocol.started.fire()
    for _ in range(10):
        clock.advance(2)
        protocol.send_frame(Frame(1, method(protocol, "basic.ack", delivery_tag=1, multiple=False)))
    assert heartbeats(transport) == 0
    clock.advance(5)
    assert heartbeats(transport) == 1
    clock.advance(5)
    assert heartbeats(transport) == 2
    protocol.connectionLost(Exception("done"))  # type: ignore[arg-type]


def test_silentBrokerAborted() -> None:
    """
    The connection is aborted when nothing arrived for three intervals, and
    not while frames keep arriving.
    """
    protocol, transport, clock, _ = makeProtocol(heartbeat=10)
    protocol.started.fire()
    for _ in range(20):
        clock.advance(5)
        protocol.process_frame(Frame(1, method(protocol, "basic.ack", delivery_tag=1, multiple=False)))
    assert not transport.disconnecting
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    # StringTransport's abortConnection
    assert transport.disconnected and transport.disconnecting
    protocol.connectionLost(Exception("done"))  # type: ignore[arg-type]


def test_basicPublishWritesWhatTheGenericPathWrites() -> None:
    """
    The packed publish is byte for byte txamqp's method, header and body
    frames (bodies over a frame split as txamqp splits them), in one write.
    """
    from txamqp.content import Content

    body = bytes(range(256)) * 40
    for properties in (
        {"content-type": "application/json", "delivery-mode": 2, "priority": None, "headers": None},
        {"content-type": "application/json", "delivery-mode": 2, "priority": 7, "headers": {"x": [1, "a"]}},
    ):
        fast, fastTransport, _, _ = makeProtocol()
        generic, genericTransport, _, _ = makeProtocol()
        generic.MAX_LENGTH = fast.MAX_LENGTH = 4096
        fast.basicPublish(1, "", "results", body, properties)
        fast.basicPublish(1, "", "results", body, properties)
        channel = generic._channelNow(1)
        for _ in range(2):
            channel.basic_publish(exchange="", routing_key="results", content=Content(body, properties=properties))
        assert fastTransport.value() == genericTransport.value()


def test_basicAckWritesWhatTheGenericPathWrites() -> None:
    fast, fastTransport, _, _ = makeProtocol()
    generic, genericTransport, _, _ = makeProtocol()
    fast.basicAck(2, 123456789012)
    generic._channelNow(2).basic_ack(delivery_tag=123456789012)
    assert fastTransport.value() == genericTransport.value()


def test_unpackReadsWhatTheCodecReads() -> None:
    """
    The frames read without a codec (basic.deliver, basic.ack, bodies) give
    what txamqp's generic encoding put in, for text and binary tags.
    """
    protocol, _, _, _ = makeProtocol()
    frames = [
        Frame(3, method(protocol, "basic.deliver", consumer_tag="ctag-1", delivery_tag=2**40 + 5,
                        redelivered=True, exchange="", routing_key="outbox")),
        Frame(3, method(protocol, "basic.deliver", consumer_tag="c", delivery_tag=1,
                        redelivered=False, exchange="ex", routing_key="r\u00e9")),
        Frame(3, method(protocol, "basic.ack", delivery_tag=17, multiple=True)),
        Frame(3, method(protocol, "basic.ack", delivery_tag=18, multiple=False)),
        Frame(3, Body(b"\xff\xfebinary")),
    ]
    for frame in frames:
        packed = protocol._pack_frame(frame)
        unpacked = protocol._unpack_frame(packed)
        assert unpacked.channel == 3
        if isinstance(frame.payload, Body):
            assert unpacked.payload.content == frame.payload.content
        else:
            assert unpacked.payload.method is frame.payload.method
            assert list(unpacked.payload.args) == list(frame.payload.args)


def test_contentHeadersReadAsTheCodecReadsThem() -> None:
    """
    Content headers are read through a cache of their encoded properties,
    except those with a headers table (x-death differs message by message):
    both give what txamqp's generic encoding put in.
    """
    protocol, _, _, _ = makeProtocol()
    basic = protocol.spec.classes.byname["basic"]
    plain = {"content-type": "application/json", "delivery-mode": 2, "priority": 4}
    withTable = {"delivery-mode": 2, "headers": {"x-death": [{"count": 3, "queue": "outbox"}]}}
    for properties in (plain, plain, withTable, withTable, {}):
        packed = protocol._pack_frame(Frame(1, Header(basic, 0, 1234, **properties)))
        unpacked = protocol._unpack_frame(packed)
        assert (unpacked.payload.klass, unpacked.payload.size) == (basic, 1234)
        assert unpacked.payload.properties == properties
    # the plain properties and the empty set are kept, the table is not
    assert len(protocol._decodedProperties) == 2


def test_publishWithoutFrameMaxSendsTheBodyInOneFrame() -> None:
    """
    A broker may tune frame_max to 0, no limit: the body goes in one frame
    (not in frames of a negative size, that is in none).
    """
    protocol, transport, _, _ = makeProtocol()
    protocol.MAX_LENGTH = 0
    body = b"z" * 300_000
    protocol.basicPublish(1, "", "results", body, {"delivery-mode": 2})
    reader, _, _, _ = makeProtocol()
    frames = []
    data = transport.value()
    while data:
        size = int.from_bytes(data[3:7], "big")
        frames.append(reader._unpack_frame(data[: 8 + size]))
        data = data[8 + size :]
    assert [type(frame.payload).__name__ for frame in frames] == ["Method", "Header", "Body"]
    assert frames[2].payload.content == body
