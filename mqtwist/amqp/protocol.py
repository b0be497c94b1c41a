"""
txamqp's client protocol, made fit for a long-running publisher/consumer.

txamqp's stock protocol and delegate queue deliveries per consumer tag, know
nothing of publisher confirms, hand over message bodies as C{str} when
they happen to be valid UTF-8, and cannot read most field table value types
(so a dead-lettered message, whose C{x-death} header holds arrays, 64-bit
integers and timestamps, would break the connection).  L{AMQPProtocol} and
L{AMQPDelegate} instead pass deliveries, confirms and channel/connection loss
straight to one L{ConnectionListener}, with bodies always as bytes, and
read and write every frame with L{FieldTableCodec}.

Several of the txamqp methods replaced here are private (C{_pack_frame},
C{_unpack_frame}) or internal to its frame handling (C{process_frame},
C{dataReceived}, the heartbeat timers): the docstring of L{mqtwist.amqp}
lists them and says why, and C{tests/test_txamqp_contract.py} fails, naming
the method, when a txamqp release changes one of them.
"""

from __future__ import annotations

import shlex
import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed, TwistedDelegate
from txamqp.connection import Body, Frame, Header, Method, Payload
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, AMQClient, GarbageException
from txamqp.spec import Spec, pythonize

from mqtwist.amqp.fieldtable import FieldTableCodec
from mqtwist.amqp.spec import loadSpec
from mqtwist.amqp.url import BrokerURL
from mqtwist.hostport import hostPort


class LoginFailed(Exception):
    """
    The broker did not let us in (wrong user or password, unknown vhost, no
    access to it), or did not finish the handshake in time.  The message
    says which, and what to do.
    """


