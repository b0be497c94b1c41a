"""
txamqp's client protocol, made fit for a long-running publisher/consumer.

txamqp's stock protocol and delegate queue deliveries per consumer tag, know
nothing of publisher confirms, and hand over message bodies as C{str} when
they happen to be valid UTF-8.  L{AMQPProtocol} and L{AMQPDelegate} instead
pass deliveries, confirms and channel/connection loss straight to one
L{ConnectionListener}, with bodies always as bytes.
"""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from txamqp.client import Closed, TwistedDelegate
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, AMQClient

from mqtwist.amqp.spec import loadSpec
from mqtwist.amqp.url import BrokerURL


class LoginFailed(Exception):
    """
    The broker did not let us in: wrong credentials, unknown vhost or no
    permission.
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

    def channelClosed(self, channel: AMQChannel, reason: Failure) -> None:
        """The broker closed C{channel} (C{reason.value} is its close method)."""

    def connectionLost(self, reason: Failure) -> None:
        """The connection is gone."""


class AMQPDelegate(TwistedDelegate):
    """
    Routes what the broker sends on its own initiative to the protocol's
    listener.
    """

    client: AMQPProtocol

    def connection_start(self, ch: AMQChannel, msg: Message) -> None:
        # txamqp's table encoder knows only strings and integers, which is
        # all these need
        properties = {
            "product": "mqtwist",
            "platform": "Python/Twisted (txamqp)",
        }
        ch.connection_start_ok(
            client_properties=properties,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )

    def basic_deliver(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.deliveryReceived(ch, msg)

    def basic_ack(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.publishConfirmed(ch, msg.delivery_tag, msg.multiple)

    def basic_nack(self, ch: AMQChannel, msg: Message) -> None:
        self.client.listener.publishRejected(ch, msg.delivery_tag, msg.multiple)


class AMQPProtocol(AMQClient):
    """
    An AMQP 0-9-1 client connection with TCP_NODELAY, bytes bodies, and
    events for a L{ConnectionListener}.
    """

    listener: ConnectionListener

    def setListener(self, listener: ConnectionListener) -> None:
        """
        Report to C{listener} from now on.  (A method, not an attribute
        assignment, so that it also works through the proxies of
        L{twisted.application.internet.ClientService}.)
        """
        self.listener = listener

    def connectionMade(self) -> None:
        # AMQP is request/reply on small frames: Nagle plus delayed ACKs
        # would stall every synchronous method
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)
        AMQClient.connectionMade(self)

    @defer.inlineCallbacks
    def dispatch(self, queue: Any):
        frame = yield queue.get()
        channel = yield self.channel(frame.channel)
        payload = frame.payload
        content = (yield readContent(queue)) if payload.method.content else None
        self.delegate.dispatch(channel, Message(payload.method, payload.args, content))

    def channel_failed(self, channel: AMQChannel, reason: Failure) -> None:
        self.listener.channelClosed(channel, reason)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        AMQClient.connectionLost(self, reason)
        self.listener.connectionLost(reason)

    @defer.inlineCallbacks
    def login(self, url: BrokerURL):
        """
        Authenticate and open the vhost of C{url}.

        @return: a Deferred that fires with C{None} once the connection is
            open, or errbacks with L{LoginFailed} naming the broker, user
            and vhost.
        """
        try:
            yield self.authenticate(url.username, url.password, mechanism=url.authMechanism)
        except Closed as e:
            raise LoginFailed(
                f"AMQP broker {url.redacted()} did not open vhost {url.vhost!r} "
                f"for user {url.username!r} ({_describeClose(e)}): check the "
                f"user name, password, vhost and the user's permissions"
            ) from None


def _describeClose(error: Closed) -> str:
    reason = error.args[0] if error.args else None
    if isinstance(reason, Message):
        return f"{reason.reply_code} {reason.reply_text}"
    if isinstance(reason, Failure):
        return f"connection closed: {reason.getErrorMessage()}"
    return str(reason)


@defer.inlineCallbacks
def readContent(queue: Any):
    """
    Read a content header and its body frames from a channel's frame queue.

    @return: a Deferred that fires with a L{Content} whose body is bytes.
    """
    header = (yield queue.get()).payload
    children = []
    for _ in range(header.weight):
        children.append((yield readContent(queue)))
    chunks = []
    received = 0
    while received < header.size:
        chunk = bodyBytes((yield queue.get()).payload.content)
        chunks.append(chunk)
        received += len(chunk)
    return Content(b"".join(chunks), children, header.properties.copy())


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
