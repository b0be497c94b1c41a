"""
What the SMTP server hands to the queueing side when a client has sent
the final dot of a message: the envelope, who sent it, and the message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Recipient:
    """
    One accepted C{RCPT TO}.

    @ivar address: the forward path without angle brackets.
    @ivar notify: the DSN C{NOTIFY=} values (RFC 3461), upper case, in the
        client's order; empty when the command had none.
    @ivar orcpt: the DSN C{ORCPT=} value as the client sent it (the
        C{addr-type;xtext} form), or C{None}.
    """

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


@dataclass(frozen=True)
class Submission:
    """
    One message accepted by the SMTP server, up to the final dot.

    @ivar sender: the reverse path without angle brackets; C{""} for the
        null sender C{<>}.
    @ivar recipients: the accepted recipients, in the client's order.
    @ivar mime: the message as received, with the server's C{Received}
        header already put on top, lines ending in CRLF, dot-stuffing
        undone.
    @ivar ret: the DSN C{RET=} of C{MAIL FROM} (C{"FULL"} or C{"HDRS"}),
        or C{None}.
    @ivar envid: the DSN C{ENVID=} of C{MAIL FROM} (xtext decoded), or
        C{None}.
    @ivar smtputf8: C{MAIL FROM} had C{SMTPUTF8}.
    @ivar user: the name the client authenticated as, or C{None}.
    @ivar clientAddress: the client's IP address.
    @ivar clientPort: the client's TCP port.
    @ivar localAddress: the server's address the client connected to.
    @ivar localPort: the server's TCP port the client connected to.
    @ivar heloName: what the client said in EHLO/HELO.
    @ivar tls: the session was encrypted (STARTTLS or implicit TLS).
    @ivar received: when the final dot arrived (seconds since the epoch).
    @ivar defaults: the job properties configured for C{user} (or for the
        trusted network the client came from): C{queues}, C{tags},
        C{dkim}, ...; copied into every job unless the job sets them.
    """

    sender: str
    recipients: tuple[Recipient, ...]
    mime: bytes
    clientAddress: str
    clientPort: int
    heloName: str
    received: float
    localAddress: str = ""
    localPort: int = 0
    tls: bool = False
    user: str | None = None
    ret: str | None = None
    envid: str | None = None
    smtputf8: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)


#: queues a submission: fires with C{None} once the broker has confirmed
#: every job of it, errbacks (with anything) when any could be lost; the
#: server then answers 451 and the client keeps the message
Queue = Callable[[Submission], "Deferred[None]"]
