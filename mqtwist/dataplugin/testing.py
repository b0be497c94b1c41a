"""
Helpers to test data plugins without a network or an SMTP server.

A test of a plugin usually needs a message, runs the plugin on it, and looks
at what came out::

    from twisted.trial.unittest import SynchronousTestCase

    from mqtwist import COMPLETE
    from mqtwist.dataplugin.testing import makeMessage, runPlugin, verifyPlugin
    from mqtwist.plugins.myplugin import plugin

    class MyPluginTests(SynchronousTestCase):
        def test_interface(self):
            verifyPlugin(plugin)

        def test_rewrites(self):
            message = makeMessage({"campaign": "spring"})
            outcome = self.successResultOf(runPlugin(plugin, message))
            self.assertTrue(outcome.tookControl)
            self.assertEqual(outcome.control, COMPLETE)
            self.assertIn(b"X-Campaign: spring", outcome.body)

By default the plugin gets a context whose C{reactor} is a
L{MemoryReactorClock}: a plugin that waits for time (C{deferLater},
C{callLater}) is driven with C{context.reactor.advance(seconds)}, and a
plugin that connects somewhere shows its connection attempts in
C{context.reactor.tcpClients}.  Pass C{makeContext(reactor=reactor)} with
the real reactor to test against a real server on the loopback address.

L{runChain} runs several plugins the way the service does, with retries
and timeouts, on the same kind of clock.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from zope.interface import Invalid
from zope.interface.verify import verifyObject

from mqtwist.config import Config
from mqtwist.dataplugin.chain import (
    ConnectionInfo,
    PluginChain,
    PluginContext,
    PluginMessage,
    invokePlugin,
)
from mqtwist.dataplugin.interfaces import CONTINUE, Control, IDataPlugin

__all__ = [
    "PluginOutcome",
    "makeConfig",
    "makeConnection",
    "makeContext",
    "makeMessage",
    "runChain",
    "runPlugin",
    "verifyPlugin",
]

#: the body of L{makeMessage} when none is given
DEFAULT_MIME = (
    b"From: sender@example.com\r\n"
    b"To: recipient@example.org\r\n"
    b"Subject: test\r\n"
    b"Message-ID: <test@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def makeConfig(**settings: Any) -> Config:
    """
    A L{Config} for tests: the defaults, with C{ehloName} fixed (instead of
    this host's name) and C{settings} applied.
    """
    return replace(Config(ehloName="mqtwist.test"), **settings)


def makeContext(
    *,
    reactor: IReactorTime | None = None,
    config: Config | None = None,
    data: dict[str, Any] | None = None,
    name: str = "test",
) -> PluginContext:
    """
    A plugin context, as the service makes for each plugin.

    @param reactor: a new L{MemoryReactorClock} if C{None}.
    @param config: L{makeConfig}C{()} if C{None}.
    @param data: the plugin's service-lifetime dict; a new one if C{None}.
        Pass the same context to several calls to test what a plugin keeps
        across messages.
    @param name: the plugin name in the logger namespace.
    """
    return PluginContext.forPlugin(
        name,
        MemoryReactorClock() if reactor is None else reactor,
        makeConfig() if config is None else config,
        data,
    )


def makeConnection(
    *,
    hostname: str = "mx.example.org",
    address: str = "192.0.2.25",
    localAddress: str = "192.0.2.1",
    greeting: str = "mx.example.org ESMTP ready",
    extensions: Mapping[str, str] | None = None,
    tls: bool = False,
    store: MutableMapping[str, dict[str, Any]] | None = None,
) -> ConnectionInfo:
    """
    An SMTP connection to an imaginary MX (documentation addresses of RFC
    5737).  Pass the same C{store} to several connections, or reuse the
    returned object, to model messages sent over one connection.

    @param extensions: C{PIPELINING}, C{8BITMIME}, C{SMTPUTF8} and C{SIZE}
        if C{None}.
    """
    if extensions is None:
        extensions = {"PIPELINING": "", "8BITMIME": "", "SMTPUTF8": "",
                      "SIZE": "35882577"}
    return ConnectionInfo(
        hostname, address, localAddress, greeting, extensions, tls, store
    )


def makeMessage(
    json: Mapping[str, Any] | None = None,
    *,
    envelope: str = "sender@example.com",
    recipient: str = "recipient@example.org",
    mime: bytes = DEFAULT_MIME,
) -> PluginMessage:
    """
    An outbox message for C{recipient}.

    @param json: properties added to (or replacing) the outbox JSON object,
        which holds C{envelope}, C{recipient} and C{mime} (as text) by
        default.
    @param mime: the body plugins see first.
    """
    outbox: dict[str, Any] = {
        "envelope": envelope,
        "recipient": recipient,
        "mime": mime.decode("utf-8", "replace"),
    }
    outbox.update(json or {})
    return PluginMessage(outbox, envelope, recipient, mime)


def verifyPlugin(plugin: object) -> bool:
    """
    Check that C{plugin} can be discovered and called: it provides
    L{IDataPlugin} and L{IPlugin} with every method and attribute, and its
    C{name} is a non-empty C{str}.

    @return: C{True}
    @raise zope.interface.Invalid: naming what is wrong.
    """
    verifyObject(IPlugin, plugin)
    verifyObject(IDataPlugin, plugin)
    name = getattr(plugin, "name", None)
    if not isinstance(name, str) or not name:
        raise Invalid(
            f"{plugin!r} has the name {name!r}: a data plugin's name must be "
            f"a non-empty str"
        )
    return True


@dataclass(frozen=True)
class PluginOutcome:
    """
    What one call of a plugin did (see L{runPlugin}).
    """

    #: C{False} when the plugin returned C{None}
    tookControl: bool
    #: how control came back: L{CONTINUE} (also for C{None}) or L{COMPLETE}
    control: Control
    #: the body after the call
    body: bytes


def runPlugin(
    plugin: IDataPlugin,
    message: PluginMessage | None = None,
    *,
    context: PluginContext | None = None,
    connection: ConnectionInfo | None = None,
) -> Deferred[PluginOutcome]:
    """
    Call C{plugin} once, as the chain does, without timeout or retries.

    @param message: L{makeMessage}C{()} if C{None}; changed in place.
    @param context: L{makeContext}C{(name=plugin.name)} if C{None}.
    @param connection: L{makeConnection}C{()} if C{None}; the plugin gets
        its C{forPlugin(plugin.name)}.
    @return: a Deferred that fires with a L{PluginOutcome}, or fails with
        what the plugin raised or failed with (a
        L{mqtwist.dataplugin.chain.PluginBug} for a return value that means nothing).
        Cancelling it cancels the plugin's Deferred.
    """
    if message is None:
        message = makeMessage()
    if context is None:
        context = makeContext(name=plugin.name)
    if connection is None:
        connection = makeConnection()
    pending = invokePlugin(plugin, context, connection.forPlugin(plugin.name),
                           message)
    if pending is None:
        return succeed(PluginOutcome(False, CONTINUE, message.mime))
    return pending.addCallback(
        lambda control: PluginOutcome(True, control, message.mime)
    )


def runChain(
    plugins: Sequence[IDataPlugin],
    message: PluginMessage | None = None,
    *,
    reactor: IReactorTime | None = None,
    config: Config | None = None,
    connection: ConnectionInfo | None = None,
) -> Deferred[bytes]:
    """
    Run C{plugins} as a L{PluginChain}, with its retries and timeout.

    The runs of the chain are C{config.pluginRetryDelay} seconds apart, and
    plugins time out after C{config.pluginTimeout} seconds, on C{reactor}:
    pass a L{MemoryReactorClock} and call its C{advance()} to let that time
    pass.

    @param reactor: a new L{MemoryReactorClock} if C{None}, which nothing
        advances: a chain without failures or plugins that wait on the
        clock completes without it.
    @param config: L{makeConfig}C{()} if C{None}.
    @return: L{PluginChain.run}'s Deferred: it fires with the body to send or
        fails with L{mqtwist.errors.AttemptFailed}.
    """
    chain = PluginChain(
        plugins,
        reactor=MemoryReactorClock() if reactor is None else reactor,
        config=makeConfig() if config is None else config,
    )
    return chain.run(
        makeConnection() if connection is None else connection,
        makeMessage() if message is None else message,
    )
