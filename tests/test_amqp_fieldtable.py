"""
FieldTableCodec: every RabbitMQ field value type, the frames AMQPProtocol
packs and unpacks with it, and dead-lettered messages (whose x-death header
txamqp alone cannot read) from a real RabbitMQ node.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from fixtures_rabbitmq import Deliveries, connectionOf
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from txamqp.connection import Frame, Header, Method

from mqtwist.amqp.client import QueueSpec
from mqtwist.amqp.fieldtable import FieldTableCodec, FieldTableError, checkFieldTable
from mqtwist.amqp.protocol import AMQPDelegate, AMQPProtocol
from mqtwist.amqp.spec import loadSpec

# the BrokerClient helpers of its own tests, fixture included

pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
)

UTC = datetime.UTC


def encodeTable(table: dict[str, Any]) -> bytes:
    buf = BytesIO()
    FieldTableCodec(buf).encode_table(table)
    return buf.getvalue()


def decodeTable(data: bytes) -> dict:
    codec = FieldTableCodec(BytesIO(data))
    table = codec.decode_table()
    assert codec.nread == len(data), "the table did not take exactly its bytes"
    return table


# -- building the wire format by hand, straight from the errata's grammar ----


def shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def longstr(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s


def table(*entries: tuple[bytes, bytes]) -> bytes:
    """entries are (key, type letter + value bytes)"""
    return longstr(b"".join(shortstr(key) + value for key, value in entries))


def array(*values: bytes) -> bytes:
    return longstr(b"".join(values))


HAND_BUILT = table(
    (b"t", b"t\x01"),
    (b"f-bool", b"t\x00"),
    (b"b", b"b\xfe"),
    (b"B", b"B\xfe"),
    (b"s", b"s\xff\x85"),
    (b"u", b"u\xff\x85"),
    (b"I", b"I\xff\xff\xff\xfe"),
    (b"i", b"i\xff\xff\xff\xfe"),
    (b"l", b"l\xff\xff\xff\xff\xff\xff\xff\xfd"),
    (b"f", b"f\x3f\xc0\x00\x00"),  # 1.5 as IEEE 754 single
    (b"d", b"d\xc0\x04\x00\x00\x00\x00\x00\x00"),  # -2.5 as double
    (b"D", b"D\x02\xff\xff\xfe\x0c"),  # scale 2, -500 -> -5.00
    (b"S", b"S" + longstr("h\u00e9".encode())),
    (b"S-bin", b"S" + longstr(b"\xff\xfe")),
    (b"x", b"x" + longstr(b"abc")),
    (b"T", b"T\x00\x00\x00\x00\x65\x53\xf1\x00"),  # 1700000000
    (b"V", b"V"),
    (b"A", b"A" + array(b"I\x00\x00\x00\x07", b"S" + longstr(b"z"), b"A" + array(), b"V")),
    (
        b"F",
        b"F" + table((b"inner", b"F" + table((b"deep", b"l\x00\x00\x00\x01\x00\x00\x00\x00")))),
    ),
    ("k\u00e9y".encode(), b"B\x01"),
)

HAND_BUILT_VALUE = {
    "t": True,
    "f-bool": False,
    "b": -2,
    "B": 254,
    "s": -123,
    "u": 65413,
    "I": -2,
    "i": 2**32 - 2,
    "l": -3,
    "f": 1.5,
    "d": -2.5,
    "D": decimal.Decimal("-5.00"),
    "S": "h\u00e9",
    "S-bin": b"\xff\xfe",
    "x": b"abc",
    "T": datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
    "V": None,
    "A": [7, "z", [], None],
    "F": {"inner": {"deep": 2**32}},
    "k\u00e9y": 1,
}


def test_decode_hand_built_table():
    decoded = decodeTable(HAND_BUILT)
    assert decoded == HAND_BUILT_VALUE
    assert type(decoded["x"]) is bytes
    assert type(decoded["t"]) is bool
    assert decoded["D"].as_tuple() == decimal.Decimal("-5.00").as_tuple()
    assert decoded["T"].utcoffset() == datetime.timedelta(0)


def test_encode_to_hand_built_bytes():
    value = {
        "none": None,
        "yes": True,
        "small": -7,
        "big": 2**31,
        "neg-big": -(2**31) - 1,
        "pi": 0.5,
        "money": decimal.Decimal("12.34"),
        "whole": decimal.Decimal("3E+2"),
        "text": "\u00e9t\u00e9",
        "raw": b"\x00\xff",
        "when": datetime.datetime(2023, 11, 14, 22, 13, 20, 999999, tzinfo=UTC),
        "list": ("a", [1]),
        "map": {"k": False},
    }
    expected = table(
        (b"none", b"V"),
        (b"yes", b"t\x01"),
        (b"small", b"I\xff\xff\xff\xf9"),
        (b"big", b"l\x00\x00\x00\x00\x80\x00\x00\x00"),
        (b"neg-big", b"l\xff\xff\xff\xff\x7f\xff\xff\xff"),
        (b"pi", b"d\x3f\xe0\x00\x00\x00\x00\x00\x00"),
        (b"money", b"D\x02\x00\x00\x04\xd2"),
        (b"whole", b"D\x00\x00\x00\x01\x2c"),
        # five bytes, though three characters
        (b"text", b"S\x00\x00\x00\x05\xc3\xa9t\xc3\xa9"),
        (b"raw", b"S\x00\x00\x00\x02\x00\xff"),
        # fractions of a second are dropped
        (b"when", b"T\x00\x00\x00\x00\x65\x53\xf1\x00"),
        (b"list", b"A" + array(b"S" + longstr(b"a"), b"A" + array(b"I\x00\x00\x00\x01"))),
        (b"map", b"F" + table((b"k", b"t\x00"))),
    )
    assert encodeTable(value) == expected


def test_datetime_offset_is_respected():
    plusTwo = datetime.timezone(datetime.timedelta(hours=2))
    local = datetime.datetime(2023, 11, 15, 0, 13, 20, tzinfo=plusTwo)
    assert encodeTable({"T": local}) == table((b"T", b"T\x00\x00\x00\x00\x65\x53\xf1\x00"))


def test_timestamp_beyond_datetime_stays_int():
    assert decodeTable(table((b"T", b"T\xff\xff\xff\xff\xff\xff\xff\xff"))) == {"T": 2**64 - 1}


EVERY_ENCODABLE_TYPE = {
    "none": None,
    "bool": True,
    "int": -5,
    "long": 2**40,
    "float": 0.25,
    "decimal": decimal.Decimal("-12.345"),
    "str": "caf\u00e9",
    "bytes": b"\xff\x00",
    "time": datetime.datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC),
    "list": [1, "a", [None], {"k": 2**33}],
    "table": {"nested": {"deeper": [True, decimal.Decimal("1.5")]}},
}


# -- round trips ---------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.builds(
        lambda unscaled, scale: decimal.Decimal(unscaled).scaleb(-scale),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.integers(min_value=0, max_value=255),
    ),
    st.text(),
    st.binary(),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=0)),
)
keys = st.text(max_size=60)  # at most 240 UTF-8 bytes: a valid short string
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=25,
)


def expectedBack(value: Any) -> Any:
    """What decoding gives for what was encoded."""
    if isinstance(value, bytes):
        # sent as S, which is decoded like txamqp decodes every string
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, (list, tuple)):
        return [expectedBack(v) for v in value]
    if isinstance(value, dict):
        return {k: expectedBack(v) for k, v in value.items()}
    return value


def sameTypes(a: Any, b: Any) -> bool:
    """== with bool/int, Decimal exponents and float -0.0 told apart"""
    if isinstance(a, list):
        return len(a) == len(b) and all(sameTypes(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(sameTypes(a[k], b[k]) for k in a)
    if isinstance(a, decimal.Decimal):
        return isinstance(b, decimal.Decimal) and a.as_tuple() == b.as_tuple()
    if isinstance(a, float):
        return isinstance(b, float) and struct.pack("!d", a) == struct.pack("!d", b)
    return type(a) is type(b) and a == b


@given(st.dictionaries(keys, values, max_size=8))
def test_round_trip(value):
    back = decodeTable(encodeTable(value))
    assert sameTypes(expectedBack(value), back)


@given(st.dictionaries(keys, values, max_size=8), st.integers(min_value=0, max_value=20))
def test_table_keeps_its_size_in_a_stream(value, tail):
    """A table followed by more data leaves exactly that data unread."""
    codec = FieldTableCodec(BytesIO(encodeTable(value) + b"\xce" * tail))
    codec.decode_table()
    assert codec.stream.read() == b"\xce" * tail


@pytest.mark.parametrize(
    "value, match",
    [
        ({"c": 1j}, r"1j at \['c'\].*complex"),
        ({"n": [{"s": {1, 2}}]}, r"at \['n'\]\[0\]\['s'\].*set"),
        ({"i": 2**63}, "64 bits"),
        ({"d": decimal.Decimal("NaN")}, "finite"),
        ({"d": decimal.Decimal("1E-256")}, "255 decimal places"),
        ({"d": decimal.Decimal(2**31)}, "32 bits"),
        ({"t": datetime.datetime(2020, 1, 1)}, "naive"),
        ({"t": datetime.datetime(1969, 12, 31, tzinfo=UTC)}, "1970"),
        ({1: "x"}, "keys must be str"),
        ({"k" * 256: 1}, "at most 255"),
    ],
)
def test_unencodable_values_are_refused(value, match):
    with pytest.raises(FieldTableError, match=match):
        checkFieldTable(value)


@pytest.mark.parametrize(
    "data, match",
    [
        (table((b"q", b"Q\x00")), "unknown field value type b'Q'"),
        (table((b"i", b"I\x00\x00")), "ends inside"),
        (table((b"a", b"A\x00\x00\x00\x09I\x00\x00\x00\x01"))[:-1], "longer than"),
        # the array claims 3 bytes: its int then runs past the array's end
        (table((b"a", b"A\x00\x00\x00\x03I\x00\x00\x00\x01")), "ends inside"),
    ],
)
def test_malformed_tables_are_refused(data, match):
    with pytest.raises(FieldTableError, match=match):
        FieldTableCodec(BytesIO(data)).decode_table()


# -- frames ------------------------------------------------------------------


@pytest.fixture
def protocol():
    return AMQPProtocol(AMQPDelegate(), vhost="/", spec=loadSpec(), clock=reactor)


def test_header_frame_round_trip_with_every_property(protocol):
    klass = loadSpec().classes.byname["basic"]
    properties = {
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": EVERY_ENCODABLE_TYPE,
        "delivery-mode": 2,
        "priority": 9,
        "correlation-id": "c",
        "reply-to": "r",
        "expiration": "60000",
        "message-id": "m",
        "timestamp": 1700000000,
        "type": "t",
        "user-id": "guest",
        "app-id": "mqtwist",
        "reserved": "x",  # was cluster-id
    }
    assert len(properties) == len(klass.fields.items)
    frame = Frame(3, Header(klass, 0, 42, **properties))
    back = protocol._unpack_frame(protocol._pack_frame(frame))
    assert back.channel == 3
    assert (back.payload.klass, back.payload.weight, back.payload.size) == (klass, 0, 42)
    assert back.payload.properties == {
        **properties, "headers": expectedBack(EVERY_ENCODABLE_TYPE)
    }


def test_unknown_property_is_named_in_a_warning(protocol):
    from twisted.logger import capturedLogs

    klass = loadSpec().classes.byname["basic"]
    with capturedLogs() as events:
        data = protocol._pack_frame(Frame(1, Header(klass, 0, 0, **{"delivery_mode": 2})))
    assert protocol._unpack_frame(data).payload.properties == {}
    assert [e["names"] for e in events] == [["delivery_mode"]]


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"delivery-mode": 2},
        {"content-type": "text/plain", "headers": {"a": "b", "n": 5}, "app-id": "z"},
    ],
)
def test_header_frames_match_txamqp_where_txamqp_can_encode(protocol, properties):
    """Property flags are laid out exactly like txamqp's own encoder does."""
    from txamqp.protocol import FrameReceiver

    klass = loadSpec().classes.byname["basic"]
    frame = Frame(1, Header(klass, 0, 7, **properties))
    assert protocol._pack_frame(frame) == FrameReceiver._pack_frame(protocol, frame)


