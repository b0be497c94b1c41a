"""
L{mqtwist.dataplugin.chain.PluginChain}: the table of C{docs/plugins.rst}, "Handing
control back", row by row, on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqtwist import COMPLETE, CONTINUE, PermanentFailure
from mqtwist.dataplugin.chain import PluginBug, PluginChain
from mqtwist.dataplugin.interfaces import (
    IConnectionInfo,
    IDataPlugin,
    IPluginContext,
    IPluginMessage,
)
from mqtwist.dataplugin.testing import makeConfig, makeConnection, makeMessage
from mqtwist.errors import AttemptFailed

BODY = b"Subject: hi\r\n\r\nbody\r\n"


@implementer(IDataPlugin)
class Step:
    """
    A plugin that records its calls and answers with C{behave(self, call)}.
    """

    def __init__(self, name: str, behave: Callable[[Step, Any], Any]) -> None:
        self.name = name
        self.behave = behave
        self.calls: list[tuple[Any, Any, Any]] = []

    def smtpOutData(self, context: Any, connection: Any, message: Any) -> Any:
        self.calls.append((context, connection, message))
        return self.behave(self, message)


def appending(name: str, result: Any = None) -> Step:
    """
    A plugin that appends its name to the body and returns C{result}.
    """

    def behave(step: Step, message: Any) -> Any:
        message.setMime(message.mime + name.encode() + b";")
        return result() if callable(result) else result

    return Step(name, behave)


def failing(name: str, error: Callable[[], BaseException]) -> Step:
    """
    A plugin that changes the body, then returns a failed Deferred.
    """

    def behave(step: Step, message: Any) -> Any:
        message.setMime(b"garbage from " + name.encode())
        return fail(error())

    return Step(name, behave)


def outcome(d: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has fired; a Failure stays a Failure.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def makeChain(
    plugins: list[Any], clock: MemoryReactorClock | None = None, **settings: Any
) -> tuple[PluginChain, MemoryReactorClock]:
    clock = MemoryReactorClock() if clock is None else clock
    return PluginChain(plugins, reactor=clock, config=makeConfig(**settings)), clock


def run(chain: PluginChain, **json: Any) -> Deferred[bytes]:
    return chain.run(makeConnection(), makeMessage(json, mime=BODY))


# --- None: the next plugin at once -------------------------------------------


def test_noneCallsNextPluginAtOnce() -> None:
    a, b, c = appending("a"), appending("b"), appending("c")
    chain, clock = makeChain([a, b, c])
    d = run(chain)
    assert outcome(d) == BODY + b"a;b;c;"
    assert [len(p.calls) for p in (a, b, c)] == [1, 1, 1]
    assert clock.getDelayedCalls() == []


def test_emptyChainSendsTheBody() -> None:
    chain, _ = makeChain([])
    assert len(chain) == 0
    assert outcome(run(chain)) == BODY


def test_firesWithBytes() -> None:
    chain, _ = makeChain([appending("a")])
    body = outcome(run(chain))
    assert type(body) is bytes


# --- a Deferred: took control ------------------------------------------------


@pytest.mark.parametrize("value", [CONTINUE, None])
def test_deferredContinueCallsNextWhenItFires(value: Any) -> None:
    pending: Deferred[Any] = Deferred()
    a = appending("a", pending)
    b = appending("b")
    chain, clock = makeChain([a, b])
    d = run(chain)
    assert not d.called
    assert b.calls == []
    pending.callback(value)
    assert outcome(d) == BODY + b"a;b;"
    assert clock.getDelayedCalls() == []


def test_deferredAlreadyFired() -> None:
    chain, clock = makeChain(
        [appending("a", lambda: succeed(CONTINUE)), appending("b")]
    )
    assert outcome(run(chain)) == BODY + b"a;b;"
    assert clock.getDelayedCalls() == []


def test_deferredWaitingOnTheClock() -> None:
    clock = MemoryReactorClock()
    a = appending("a", lambda: deferLater(clock, 5, lambda: CONTINUE))
    chain, _ = makeChain([a, appending("b")], clock)
    d = run(chain)
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    assert outcome(d) == BODY + b"a;b;"
    assert clock.getDelayedCalls() == []


def test_completeSkipsTheRest() -> None:
    pending: Deferred[Any] = Deferred()
    a, b, c = appending("a"), appending("b", pending), appending("c")
    chain, clock = makeChain([a, b, c])
    d = run(chain)
    pending.callback(COMPLETE)
    assert outcome(d) == BODY + b"a;b;"
    assert c.calls == []
    assert clock.getDelayedCalls() == []


# --- a coroutine -------------------------------------------------------------


def test_coroutinePlugin() -> None:
    clock = MemoryReactorClock()

    @implementer(IDataPlugin)
    class Coroutine:
        name = "coro"

        async def smtpOutData(self, context: Any, connection: Any, message: Any) -> Any:
            await deferLater(context.reactor, 2, lambda: None)
            message.setMime(message.mime + b"coro;")
            return COMPLETE

    last = appending("last")
    chain, _ = makeChain([Coroutine(), last], clock)
    d = run(chain)
    assert not d.called
    clock.advance(2)
    assert outcome(d) == BODY + b"coro;"
    assert last.calls == []


def test_coroutineReturningNoneContinues() -> None:
    @implementer(IDataPlugin)
    class Coroutine:
        name = "coro"

        async def smtpOutData(self, context: Any, connection: Any, message: Any) -> None:
            message.setMime(b"new body")

    chain, _ = makeChain([Coroutine(), appending("b")])
    assert outcome(run(chain)) == b"new bodyb;"


# --- failures: run the chain again -------------------------------------------


def test_failureRunsAgainFromFirstPluginAfterTheDelay() -> None:
    attempts: list[int] = []

    def flaky() -> Deferred[Any]:
        attempts.append(1)
        if len(attempts) == 1:
            return fail(RuntimeError("backend busy"))
        return succeed(CONTINUE)

    a = appending("a")
    b = appending("b", flaky)
    c = appending("c")
    chain, clock = makeChain([a, b, c], pluginRetryDelay=2.5, pluginRuns=3)
    d = run(chain)
    assert not d.called
    assert (len(a.calls), len(b.calls), len(c.calls)) == (1, 1, 0)
    clock.advance(2.4)
    assert len(a.calls) == 1
    clock.advance(0.1)
    assert (len(a.calls), len(b.calls), len(c.calls)) == (2, 2, 1)
    # the second run started from the original body, not from "BODY a;b;"
    assert outcome(d) == BODY + b"a;b;c;"
    assert clock.getDelayedCalls() == []


def test_failedRunDoesNotLeakItsBody() -> None:
    attempts: list[int] = []

    def behave(step: Step, message: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            message.setMime(b"half-built")
            raise RuntimeError("oops")
        return None

    chain, clock = makeChain([Step("x", behave)])
    d = run(chain)
    clock.advance(1)
    assert outcome(d) == BODY


def test_runsAreBounded() -> None:
    a = appending("a")
    b = failing("b", lambda: RuntimeError("backend down"))
    chain, clock = makeChain([a, b], pluginRuns=3, pluginRetryDelay=1)
    d = run(chain)
    clock.pump([1, 1, 1, 1, 1])
    failure = outcome(d)
    assert isinstance(failure, Failure)
    error = failure.value
    assert isinstance(error, AttemptFailed)
    assert (error.state, error.result, error.plugin, error.permanent) == (
        "data", "error", "b", False,
    )
    assert error.description == (
        "data plugin 'b': RuntimeError: backend down (the plugin chain ran 3 times)"
    )
    assert len(a.calls) == 3 and len(b.calls) == 3
    assert clock.getDelayedCalls() == []


def test_oneRunMeansNoRetry() -> None:
    b = failing("b", lambda: ValueError("no"))
    chain, clock = makeChain([b], pluginRuns=1)
    failure = outcome(run(chain))
    assert failure.value.description == (
        "data plugin 'b': ValueError: no (the plugin chain ran 1 time)"
    )
    assert len(b.calls) == 1
    assert clock.getDelayedCalls() == []


def test_theLastFailingPluginIsNamed() -> None:
    runs: list[int] = []

    def firstFailsOnce(step: Step, message: Any) -> Any:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first")
        return None

    a = Step("a", firstFailsOnce)
    b = failing("b", lambda: RuntimeError("second"))
    chain, clock = makeChain([a, b], pluginRuns=2)
    d = run(chain)
    clock.advance(1)
    assert outcome(d).value.plugin == "b"


def test_synchronousRaiseIsAFailure() -> None:
    def raising(step: Step, message: Any) -> Any:
        raise KeyError("bodyurl")

    a = Step("a", raising)
    chain, clock = makeChain([a], pluginRuns=2, pluginRetryDelay=3)
    d = run(chain)
    assert len(a.calls) == 1 and not d.called
    clock.advance(3)
    error = outcome(d).value
    assert len(a.calls) == 2
    assert error.description == (
        "data plugin 'a': KeyError: 'bodyurl' (the plugin chain ran 2 times)"
    )


# --- PermanentFailure --------------------------------------------------------


def test_permanentFailureRaised() -> None:
    def raising(step: Step, message: Any) -> Any:
        raise PermanentFailure("no such template 42")

    a = Step("a", raising)
    b = appending("b")
    chain, clock = makeChain([a, b], pluginRuns=3)
    error = outcome(run(chain)).value
    assert isinstance(error, AttemptFailed)
    assert (error.state, error.result, error.plugin, error.permanent) == (
        "data", "error", "a", True,
    )
    assert error.description == "data plugin 'a': no such template 42"
    assert len(a.calls) == 1 and b.calls == []
    assert clock.getDelayedCalls() == []


def test_permanentFailureAsDeferredFailure() -> None:
    pending: Deferred[Any] = Deferred()
    a = appending("a")
    b = appending("b", pending)
    chain, clock = makeChain([a, b], pluginRuns=3)
    d = run(chain)
    pending.errback(PermanentFailure("recipient unsubscribed"))
    error = outcome(d).value
    assert error.permanent is True and error.plugin == "b"
    assert error.description == "data plugin 'b': recipient unsubscribed"
    assert len(a.calls) == 1
    assert clock.getDelayedCalls() == []


def test_permanentFailureOnALaterRun() -> None:
    errors = [RuntimeError("flaky"), PermanentFailure("gone")]
    a = Step("a", lambda step, message: fail(errors.pop(0)))
    chain, clock = makeChain([a], pluginRuns=5)
    d = run(chain)
    clock.advance(1)
    error = outcome(d).value
    assert error.permanent is True
    assert len(a.calls) == 2
    assert clock.getDelayedCalls() == []


# --- timeout -----------------------------------------------------------------


def test_timeoutCancelsAndRetries() -> None:
    cancelled: list[Deferred[Any]] = []
    a = appending("a", lambda: Deferred(cancelled.append))
    chain, clock = makeChain([a], pluginTimeout=10, pluginRuns=2, pluginRetryDelay=1)
    d = run(chain)
    clock.advance(9.9)
    assert cancelled == [] and not d.called
    clock.advance(0.1)
    assert len(cancelled) == 1
    clock.advance(1)
    assert len(a.calls) == 2
    clock.advance(10)
    assert len(cancelled) == 2
    error = outcome(d).value
    assert isinstance(error, AttemptFailed)
    assert error.permanent is False and error.plugin == "a"
    assert error.description == (
        "data plugin 'a': timed out after 10 s (the plugin chain ran 2 times)"
    )
    assert clock.getDelayedCalls() == []


def test_timeoutCancelsACoroutine() -> None:
    clock = MemoryReactorClock()
    inner: list[Deferred[Any]] = []
    seen: list[BaseException] = []

    @implementer(IDataPlugin)
    class Slow:
        name = "slow"

        async def smtpOutData(self, context: Any, connection: Any, message: Any) -> Any:
            waiting: Deferred[Any] = Deferred()
            inner.append(waiting)
            try:
                await waiting
            except CancelledError as e:
                seen.append(e)
                raise

    chain, _ = makeChain([Slow()], clock, pluginTimeout=5, pluginRuns=1)
    d = run(chain)
    clock.advance(5)
    assert len(seen) == 1
    assert "timed out after 5 s" in outcome(d).value.description


def test_answerBeforeTimeoutCancelsTheTimer() -> None:
    pending: Deferred[Any] = Deferred()
    chain, clock = makeChain([appending("a", pending)], pluginTimeout=10)
    d = run(chain)
    assert len(clock.getDelayedCalls()) == 1
    pending.callback(CONTINUE)
    assert outcome(d) == BODY + b"a;"
    assert clock.getDelayedCalls() == []


# --- plugin bugs -------------------------------------------------------------


@pytest.mark.parametrize(
    "returned, text",
    [
        (True, "returned True from smtpOutData(); return None, a Deferred or a coroutine"),
        ("ok", "returned 'ok' from smtpOutData()"),
        (CONTINUE, "returned <Control.CONTINUE: 'continue'> from smtpOutData(); "
                   "return None, or a Deferred that fires with it"),
    ],
)
def test_badReturnValueIsAFailure(returned: Any, text: str) -> None:
    a = Step("a", lambda step, message: returned)
    chain, _ = makeChain([a], pluginRuns=1)
    error = outcome(run(chain)).value
    assert isinstance(error, AttemptFailed) and error.plugin == "a"
    assert "PluginBug: data plugin 'a' " + text in error.description
    assert error.permanent is False


def test_badFiredValueIsAFailure() -> None:
    a = appending("a", lambda: succeed(True))
    chain, _ = makeChain([a], pluginRuns=1)
    error = outcome(run(chain)).value
    assert "fired with True; fire it with CONTINUE, COMPLETE or None" in error.description


def test_pluginBugIsATypeError() -> None:
    assert issubclass(PluginBug, TypeError)


# --- cancelling run() --------------------------------------------------------


def test_cancelWhilePluginRuns() -> None:
    cancelled: list[Deferred[Any]] = []
    a = appending("a", lambda: Deferred(cancelled.append))
    b = appending("b")
    chain, clock = makeChain([a, b])
    d = run(chain)
    d.cancel()
    assert len(cancelled) == 1
    assert outcome(d).check(CancelledError)
    assert b.calls == []
    assert clock.getDelayedCalls() == []


def test_cancelWhileWaitingForTheNextRun() -> None:
    a = failing("a", lambda: RuntimeError("x"))
    chain, clock = makeChain([a], pluginRuns=3)
    d = run(chain)
    assert len(clock.getDelayedCalls()) == 1
    d.cancel()
    assert outcome(d).check(CancelledError)
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert len(a.calls) == 1


def test_cancelAPluginThatIgnoresCancellation() -> None:
    pending: Deferred[Any] = Deferred()
    a = appending("a", pending)
    b = appending("b")
    chain, clock = makeChain([a, b])
    d = run(chain)
    d.cancel()
    # the plugin's late answer is ignored, nothing else runs
    pending.callback(CONTINUE)
    assert outcome(d).check(CancelledError)
    assert b.calls == []


# --- what plugins are given --------------------------------------------------


def test_pluginsGetVerifiedObjects() -> None:
    a = appending("a")
    chain, clock = makeChain([a])
    run(chain)
    context, connection, message = a.calls[0]
    assert verifyObject(IPluginContext, context)
    assert verifyObject(IConnectionInfo, connection)
    assert verifyObject(IPluginMessage, message)
    assert context.reactor is clock
    assert context.config.pluginRuns == 3
    assert context.log.namespace == "mqtwist.plugins.a"


def test_serviceDataIsPerPluginAndLasts() -> None:
    def counting(step: Step, message: Any) -> None:
        calls = step.calls
        context = calls[-1][0]
        context.data[step.name] = context.data.get(step.name, 0) + 1

    a, b = Step("a", counting), Step("b", counting)
    chain, _ = makeChain([a, b])
    for _ in range(3):
        run(chain)
    assert chain.context("a").data == {"a": 3}
    assert chain.context("b").data == {"b": 3}
    assert a.calls[0][0] is a.calls[2][0]
    assert a.calls[0][0] is not b.calls[0][0]


def test_connectionDataIsPerPluginAndPerConnection() -> None:
    def counting(step: Step, message: Any) -> None:
        data = step.calls[-1][1].data
        data["n"] = data.get("n", 0) + 1

    a, b = Step("a", counting), Step("b", counting)
    chain, _ = makeChain([a, b])
    store: dict[str, dict[str, Any]] = {}
    first = makeConnection(store=store)
    second = makeConnection()
    chain.run(first, makeMessage())
    chain.run(first, makeMessage())
    chain.run(second, makeMessage())
    assert store == {"a": {"n": 2}, "b": {"n": 2}}
    assert a.calls[2][1].data == {"n": 1}
    assert a.calls[0][1].hostname == "mx.example.org"


# --- logging and settings ----------------------------------------------------


def test_failuresAreLoggedWithFields(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    logger = Logger(observer=events.append)  # type: ignore[arg-type]
    monkeypatch.setattr(PluginChain, "log", logger)
    a = failing("a", lambda: RuntimeError("down"))
    chain, clock = makeChain([a], pluginRuns=2)
    d = chain.run(makeConnection(), makeMessage({"id": "msg-7"}))
    clock.advance(1)
    outcome(d)
    assert [(e["plugin"], e["run"], e["runs"], e["messageId"], e["error"])
            for e in events] == [
        ("a", 1, 2, "msg-7", "RuntimeError: down"),
        ("a", 2, 2, "msg-7", "RuntimeError: down"),
    ]


def test_names() -> None:
    chain, _ = makeChain([appending("b"), appending("a")])
    assert chain.names == ("b", "a")
    assert len(chain) == 2


def test_duplicateNames() -> None:
    with pytest.raises(ValueError, match="two data plugins are called 'a'"):
        makeChain([appending("a"), appending("a")])
