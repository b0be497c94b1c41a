"""
Running the data plugins of one delivery: L{PluginChain}, and the objects
handed to each plugin (L{PluginContext}, L{ConnectionInfo},
L{PluginMessage}).

The rules are those of C{docs/plugins.rst} ("Handing control back"), which
writes down these choices too:

  - every run of the chain starts from the body the delivery started with,
    so a body half-changed by a run that failed is never sent;
  - a plugin that returns (or fires with) anything but C{None}, a Deferred,
    a coroutine, L{CONTINUE} or L{COMPLETE} has a bug; that counts as a
    failure of the plugin, and is retried like one;
  - a timeout is a failure like any other (C{result: error}), not a
    permanent one: a slow service may answer on the next run.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtwist.config import Config
from mqtwist.dataplugin.interfaces import (
    COMPLETE,
    CONTINUE,
    Control,
    IConnectionInfo,
    IDataPlugin,
    IPluginContext,
    IPluginMessage,
)
from mqtwist.errors import AttemptFailed, PermanentFailure
from mqtwist.metrics import Metrics

__all__ = [
    "COMPLETE",
    "CONTINUE",
    "ConnectionInfo",
    "PluginBug",
    "PluginChain",
    "PluginContext",
    "PluginMessage",
    "invokePlugin",
]


@implementer(IPluginContext)
class PluginContext:
    """
    The context of one plugin (L{IPluginContext}).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        log: Logger,
        config: Config,
        data: dict[str, Any] | None = None,
    ) -> None:
        """
        @param data: the plugin's service-lifetime dict; a new one if
            C{None}.
        """
        self.reactor = reactor
        self.log = log
        self.config = config
        self.data: dict[str, Any] = {} if data is None else data

    @classmethod
    def forPlugin(
        cls,
        name: str,
        reactor: IReactorTime,
        config: Config,
        data: dict[str, Any] | None = None,
    ) -> PluginContext:
        """
        A context for the plugin called C{name}, logging in the namespace
        C{mqtwist.plugins.NAME}.
        """
        logger = Logger(namespace=f"mqtwist.plugins.{name}")
        return cls(reactor, logger, config, data)


@implementer(IConnectionInfo)
class ConnectionInfo:
    """
    What plugins see of one SMTP connection (L{IConnectionInfo}).

    The delivery code makes one per connection with a C{store} that lives as
    long as the connection; the chain hands each plugin a copy made by
    L{forPlugin}, whose C{data} is that plugin's own dict in the store.
    """

    def __init__(
        self,
        hostname: str,
        address: str,
        localAddress: str,
        greeting: str,
        extensions: Mapping[str, str],
        tls: bool,
        store: MutableMapping[str, dict[str, Any]] | None = None,
        *,
        plugin: str = "",
    ) -> None:
        """
        @param extensions: the EHLO keywords (upper case) and their
            parameters (C{""} when none); copied.
        @param store: the per-connection data of every plugin, by plugin
            name; a new one if C{None}.
        @param plugin: whose C{data} this object shows; C{""} for an object
            not handed to a plugin.
        """
        self._hostname = hostname
        self._address = address
        self._localAddress = localAddress
        self._greeting = greeting
        self._extensions = MappingProxyType(dict(extensions))
        self._tls = tls
        self._store: MutableMapping[str, dict[str, Any]] = (
            {} if store is None else store
        )
        self._plugin = plugin

    def forPlugin(self, name: str) -> ConnectionInfo:
        """
        The same connection, with C{data} being the dict of plugin C{name}.
        """
        return ConnectionInfo(
            self._hostname,
            self._address,
            self._localAddress,
            self._greeting,
            self._extensions,
            self._tls,
            self._store,
            plugin=name,
        )

    @property
    def hostname(self) -> str:
        return self._hostname

    @property
    def address(self) -> str:
        return self._address

    @property
    def localAddress(self) -> str:
        return self._localAddress

    @property
    def greeting(self) -> str:
        return self._greeting

    @property
    def extensions(self) -> Mapping[str, str]:
        return self._extensions

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def data(self) -> dict[str, Any]:
        return self._store.setdefault(self._plugin, {})

    def __repr__(self) -> str:
        return (
            f"<ConnectionInfo {self._hostname} [{self._address}] from "
            f"{self._localAddress}{' TLS' if self._tls else ''}>"
        )


@implementer(IPluginMessage)
class PluginMessage:
    """
    The message as plugins see it (L{IPluginMessage}).
    """

    def __init__(
        self, json: dict[str, Any], envelope: str, recipient: str, mime: bytes
    ) -> None:
        self.json = json
        self.envelope = envelope
        self.recipient = recipient
        self._mime = b""
        self.setMime(mime)

    @property
    def mime(self) -> bytes:
        return self._mime

    def setMime(self, body: bytes | bytearray | memoryview) -> None:
        """
        See L{IPluginMessage.setMime}.  C{bytearray} and C{memoryview} are
        copied into C{bytes}.
        """
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"setMime() takes the body as bytes, not "
                f"{type(body).__name__}: encode it first "
                f"(for example body.encode('utf-8'))"
            )
        self._mime = bytes(body)

    def __repr__(self) -> str:
        return (
            f"<PluginMessage {self.envelope} -> {self.recipient}, "
            f"{len(self._mime)} bytes>"
        )


