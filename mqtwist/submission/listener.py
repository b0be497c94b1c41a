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
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtwist.listening import ListeningService
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


class SubmissionListener(ListeningService):
    """
    Listens on one C{--submission} endpoint while it runs (see
    L{ListeningService}).

    @param tls: the server's TLS, for an C{ssl:} endpoint that names no
        files of its own.
    @param onFailure: called with a L{ListenFailed} when the endpoint
        cannot listen.
    @raise ValueError: for an endpoint string Twisted does not know, or an
        C{ssl:} one without certificate.
    """

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
        endpoint = text
        if split is not None:
            plain, certificate, key = split
            if certificate is not None:
                tls = ServerTLS(certificate, key)
            if tls is None:
                raise ValueError(
                    f"--submission {text!r}: an ssl: endpoint needs a certificate: give "
                    f"--submission-tls-certificate (and --submission-tls-key)"
                )
            endpoint = plain
            factory = TLSMemoryBIOFactory(tls, False, server.factory(implicitTLS=True))
            factory.noisy = False
        else:
            factory = server.factory()
        self.text = text
        self.implicitTLS = split is not None
        super().__init__(
            "submission",
            endpoint,
            factory,
            reactor,
            onFailure,
            example="tcp:587:interface=0.0.0.0, or ssl:465",
            what="SMTP (implicit TLS) " if self.implicitTLS else "SMTP ",
            given=text,
        )
