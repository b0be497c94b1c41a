"""
The C{twistd mqtwist} drop-in.

Twisted imports every module of C{twisted/plugins/} to find its services, so
this one names its module (L{mqtwist.tap}) instead of importing it: nothing
heavy and never the reactor.
"""

from twisted.application.service import ServiceMaker

mqtwistServiceMaker = ServiceMaker(
    "mqtwist",
    "mqtwist.tap",
    "Outbound mail transfer agent: JSON delivery jobs from RabbitMQ, delivered over ESMTP",
    "mqtwist",
)
