"""
L{mqtwist.dataplugin.testing}: the helpers plugin authors test with.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import Invalid, implementer
from zope.interface.verify import verifyObject

from mqtwist import COMPLETE, CONTINUE, PermanentFailure
from mqtwist.dataplugin.chain import PluginBug
from mqtwist.dataplugin.interfaces import (
    IConnectionInfo,
    IDataPlugin,
    IPluginContext,
    IPluginMessage,
)
from mqtwist.dataplugin.testing import (
    DEFAULT_MIME,
    PluginOutcome,
    makeConfig,
    makeConnection,
    makeContext,
    makeMessage,
    runChain,
    runPlugin,
    verifyPlugin,
)
from mqtwist.errors import AttemptFailed


@implementer(IDataPlugin)
class Plugin:
    """A plugin whose answer is set by the test."""

    def __init__(self, answer: Any = None, name: str = "p") -> None:
        self.name = name
        self.answer = answer
        self.seen: list[tuple[Any, Any, Any]] = []

    def smtpOutData(self, context: Any, connection: Any, message: Any) -> Any:
        self.seen.append((context, connection, message))
        message.setMime(message.mime.upper())
        return self.answer() if callable(self.answer) else self.answer


def result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_factoriesMakeVerifiedObjects() -> None:
    context = makeContext()
    assert verifyObject(IPluginContext, context)
    assert isinstance(context.reactor, MemoryReactorClock)
    assert context.config.ehloName == "mqtwist.test"
    connection = makeConnection()
    assert verifyObject(IConnectionInfo, connection)
    assert connection.extensions["SIZE"] == "35882577"
    message = makeMessage()
    assert verifyObject(IPluginMessage, message)
    assert message.mime == DEFAULT_MIME


def test_makeMessageJSON() -> None:
    message = makeMessage({"id": 7, "recipient": "x@example.net"}, envelope="e@example.com")
    assert message.json == {
        "envelope": "e@example.com",
        "recipient": "x@example.net",
        "mime": DEFAULT_MIME.decode(),
        "id": 7,
    }
    assert message.envelope == "e@example.com"


def test_makeConfigAndContextOverrides() -> None:
    clock = MemoryReactorClock()
    config = makeConfig(pluginRuns=5)
    assert config.pluginRuns == 5
    data: dict[str, Any] = {}
    context = makeContext(reactor=clock, config=config, data=data, name="x")
    assert context.reactor is clock and context.config is config
    assert context.data is data
    assert context.log.namespace == "mqtwist.plugins.x"


def test_verifyPlugin() -> None:
    assert verifyPlugin(Plugin()) is True


def test_verifyPluginRejectsEmptyName() -> None:
    with pytest.raises(Invalid, match="non-empty str"):
        verifyPlugin(Plugin(name=""))


def test_verifyPluginRejectsNonPlugins() -> None:
    class NotDeclared:
        name = "x"

        def smtpOutData(self, context: Any, connection: Any, message: Any) -> None:
            return None

    with pytest.raises(Invalid):
        verifyPlugin(NotDeclared())

    @implementer(IDataPlugin)
    class NoMethod:  # type: ignore[misc]
        name = "x"

    with pytest.raises(Invalid):
        verifyPlugin(NoMethod())


def test_runPluginSynchronous() -> None:
    plugin = Plugin(None)
    message = makeMessage(mime=b"abc")
    outcome = result(runPlugin(plugin, message))
    assert outcome == PluginOutcome(tookControl=False, control=CONTINUE, body=b"ABC")
    context, connection, seen = plugin.seen[0]
    assert seen is message
    assert verifyObject(IPluginContext, context)
    connection.data["k"] = 1
    assert connection.data == {"k": 1}


def test_runPluginDeferred() -> None:
    pending: Deferred[Any] = Deferred()
    d = runPlugin(Plugin(pending), makeMessage(mime=b"abc"))
    assert not d.called
    pending.callback(COMPLETE)
    assert result(d) == PluginOutcome(True, COMPLETE, b"ABC")


def test_runPluginWithTheClock() -> None:
    clock = MemoryReactorClock()
    context = makeContext(reactor=clock)
    plugin = Plugin(lambda: deferLater(clock, 3, lambda: None))
    d = runPlugin(plugin, context=context)
    clock.advance(3)
    assert result(d).control is CONTINUE


def test_runPluginFailure() -> None:
    failure = result(runPlugin(Plugin(lambda: succeed("oops"))))
    assert isinstance(failure, Failure) and failure.check(PluginBug)

    def permanent() -> None:
        raise PermanentFailure("gone")

    failure = result(runPlugin(Plugin(permanent)))
    assert failure.check(PermanentFailure)


def test_runPluginCancel() -> None:
    cancelled: list[Any] = []
    d = runPlugin(Plugin(Deferred(cancelled.append)))
    d.cancel()
    assert len(cancelled) == 1
    assert result(d).check(CancelledError)


def test_runPluginKeepsConnectionDataAcrossMessages() -> None:
    def count() -> None:
        data = plugin.seen[-1][1].data
        data["n"] = data.get("n", 0) + 1

    plugin = Plugin(count)
    connection = makeConnection()
    runPlugin(plugin, connection=connection)
    runPlugin(plugin, connection=connection)
    assert plugin.seen[-1][1].data == {"n": 2}


def test_runChain() -> None:
    assert result(runChain([Plugin(None)], makeMessage(mime=b"abc"))) == b"ABC"


def test_runChainRetriesOnTheGivenClock() -> None:
    clock = MemoryReactorClock()
    answers: list[Any] = [RuntimeError("once"), None]

    def answer() -> None:
        error = answers.pop(0)
        if error is not None:
            raise error

    d = runChain([Plugin(answer)], makeMessage(mime=b"abc"), reactor=clock,
                 config=makeConfig(pluginRetryDelay=4))
    assert not d.called
    clock.advance(4)
    assert result(d) == b"ABC"


def test_runChainFailure() -> None:
    failure = result(runChain([Plugin(lambda: succeed(True))],
                              config=makeConfig(pluginRuns=1)))
    assert isinstance(failure.value, AttemptFailed)
    assert failure.value.plugin == "p"