class ConnectionListener(TypingProtocol):
    """
    What an L{AMQPProtocol} reports to.
    """

    def deliveryReceived(self, channel: AMQChannel, message: Message) -> None:
        """A C{basic.deliver}; C{message.content.body} is bytes."""

    def publishConfirmed(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        """A C{basic.ack} from the broker (publisher confirm)."""

    def publishRejected(self, channel: AMQChannel, deliveryTag: int, multiple: bool) -> None:
        """A C{basic.nack} from the broker (publisher confirm)."""

    def publishReturned(self, channel: AMQChannel, message: Message) -> None:
        """
        A C{basic.return}: a message published with C{mandatory} could not
        be routed (C{message.routing_key}, C{message.reply_text}); its
        confirm follows.  C{message.content.body} is bytes.
        """

    def channelClosed(self, channel: AMQChannel, reason: Failure) -> None:
        """The broker closed C{channel} (C{reason.value} is its close method)."""

    def connectionLost(self, reason: Failure) -> None:
        """The connection is gone."""


# (txamqp has no type hints: mypy sees its classes as Any, and --strict
# refuses Any as a base class)
class AMQPDelegate(TwistedDelegate):  # type: ignore[misc]
    """
    Routes what the broker sends on its own initiative to the protocol's
    listener.
    """

    client: AMQPProtocol

    def connection_start(self, ch: AMQChannel, msg: Message) -> None:
        properties = {
            "product": "mqtwist",
            "platform": "Python/Twisted (txamqp)",
            # without it RabbitMQ answers a wrong user or password by
            # closing the TCP connection, 3 s later and without a word
            # (as AMQP 0-9-1 says); with it, at once with 403 ACCESS_REFUSED
            "capabilities": {"authentication_failure_close": True},
        }
        ch.connection_start_ok(
            client_properties=properties,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )

    def connection_tune(self, ch: AMQChannel, msg: Message) -> None:
        TwistedDelegate.connection_tune(self, ch, msg)
        self.client.tuned = True

    def basic_deliver(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.deliveryReceived(ch, msg)

    def basic_ack(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.publishConfirmed(ch, msg.delivery_tag, msg.multiple)

    def basic_nack(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.publishRejected(ch, msg.delivery_tag, msg.multiple)

    # (txamqp's name for basic.return: "return" is a Python keyword)
    def basic_return_(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.publishReturned(ch, msg)


# (a txamqp class: Any to mypy, as for AMQPDelegate)
class AMQPProtocol(AMQClient):  # type: ignore[misc]
    """
    An AMQP 0-9-1 client connection with TCP_NODELAY, bytes bodies, and
    events for a L{ConnectionListener}.
    """

    listener: ConnectionListener
    #: txamqp's heartbeat timers (set when heartbeats are on)
    checkHB: IDelayedCall
    sendHB: LoopingCall

    log = Logger()

    def setListener(self, listener: ConnectionListener) -> None:
        """
        Report to C{listener} from now on.  (A method, not an attribute
        assignment, so that it also works through a protocol proxy.)
        """
        self.listener = listener

    def connectionMade(self) -> None:
        # AMQP is request/reply on small frames: Nagle plus delayed ACKs
        # would stall every synchronous method
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)
        AMQClient.connectionMade(self)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        AMQClient.__init__(self, *args, **kwargs)
        # frames go to the transport as they are made (txamqp passes each
        # through a DeferredQueue and a callback first)
        self.outgoing = _FrameWriter(self)
        #: the start of a frame not yet complete
        self._unread = b""
        #: a frame was too long: the rest of the stream is not read
        self._gaveUp = False
        #: whether connection.tune agreed on a frame_max (C{MAX_LENGTH})
        self.tuned = False
        #: per channel id, the content-bearing method whose content frames
        #: are being read
        self._assembling: dict[int, _Assembly] = {}
        now = self.clock.seconds()
        self._lastSent = now
        self._lastReceived = now
        self._publishMethods: dict[tuple[int, str, str, bool], bytes] = {}
        self._propertyCache: dict[tuple[tuple[str, object], ...], bytes] = {}
        #: the properties of content headers read, by their encoding
        self._decodedProperties: dict[bytes, dict[str, Any]] = {}
        basic = self.spec.classes.byname["basic"].methods.byname
        #: the methods read without the codec, by their class and method ids
        self._fastMethods: dict[bytes, tuple[Any, _ArgumentDecoder]] = {
            struct.pack("!HH", _BASIC_CLASS, 60): (basic["deliver"], _decodeDeliver),
            struct.pack("!HH", _BASIC_CLASS, _ACK_ID): (basic["ack"], _decodeAck),
        }

    def dataReceived(self, data: bytes) -> None:
        """
        Cut the bytes read into frames and handle each in turn.  txamqp
        copies the rest of its buffer after every frame it takes off, which
        makes one read of many small frames cost time quadratic in its
        length: here the frames are taken at an offset and only the
        incomplete last one is kept.
        """
        if self._gaveUp:
            # what still arrives (TLS hands on what it decrypted after the
            # close was asked for) starts in the middle of a frame
            return
        buffer = self._unread + data if self._unread else data
        offset = 0
        while self.frame_mode and not self.paused:
            if len(buffer) - offset < self.HEADER_LENGTH:
                break
            size = _FRAME_START.unpack_from(buffer, offset)[2]
            end = offset + self.HEADER_LENGTH + size
            if self.MAX_LENGTH and end - offset > self.MAX_LENGTH:
                self._frameTooLong(end - offset, buffer[offset : offset + 8])
                return
            if end > len(buffer):
                break
            frame = self._unpack_frame(buffer[offset:end])
            offset = end
            self.frame_received(frame)
            if self.transport is not None and self.transport.disconnecting:
                break
        self._unread = buffer[offset:]

    def _frameTooLong(self, length: int, start: bytes) -> None:
        if start.startswith(b"AMQP"):
            self.log.error(
                "the server answered with the protocol header {header!r}, not "
                "AMQP 0-9-1 frames: it refused this protocol version or is not "
                "an AMQP 0-9-1 broker; closing the connection: check the host "
                "and port of the broker URL",
                header=start[:8],
            )
        elif not self.tuned:
            self.log.error(
                "the server's first bytes {start!r} are not an AMQP 0-9-1 frame "
                "(it announced {length} bytes, more than the {limit} allowed "
                "before the connection is tuned); closing the connection: check "
                "that the host and port of the broker URL are an AMQP broker's",
                start=start[:8],
                length=length,
                limit=self.MAX_LENGTH,
            )
        else:
            self.log.error(
                "the AMQP broker announced a frame of {length} bytes, more than "
                "the {limit} agreed for this connection (frame_max); closing it, "
                "and it will be opened again: if this repeats, check the "
                "broker's frame_max",
                length=length,
                limit=self.MAX_LENGTH,
            )
        self._unread = b""
        self._gaveUp = True
        self.transport.loseConnection()

    def channel(self, id: int) -> defer.Deferred[AMQChannel]:
        """
        @return: a Deferred that has fired with channel C{id} (made on
            first use), without txamqp's lock and generator.
        """
        return defer.succeed(self._channelNow(id))

    def _channelNow(self, id: int) -> AMQChannel:
        channel = self.channels.get(id)
        if channel is None:
            channel = self.channels[id] = self.channelFactory(id, self.outgoing, self)
        return channel

    def process_frame(self, frame: Frame) -> None:
        """
        Handle one frame as it arrives: replies to synchronous methods go
        to the channel's response queue (where C{invoke} waits for them);
        every other method is handed to the delegate as soon as its content
        (header and body frames) is complete.  txamqp does this with a
        generator, a lock and two queues per frame.
        """
        self._lastReceived = self.clock.seconds()
        payload = frame.payload
        if payload.type == Frame.HEARTBEAT:
            return
        channel = self._channelNow(frame.channel)
        try:
            if isinstance(payload, Method):
                if payload.method.response:
                    channel.dispatch(frame, self.work)
                elif payload.method.content:
                    self._assembling[frame.channel] = _Assembly(payload)
                else:
                    self.delegate.dispatch(channel, Message(payload.method, payload.args, None))
                return
            assembly = self._assembling.get(frame.channel)
            if assembly is None:
                # content of a synchronous reply (basic.get-ok): its queue
                channel.dispatch(frame, self.work)
                return
            content = assembly.add(payload)
            if content is not None:
                del self._assembling[frame.channel]
                method = assembly.method
                self.delegate.dispatch(channel, Message(method.method, method.args, content))
        except Exception:
            # as txamqp's worker does with a failed dispatch (the ignore:
            # Twisted's Failure() is not annotated)
            self.close(Failure())  # type: ignore[no-untyped-call]

    # The two methods sent for every message, packed directly: txamqp
    # builds each frame through a generic codec and a generator, and writes
    # a published message's method, header and body frames one by one.

    def basicPublish(
        self,
        channel: int,
        exchange: str,
        routingKey: str,
        body: bytes,
        properties: dict[str, object],
        mandatory: bool = False,
    ) -> None:
        """
        Send C{basic.publish} with C{body} and its content C{properties}
        (spec names, C{None} for absent) on C{channel}, in one write.  The
        caller checks that the channel is open.

        @param mandatory: the broker returns the message (C{basic.return})
            when no queue takes it, instead of dropping it.
        """
        methodKey = (channel, exchange, routingKey, mandatory)
        method = self._publishMethods.get(methodKey)
        if method is None:
            method = self._publishMethods[methodKey] = _frame(
                _METHOD,
                channel,
                # the bits octet: mandatory is bit 0, immediate (never set) bit 1
                _PUBLISH_IDS + _shortstr(exchange) + _shortstr(routingKey) + bytes((int(mandatory),)),
            )
        key = tuple(properties.items())
        cacheable = True
        try:
            encoded = self._propertyCache.get(key)
        except TypeError:  # a headers table: not hashable, not cached
            cacheable, encoded = False, None
        if encoded is None:
            encoded = self._encodeProperties(properties)
            if cacheable and len(self._propertyCache) < _PROPERTY_CACHE_SIZE:
                self._propertyCache[key] = encoded
        frames = [method, _frame(_HEADER, channel, _BASIC_HEADER.pack(_BASIC_CLASS, 0, len(body)) + encoded)]
        # frame_max 0 is no limit: the body goes in one frame
        chunk = self.MAX_LENGTH - 8 if self.MAX_LENGTH else max(len(body), 1)
        for start in range(0, len(body), chunk):
            frames.append(_frame(_BODY, channel, body[start : start + chunk]))
        self._lastSent = self.clock.seconds()
        self.transport.write(b"".join(frames))

    def basicAck(self, channel: int, deliveryTag: int) -> None:
        """
        Send C{basic.ack} for one delivery (not C{multiple}) on C{channel}.
        """
        self._lastSent = self.clock.seconds()
        self.transport.write(_frame(_METHOD, channel, _ACK.pack(_BASIC_CLASS, _ACK_ID, deliveryTag, 0)))

    def _encodeProperties(self, properties: dict[str, object]) -> bytes:
        """
        The property flags and the properties of a basic content header.
        """
        buf = BytesIO()
        codec = FieldTableCodec(buf)
        encodeHeader(Header(self.spec.classes.byname["basic"], 0, 0, **properties), codec, self.log)
        # past the payload's length and the class id, weight and body size
        return buf.getvalue()[4 + _BASIC_HEADER.size :]

    # Heartbeats: txamqp cancels and sets two timers for every frame sent or
    # received.  Here each frame only notes the time, and the timers look
    # at it when they fire.

    def send_frame(self, frame: Frame) -> None:
        self._lastSent = self.clock.seconds()
        self.transport.write(self._pack_frame(frame))

    def reschedule_send_heartbeat(self) -> None:
        if self.heartbeatInterval > 0 and not self.sendHB.running:
            # at twice the rate asked for: the broker never waits longer
            # than one interval for a frame
            self.sendHB.start(self.heartbeatInterval / 2, now=False)

    def send_heartbeat(self) -> None:
        if self.clock.seconds() - self._lastSent >= self.heartbeatInterval / 2:
            AMQClient.send_heartbeat(self)

    def reschedule_check_heartbeat(self) -> None:
        self._lastReceived = self.clock.seconds()
        if self.heartbeatInterval > 0 and not self.checkHB.active():
            self.checkHB = self.clock.callLater(
                self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT, self.check_heartbeat
            )

    def check_heartbeat(self) -> None:
        limit = self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT
        silent = self.clock.seconds() - self._lastReceived
        if silent < limit:
            self.checkHB = self.clock.callLater(limit - silent, self.check_heartbeat)
            return
        AMQClient.check_heartbeat(self)

    def _pack_frame(self, frame: Frame) -> bytes:
        # txamqp's own version (and its Method and Header payloads) encode
        # with its Codec, whatever codec they are handed
        buf = BytesIO()
        codec = FieldTableCodec(buf)
        codec.encode_octet(self.spec.constants.bypyname[frame.payload.type].id)
        codec.encode_short(frame.channel)
        payload = frame.payload
        if isinstance(payload, Method):
            encodeMethod(payload, codec)
        elif isinstance(payload, Header):
            encodeHeader(payload, codec, self.log)
        else:
            payload.encode(codec)
        codec.encode_octet(self.FRAME_END)
        return buf.getvalue()

    def _unpack_frame(self, data: bytes) -> Frame:
        kind, channel, _ = _FRAME_START.unpack_from(data)
        if data[-1] != self.FRAME_END:
            raise GarbageException(
                f"AMQP frame on channel {channel} ends with {data[-1]!r}, not the "
                f"frame-end octet {self.FRAME_END!r}: the broker and client "
                f"disagree about the frame's contents"
            )
        # the frames of every message, read without a codec: a delivery's
        # method and body, the broker's publisher confirms
        if kind == _BODY:
            return Frame(channel, Body(data[_FRAME_START.size : -1]))
        if kind == _METHOD:
            fast = self._fastMethods.get(data[_FRAME_START.size : _FRAME_START.size + 4])
            if fast is not None:
                method, decode = fast
                return Frame(channel, Method(method, *decode(data, _FRAME_START.size + 4)))
        elif kind == _HEADER:
            header = self._knownHeader(data)
            if header is not None:
                return Frame(channel, header)
        codec = FieldTableCodec(BytesIO(data))
        frameType = pythonize(self.spec.constants.byid[codec.decode_octet()].name)
        codec.decode_short()
        payload: Payload
        if frameType == Frame.METHOD:
            payload = decodeMethod(self.spec, codec)
        elif frameType == Frame.HEADER:
            payload = decodeHeader(self.spec, codec)
        else:
            payload = Frame.DECODERS[frameType].decode(self.spec, codec)
        return Frame(channel, payload)

    def _knownHeader(self, data: bytes) -> Header | None:
        """
        A basic content header whose properties were seen before (most
        deliveries carry the same few), or C{None} to decode it in full.
        """
        start = _FRAME_START.size
        klass, weight, size = _BASIC_HEADER.unpack_from(data, start)
        if klass != _BASIC_CLASS:
            return None
        encoded = data[start + _BASIC_HEADER.size : -1]
        properties = self._decodedProperties.get(encoded)
        if properties is None:
            flags = encoded[:2]
            if len(flags) < 2 or flags[0] << 8 & _HEADERS_FLAG:
                # a headers table (x-death and the like) differs message by
                # message: not worth keeping
                return None
            properties = decodeHeader(self.spec, FieldTableCodec(BytesIO(data[start - 4 : -1]))).properties
            if len(self._decodedProperties) < _PROPERTY_CACHE_SIZE:
                self._decodedProperties[encoded] = properties
        return Header(self.spec.classes.byid[klass], weight, size, **properties)

    def channel_failed(self, channel: AMQChannel, reason: Failure) -> None:
        self.listener.channelClosed(channel, reason)

    def connectionLost(self, reason: Failure) -> None:
        AMQClient.connectionLost(self, reason)
        self.listener.connectionLost(reason)

    def login(self, url: BrokerURL) -> defer.Deferred[None]:
        """
        Authenticate and open the vhost of C{url}: the AMQP handshake, which
        must be over within C{url.connectTimeout} seconds.

        @return: a Deferred that fires with C{None} once the connection is
            open, or errbacks with L{LoginFailed} saying what the broker
            refused (the user and password, the vhost, the user's access to
            it) or that it did not answer in time, and what to do.  The
            connection is left as it is: closed by the broker, or still open
            after a timeout.
        """
        return defer.ensureDeferred(self._login(url))

    async def _login(self, url: BrokerURL) -> None:
        handshake = self.authenticate(url.username, url.password, mechanism=url.authMechanism)
        try:
            await handshake.addTimeout(url.connectTimeout, self.clock)
        except Closed as e:
            raise LoginFailed(_refusal(url, e, authenticated=self.tuned)) from None
        except defer.TimeoutError:
            raise LoginFailed(
                f"AMQP broker {url.redacted()} accepted the connection but did not "
                f"finish the AMQP handshake within {url.connectTimeout:g} s: check "
                f"that {hostPort(url.host, url.port)} is the AMQP port of a broker (RabbitMQ "
                f"listens on 5672, on 5671 for amqps://) and that the broker is "
                f"not overloaded; connection_timeout in the URL sets the wait"
            ) from None


def _refusal(url: BrokerURL, error: Closed, authenticated: bool) -> str:
    """
    Why the broker ended the handshake, and what to do about it.

    @param authenticated: whether the broker had accepted the user and
        password (it tunes the connection only then): a close before that
        is about them, one after about the vhost.
    """
    broker = f"AMQP broker {url.redacted()}"
    user = url.username
    vhost = url.vhost
    reason = error.args[0] if error.args else None
    if isinstance(reason, Message):
        said = describeClose(error)
        if not authenticated and reason.reply_code == _ACCESS_REFUSED:
            return (
                f"{broker} refused the login of user {user!r} ({said}): the user "
                f"does not exist or the password is wrong; check the user and "
                f"password in the broker URL (--amqp), or create the user on the "
                f"broker (rabbitmqctl add_user; 'rabbitmqctl authenticate_user "
                f"USER PASSWORD' tests a password; RabbitMQ's guest user may log "
                f"in from localhost only)"
            )
        if authenticated and reason.reply_code == _NOT_ALLOWED:
            if "not found" in str(reason.reply_text):
                return (
                    f"{broker} has no vhost {vhost!r} ({said}): create it "
                    f"(rabbitmqctl add_vhost {shlex.quote(vhost)}, then rabbitmqctl "
                    f"set_permissions -p {shlex.quote(vhost)} {shlex.quote(user)} "
                    f"'.*' '.*' '.*') or fix the vhost in the broker URL (--amqp; "
                    f"the default vhost / is written %2f or left out)"
                )
            return (
                f"{broker} does not let user {user!r} into vhost {vhost!r} "
                f"({said}): grant the user access (rabbitmqctl set_permissions -p "
                f"{shlex.quote(vhost)} {shlex.quote(user)} '.*' '.*' '.*') or use "
                f"another user or vhost in the broker URL (--amqp)"
            )
        return (
            f"{broker} ended the login of user {user!r} to vhost {vhost!r} "
            f"({said}): check the user, password and vhost in the broker URL "
            f"(--amqp) and the user's permissions"
        )
    lost = describeClose(error)
    tls = (
        "; for amqps://, also that the broker's certificate is valid for "
        f"{url.host!r} and trusted here"
        if url.tls
        else ""
    )
    if not authenticated:
        return (
            f"{broker} closed the connection during the login of user {user!r} "
            f"without saying why ({lost}): a broker that does "
            f"not report login failures closes the connection like this for a "
            f"wrong user or password; check them in the broker URL (--amqp), and "
            f"that {hostPort(url.host, url.port)} is an AMQP 0-9-1 broker{tls}"
        )
    return (
        f"{broker} closed the connection while opening vhost {vhost!r} for user "
        f"{user!r} without saying why ({lost}): check the "
        f"vhost in the broker URL (--amqp), the user's permissions, and the "
        f"broker's log"
    )


#: AMQP 0-9-1 reply codes of connection.close
_ACCESS_REFUSED = 403
_NOT_ALLOWED = 530


# The four functions below follow txamqp's Method and Header payloads, whose
# encode and decode build txamqp's Codec for the payload themselves.


def encodeMethod(method: Method, enc: FieldTableCodec) -> None:
    """
    Write a method frame's payload: class and method ids, then the
    arguments by their spec types.
    """
    buf = BytesIO()
    codec = FieldTableCodec(buf)
    codec.encode_short(method.method.klass.id)
    codec.encode_short(method.method.id)
    for spec, value in zip(method.method.fields, method.args):
        codec.encode(spec.type, value)
    codec.flush()
    enc.encode_longbytes(buf.getvalue())


def decodeMethod(spec: Spec, dec: FieldTableCodec) -> Method:
    """
    Read a method frame's payload.
    """
    codec = FieldTableCodec(BytesIO(dec.decode_longbytes()))
    klass = spec.classes.byid[codec.decode_short()]
    method = klass.methods.byid[codec.decode_short()]
    return Method(method, *[codec.decode(field.type) for field in method.fields])


#: property flags come in 16-bit words: bits 15..1 say which of the next 15
#: properties are present, bit 0 that another word follows
_FLAGS_PER_WORD = 15


def encodeHeader(header: Header, enc: FieldTableCodec, log: Logger) -> None:
    """
    Write a content header frame's payload: class id, weight, body size,
    property flags, then the properties present (those not C{None}).
    """
    buf = BytesIO()
    codec = FieldTableCodec(buf)
    codec.encode_short(header.klass.id)
    codec.encode_short(header.weight)
    codec.encode_longlong(header.size)
    fields = header.klass.fields.items
    present = [header.properties.get(field.name) is not None for field in fields]
    for start in range(0, max(len(present), 1), _FLAGS_PER_WORD):
        word = 0
        for bit, isPresent in enumerate(present[start : start + _FLAGS_PER_WORD]):
            if isPresent:
                word |= 1 << (15 - bit)
        if start + _FLAGS_PER_WORD < len(present):
            word |= 1
        codec.encode_short(word)
    for field, isPresent in zip(fields, present):
        if isPresent:
            codec.encode(field.type, header.properties[field.name])
    unknown = set(header.properties) - {field.name for field in fields}
    if unknown:
        log.warn(
            "message properties {names} are not {klass} properties and were "
            "not sent; use the names of the AMQP spec (e.g. 'delivery-mode')",
            names=sorted(unknown),
            klass=header.klass.name,
        )
    codec.flush()
    enc.encode_longbytes(buf.getvalue())


def decodeHeader(spec: Spec, dec: FieldTableCodec) -> Header:
    """
    Read a content header frame's payload; the properties it carries are
    keyed by their spec names (C{"headers"}, C{"delivery-mode"}, ...).
    """
    codec = FieldTableCodec(BytesIO(dec.decode_longbytes()))
    klass = spec.classes.byid[codec.decode_short()]
    weight = codec.decode_short()
    size = codec.decode_longlong()
    present: list[bool] = []
    while True:
        word = codec.decode_short()
        present.extend(bool(word >> bit & 1) for bit in range(15, 0, -1))
        if not word & 1:
            break
    properties = {
        str(field.name): codec.decode(field.type)
        for field, isPresent in zip(klass.fields.items, present)
        if isPresent
    }
    return Header(klass, weight, size, **properties)


_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_START = struct.Struct("!BHI")
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
#: basic.publish (class 60, method 40) and its ticket (0)
_PUBLISH_IDS = struct.pack("!HHH", _BASIC_CLASS, 40, 0)
_ACK_ID = 80
#: class, method, delivery tag, the "multiple" bit
_ACK = struct.Struct("!HHQB")
#: class, weight, body size
_BASIC_HEADER = struct.Struct("!HHQ")
#: a delivery tag and the octet of bits after it
_TAG_AND_BITS = struct.Struct("!QB")
#: distinct property sets whose encoding is kept (priorities x content types)
_PROPERTY_CACHE_SIZE = 1024
#: the "headers" property's bit in the first word of property flags
_HEADERS_FLAG = 1 << 13


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return b"".join((_FRAME_START.pack(kind, channel, len(payload)), payload, _FRAME_END))


def _shortstr(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"{text[:40]!r}... is longer than 255 bytes, the limit of an AMQP short string")
    return bytes((len(data),)) + data


#: reads the arguments of a method from a frame, at the offset after the
#: class and method ids
_ArgumentDecoder = Callable[[bytes, int], tuple[object, ...]]


def _shortstrAt(data: bytes, offset: int) -> tuple[str | bytes, int]:
    """
    The short string at C{offset} (text when it is UTF-8, as txamqp's codec
    gives it) and the offset after it.
    """
    end = offset + 1 + data[offset]
    raw = data[offset + 1 : end]
    try:
        return raw.decode(), end
    except UnicodeDecodeError:
        return raw, end


def _decodeDeliver(
    data: bytes, offset: int
) -> tuple[str | bytes, int, bool, str | bytes, str | bytes]:
    """basic.deliver: consumer tag, delivery tag, redelivered, exchange, routing key."""
    consumerTag, offset = _shortstrAt(data, offset)
    (deliveryTag, bits) = _TAG_AND_BITS.unpack_from(data, offset)
    exchange, offset = _shortstrAt(data, offset + _TAG_AND_BITS.size)
    routingKey, _ = _shortstrAt(data, offset)
    return consumerTag, deliveryTag, bool(bits & 1), exchange, routingKey


def _decodeAck(data: bytes, offset: int) -> tuple[int, bool]:
    """basic.ack: delivery tag, multiple."""
    deliveryTag, bits = _TAG_AND_BITS.unpack_from(data, offset)
    return deliveryTag, bool(bits & 1)


class _FrameWriter:
    """
    Stands for txamqp's outgoing frame queue: a frame put is written at once.
    """

    def __init__(self, protocol: AMQPProtocol) -> None:
        self.protocol = protocol

    def put(self, frame: Frame) -> None:
        self.protocol.send_frame(frame)


class _Assembly:
    """
    The content of one content-bearing method, as its frames arrive.  AMQP
    0-9-1 content has no child contents (the header's weight is 0).
    """

    def __init__(self, method: Method) -> None:
        self.method = method
        self.header: Header | None = None
        self.chunks: list[bytes] = []
        self.received = 0

    def add(self, payload: Payload) -> Content | None:
        """
        Take the next content frame's payload.

        @return: the L{Content}, with its body as bytes, once complete.
        """
        if self.header is None:
            self.header = payload
        else:
            chunk = bodyBytes(payload.content)
            self.chunks.append(chunk)
            self.received += len(chunk)
        if self.received < self.header.size:
            return None
        return Content(b"".join(self.chunks), [], self.header.properties.copy())


def bodyBytes(chunk: str | bytes) -> bytes:
    """
    txamqp decodes a body frame that is valid UTF-8 to C{str}; encoding it
    again gives back exactly the bytes that were on the wire.
    """
    return chunk.encode("utf-8") if isinstance(chunk, str) else chunk


class AMQPFactory(protocol.Factory):
    """
    Builds L{AMQPProtocol}s for one broker.
    """

    noisy = False

    def __init__(self, url: BrokerURL, reactor: Any) -> None:
        self.url = url
        self.reactor = reactor

    def buildProtocol(self, addr: object) -> AMQPProtocol:
        return AMQPProtocol(
            AMQPDelegate(),
            vhost=self.url.vhost,
            spec=loadSpec(),
            heartbeat=self.url.heartbeat,
            clock=self.reactor,
        )


def brokerEndpoint(reactor: Any, url: BrokerURL) -> IStreamClientEndpoint:
    """
    @return: a TCP endpoint for C{url}, wrapped in TLS (verifying the
        broker's certificate against its host name) for C{amqps://}.
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, url.host, url.port, timeout=url.connectTimeout
    )
    if url.tls:
        endpoint = wrapClientTLS(optionsForClientTLS(url.host), endpoint)
    return endpoint


def describeClose(error: Closed) -> str:
    """
    The reply code and text of the close method that ended a channel or
    the connection, or why the connection ended without one.
    """
    reason = error.args[0] if error.args else None
    if isinstance(reason, Message):
        return f"{reason.reply_code} {reason.reply_text}"
    if isinstance(reason, Failure):
        return f"connection closed: {reason.getErrorMessage()}"
    return str(reason)
