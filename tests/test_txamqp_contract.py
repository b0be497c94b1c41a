"""
What mqtwist's AMQP layer takes from txamqp, checked against the txamqp
that is installed.

C{mqtwist/amqp/} subclasses txamqp's protocol, delegate and codec and
replaces several of their methods, private ones among them (the package
docstring of L{mqtwist.amqp} says why, and lists them).  txamqp does not
promise to keep any of that stable, and one of its patch releases already
changed what mqtwist relies on (0.8.1 began decoding a string that is not
UTF-8 to C{bytes} instead of raising).  So this module records, for every
txamqp name mqtwist overrides, calls or relies on:

  - that the name still exists where mqtwist expects it, with the
    parameters mqtwist passes (L{inspect.signature});
  - for methods whose code matters, a fingerprint of their source (tokens,
    comments and layout aside) in every txamqp version mqtwist was checked
    against (L{CHECKED_VERSIONS}).

A test fails with the name that changed, what mqtwist does with it, what
it assumes, and what to re-check.  A few behaviours that once broke are
also checked directly, and L{CHECKED_VERSIONS} against the pin in
C{setup.cfg}.

When a new txamqp is out: install it in a throwaway virtualenv, run this
module and C{tests/test_amqp_*.py} with it, fix what they report, then add
the version to L{CHECKED_VERSIONS}, its fingerprints to the contracts (the
failure messages print them) and raise the upper bound in C{setup.cfg}.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from twisted.internet.task import Clock

#: the txamqp releases mqtwist's AMQP layer was checked against: the AMQP
#: tests (tests/test_amqp_*.py, with a RabbitMQ node) and this module pass
#: with each.  (0.8.0 fails them: it cannot decode a string that is not
#: UTF-8, nor read a body of bytes; earlier releases are Python 2 only.)
CHECKED_VERSIONS = ("0.8.1", "0.8.2")

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"

#: a fingerprint that was the same in every checked version.  Written out,
#: not derived from CHECKED_VERSIONS: a version added there must be checked
#: method by method (test_fingerprints_cover_every_checked_version).
ALL = "0.8.1, 0.8.2"

INSTALLED = version("txamqp")


@dataclass(frozen=True)
class Contract:
    """
    One txamqp name mqtwist depends on.

    @ivar target: its dotted path, C{module.Class.method} or C{module.name}.
    @ivar signature: its parameters as C{str(inspect.signature(...))}, or
        C{None} where there is none to check (an exception class).
    @ivar how: what mqtwist does with it: C{"replaces"} (mqtwist's method
        runs instead of txamqp's), C{"extends"} (mqtwist's method calls
        txamqp's and adds to it), C{"bypasses"} (mqtwist never lets it run,
        doing its work elsewhere), C{"relies on"} (txamqp's code runs and
        mqtwist counts on what it does) or C{"calls"}.
    @ivar by: where in mqtwist.
    @ivar assumes: what mqtwist's code assumes about it.
    @ivar recheck: what to look at in mqtwist when it changed.
    @ivar fingerprints: fingerprint of the source (L{fingerprint}) -> the
        txamqp versions it was checked in; empty: the signature alone is
        checked.
    """

    target: str
    signature: str | None
    how: str
    by: str
    assumes: str
    recheck: str
    fingerprints: dict[str, str] = field(default_factory=dict)


P = "mqtwist.amqp.protocol"
F = "mqtwist.amqp.fieldtable"

CONTRACTS = [
    # -- txamqp.protocol.AMQClient / FrameReceiver: AMQPProtocol ----------
    Contract(
        "txamqp.protocol.AMQClient.__init__",
        "(self, delegate, vhost, spec, heartbeat=0, clock=None, insist=False)",
        "extends",
        f"{P}.AMQPProtocol.__init__ (and AMQPFactory.buildProtocol, which passes "
        "delegate, vhost=, spec=, heartbeat=, clock=)",
        "it sets delegate.client, spec, channels, channelFactory, work, started, "
        "disconnected, closed, clock and heartbeatInterval; with heartbeats on it "
        "makes checkHB (a clock.callLater) and sendHB (a LoopingCall) and calls "
        "reschedule_send_heartbeat/reschedule_check_heartbeat once 'started' "
        "fires. mqtwist then replaces self.outgoing, txamqp's DeferredQueue of "
        "frames to write, by an object whose put() writes the frame at once",
        "whether __init__ sets up anything new that frames must pass through "
        "(mqtwist's outgoing skips AMQClient.writer), and the heartbeat set-up "
        "that AMQPProtocol's heartbeat methods take over",
        {"696f834bf8892ad8": ALL},
    ),
    Contract(
        "txamqp.protocol.FrameReceiver.dataReceived",
        "(self, data)",
        "replaces",
        f"{P}.AMQPProtocol.dataReceived",
        "a frame is a 7-byte start (type, channel, payload size at bytes 3..7), "
        "the payload and a frame-end octet (HEADER_LENGTH = 8 in all); complete "
        "frames go through _unpack_frame to frame_received while frame_mode is "
        "set and the protocol is not paused; AMQP 0-9-1 never uses raw mode. "
        "mqtwist cuts frames at an offset (txamqp copies its whole buffer after "
        "each frame) and closes the connection on a frame longer than "
        "MAX_LENGTH (txamqp calls a frameLengthExceeded it does not define)",
        "what the new dataReceived does that AMQPProtocol.dataReceived does not "
        "(raw mode, pausing, frame limits, errors); tests/test_amqp_protocol.py "
        "and tests/test_amqp_frame_limits.py cover mqtwist's version",
        {"5d8985a90200e78a": ALL},
    ),
    Contract(
        "txamqp.protocol.FrameReceiver._pack_frame",
        "(self, frame)",
        "replaces",
        f"{P}.AMQPProtocol._pack_frame",
        "a frame is written as the octet of spec.constants.bypyname[payload.type]."
        "id, the channel as a short, the payload's encoding and FRAME_END; "
        "mqtwist writes method and header payloads with its FieldTableCodec "
        "(encodeMethod, encodeHeader) because txamqp's Method.encode and "
        "Header.encode make their own Codec, which writes only S and I table "
        "values",
        "the frame layout, and whether txamqp's payloads now use the codec they "
        "are given (mqtwist's encodeMethod/encodeHeader could then go)",
        {"718b712f7d4dd49f": ALL},
    ),
    Contract(
        "txamqp.protocol.FrameReceiver._unpack_frame",
        "(self, data)",
        "replaces",
        f"{P}.AMQPProtocol._unpack_frame",
        "the reverse of _pack_frame; a bad frame-end octet raises "
        "GarbageException. mqtwist reads basic.deliver, basic.ack and body "
        "frames without a codec (bodies stay bytes; txamqp decodes a body "
        "that is valid UTF-8 to str) and every other frame with FieldTableCodec",
        "the frame layout and GarbageException; whether txamqp now returns "
        "bodies as bytes",
        {"9810feb8ca3ec7ae": ALL},
    ),
    Contract(
        "txamqp.protocol.FrameReceiver.send_frame",
        "(self, frame)",
        "replaces",
        f"{P}.AMQPProtocol.send_frame",
        "sending a frame is _pack_frame plus transport.write",
        "whether sending a frame now does more",
        {"b8d27485dbc7b541": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.send_frame",
        "(self, frame)",
        "replaces",
        f"{P}.AMQPProtocol.send_frame",
        "txamqp's only addition to FrameReceiver.send_frame is restarting the "
        "send-heartbeat LoopingCall for every frame that is not a heartbeat; "
        "mqtwist notes the time instead and its send_heartbeat skips a "
        "heartbeat when a frame went out recently",
        "whether sending a frame now does more than the heartbeat bookkeeping",
        {"3cd8fca4bf4e20c9": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.channel",
        "(self, id)",
        "replaces",
        f"{P}.AMQPProtocol.channel and _channelNow",
        "channels live in self.channels by id and are made with "
        "self.channelFactory(id, self.outgoing, self); callers wait on the "
        "Deferred it returns. mqtwist returns one already fired, without "
        "txamqp's DeferredLock",
        "how channels are made and registered",
        {"1c06d1db5de6451a": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.process_frame",
        "(self, frame)",
        "replaces",
        f"{P}.AMQPProtocol.process_frame",
        "txamqp hands every frame but heartbeats to AMQChannel.dispatch: "
        "replies to synchronous methods (method.response) to the channel's "
        "'responses' queue where AMQChannel.invoke waits, the others to its "
        "'incoming' queue and from there through AMQClient.dispatch and "
        "read_content to delegate.dispatch; and it restarts the heartbeat "
        "check for every frame. mqtwist passes replies (and the content "
        "frames after a reply) to AMQChannel.dispatch the same way, but "
        "assembles other methods' content itself and calls delegate.dispatch "
        "at once; the heartbeat check reads the time of the last frame",
        "what the new process_frame does with each kind of frame; "
        "tests/test_amqp_protocol.py covers mqtwist's version",
        {"3d7805ccbc87e745": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.dispatch",
        "(self, queue)",
        "bypasses",
        f"{P}.AMQPProtocol.process_frame",
        "it reads a method and its content from a channel's incoming queue and "
        "calls delegate.dispatch(channel, Message(method, args, content)); "
        "mqtwist's process_frame does the same for each method as its last "
        "frame arrives, so this never runs",
        "whether txamqp now does more for an asynchronous method (basic."
        "deliver, basic.ack, channel.close, ...) than hand it to the delegate",
        {"cfd52d779d921c45": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.reschedule_send_heartbeat",
        "(self)",
        "replaces",
        f"{P}.AMQPProtocol.reschedule_send_heartbeat",
        "self.sendHB is a LoopingCall of send_heartbeat, started once the "
        "connection is tuned; mqtwist starts it once, at half the heartbeat "
        "interval, instead of stopping and starting it for every frame",
        "the heartbeat timers (tests/test_amqp_protocol.py: heartbeats)",
        {"4c01c7aac660fdf5": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.reschedule_check_heartbeat",
        "(self)",
        "replaces",
        f"{P}.AMQPProtocol.reschedule_check_heartbeat",
        "self.checkHB is a clock.callLater of check_heartbeat after "
        "heartbeatInterval * MAX_UNSEEN_HEARTBEAT seconds; mqtwist sets it "
        "when none is pending instead of cancelling and setting it per frame",
        "the heartbeat timers",
        {"86ad63aa0b7beaac": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.send_heartbeat",
        "(self)",
        "extends",
        f"{P}.AMQPProtocol.send_heartbeat",
        "it sends Frame(0, Heartbeat()) through self.send_frame; mqtwist calls "
        "it only when nothing was sent for half the interval",
        "the heartbeat timers",
        {"2c7fe07a54427288": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.check_heartbeat",
        "(self)",
        "extends",
        f"{P}.AMQPProtocol.check_heartbeat",
        "it cancels checkHB and aborts the transport (the broker is silent); "
        "mqtwist calls it only when nothing was received for heartbeatInterval "
        "* MAX_UNSEEN_HEARTBEAT seconds, else sets checkHB again",
        "the heartbeat timers",
        {"f510626edf8ba843": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.connectionMade",
        "(self)",
        "extends",
        f"{P}.AMQPProtocol.connectionMade (sets TCP_NODELAY first)",
        "it sends the protocol header and enters frame mode",
        "the start of a connection",
        {"c02e802a2a0876dd": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.connectionLost",
        "(self, reason)",
        "extends",
        f"{P}.AMQPProtocol.connectionLost, then mqtwist.amqp.client "
        "(BrokerClient waits on protocol.disconnected.wait())",
        "it stops the heartbeat timers, closes every channel (so their "
        "waiters fail with Closed) and fires self.disconnected; mqtwist then "
        "tells its listener, which fails the unconfirmed publishes",
        "the end of a connection, and whether 'disconnected' still fires",
        {"6c7f3c96f74fce67": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.channel_failed",
        "(self, channel, reason)",
        "replaces",
        f"{P}.AMQPProtocol.channel_failed",
        "a hook (empty in txamqp) that AMQChannel.do_close calls when the "
        "broker closes a channel; mqtwist reports it to its listener, which "
        "drops the connection",
        "whether txamqp still calls it, and with what",
        {"b208ea4fa56e06d9": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.close",
        "(self, reason=None, within=0)",
        "calls",
        f"{P}.AMQPProtocol.process_frame (self.close(Failure()) when a handler "
        "raises, as txamqp's worker does) and mqtwist.amqp.client._Session.close "
        "(protocol.close(within=timeout))",
        "with within > 0 it sends connection.close and waits that many seconds "
        "for close-ok, then closes every channel and the transport",
        "how a connection is closed",
        {"bf28f381b03d6cc7": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.do_close",
        "(self, reason)",
        "relies on",
        f"{P}.AMQPProtocol.connectionLost (through AMQClient.close)",
        "it closes every channel and calls delegate.close(reason), which sets "
        "client.closed and closes the transport",
        "the end of a connection",
        {"599096f50662dac1": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.authenticate",
        "(self, username, password, mechanism='AMQPLAIN', locale='en_US')",
        "calls",
        f"{P}.AMQPProtocol.login",
        "it keeps mechanism, response and locale on the client (AMQPDelegate."
        "connection_start reads them), waits for connection.tune and opens the "
        "vhost; it fails with Closed when the broker ends the handshake",
        "the login and its error messages (tests/test_amqp_client_failures.py)",
        {"d9a06f7636b71dce": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQClient.start",
        "(self, response, mechanism='AMQPLAIN', locale='en_US')",
        "relies on",
        f"{P}.AMQPProtocol.login (through authenticate)",
        "it sets self.response, self.mechanism and self.locale, waits for "
        "'started' and sends connection.open for self.vhost",
        "the login",
        {"c0b5a0f3e959515a": ALL},
    ),
    # -- txamqp.protocol.AMQChannel: the channels mqtwist uses ----------------
    Contract(
        "txamqp.protocol.AMQChannel.__init__",
        "(self, id, outgoing, client)",
        "calls",
        f"{P}.AMQPProtocol._channelNow; mqtwist.amqp.client reads channel.id, "
        "channel.client and channel.closed",
        "a channel keeps id, client, closed and its 'responses' queue, and "
        "writes frames with outgoing.put(frame)",
        "the channel's attributes",
        {"f3816048ec107376": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQChannel.dispatch",
        "(self, frame, work)",
        "relies on",
        f"{P}.AMQPProtocol.process_frame",
        "a reply method goes to the channel's 'responses' queue, and the "
        "content frames after it to the same queue (the channel remembers "
        "where the last method went)",
        "how replies to synchronous methods (and basic.get-ok's content) "
        "reach AMQChannel.invoke",
        {"65c85f32ce70a922": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQChannel.invoke",
        "(self, method, args, content=None)",
        "relies on",
        "every channel method mqtwist calls (channel_open, confirm_select, "
        "queue_declare, basic_qos, basic_consume, basic_cancel, basic_reject)",
        "it writes the method with self.outgoing.put(frame), mqtwist's "
        "immediate writer, and waits on the 'responses' queue for the reply",
        "how a synchronous method is sent and answered",
        {"385948a1473470ce": ALL},
    ),
    Contract(
        "txamqp.protocol.AMQChannel.do_close",
        "(self, reason)",
        "relies on",
        f"{P}.AMQPProtocol.channel_failed; mqtwist.amqp.client.Delivery.current",
        "it sets closed and reason, closes the channel's queues and, unless "
        "the close was asked for, calls client.channel_failed(self, "
        "Failure(reason))",
        "how a channel closed by the broker is reported",
        {"04453355f4f14436": ALL},
    ),
    Contract(
        "txamqp.protocol.read_content",
        "(queue)",
        "relies on",
        "AMQChannel.invoke for a reply with content (basic.get-ok: bench/ and "
        "the test fixtures)",
        "it reads a header frame and body frames from the queue; mqtwist's "
        "body frames carry bytes, which 0.8.0 could not read",
        "how a reply's content is read",
        {"bfeadd787d69c9a5": ALL},
    ),
    # -- txamqp.client.TwistedDelegate: AMQPDelegate -----------------------
    Contract(
        "txamqp.client.TwistedDelegate.connection_start",
        "(self, ch, msg)",
        "replaces",
        f"{P}.AMQPDelegate.connection_start",
        "it answers connection.start with connection_start_ok(mechanism=, "
        "response=, locale=) from the client's attributes; mqtwist adds "
        "client_properties (product, capabilities."
        "authentication_failure_close, so RabbitMQ reports a wrong password "
        "with 403 instead of closing the socket after 3 s)",
        "the start of the handshake",
        {"19eb1a2f79ffbab3": ALL},
    ),
    Contract(
        "txamqp.client.TwistedDelegate.connection_tune",
        "(self, ch, msg)",
        "extends",
        f"{P}.AMQPDelegate.connection_tune",
        "it sets client.MAX_LENGTH to frame_max (which mqtwist's dataReceived "
        "and basicPublish read), answers connection.tune-ok and fires "
        "client.started; mqtwist then sets client.tuned, which its login "
        "errors use to tell a refused password from a refused vhost",
        "the handshake and the frame size",
        {"08f2029a2206e045": ALL},
    ),
    Contract(
        "txamqp.client.TwistedDelegate.basic_deliver",
        "(self, ch, msg)",
        "replaces",
        f"{P}.AMQPDelegate.basic_deliver",
        "txamqp puts deliveries in a queue per consumer tag; mqtwist hands "
        "them to its listener at once",
        "whether deliveries are now handled otherwise",
        {"84d8a83721bf460f": ALL},
    ),
    Contract(
        "txamqp.client.TwistedDelegate.channel_close",
        "(self, ch, msg)",
        "relies on",
        f"{P}.AMQPProtocol.channel_failed (through AMQChannel.do_close)",
        "it answers channel.close-ok and calls ch.do_close(msg)",
        "how a channel closed by the broker is reported",
        {"371b55d5d0dd9938": ALL},
    ),
    Contract(
        "txamqp.client.TwistedDelegate.close",
        "(self, reason)",
        "relies on",
        f"{P}.AMQPProtocol.login; mqtwist.amqp.client (protocol.closed)",
        "it sets client.closed, fails client.started with Closed(reason) (so "
        "a handshake the broker ends fails with Closed) and closes the "
        "transport",
        "the login's errors and the end of a connection",
        {"8489f765a5946c76": ALL},
    ),
    Contract(
        "txamqp.delegate.Delegate.dispatch",
        "(self, channel, message)",
        "relies on",
        f"{P}.AMQPDelegate.basic_ack and basic_nack (publisher confirms, which "
        "txamqp has no handler for)",
        "a method is handled by the delegate's method named "
        "pythonize(class name) + '_' + pythonize(method name)",
        "how the delegate finds its handlers",
        {"8fabd3bb451a766e": ALL},
    ),
    Contract(
        "txamqp.client.TwistedEvent.wait",
        "(self)",
        "calls",
        "mqtwist.amqp.client (protocol.disconnected.wait())",
        "it returns a Deferred that fires when the event fires, at once if it has",
        "waiting for a connection's end",
    ),
    # -- txamqp.connection: frames and payloads ------------------------------
    Contract(
        "txamqp.connection.Frame",
        "(channel, payload)",
        "calls",
        f"{P} (Frame(channel, payload), frame.channel, frame.payload, "
        "Frame.METHOD/HEADER/HEARTBEAT, Frame.DECODERS)",
        "a frame is its channel and a payload whose 'type' is one of Frame's "
        "constants; Frame.DECODERS maps a type to its payload class",
        "the frame classes",
    ),
    Contract(
        "txamqp.connection.Method.encode",
        "(self, enc)",
        "replaces",
        f"{P}.encodeMethod (called by AMQPProtocol._pack_frame)",
        "a method payload is class id, method id and the arguments by their "
        "spec types, written as one long string; mqtwist writes the same "
        "with FieldTableCodec",
        "the method payload layout, and whether it now uses the codec given",
        {"fd770a209d872e20": ALL},
    ),
    Contract(
        "txamqp.connection.Method.decode",
        "(spec, dec)",
        "replaces",
        f"{P}.decodeMethod (called by AMQPProtocol._unpack_frame)",
        "the reverse of Method.encode; Method(method, *args)",
        "the method payload layout",
        {"6fa9f13949b1cc7a": ALL},
    ),
    Contract(
        "txamqp.connection.Header.encode",
        "(self, enc)",
        "replaces",
        f"{P}.encodeHeader (AMQPProtocol._pack_frame and basicPublish)",
        "a content header is class id, weight, body size, property flags (15 "
        "to a 16-bit word, bit 0 for another word) and the properties present; "
        "unknown properties are logged and left out",
        "the header payload layout (tests/test_amqp_fieldtable.py compares "
        "mqtwist's headers with txamqp's)",
        {"8a702611869b43ba": ALL},
    ),
    Contract(
        "txamqp.connection.Header.decode",
        "(spec, dec)",
        "replaces",
        f"{P}.decodeHeader (AMQPProtocol._unpack_frame)",
        "the reverse of Header.encode; Header(klass, weight, size, "
        "**properties) with properties by their spec names",
        "the header payload layout",
        {"7c0c25bfbcdb2f25": ALL},
    ),
    Contract(
        "txamqp.connection.Header",
        "(klass, weight, size, **properties)",
        "calls",
        f"{P} (Header(...), header.klass, .weight, .size, .properties)",
        "a content header's attributes are klass, weight, size and properties",
        "the header class",
    ),
    Contract(
        "txamqp.connection.Method",
        "(method, *args)",
        "calls",
        f"{P} (Method(...), payload.method, payload.args)",
        "a method payload's attributes are method (the spec method) and args",
        "the method class",
    ),
    Contract(
        "txamqp.connection.Body",
        "(content)",
        "calls",
        f"{P}.AMQPProtocol._unpack_frame",
        "a body payload's attribute is content",
        "the body class",
    ),
    Contract(
        "txamqp.content.Content",
        "(body='', children=None, properties=None)",
        "calls",
        f"{P}._Assembly.add; mqtwist.amqp.client reads content.body and "
        "content.properties",
        "a message's content is body, children and properties",
        "the content class",
    ),
    Contract(
        "txamqp.message.Message",
        "(method, fields, content=None)",
        "calls",
        f"{P}.AMQPProtocol.process_frame; mqtwist.amqp.client reads "
        "delivery_tag, redelivered, multiple, consumer_tag, reply_code, "
        "reply_text by their spec names",
        "a message's fields are read as attributes named after the spec's "
        "fields",
        "the message class",
    ),
    # -- txamqp.codec.Codec: FieldTableCodec ---------------------------------
    Contract(
        "txamqp.codec.Codec.read",
        "(self, n)",
        "extends",
        f"{F}.FieldTableCodec.read",
        "it reads from self.stream, counts self.nread and raises EOF only when "
        "nothing is left; mqtwist raises EOF on any short read",
        "reading and counting",
        {"520ef6a65f676196": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.enc_str",
        "(self, fmt, s)",
        "replaces",
        f"{F}.FieldTableCodec.enc_str",
        "it writes a length of format fmt, then the string as UTF-8; txamqp "
        "packs len() of a str, wrong for text that is not ASCII, which mqtwist "
        "fixes",
        "string encoding; if txamqp now counts bytes, the override can go",
        {"7527e39b91afd400": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.encode_shortstr",
        "(self, s)",
        "replaces",
        f"{F}.FieldTableCodec.encode_shortstr",
        "a short string is a length octet and the bytes; mqtwist refuses one "
        "over 255 bytes with FieldTableError instead of struct.error",
        "short string encoding",
        {"2008fe845378c815": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.encode_table",
        "(self, tbl)",
        "replaces",
        f"{F}.FieldTableCodec.encode_table",
        "the encoder of 'table' fields (queue arguments, message headers, "
        "client properties); txamqp writes only S and I values",
        "table encoding; whether txamqp now writes more types",
        {"190352c7bf956d9c": "0.8.1", "37092964c1026dde": "0.8.2"},
    ),
    Contract(
        "txamqp.codec.Codec.decode_table",
        "(self)",
        "replaces",
        f"{F}.FieldTableCodec.decode_table",
        "the decoder of 'table' fields; txamqp reads only S, I, F and t values "
        "and raises on the rest (a dead-lettered message's x-death header "
        "would break the connection)",
        "table decoding; whether txamqp now reads more types",
        {"bedfb680c13ecd14": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.dec_str",
        "(self, fmt)",
        "relies on",
        f"{F}.FieldTableCodec (decode_shortstr, decode_longstr: table keys, S "
        f"values, method arguments) and {P}._shortstrAt, which mirrors it",
        "a string is returned as str when it is valid UTF-8, else as bytes "
        "(0.8.0 raised UnicodeDecodeError)",
        "string decoding in FieldTableCodec and in AMQPProtocol's fast "
        "readers",
        {"f69f425943f9310f": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.encode",
        "(self, field_type, field_value)",
        "relies on",
        f"{P}.encodeMethod, encodeHeader",
        "a value of spec type T is written by the codec's method encode_T, so "
        "FieldTableCodec's encode_table and encode_shortstr are used",
        "how field types map to codec methods",
        {"9781ef2d57b75fc5": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.decode",
        "(self, field_type)",
        "relies on",
        f"{P}.decodeMethod, decodeHeader",
        "a value of spec type T is read by the codec's method decode_T",
        "how field types map to codec methods",
        {"3d544e4f1efbfebd": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.enc_bytes",
        "(self, fmt, s)",
        "calls",
        f"{F}.FieldTableCodec",
        "it writes a length of format fmt, then the bytes",
        "byte string encoding",
        {"83929f16a92593de": ALL},
    ),
    Contract(
        "txamqp.codec.Codec.decode_longbytes",
        "(self)",
        "calls",
        f"{F}.FieldTableCodec (tables, arrays, x values); {P}.decodeMethod, "
        "decodeHeader",
        "a 32-bit length and that many bytes, as bytes",
        "long string decoding",
    ),
    Contract(
        "txamqp.codec.Codec.encode_longbytes",
        "(self, s)",
        "calls",
        f"{F}.FieldTableCodec; {P}.encodeMethod, encodeHeader",
        "a 32-bit length and the bytes",
        "long string encoding",
    ),
    Contract(
        "txamqp.codec.EOF",
        None,
        "calls",
        f"{F}.FieldTableCodec (raised and caught)",
        "the exception a read past the end raises",
        "the codec's errors",
    ),
    # -- txamqp.spec ------------------------------------------------------------
    Contract(
        "txamqp.spec.load",
        "(specfile)",
        "calls",
        "mqtwist.amqp.spec.loadSpec",
        "it parses the spec file and returns a Spec whose klass holds one "
        "channel method per AMQP method, named pythonize(class_method)",
        "the spec loader",
    ),
    Contract(
        "txamqp.spec.pythonize",
        "(name)",
        "calls",
        f"{P}.AMQPProtocol._unpack_frame",
        "it turns spec names into Python names ('frame-method' -> "
        "'frame_method')",
        "name mapping",
    ),
]


def fingerprint(obj: Any) -> str:
    """
    A digest of C{obj}'s source code that ignores comments, blank lines and
    indentation width: 16 hex digits of SHA-256 over its tokens.
    """
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    source = textwrap.dedent(inspect.getsource(inspect.unwrap(obj)))
    skip = {tokenize.COMMENT, tokenize.NL}
    words = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in skip:
            continue
        if token.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE):
            words.append(tokenize.tok_name[token.type])
        else:
            words.append(token.string)
    return hashlib.sha256("\x00".join(words).encode()).hexdigest()[:16]


def resolve(target: str) -> tuple[Any, str | None]:
    """
    Find C{target} in the installed txamqp.

    @return: the object (for a method, as its class defines it, so a
        staticmethod stays one) and C{None}; or C{None} and why it is not
        where mqtwist expects it.
    """
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        moduleName = ".".join(parts[:split])
        try:
            owner: Any = importlib.import_module(moduleName)
        except ImportError:
            continue
        break
    else:
        return None, f"no module of {target!r} can be imported"
    for depth, name in enumerate(parts[split:], start=split):
        if inspect.isclass(owner) and name not in vars(owner):
            where = next(
                (klass.__qualname__ for klass in owner.__mro__ if name in vars(klass)), None
            )
            if where is None:
                return None, f"{'.'.join(parts[:depth])} has no attribute {name!r}: it is gone"
            return None, (
                f"{'.'.join(parts[:depth])} no longer defines {name!r} itself: "
                f"it now comes from {where}"
            )
        try:
            owner = vars(owner)[name] if inspect.isclass(owner) else getattr(owner, name)
        except (KeyError, AttributeError):
            return None, f"{'.'.join(parts[:depth])} has no attribute {name!r}: it is gone"
    return owner, None


def signatureOf(obj: Any) -> str:
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    return str(inspect.signature(obj))


def explain(contract: Contract, problem: str) -> str:
    return textwrap.dedent(
        """
        txamqp {installed} is installed, and {problem}

        mqtwist {how} {target}{signature}, in {by}.

        What mqtwist assumes about it: {assumes}.

        What to re-check in mqtwist/amqp/: {recheck}.

        Why mqtwist departs from stock txamqp, and the list of what it
        overrides: the docstring of mqtwist/amqp/__init__.py.
        mqtwist was checked against txamqp {checked}, the versions
        setup.cfg admits.  A new version is admitted (in setup.cfg, and in
        CHECKED_VERSIONS and the fingerprints of tests/{module}) once
        tests/{module} and tests/test_amqp_*.py pass with it.
        """
    ).format(
        installed=INSTALLED,
        problem=problem,
        how=contract.how,
        target=contract.target,
        signature=contract.signature or "",
        by=contract.by,
        assumes=contract.assumes,
        recheck=contract.recheck,
        checked=", ".join(CHECKED_VERSIONS),
        module=Path(__file__).name,
    )


@pytest.mark.parametrize("contract", CONTRACTS, ids=[c.target for c in CONTRACTS])
def test_name_and_signature(contract: Contract) -> None:
    """
    Every txamqp name mqtwist depends on is where mqtwist expects it, with
    the parameters mqtwist passes or overrides.
    """
    obj, missing = resolve(contract.target)
    if missing is not None:
        pytest.fail(explain(contract, missing), pytrace=False)
    if contract.signature is None:
        return
    actual = signatureOf(obj)
    if actual != contract.signature:
        pytest.fail(
            explain(
                contract,
                f"the signature of {contract.target} changed: it is now "
                f"{actual}, mqtwist expects {contract.signature}",
            ),
            pytrace=False,
        )


FINGERPRINTED = [c for c in CONTRACTS if c.fingerprints]


@pytest.mark.parametrize("contract", FINGERPRINTED, ids=[c.target for c in FINGERPRINTED])
def test_source_unchanged(contract: Contract) -> None:
    """
    The txamqp methods mqtwist replaces, extends or relies on have the code
    they had in the versions mqtwist was checked against.
    """
    obj, missing = resolve(contract.target)
    if missing is not None:
        pytest.fail(explain(contract, missing), pytrace=False)
    actual = fingerprint(obj)
    if actual not in contract.fingerprints:
        checked = "; ".join(
            f"{versions}: {known}" for known, versions in contract.fingerprints.items()
        )
        pytest.fail(
            explain(
                contract,
                f"the code of {contract.target} is not the code mqtwist was "
                f"checked against (fingerprint now {actual}; {checked}). "
                f"Compare it with the source of an earlier txamqp (pip download "
                f"--no-deps --no-binary :all: txamqp=={CHECKED_VERSIONS[-1]}); "
                f"once mqtwist is right for it, add {actual!r}: "
                f"{INSTALLED!r} to the fingerprints of this contract in "
                f"tests/{Path(__file__).name}",
            ),
            pytrace=False,
        )


def test_fingerprints_cover_every_checked_version() -> None:
    """
    Each fingerprinted contract names every version of L{CHECKED_VERSIONS}
    (so a version added there was checked method by method).
    """
    incomplete = {}
    for contract in FINGERPRINTED:
        named = {v.strip() for versions in contract.fingerprints.values() for v in versions.split(",")}
        if named != set(CHECKED_VERSIONS):
            incomplete[contract.target] = sorted(named)
    assert not incomplete, (
        f"these contracts were not fingerprinted in every version of "
        f"CHECKED_VERSIONS {CHECKED_VERSIONS}: {incomplete}"
    )


def test_installed_txamqp_was_checked() -> None:
    """
    The installed txamqp is one mqtwist was checked against.  (A newer one
    may pass every contract above and still change something they do not
    cover: the AMQP tests decide.)
    """
    if INSTALLED not in CHECKED_VERSIONS:
        pytest.fail(
            f"txamqp {INSTALLED} is installed; mqtwist's AMQP layer, which "
            f"overrides parts of txamqp (see the docstring of "
            f"mqtwist/amqp/__init__.py), was checked against txamqp "
            f"{', '.join(CHECKED_VERSIONS)} only. If every other test of "
            f"{Path(__file__).name} and tests/test_amqp_*.py pass with "
            f"{INSTALLED}, add it to CHECKED_VERSIONS and to the fingerprints "
            f"there, and raise the bound of txamqp in setup.cfg",
            pytrace=False,
        )


def test_setup_cfg_pins_the_checked_versions() -> None:
    """
    C{setup.cfg}'s txamqp requirement admits every checked version, and
    nothing newer than the newest one (not even its next patch release:
    0.8.1 changed what mqtwist relies on).
    """
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].splitlines()
    (line,) = [line for line in lines if line.strip().lower().startswith("txamqp")]
    specifier = Requirement(line.strip()).specifier
    newest = Version(CHECKED_VERSIONS[-1])
    nextPatch = Version(f"{newest.major}.{newest.minor}.{newest.micro + 1}")
    refused = [v for v in CHECKED_VERSIONS if not specifier.contains(v)]
    assert not refused, f"setup.cfg ({line.strip()}) refuses checked txamqp versions {refused}"
    assert not specifier.contains(nextPatch), (
        f"setup.cfg ({line.strip()}) admits txamqp {nextPatch}, which mqtwist "
        f"was not checked against (CHECKED_VERSIONS: {CHECKED_VERSIONS})"
    )


# -- behaviours that broke before, checked directly ------------------------


def test_codec_decodes_a_string_that_is_not_utf8_to_bytes() -> None:
    """
    txamqp 0.8.1 and later: a string that is not UTF-8 comes back as bytes
    (0.8.0 raised UnicodeDecodeError, which broke the connection on a
    message header holding such a string).
    """
    from txamqp.codec import Codec

    codec = Codec(io.BytesIO(b"\x02\xff\xfe\x00\x00\x00\x02ok"))
    assert codec.decode_shortstr() == b"\xff\xfe", (
        "txamqp's Codec.dec_str no longer returns the bytes of a string that is "
        "not UTF-8: mqtwist.amqp.fieldtable (table keys, S values) and "
        "mqtwist.amqp.protocol._shortstrAt assume it does"
    )
    assert codec.decode_longstr() == "ok"


def test_read_content_takes_bytes_bodies() -> None:
    """
    txamqp's read_content (used for the content of basic.get-ok) reads the
    body frames mqtwist makes, whose content is bytes (0.8.0 failed with
    TypeError).
    """
    from txamqp.connection import Body, Frame, Header
    from txamqp.protocol import read_content
    from txamqp.queue import TimeoutDeferredQueue

    from mqtwist.amqp.spec import loadSpec

    basic = loadSpec().classes.byname["basic"]
    queue = TimeoutDeferredQueue()
    for payload in (Header(basic, 0, 4, priority=1), Body(b"\xff\x00"), Body(b"ab")):
        queue.put(Frame(1, payload))
    results: list[Any] = []
    read_content(queue).addBoth(results.append)
    (content,) = results
    assert getattr(content, "body", content) == b"\xff\x00ab", (
        f"txamqp's read_content cannot read body frames of bytes ({content!r}): "
        "mqtwist.amqp.protocol.AMQPProtocol._unpack_frame makes them, so "
        "replies with content (basic.get-ok) would fail"
    )


def test_protocol_attributes_txamqp_sets() -> None:
    """
    The attributes of txamqp's AMQClient and FrameReceiver that
    L{mqtwist.amqp.protocol.AMQPProtocol} reads and writes exist once it is
    built, with heartbeats on.
    """
    from mqtwist.amqp.protocol import AMQPDelegate, AMQPProtocol
    from mqtwist.amqp.spec import loadSpec

    delegate = AMQPDelegate()
    protocol = AMQPProtocol(delegate, vhost="/", spec=loadSpec(), heartbeat=10, clock=Clock())
    expected = [
        "spec", "delegate", "vhost", "channels", "channelFactory", "work", "started",
        "disconnected", "closed", "clock", "heartbeatInterval", "checkHB", "sendHB",
        "MAX_LENGTH", "HEADER_LENGTH", "FRAME_END", "MAX_UNSEEN_HEARTBEAT",
        "frame_mode", "paused",
    ]
    missing = [name for name in expected if not hasattr(protocol, name)]
    assert not missing, (
        f"txamqp {INSTALLED}'s AMQClient no longer sets {missing}, which "
        f"mqtwist.amqp.protocol.AMQPProtocol reads (frame cutting, heartbeats, "
        f"channels): re-check AMQPProtocol against txamqp's AMQClient.__init__"
    )
    assert delegate.client is protocol, (
        "txamqp's AMQClient.__init__ no longer sets delegate.client, which "
        "mqtwist.amqp.protocol.AMQPDelegate uses to reach the protocol"
    )
    assert protocol.channelFactory.__mro__[1].__name__ == "AMQChannel", (
        "txamqp's AMQClient no longer makes its channels as subclasses of "
        "AMQChannel (channelClass) and the spec's generated class, which "
        "mqtwist.amqp.protocol.AMQPProtocol._channelNow and mqtwist.amqp."
        "client rely on"
    )


#: the channel methods mqtwist calls, with the keyword arguments it passes:
#: txamqp generates them from the spec file (txamqp.spec.Method.define_method)
CHANNEL_CALLS = {
    "channel_open": [],
    "confirm_select": [],
    "queue_declare": ["queue", "durable", "arguments"],
    "basic_qos": ["prefetch_count"],
    "basic_consume": ["queue"],
    "basic_cancel": ["consumer_tag"],
    "basic_reject": ["delivery_tag", "requeue"],
    "connection_start_ok": ["client_properties", "mechanism", "response", "locale"],
    "connection_tune_ok": [],
    "connection_close": [],
}


@pytest.mark.parametrize("name", sorted(CHANNEL_CALLS))
def test_generated_channel_method(name: str) -> None:
    """
    txamqp still generates a channel method per spec method, named and with
    keyword arguments as mqtwist calls it.
    """
    from mqtwist.amqp.spec import loadSpec

    klass = loadSpec().klass
    method = getattr(klass, name, None)
    assert method is not None, (
        f"the channels txamqp {INSTALLED} builds from mqtwist's spec file have no "
        f"method {name}: txamqp.spec no longer names generated methods "
        f"pythonize(class + '_' + method); mqtwist.amqp.client and "
        f"mqtwist.amqp.protocol call {name}"
    )
    parameters = inspect.signature(method).parameters
    missing = [arg for arg in CHANNEL_CALLS[name] if arg not in parameters]
    assert not missing, (
        f"txamqp {INSTALLED}'s generated channel method {name} has no keyword "
        f"argument {missing} (it has {list(parameters)}), which mqtwist passes"
    )


def test_closed_exceptions() -> None:
    """
    mqtwist catches txamqp's Closed and tells ChannelClosed apart.
    """
    from txamqp.client import ChannelClosed, Closed, ConnectionClosed

    assert issubclass(ChannelClosed, Closed) and issubclass(ConnectionClosed, Closed), (
        "txamqp's ChannelClosed and ConnectionClosed are no longer Closed: "
        "mqtwist.amqp.client catches Closed for both"
    )
