"""
mqtwist's AMQP layer: RabbitMQ through txamqp.

  - L{mqtwist.amqp.url}: broker URLs (L{BrokerURL})
  - L{mqtwist.amqp.client}: L{BrokerClient}, the reconnecting publisher and
    consumer the rest of mqtwist uses
  - L{mqtwist.amqp.localnode}: a private RabbitMQ node from the Debian package
  - L{mqtwist.amqp.protocol}, L{mqtwist.amqp.confirms}, L{mqtwist.amqp.spec}:
    the txamqp protocol, publisher-confirm bookkeeping and the AMQP spec
    file they run on

Nothing outside this package needs to know about AMQP frames or channels.
"""
