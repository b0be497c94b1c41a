"""
The endpoints mqtwist listens on (C{--metrics}, C{--admin}, C{--submission}):
Twisted endpoint strings, on the loopback interface unless the string says
otherwise, since what they serve is for the operator's own host first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

#: the interface an endpoint listens on when its string names none
LOOPBACK = "127.0.0.1"


def endpointText(text: str) -> str:
    """
    The endpoint string to listen on for the setting C{text}: a port
    number alone is C{tcp:PORT}, and a C{tcp:} endpoint without
    C{interface=} listens on L{LOOPBACK}.  Any other kind (C{ssl:},
    C{unix:}, ...) is taken as it is.
    """
    text = text.strip()
    if text.isdigit():
        text = f"tcp:{text}"
    if re.match(r"(?i)tcp6?:", text) and not re.search(r"(?i):interface=", text):
        # colons in an endpoint string's values are escaped
        text += f":interface={LOOPBACK}" if text.lower().startswith("tcp:") else r":interface=\:\:1"
    return text


class ListeningService(Service):
    """
    Listens with a protocol factory on an endpoint while it runs.

    @param setting: the option that gave the endpoint, for messages.
    @param text: the endpoint string (L{endpointText} makes it).
    @param onFailure: called with a L{ListenFailed} when the endpoint
        cannot listen (a port in use); the service then serves nothing.
    @param example: an endpoint string to show with a refused one.
    @param what: what is served, for the log line (C{"SMTP "}).
    @param given: the setting's value as given, when C{text} was made
        from it, for messages.
    @raise ValueError: naming C{setting}, when C{text} is not an endpoint
        string Twisted knows.
    """

    log = Logger()

    def __init__(
        self,
        setting: str,
        text: str,
        factory: IProtocolFactory,
        reactor: Any,
        onFailure: Callable[[Failure], None],
        *,
        example: str = "tcp:9100:interface=0.0.0.0",
        what: str = "",
        given: str | None = None,
    ) -> None:
        self.setting = setting
        self.endpointString = endpointText(text)
        try:
            self.endpoint = serverFromString(reactor, self.endpointString)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"--{setting} {given or text!r} is not a Twisted endpoint string ({e}); give a port number, or "
                f"e.g. {example}"
            ) from None
        self.factory = factory
        self.what = what
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
        self.log.info(
            "--{setting}: {what}listening on {address}",
            setting=self.setting,
            what=self.what,
            address=_shown(port.getHost()),
        )
        return port

    def _failed(self, failure: Failure) -> None:
        self._listening = None
        self.onFailure(Failure(ListenFailed(f"--{self.setting} {self.endpointString}: {failure.getErrorMessage()}")))

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


class HTTPService(ListeningService):
    """
    Serves a resource over HTTP on an endpoint while it runs (see
    L{ListeningService}).
    """

    def __init__(
        self,
        setting: str,
        text: str,
        resource: Resource,
        reactor: Any,
        onFailure: Callable[[Failure], None],
    ) -> None:
        self.site = Site(resource)
        self.site.displayTracebacks = False
        super().__init__(setting, text, self.site, reactor, onFailure)


class ListenFailed(Exception):
    """
    An endpoint of mqtwist's could not listen; the text names the option,
    the endpoint and the cause.
    """


def _shown(address: object) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
