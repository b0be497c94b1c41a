"""
The endpoints of C{--submission}: one listening service per endpoint
string, all sharing one L{SubmissionServer}; and the server side of TLS
(STARTTLS and C{ssl:} endpoints) from C{--submission-tls-certificate}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtwist.listening import ListenFailed, endpointText
from mqtwist.submission.server import SubmissionServer


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """
    The OpenSSL context of the submission server: a certificate (with its
    chain) and its key, TLS 1.2 or later.

    @raise ValueError: when the files cannot be loaded, naming them.
    """

    def __init__(self, certificate: str, key: str | None = None) -> None:
        self.certificate = certificate
        self.key = key or certificate
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        try:
            for path in {self.certificate, self.key}:
                with open(path, "rb"):
                    pass
            context.use_certificate_chain_file(self.certificate)
            context.use_privatekey_file(self.key)
            context.check_privatekey()
        except (SSL.Error, OSError) as e:
            raise ValueError(
                f"cannot load the submission server's TLS files (certificate {certificate}, key "
                f"{self.key}): {_why(e)}; check that each exists, is readable and holds PEM data, "
                f"and that the key belongs to the certificate"
            ) from None
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def _why(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error) or type(error).__name__


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def splitTLSEndpoint(text: str) -> tuple[str, str | None, str | None] | None:
    """
    An C{ssl:} endpoint string as a C{tcp:} one and its own certificate
    and key files (C{certKey=}, C{privateKey=}), if it names them; C{None}
    for any other kind of endpoint.
    """
    text = text.strip()
    if not text.lower().startswith("ssl:"):
        return None
    parts = re.split(r"(?<!\\):", text[4:])
    kept, certificate, key = [], None, None
    for part in parts:
        name, equals, value = part.partition("=")
        if equals and name == "privateKey":
            key = _unescape(value)
        elif equals and name == "certKey":
            certificate = _unescape(value)
        elif equals and name in ("extraCertChain", "sslmethod", "dhParameters"):
            continue
        else:
            kept.append(part)
    return "tcp:" + ":".join(kept), certificate or key, key


class SubmissionListener(Service):
    """
    Listens on one C{--submission} endpoint while it runs.

    @param tls: the server's TLS, for an C{ssl:} endpoint that names no
        files of its own.
    @param onFailure: called with a L{ListenFailed} when the endpoint
        cannot listen.
    @raise ValueError: for an endpoint string Twisted does not know, or an
        C{ssl:} one without certificate.
    """

    log = Logger()

    def __init__(
        self,
        text: str,
        server: SubmissionServer,
        reactor: Any,
        onFailure: Callable[[Failure], None],
        tls: ServerTLS | None = None,
    ) -> None:
        split = splitTLSEndpoint(text)
        factory: Any
        if split is not None:
            plain, certificate, key = split
            if certificate is not None:
                tls = ServerTLS(certificate, key)
            if tls is None:
                raise ValueError(
                    f"--submission {text!r}: an ssl: endpoint needs a certificate: give "
                    f"--submission-tls-certificate (and --submission-tls-key)"
                )
            self.endpointString = endpointText(plain)
            factory = TLSMemoryBIOFactory(tls, False, server.factory(implicitTLS=True))
            factory.noisy = False
        else:
            self.endpointString = endpointText(text)
            factory = server.factory()
        try:
            self.endpoint = serverFromString(reactor, self.endpointString)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"--submission {text!r} is not a Twisted endpoint string ({e}); give a port number, or "
                f"e.g. tcp:587:interface=0.0.0.0, or ssl:465"
            ) from None
        self.text = text
        self.factory = factory
        self.implicitTLS = split is not None
        self.onFailure = onFailure
        self._listening: Deferred[IListeningPort] | None = None
        #: the port listened on, while listening
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        host = port.getHost()
        self.log.info(
            "--submission: SMTP{tls} listening on {address}",
            tls=" (implicit TLS)" if self.implicitTLS else "",
            address=f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}",
        )
        return port

    def _failed(self, failure: Failure) -> None:
        self._listening = None
        self.onFailure(Failure(ListenFailed(f"--submission {self.endpointString}: {failure.getErrorMessage()}")))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.port = None
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        if not listening.called:
            listening.cancel()
            return None
        return listening.addCallback(lambda port: port.stopListening())