def test_method_frame_with_rich_arguments(protocol):
    method = loadSpec().classes.byname["queue"].methods.byname["declare"]
    arguments = {"x-message-ttl": 50, "x-single-active-consumer": True, "x-max-length-bytes": 2**40}
    frame = Frame(1, Method(method, 0, "q", False, True, False, False, False, arguments))
    back = protocol._unpack_frame(protocol._pack_frame(frame))
    assert back.payload.method is method
    assert back.payload.args == (0, "q", False, True, False, False, False, arguments)


# -- a real RabbitMQ node ----------------------------------------------------

DELAY = "t-fieldtable-delay"
DEAD = "t-fieldtable-dead"
DELAY_ARGUMENTS = {
    "x-message-ttl": 50,
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": DEAD,
}


@pytest_twisted.inlineCallbacks
def test_dead_lettered_message_headers_are_read(amqp):
    yield amqp.declare(DELAY, DELAY_ARGUMENTS)
    yield amqp.declare(DEAD)
    yield amqp.purge(DEAD)
    yield amqp.publish(DELAY, b'{"id": "one"}', headers={"attempt": 1})
    [received] = yield amqp.collect(DEAD, 1)
    assert received.body == b'{"id": "one"}'
    headers = received.properties["headers"]
    assert headers["attempt"] == 1
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-queue"] == DELAY
    [death] = headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "expired"
    assert death["queue"] == DELAY
    assert death["exchange"] == ""
    assert death["routing-keys"] == [DELAY]
    age = datetime.datetime.now(UTC) - death["time"]
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)


