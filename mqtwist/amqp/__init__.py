"""
mqtwist's AMQP layer: RabbitMQ through txamqp.

  - L{mqtwist.amqp.url}: broker URLs (L{BrokerURL})
  - L{mqtwist.amqp.client}: L{BrokerClient}, the reconnecting publisher and
    consumer the rest of mqtwist uses
  - L{mqtwist.localnode}: a private RabbitMQ node from the Debian package
  - L{mqtwist.amqp.protocol}, L{mqtwist.amqp.confirms}, L{mqtwist.amqp.spec}:
    the txamqp protocol, publisher-confirm bookkeeping and the AMQP spec
    file they run on

Nothing outside this package needs to know about AMQP frames or channels.

Where it departs from txamqp, and why
=====================================

txamqp (0.8.1 and 0.8.2, the versions C{setup.cfg} admits) provides the
connection, the channels, the handshake and the spec-driven methods;
mqtwist keeps those and replaces the parts below.

  - B{Publisher confirms.}  txamqp ships no spec file and has no handler
    for C{basic.ack}/C{basic.nack} from the broker: its delegate looks the
    handler up by name, fails, and the connection is closed (checked with
    0.8.2 and a C{basic.ack} frame).  mqtwist
    carries RabbitMQ's 0-9-1 spec (C{confirm.select}, C{basic.nack}), hands
    acks and nacks to L{mqtwist.amqp.confirms.PendingConfirms}, and a
    publish's Deferred fires only once the broker has stored the message.
  - B{Field tables.}  txamqp's codec writes only C{S} and C{I} table values
    and reads only C{S}, C{I}, C{F} and C{t}; every dead-lettered message
    carries an C{x-death} header of arrays, 64-bit integers and timestamps,
    which would break the connection.
    L{mqtwist.amqp.fieldtable.FieldTableCodec} reads and writes every type
    RabbitMQ uses, counts string lengths in bytes (txamqp counts
    characters), and encodes and decodes every frame that mqtwist does not
    pack or read directly.
  - B{Bytes bodies.}  txamqp decodes each body frame that is valid UTF-8 to
    C{str}, so a consumer gets C{str} or C{bytes} depending on the content,
    and it drops the frames read so far when a later frame of the same body
    is not valid UTF-8 (checked with 0.8.2: frames C{"abc"} and
    C{b"\\xc3x"} come back as C{b"\\xc3x"}).  mqtwist reads body frames as
    bytes, always.
  - B{Speed.}  Measured with C{bench/run.py} (5 KB messages, 10,000 a run,
    one run before and one after each change, 2 CPUs; single runs vary by
    about 5%; C{bench/results/PERF-20261124.md}): handling frames as they
    arrive (txamqp passes each through a DeferredLock, a generator and two
    queues) and heartbeat timers that read timestamps (txamqp resets two
    timers per frame) took mqtwist's CPU from 0.59 to 0.50 s per 1,000
    messages, 2 processes 2,018 -> 2,242 msg/s (commit 7774714); packing
    C{basic.publish} and C{basic.ack} directly, one write per publish
    (txamqp's generic C{invoke}), from 0.50 to 0.41 s, 1 process
    1,568 -> 2,041 and 2 processes 2,242 -> 2,933 msg/s (d5d4bf4).
    Reading deliveries, acks and bodies without the codec was within noise
    (c051058); cutting frames at an offset instead of copying the buffer
    after each (quadratic in a read's length) took a delivery's read from
    15.2 to 11.7 µs (cbb9dd4, as its message reports).

What is overridden
==================

L{mqtwist.amqp.protocol.AMQPProtocol} (a C{txamqp.protocol.AMQClient}):
C{dataReceived}, C{_pack_frame}, C{_unpack_frame} and C{send_frame}
(private frame reading and writing of C{FrameReceiver}), C{channel},
C{process_frame} (which bypasses C{AMQClient.dispatch}, its worker and
C{read_content} for everything but replies with content),
C{reschedule_send_heartbeat}, C{reschedule_check_heartbeat},
C{channel_failed}; extended: C{__init__} (replaces the C{outgoing} frame
queue with an immediate writer), C{connectionMade}, C{connectionLost},
C{send_heartbeat}, C{check_heartbeat}; added: C{basicPublish},
C{basicAck}, C{login}.  Method and header payloads are written and read by
C{encodeMethod}, C{decodeMethod}, C{encodeHeader}, C{decodeHeader} in
place of txamqp's C{Method} and C{Header} C{encode}/C{decode}, which make
their own codec.

L{mqtwist.amqp.protocol.AMQPDelegate} (a C{txamqp.client.TwistedDelegate}):
C{connection_start} (client properties), C{basic_deliver}; extended:
C{connection_tune}; added: C{basic_ack}, C{basic_nack}.

L{mqtwist.amqp.fieldtable.FieldTableCodec} (a C{txamqp.codec.Codec}):
C{enc_str}, C{encode_shortstr}, C{encode_table}, C{decode_table};
extended: C{read}.

C{tests/test_txamqp_contract.py} lists every txamqp name this package
overrides, calls or relies on, with its signature and a fingerprint of its
code in each checked version, and says what to re-check when a txamqp
release changes one; raise the bound in C{setup.cfg} only once it and
C{tests/test_amqp_*.py} pass with the new release.
"""
