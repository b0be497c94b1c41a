"""
How long an SMTP client waits for each step of a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _seconds(default: float, help: str) -> Any:
    # the help is read by mqtwist.config, where SMTPTimeouts is the
    # [timeouts] table of settings; this package imports nothing above it
    return field(default=default, metadata={"help": help})


@dataclass
class SMTPTimeouts:
    """
    Seconds to wait for each step of an SMTP conversation.  The defaults are
    the minimums of RFC 5321 section 4.5.3.2, except C{connect}, which the
    RFC leaves open.
    """

    connect: float = _seconds(30.0, "seconds to wait for a TCP connection to an SMTP server")
    greeting: float = _seconds(300.0, "seconds to wait for the SMTP greeting")
    ehlo: float = _seconds(300.0, "seconds to wait for the reply to EHLO/HELO")
    mailfrom: float = _seconds(300.0, "seconds to wait for the reply to MAIL FROM")
    rcptto: float = _seconds(300.0, "seconds to wait for the reply to RCPT TO")
    data: float = _seconds(120.0, "seconds to wait for the reply to DATA")
    message: float = _seconds(600.0, "seconds to wait for the reply after the message body")
    rset: float = _seconds(60.0, "seconds to wait for the reply to RSET")
    quit: float = _seconds(10.0, "seconds to wait for the reply to QUIT")
    starttls: float = _seconds(
        120.0, "seconds to wait for the reply to STARTTLS, and then for the TLS handshake"
    )
    auth: float = _seconds(120.0, "seconds to wait for each reply of the AUTH exchange")
