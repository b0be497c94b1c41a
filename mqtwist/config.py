"""
The settings of one mqtwist service, with their defaults.

Every limit and default of the service lives here, so that the command line
(L{mqtwist.tap}), a TOML file, C{MQTWIST_*} environment variables and
programs that embed L{mqtwist.service.MailerService} all describe the same
thing.  Attribute names are the option names in camelCase: C{ehloName} is
C{--ehlo-name}, C{ehlo-name} in TOML and C{MQTWIST_EHLO_NAME} in the
environment.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class SMTPTimeouts:
    """
    Seconds to wait for each step of an SMTP conversation.  The defaults are
    the minimums of RFC 5321 section 4.5.3.2, except C{connect}, which the
    RFC leaves open.
    """

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    mailfrom: float = 300.0
    rcptto: float = 300.0
    data: float = 120.0
    #: from the last byte of the body to the final reply
    message: float = 600.0
    rset: float = 60.0
    quit: float = 10.0


@dataclass
class Config:
    """
    Everything a L{mqtwist.service.MailerService} needs to know.
    """

    #: RabbitMQ URL (C{amqp://user:pass@host:5672/vhost?heartbeat=30}); C{None}
    #: starts a private RabbitMQ node from the Debian package.
    amqp: str | None = None
    #: where the private node keeps its data when C{amqp} is C{None}
    brokerDir: str = ".state/rabbitmq"
    #: AMQP port of the private node
    brokerPort: int = 5672

    outbox: str = "outbox"
    #: result queues; an empty name switches that queue off
    results: str = "results"
    success: str = "success"
    failure: str = "failure"
    retry: str = "retry"

    #: C{host:port} of a relay that takes all mail instead of MX delivery
    smarthost: str | None = None
    #: TCP port used for MX delivery
    mxPort: int = 25
    #: C{host:port} name servers for MX lookups; empty means the system's
    nameservers: list[str] = field(default_factory=list)

    #: data plugins to run, in order; C{None} runs every discovered plugin
    #: ordered by name
    plugins: list[str] | None = None
    #: seconds a data plugin's Deferred may take before it is cancelled
    pluginTimeout: float = 30.0
    #: how many times the plugin chain runs before the attempt fails
    pluginRuns: int = 3
    #: seconds between two runs of the plugin chain
    pluginRetryDelay: float = 1.0

    #: outbox messages handed to this process before it acknowledges any
    prefetch: int = 200
    #: deliveries in progress at once
    concurrency: int = 100
    #: the name this host gives in EHLO/HELO
    ehloName: str = field(default_factory=socket.getfqdn)

    #: SMTP connections open at once to one destination
    maxConnectionsPerDestination: int = 10
    #: messages one SMTP connection carries before it is closed
    maxMessagesPerConnection: int = 100
    #: seconds an unused SMTP connection stays open for the next message
    idleTimeout: float = 10.0
    timeouts: SMTPTimeouts = field(default_factory=SMTPTimeouts)

    #: seconds between attempts when the message has no C{retries}; the last
    #: one repeats
    retries: list[int] = field(
        default_factory=lambda: [600, 600, 1800, 1800, 3600, 3600, 7200]
    )
    #: seconds after the first attempt when a message without
    #: C{maxdelivertime} expires
    maxDeliverTime: int = 86400
    #: the delays, in seconds, that have a delay queue of their own; a retry
    #: delay is rounded up to the next one
    delayBuckets: list[int] = field(
        default_factory=lambda: [1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]
    )

    #: seconds that stopping the service waits for deliveries in flight
    shutdownTimeout: float = 30.0
    #: seconds between reconnection attempts to RabbitMQ grow up to this
    reconnectMaxDelay: float = 30.0
