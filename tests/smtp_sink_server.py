"""
A real SMTP server for tests: aiosmtpd on asyncio, run as its own process by
L{fixtures_smtp}.

It writes one JSON object per line on stdout for everything a test may want
to wait for or count, and exits when its stdin closes (so it dies with the
test process that started it).  Events (all but C{listening} carry the
C{connection} number, counted from 1 in the order of connections):

  - C{{"event": "listening", "port": N}}
  - C{{"event": "connect", "peer": [host, port]}} and C{{"event": "disconnect"}}
  - C{{"event": "ehlo" | "helo", "name": ...}}, C{{"event": "rset"}},
    C{{"event": "quit"}}
  - C{{"event": "message" | "rejected", "mail_from" (C{""} for C{<>}), "rcpt_tos",
    "mail_options", "rcpt_options", "data" (base64 of the body exactly as
    received, dot-unstuffed, line ends untouched), "peer", "tls"}}
  - C{{"event": "starttls"}} after a TLS handshake, C{{"event": "auth",
    "mechanism": ..., "login": ..., "success": true | false}}

Scripted behaviour, by the local part of an address:

  ======================  ======================================================
  sender C{rejectsender@}  550 5.7.1 to MAIL FROM
  sender C{tempsender@}    451 4.7.1 to MAIL FROM
  recipient C{reject@}     550 5.1.1 to RCPT TO
  recipient C{tempfail@}   451 4.3.0 to RCPT TO
  recipient C{disconnect@} the connection is dropped at RCPT TO (no reply)
  recipient C{hang@}       RCPT TO is never answered
  recipient C{rejectdata@} 554 5.6.0 after the body
  recipient C{tempdata@}   452 4.3.1 after the body
  recipient C{hangdata@}   the body is never answered
  recipient C{close421@}   421 4.3.2 to RCPT TO, then the connection is closed
                           (C{{"event": "closed421"}} says so first)
  recipient C{lenient@}    550 5.1.1 to RCPT TO, yet 354 to DATA (RFC 2920 3.1)
  ======================  ======================================================

Options: C{--no-ehlo} answers EHLO with 502 (clients must fall back to HELO),
C{--no-pipelining} leaves PIPELINING out of the EHLO reply, C{--hostname}
sets the name in the greeting, C{--line-length-limit} the longest line
accepted in the body (aiosmtpd's default is RFC 5321's 1000 with CRLF).
C{--tls-cert FILE --tls-key FILE} offer STARTTLS (C{--tls-broken} answers
220 to it and closes the connection instead of a handshake);
C{--auth USER:PASSWORD} offers AUTH PLAIN and LOGIN (over TLS only, unless
C{--auth-cleartext}); C{--size N} announces SIZE N; C{--no-8bitmime} leaves
8BITMIME out; C{--smtputf8} offers SMTPUTF8; C{--dsn} offers DSN and keeps
its parameters (RET, ENVID on MAIL; NOTIFY, ORCPT on RCPT) in the options;
C{--host} the address to listen on (C{::1} for IPv6).  C{--hold-data} holds
the reply to every body (C{{"event": "held", "connection": N, "rcpt_tos":
[...]}} says that one is held) until a line C{release} on stdin, after
which every body held or to come is answered at once: a test can act while
deliveries are known to be in flight, without waiting for a fixed time.  A
body whose connection closes while it is held is not reported as a message
(aiosmtpd ends its handler): its client never learnt that it was accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import ssl
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_connectionNumbers = itertools.count(1)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def localPart(address: str) -> str:
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


class RecordingSMTP(SMTP):
    """An aiosmtpd server that numbers its connections and can refuse EHLO."""

    refuseEhlo = False
    brokenTLS = False
    dsn = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if hasattr(self, "connectionNumber"):
            # the same connection, now over TLS
            super().connection_made(transport)
            return
        self.connectionNumber = next(_connectionNumbers)
        super().connection_made(transport)
        emit("connect", connection=self.connectionNumber, peer=list(self.session.peer[:2]))

    def connection_lost(self, error: Exception | None) -> None:
        emit("disconnect", connection=self.connectionNumber)
        super().connection_lost(error)

    async def smtp_EHLO(self, hostname: str) -> None:
        if self.refuseEhlo:
            await self.push("502 5.5.2 Error: command not recognized")
            return
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.brokenTLS:
            await self.push("220 2.0.0 Ready to start TLS")
            self.transport.close()
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._keepDSN(arg, ("RET=", "ENVID=")))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._keepDSN(arg, ("NOTIFY=", "ORCPT=")))

    def _keepDSN(self, arg: str | None, names: tuple[str, ...]) -> str | None:
        # aiosmtpd knows no DSN parameters: take them out, the handler puts
        # them back into the options it records
        self.dsnOptions: list[str] = []
        if not self.dsn or arg is None:
            return arg
        words = arg.split(" ")
        self.dsnOptions = [word for word in words if word.upper().startswith(names)]
        return " ".join(word for word in words if word not in self.dsnOptions)


class ScriptedHandler:
    """aiosmtpd hooks: record events, fail on the scripted addresses."""

    def __init__(self, pipelining: bool, eightBitMIME: bool, dsn: bool, released: asyncio.Event) -> None:
        self.pipelining = pipelining
        self.eightBitMIME = eightBitMIME
        self.dsn = dsn
        #: set when the replies to bodies may go (at once without --hold-data)
        self.released = released

    async def handle_EHLO(
        self, server: RecordingSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        emit("ehlo", connection=server.connectionNumber, name=hostname)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.dsn:
            responses.insert(-1, "250-DSN")
        if not self.eightBitMIME:
            responses.remove("250-8BITMIME")
        return responses

    def handle_STARTTLS(self, server: RecordingSMTP, session: Session, envelope: Envelope) -> bool:
        emit("starttls", connection=server.connectionNumber)
        return True

    async def handle_HELO(
        self, server: RecordingSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        emit("helo", connection=server.connectionNumber, name=hostname)
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: RecordingSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = localPart(address)
        if local == "rejectsender":
            return "550 5.7.1 sender rejected by script"
        if local == "tempsender":
            return "451 4.7.1 sender deferred by script"
        envelope.mail_from = address
        envelope.mail_options.extend(options + server.dsnOptions)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: RecordingSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = localPart(address)
        if local == "reject":
            return "550 5.1.1 recipient rejected by script"
        if local == "tempfail":
            return "451 4.3.0 recipient deferred by script"
        if local == "disconnect":
            server.transport.close()
            await asyncio.Future()  # never answer; the closed connection ends this
        if local == "hang":
            await asyncio.Future()
        if local == "close421":
            emit("closed421", connection=server.connectionNumber)
            await server.push("421 4.3.2 closing by script")
            server.transport.close()
            await asyncio.Future()
        if local == "lenient":
            # refused, yet counted, so that DATA gets its 354
            envelope.rcpt_tos.append(address)
            return "550 5.1.1 recipient refused by script (DATA will still be accepted)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options + server.dsnOptions)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server: RecordingSMTP, session: Session, envelope: Envelope) -> str:
        emit("rset", connection=server.connectionNumber)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: RecordingSMTP, session: Session, envelope: Envelope) -> str:
        emit("quit", connection=server.connectionNumber)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: RecordingSMTP, session: Session, envelope: Envelope) -> str:
        locals_ = {localPart(rcpt) for rcpt in envelope.rcpt_tos}
        if "hangdata" in locals_:
            await asyncio.Future()
        if not self.released.is_set():
            emit("held", connection=server.connectionNumber, rcpt_tos=envelope.rcpt_tos)
            await self.released.wait()
        reply = "250 2.0.0 OK queued"
        if locals_ == {"lenient"}:
            reply = "554 5.5.1 no valid recipients"
        if "rejectdata" in locals_:
            reply = "554 5.6.0 message rejected by script"
        elif "tempdata" in locals_:
            reply = "452 4.3.1 message deferred by script"
        emit(
            "message" if reply.startswith("2") else "rejected",
            connection=server.connectionNumber,
            peer=list(session.peer[:2]),
            # aiosmtpd keeps the null sender as "<>"
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            mail_options=envelope.mail_options,
            rcpt_options=envelope.rcpt_options,
            data=base64.b64encode(envelope.original_content or b"").decode("ascii"),
            tls=session.ssl is not None,
        )
        return reply


async def serve(arguments: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    released = asyncio.Event()
    if not arguments.hold_data:
        released.set()
    handler = ScriptedHandler(
        pipelining=not arguments.no_pipelining,
        eightBitMIME=not arguments.no_8bitmime,
        dsn=arguments.dsn,
        released=released,
    )

    class Server(RecordingSMTP):
        refuseEhlo = arguments.no_ehlo
        brokenTLS = arguments.tls_broken
        dsn = arguments.dsn
        line_length_limit = arguments.line_length_limit

    options: dict[str, Any] = {}
    if arguments.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(arguments.tls_cert, arguments.tls_key)
        options["tls_context"] = context
    if arguments.auth:
        options["authenticator"] = Authenticator(*arguments.auth.split(":", 1))
        options["auth_require_tls"] = not arguments.auth_cleartext
    server = await loop.create_server(
        lambda: Server(
            handler,
            hostname=arguments.hostname,
            data_size_limit=arguments.size or None,
            enable_SMTPUTF8=arguments.smtputf8,
            **options,
        ),
        host=arguments.host,
        port=arguments.port,
    )
    emit("listening", port=server.sockets[0].getsockname()[1])
    # stdin closes when the test process goes away, however it ends
    stdinClosed = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    loop.create_task(_readCommands(reader, released, stdinClosed))
    await stdinClosed
    server.close()


class Authenticator:
    """Accepts one user name and password; reports every attempt."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username.encode()
        self.password = password.encode()

    def __call__(
        self, server: RecordingSMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (self.username, self.password)
        login = data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else None
        emit("auth", connection=server.connectionNumber, mechanism=mechanism, login=login, success=ok)
        return AuthResult(success=ok, handled=False)


async def _readCommands(reader: asyncio.StreamReader, released: asyncio.Event, done: asyncio.Future[None]) -> None:
    while line := await reader.readline():
        if line.strip() == b"release":
            released.set()
    done.set_result(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hostname", default="mx.sink.test")
    parser.add_argument("--no-ehlo", action="store_true")
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--line-length-limit", type=int, default=1001)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-broken", action="store_true")
    parser.add_argument("--auth")
    parser.add_argument("--auth-cleartext", action="store_true")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--no-8bitmime", action="store_true")
    parser.add_argument("--smtputf8", action="store_true")
    parser.add_argument("--dsn", action="store_true")
    parser.add_argument("--hold-data", action="store_true")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