@pytest_twisted.inlineCallbacks
def test_broker_client_consumes_dead_lettered_message(clients, amqp):
    yield amqp.declare(DELAY, DELAY_ARGUMENTS)
    yield amqp.declare(DEAD)
    yield amqp.purge(DEAD)
    deliveries = Deliveries()
    client = clients([QueueSpec(DELAY, DELAY_ARGUMENTS)], consumeFrom=DEAD, onDelivery=deliveries)
    yield client.whenConnected()
    connection = yield connectionOf(client)
    body = b'{"id": "two", "bytes": "\xc3\xa9\xff"}'
    yield client.publish(DELAY, body)
    [delivery] = yield deliveries.atLeast(1)
    assert delivery.body == body
    assert not delivery.redelivered
    delivery.ack()
    # same connection, still working: a second one comes through it too
    yield client.publish(DELAY, b"second")
    second = yield deliveries.atLeast(2)
    assert second[1].body == b"second"
    assert not second[1].redelivered
    second[1].ack()
    assert (yield connectionOf(client)) is connection
    assert not connection.closed
    assert len(deliveries.received) == 2


@pytest_twisted.inlineCallbacks
def test_every_type_through_rabbitmq(amqp):
    queue = "t-fieldtable-headers"
    yield amqp.declare(queue)
    yield amqp.purge(queue)
    yield amqp.publish(queue, b"typed", headers=EVERY_ENCODABLE_TYPE)
    [received] = yield amqp.collect(queue, 1)
    assert received.body == b"typed"
    assert sameTypes(received.properties["headers"], expectedBack(EVERY_ENCODABLE_TYPE))