class PluginBug(TypeError):
    """
    A plugin broke the protocol: it returned, or its Deferred fired with,
    something that is not one of the values of L{IDataPlugin.smtpOutData}.
    """


def _checkControl(value: object, name: str) -> Control:
    if value is None:
        return CONTINUE
    if isinstance(value, Control):
        return value
    raise PluginBug(
        f"the Deferred of data plugin {name!r} fired with {value!r}; "
        f"fire it with CONTINUE, COMPLETE or None"
    )


def invokePlugin(
    plugin: IDataPlugin,
    context: IPluginContext,
    connection: IConnectionInfo,
    message: IPluginMessage,
) -> Deferred[Control] | None:
    """
    Call C{plugin.smtpOutData} once and make its answer uniform.

    @return: C{None} if the plugin did not take control; otherwise a
        Deferred (cancelling it cancels the plugin's) that fires with
        L{CONTINUE} or L{COMPLETE}, or fails with what the plugin raised or
        failed with, or with L{PluginBug} when the plugin returned or fired
        with a value that means nothing.
    """
    name = plugin.name
    try:
        returned = plugin.smtpOutData(context, connection, message)
    except Exception:
        return fail()
    if returned is None:
        return None
    if inspect.iscoroutine(returned):
        returned = ensureDeferred(returned)
    if not isinstance(returned, Deferred):
        if isinstance(returned, Control):
            hint = "return None, or a Deferred that fires with it"
        else:
            hint = "return None, a Deferred or a coroutine"
        return fail(
            PluginBug(
                f"data plugin {name!r} returned {returned!r} from "
                f"smtpOutData(); {hint}"
            )
        )
    return returned.addCallback(_checkControl, name)


def _errorText(failure: Failure) -> str:
    """
    The text of a plugin's failure for descriptions: the exception text,
    with its class unless that is L{PermanentFailure} (whose text is meant
    to be read as it is).
    """
    error = failure.value
    text = str(error)
    if isinstance(error, PermanentFailure):
        return text or "permanent failure"
    kind = type(error).__name__
    return f"{kind}: {text}" if text else kind


class PluginChain:
    """
    The data plugins of a service, in the order they run.

    The chain owns every plugin's L{PluginContext}: one per plugin, whose
    C{data} lives as long as the chain.
    """

    log = Logger()

    def __init__(
        self,
        plugins: Sequence[IDataPlugin],
        *,
        reactor: IReactorTime,
        config: Config,
        metrics: Metrics | None = None,
    ) -> None:
        """
        @param reactor: used for the plugin timeout and the delay between
            runs, and handed to plugins in their context.
        @param metrics: where each plugin call is counted and timed.
        @param config: C{pluginTimeout}, C{pluginRuns} and
            C{pluginRetryDelay} are read here; plugins see all of it.
        @raise ValueError: if two plugins have the same name (the plugin
            settings are checked by L{Config} itself).
        """
        self._plugins = tuple(plugins)
        self._contexts: dict[str, PluginContext] = {}
        for plugin in self._plugins:
            if plugin.name in self._contexts:
                raise ValueError(
                    f"two data plugins are called {plugin.name!r} in one "
                    f"chain; name each plugin once"
                )
            self._contexts[plugin.name] = PluginContext.forPlugin(
                plugin.name, reactor, config
            )
        #: the reactor the plugins and the chain's timers run on
        self.reactor = reactor
        self._config = config
        self.metrics = metrics if metrics is not None else Metrics()

    def __len__(self) -> int:
        return len(self._plugins)

    @property
    def names(self) -> tuple[str, ...]:
        """
        The names of the plugins, in the order they run.
        """
        return tuple(plugin.name for plugin in self._plugins)

    def context(self, name: str) -> PluginContext:
        """
        The context handed to the plugin called C{name}.

        @raise KeyError: if no plugin of the chain has that name.
        """
        return self._contexts[name]

    def run(
        self, connection: ConnectionInfo, message: PluginMessage
    ) -> Deferred[bytes]:
        """
        Run the plugins for one delivery attempt of C{message}.

        @param connection: the connection, with the per-connection store;
            each plugin gets C{connection.forPlugin(its name)}.
        @param message: changed in place: its C{mime} is what the plugins
            left.
        @return: a Deferred that fires with the body to send (C{bytes}), or
            fails with L{AttemptFailed} (C{state="data"},
            C{result="error"}, C{plugin} the name of the plugin that failed
            last, C{permanent=True} if it failed with L{PermanentFailure}).
            Cancelling it cancels the plugin in progress and any pending
            run; it then fails with
            L{twisted.internet.defer.CancelledError}.
        """
        return _ChainRun(self, connection, message).start()

    def _pluginsWithContexts(
        self,
    ) -> tuple[tuple[IDataPlugin, PluginContext], ...]:
        return tuple((p, self._contexts[p.name]) for p in self._plugins)


