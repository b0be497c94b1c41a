"""
TLS for SMTP connections (STARTTLS, RFC 3207): the policies, the client
side of the handshake, and what result entries say about it.

Every policy uses the same handshake: the server's certificate chain is
checked against the trusted CAs and its name against the MX host name, but
only C{verified} refuses a server that fails these checks.  The others go on
and report C{certificate.verified: false}, so that a result always says how
trustworthy the connection was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from mqtwist.timeformat import formatTime

#: TLS when the server offers it, whatever its certificate; a failed
#: handshake fails the attempt
OPTIONAL = "optional"
#: like C{optional}, but a failed handshake is followed by a new connection
#: without TLS
OPPORTUNISTIC = "opportunistic"
#: TLS or no delivery; the certificate is not checked
REQUIRED = "required"
#: TLS with a certificate that a trusted CA issued for the MX host name
VERIFIED = "verified"

POLICIES = (OPTIONAL, OPPORTUNISTIC, REQUIRED, VERIFIED)


def tlsMandatory(policy: str) -> bool:
    """
    Whether C{policy} forbids sending in clear.
    """
    return policy in (REQUIRED, VERIFIED)


@dataclass(frozen=True)
class TLSSettings:
    """
    The client's TLS configuration: the same for every connection.

    @ivar certificate: PEM file with the client certificate (and its key
        when C{key} is C{None}), or C{None} for no client certificate.
    @ivar key: PEM file with the client certificate's private key.
    @ivar caFile: PEM file of trusted CA certificates, or C{None} for the
        system's trust store.
    """

    certificate: str | None = None
    key: str | None = None
    caFile: str | None = None
    _context: list[SSL.Context] = field(default_factory=list, compare=False, repr=False)

    def context(self) -> SSL.Context:
        """
        The OpenSSL context for client connections, made on first use and
        shared by every connection (loading CA files is not cheap).

        @raise ValueError: when a configured file cannot be loaded, naming
            the files and why.
        """
        if not self._context:
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            try:
                for path in self._files().values():
                    # OpenSSL would say only "system lib"
                    with open(path, "rb"):
                        pass
                if self.caFile is not None:
                    context.load_verify_locations(self.caFile)
                else:
                    context.set_default_verify_paths()
                if self.certificate is not None:
                    context.use_certificate_chain_file(self.certificate)
                    context.use_privatekey_file(self.key or self.certificate)
            except (SSL.Error, OSError) as e:
                files = ", ".join(f"{option} {path}" for option, path in self._files().items())
                raise ValueError(
                    f"cannot load the TLS files ({files}): {_why(e)}; check that each "
                    f"exists, is readable and holds PEM data, and that the key "
                    f"belongs to the certificate"
                ) from None
            self._context.append(context)
        return self._context[0]

    def _files(self) -> dict[str, str]:
        """The files configured, by the option that names them."""
        named = {"tls-certificate": self.certificate, "tls-key": self.key, "tls-ca-file": self.caFile}
        return {option: path for option, path in named.items() if path is not None}

    def creatorFor(self, hostname: str) -> ClientTLS:
        """
        The connection creator for a handshake with the server C{hostname}
        (a host name or an IP address).
        """
        return ClientTLS(self.context(), hostname)


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    Makes the client side of one TLS connection to C{hostname}, recording
    instead of enforcing what is wrong with the server's certificate chain;
    L{checkPeer} tells the result after the handshake.

    @ivar chainErrors: OpenSSL's verification errors, as text.
    """

    def __init__(self, context: SSL.Context, hostname: str) -> None:
        self.context = context
        self.hostname = hostname
        self.chainErrors: list[str] = []
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        if not _isAddress(self.hostname):
            # SNI: servers with several names pick the certificate by it
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_verify(SSL.VERIFY_PEER, self._recordVerification)
        connection.set_connect_state()
        self.connection = connection
        return connection

    def _recordVerification(
        self, connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            self.chainErrors.append(f"{_errorText(errno)} (certificate at depth {depth})")
        # the policy, not OpenSSL, decides what an unverified peer means
        return True

    def checkPeer(self) -> str | None:
        """
        After the handshake: why the server's certificate is not valid for
        C{hostname}, or C{None} when it is.
        """
        assert self.connection is not None
        if self.connection.get_peer_certificate() is None:
            return "the server sent no certificate"
        if self.chainErrors:
            return "its certificate chain does not verify: " + "; ".join(self.chainErrors)
        try:
            if _isAddress(self.hostname):
                verify_ip_address(self.connection, self.hostname)
            else:
                verify_hostname(self.connection, self.hostname)
        except VerificationError as failure:
            return f"its certificate is not valid for {self.hostname}: {failure}"
        return None

    def facts(self) -> dict[str, Any]:
        """
        The C{cipher} and C{certificate} parts of a result entry
        (C{docs/messages.rst}) for the connection after its handshake.
        """
        assert self.connection is not None
        connection = self.connection
        facts: dict[str, Any] = {
            "cipher": {
                "name": connection.get_cipher_name(),
                "version": connection.get_protocol_version_name(),
                "bits": connection.get_cipher_bits(),
            }
        }
        peer = connection.get_peer_certificate()
        if peer is not None:
            certificate = peer.to_cryptography()
            facts["certificate"] = {
                "verified": self.checkPeer() is None,
                "subject": certificate.subject.rfc4514_string(),
                "issuer": certificate.issuer.rfc4514_string(),
                "notafter": formatTime(certificate.not_valid_after_utc.timestamp()),
            }
        return facts


def _isAddress(hostname: str) -> bool:
    return isIPAddress(hostname) or isIPv6Address(hostname)


#: OpenSSL's X509_V_ERR_* codes that servers commonly earn (pyOpenSSL has
#: no public way to their text)
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def _errorText(errno: int) -> str:
    return _VERIFY_ERRORS.get(errno, f"OpenSSL verification error {errno}")


def _why(error: Exception) -> str:
    # OpenSSL's errors are lists of (library, function, reason) tuples
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(reason) for *_, reason in error.args[0] if reason) or "OpenSSL error"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)
