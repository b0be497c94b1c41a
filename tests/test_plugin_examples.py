"""
The example plugins of C{examples/}: loaded from their distribution
layouts, tested with L{mqtwist.dataplugin.testing}, and (for C{http_body}) against a
real HTTP server on the loopback address.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mqtwist import CONTINUE, PermanentFailure
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.dataplugin.discovery import discoverPlugins
from mqtwist.dataplugin.testing import (
    makeConfig,
    makeConnection,
    makeContext,
    makeMessage,
    runChain,
    runPlugin,
    verifyPlugin,
)
from mqtwist.errors import AttemptFailed

EXAMPLES = Path(__file__).parent.parent / "examples"


def examplePath(name: str) -> Path:
    return EXAMPLES / name / "mqtwist" / "plugins" / f"{name}.py"


def loadExample(name: str) -> ModuleType:
    """
    Import an example plugin module from its file, under a name of its own
    (so that it is not mistaken for an installed plugin).
    """
    spec = importlib.util.spec_from_file_location(
        f"mqtwist_example_{name}", examplePath(name)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stampHeader = loadExample("stamp_header")
httpBody = loadExample("http_body")


def result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


# --- the distribution layouts ------------------------------------------------


@pytest.mark.parametrize("name", ["stamp_header", "http_body"])
def test_distributionLayout(name: str) -> None:
    root = EXAMPLES / name
    assert (root / "pyproject.toml").is_file()
    assert "packages = mqtwist.plugins" in (root / "setup.cfg").read_text()
    assert not (root / "mqtwist" / "__init__.py").exists()
    assert not (root / "mqtwist" / "plugins" / "__init__.py").exists()
    assert examplePath(name).is_file()


@pytest.mark.parametrize("module", [stampHeader, httpBody])
def test_examplesAreValidPlugins(module: ModuleType) -> None:
    assert verifyPlugin(module.plugin)


def test_examplesAreDiscovered(installPlugin: Callable[..., Path]) -> None:
    for name in ("stamp_header", "http_body"):
        installPlugin(name, examplePath(name).read_text(), site=name)
    found = discoverPlugins()
    assert list(found) == ["http_body", "stamp_header"]


# --- stamp_header ------------------------------------------------------------


def test_stampAddsHeader() -> None:
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    context = makeContext(reactor=clock)
    message = makeMessage(mime=b"Subject: hi\r\n\r\nbody\r\n")
    outcome = result(runPlugin(stampHeader.plugin, message, context=context))
    assert outcome.tookControl is False
    assert outcome.body == (
        b"X-Mqtwist-Stamp: mx.example.org [192.0.2.25]; message 1 of the "
        b"connection; Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        b"Subject: hi\r\n\r\nbody\r\n"
    )


def test_stampKeepsLFLineEnds() -> None:
    message = makeMessage(mime=b"Subject: hi\n\nbody\n")
    body = result(runPlugin(stampHeader.plugin, message)).body
    assert body.startswith(b"X-Mqtwist-Stamp: ")
    assert body.endswith(b"GMT\nSubject: hi\n\nbody\n")
    assert b"\r" not in body


def test_stampCountsPerConnection() -> None:
    context = makeContext()
    first, second = makeConnection(), makeConnection(hostname="mx2.example.org")
    bodies = [
        result(runPlugin(stampHeader.plugin, context=context, connection=c)).body
        for c in (first, first, second, first)
    ]
    assert [b.split(b"; ")[1] for b in bodies] == [
        b"message 1 of the connection",
        b"message 2 of the connection",
        b"message 1 of the connection",
        b"message 3 of the connection",
    ]
    assert context.data == {"stamped": 4}


# --- http_body: without a network --------------------------------------------


def test_httpBodyLeavesMessagesWithoutURL() -> None:
    message = makeMessage(mime=b"as it is")
    outcome = result(runPlugin(httpBody.plugin, message))
    assert (outcome.tookControl, outcome.body) == (False, b"as it is")


@pytest.mark.parametrize("url", ["ftp://example.com/body", 42, "/relative"])
def test_httpBodyRejectsBadURLs(url: Any) -> None:
    failure = result(runPlugin(httpBody.plugin, makeMessage({"bodyurl": url})))
    assert failure.check(PermanentFailure)
    assert f"bodyurl {url!r} is not an http or https URL" in str(failure.value)


def test_httpBodyConnectsThroughTheContextReactor() -> None:
    clock = MemoryReactorClock()
    d = runPlugin(
        httpBody.plugin,
        makeMessage({"bodyurl": "http://bodies.example.com:8080/7"}),
        context=makeContext(reactor=clock),
    )
    assert not d.called
    [(host, port, *_)] = clock.tcpClients
    assert port == 8080
    d.cancel()
    assert isinstance(result(d), Failure)


# --- http_body: against a real HTTP server -----------------------------------


class Bodies(Resource):
    """
    Answers C{/body} with a message, C{/missing} with 404, C{/broken} with
    500 and never answers C{/hang}.
    """

    isLeaf = True
    body = b"Subject: fetched\r\n\r\nfrom the web\r\n"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.hanging: Deferred[Request] = Deferred()

    def render_GET(self, request: Request) -> bytes | int:
        self.requests.append(request)
        if request.path == b"/body":
            return self.body
        if request.path == b"/missing":
            request.setResponseCode(404)
            return b"no such body"
        if request.path == b"/hang":
            self.hanging.callback(request)
            return NOT_DONE_YET
        request.setResponseCode(500)
        return b"broken"


class TrackingFactory(WrappingFactory):
    """
    Knows when every connection it accepted has closed.
    """

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


class Server:
    def __init__(self) -> None:
        self.resource = Bodies()
        self.factory = TrackingFactory(Site(self.resource))
        self.port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, self.factory, interface="127.0.0.1"  # type: ignore[arg-type]
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"  # type: ignore[attr-defined]


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        await running.factory.whenIdle()
        await running.port.stopListening()  # type: ignore[misc]


def realContext() -> Any:
    return makeContext(reactor=reactor, name="http_body")


@pytest_twisted.ensureDeferred
async def test_httpBodyFetches(server: Server) -> None:
    message = makeMessage({"bodyurl": server.url("/body")}, mime=b"placeholder")
    outcome = await runPlugin(httpBody.plugin, message, context=realContext())
    assert (outcome.tookControl, outcome.control) == (True, CONTINUE)
    assert outcome.body == Bodies.body
    assert message.json["mime"] != Bodies.body.decode()
    [request] = server.resource.requests
    assert request.getHeader(b"user-agent") == b"mqtwist-http-body/1.0"


@pytest_twisted.ensureDeferred
async def test_httpBody4xxIsPermanent(server: Server) -> None:
    message = makeMessage({"bodyurl": server.url("/missing")})
    with pytest.raises(PermanentFailure, match="answered 404 Not Found"):
        await runPlugin(httpBody.plugin, message, context=realContext())


@pytest_twisted.ensureDeferred
async def test_httpBody5xxRunsTheChainAgain(server: Server) -> None:
    message = makeMessage({"bodyurl": server.url("/broken")}, mime=b"placeholder")
    config = makeConfig(pluginRuns=2, pluginRetryDelay=0)
    with pytest.raises(AttemptFailed) as raised:
        await runChain([httpBody.plugin], message, reactor=reactor, config=config)
    assert raised.value.plugin == "http_body" and not raised.value.permanent
    assert "answered 500 Internal Server Error" in raised.value.description
    assert "the plugin chain ran 2 times" in raised.value.description
    assert len(server.resource.requests) == 2
    assert message.mime == b"placeholder"


@pytest_twisted.ensureDeferred
async def test_httpBodyCancelAbortsTheRequest(server: Server) -> None:
    message = makeMessage({"bodyurl": server.url("/hang")})
    d = runPlugin(httpBody.plugin, message, context=realContext())
    request = await server.resource.hanging
    lost = request.notifyFinish()
    d.cancel()
    # Agent reports a cancelled request as ResponseNeverReceived
    with pytest.raises(ResponseNeverReceived) as raised:
        await d
    assert raised.value.reasons[0].check(CancelledError)
    # the server sees the connection go away, not a finished request
    with pytest.raises(ConnectionLost):
        await lost


@pytest_twisted.ensureDeferred
async def test_httpBodyTimeout(server: Server) -> None:
    message = makeMessage({"bodyurl": server.url("/hang")}, mime=b"placeholder")
    clock = Clock()
    # The timeout runs on a clock of its own; the HTTP request on the reactor.
    config = makeConfig(pluginRuns=1, pluginTimeout=30)
    chain = PluginChain([httpBody.plugin], reactor=clock, config=config)
    chain.context("http_body").reactor = reactor
    d = chain.run(makeConnection(), message)
    request = await server.resource.hanging
    lost = request.notifyFinish()
    clock.advance(30)
    with pytest.raises(AttemptFailed) as raised:
        await d
    assert raised.value.description == (
        "data plugin 'http_body': timed out after 30 s (the plugin chain ran 1 time)"
    )
    with pytest.raises(ConnectionLost):
        await lost


@pytest_twisted.ensureDeferred
async def test_httpBodyTooLarge(server: Server) -> None:
    plugin = httpBody.HTTPBody(maxBytes=10)
    message = makeMessage({"bodyurl": server.url("/body")}, mime=b"placeholder")
    with pytest.raises(PermanentFailure, match="is larger than 10 bytes"):
        await runPlugin(plugin, message, context=realContext())
    assert message.mime == b"placeholder"