class _ChainRun:
    """
    The state of one L{PluginChain.run} call: which run, which plugin, and
    the pending timers, so that cancellation can stop all of it.
    """

    def __init__(
        self, chain: PluginChain, connection: ConnectionInfo, message: PluginMessage
    ) -> None:
        self.log = chain.log
        self._steps = chain._pluginsWithContexts()
        self._reactor = chain.reactor
        self._config = chain._config
        self._metrics = chain.metrics
        self._connection = connection
        self._message = message
        self._originalBody = message.mime
        self._done: Deferred[bytes] = Deferred(self._cancel)
        self._runNumber = 0
        self._pending: Deferred[Control] | None = None
        self._timeoutCall: IDelayedCall | None = None
        self._timedOut = False
        self._nextRunCall: IDelayedCall | None = None
        self._cancelled = False
        #: when the plugin in progress was called
        self._calledAt = 0.0

    def start(self) -> Deferred[bytes]:
        self._startRun()
        return self._done

    def _startRun(self) -> None:
        self._nextRunCall = None
        self._runNumber += 1
        self._message.setMime(self._originalBody)
        self._callFrom(0)

    def _callFrom(self, index: int) -> None:
        # Plugins that do not take control are called in this loop, not by
        # recursion.
        while index < len(self._steps):
            plugin, context = self._steps[index]
            self._calledAt = self._reactor.seconds()
            pending = invokePlugin(
                plugin,
                context,
                self._connection.forPlugin(plugin.name),
                self._message,
            )
            if pending is not None:
                self._waitFor(index, pending)
                return
            self._counted(index, "continue")
            index += 1
        self._done.callback(self._message.mime)

    def _waitFor(self, index: int, pending: Deferred[Control]) -> None:
        self._pending = pending
        self._timedOut = False
        if not pending.called:
            self._timeoutCall = self._reactor.callLater(
                self._config.pluginTimeout, self._timeUp
            )
        pending.addCallbacks(
            self._pluginDone,
            self._pluginFailed,
            callbackArgs=(index,),
            errbackArgs=(index,),
        )

    def _settle(self) -> None:
        self._pending = None
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None

    def _timeUp(self) -> None:
        self._timeoutCall = None
        self._timedOut = True
        assert self._pending is not None
        self._pending.cancel()

    def _counted(self, index: int, outcome: str) -> None:
        seconds = self._reactor.seconds() - self._calledAt
        self._metrics.pluginRan(self._steps[index][0].name, outcome, seconds)

    def _pluginDone(self, control: Control, index: int) -> None:
        self._settle()
        if self._cancelled:
            self._counted(index, "cancelled")
            return
        self._counted(index, "complete" if control is COMPLETE else "continue")
        if control is COMPLETE:
            self._done.callback(self._message.mime)
        else:
            self._callFrom(index + 1)

    def _pluginFailed(self, failure: Failure, index: int) -> None:
        self._settle()
        if self._cancelled:
            # run() was cancelled: its Deferred has failed already.
            self._counted(index, "cancelled")
            return
        name = self._steps[index][0].name
        runs = self._config.pluginRuns
        permanent = failure.check(PermanentFailure) is not None
        self._counted(index, "timeout" if self._timedOut else "permanent" if permanent else "error")
        if self._timedOut:
            # Whatever the cancelled plugin failed with (CancelledError, or
            # its own error for it), the cause is the timeout.
            error = f"timed out after {self._config.pluginTimeout:g} s"
        else:
            error = _errorText(failure)
        self.log.warn(
            "data plugin {plugin} failed in run {run} of {runs} of the chain "
            "(message {messageId}): {error}",
            plugin=name,
            run=self._runNumber,
            runs=runs,
            messageId=self._message.json.get("id"),
            error=error,
            permanent=permanent,
            log_failure=failure,
        )
        if permanent:
            self._done.errback(
                AttemptFailed(
                    "data",
                    "error",
                    f"data plugin {name!r}: {error}",
                    plugin=name,
                    permanent=True,
                )
            )
        elif self._runNumber >= runs:
            times = "time" if self._runNumber == 1 else "times"
            self._done.errback(
                AttemptFailed(
                    "data",
                    "error",
                    f"data plugin {name!r}: {error} "
                    f"(the plugin chain ran {self._runNumber} {times})",
                    plugin=name,
                )
            )
        else:
            self._nextRunCall = self._reactor.callLater(
                self._config.pluginRetryDelay, self._startRun
            )

    def _cancel(self, done: Deferred[bytes]) -> None:
        self._cancelled = True
        if self._nextRunCall is not None and self._nextRunCall.active():
            self._nextRunCall.cancel()
        self._nextRunCall = None
        if self._pending is not None:
            self._pending.cancel()
        self._settle()
