"""
What the subcommands of C{mqtwist} share: the few settings they read from
the service's configuration, and a connection to RabbitMQ that either
comes up within C{--timeout} or fails with a message saying why.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from mqtwist.amqp.client import BrokerClient, Delivery, QueueSpec
from mqtwist.amqp.url import BrokerURL, parseBrokerURLs
from mqtwist.config.sources import configFrom
from mqtwist.localnode import LocalRabbitMQ
from mqtwist.outbox.schedule import reservedQueues

#: the default of --timeout: seconds to wait for the broker
DEFAULT_TIMEOUT = 5.0


class CommandError(Exception):
    """
    The command cannot do what it was asked; the text says what went wrong
    and what to do, and is printed as the command's error.
    """


@dataclass(frozen=True)
class Settings:
    """
    The settings of the service that the command uses.

    @ivar url: the broker: C{--amqp} (its first node), or the service's
        private node when it has none.
    @ivar nodes: every node C{--amqp} names (a cluster's), tried in turn.
    @ivar outbox: the queue jobs are published to.
    @ivar results: the queue of every final result.
    @ivar timeout: seconds to wait for the broker or the admin API
        (C{--timeout}).
    @ivar admin: the service's admin endpoint (C{admin}), or C{""}.
    @ivar adminTokenFile: the file of the admin token (C{admin-token-file}).
    @ivar reserved: the queues of the service's that carry jobs (the
        outbox, its held queue, the dead-letter and delay queues), which a
        command must not read (L{reservedQueues}).
    """

    url: BrokerURL
    outbox: str
    results: str
    timeout: float
    admin: str = ""
    adminTokenFile: str | None = None
    nodes: tuple[BrokerURL, ...] = ()
    reserved: frozenset[str] = frozenset()


def readSettings(
    amqp: str | None,
    configFile: str | None,
    timeout: float,
    environ: Mapping[str, str] = os.environ,
    *,
    admin: str | None = None,
    adminTokenFile: str | None = None,
) -> Settings:
    """
    Read the settings the way the service does: C{amqp}, C{admin} and
    C{adminTokenFile} (the options of the same names) over C{MQTWIST_*}
    variables over the TOML file C{configFile} (or the one
    C{MQTWIST_CONFIG} names).

    @raise mqtwist.config.sources.SettingError: a value is wrong; the text
        says which and where it came from.
    """
    config = configFrom({"amqp": amqp, "admin": admin, "admin-token-file": adminTokenFile}, environ, configFile)
    if config.amqp:
        nodes = parseBrokerURLs(config.amqp)
    else:
        # where the service's private node listens (it is not started here)
        nodes = (LocalRabbitMQ(config.brokerDir, amqpPort=config.brokerPort).url,)
    return Settings(
        url=nodes[0],
        nodes=nodes,
        outbox=config.outbox,
        results=config.results,
        timeout=timeout,
        admin=config.admin,
        adminTokenFile=config.adminTokenFile,
        reserved=reservedQueues(config),
    )


@asynccontextmanager
async def connected(
    reactor: Any,
    settings: Settings,
    *,
    queues: Sequence[QueueSpec] = (),
    consumeFrom: str | None = None,
    prefetch: int = 0,
    onDelivery: Callable[[Delivery], None] = lambda delivery: None,
    cleanup: Callable[[BrokerClient], Awaitable[None]] | None = None,
) -> AsyncIterator[BrokerClient]:
    """
    Connect to the broker, declare C{queues} and start consuming from
    C{consumeFrom}, if given; at the end, or when the reactor stops first
    (Ctrl-C), run C{cleanup} and disconnect.

    @return: an async context manager giving the connected client.
    @raise CommandError: the first attempt failed (the broker refused the
        connection or the login, the host does not resolve, ...) or none
        succeeded within C{settings.timeout} seconds.
    """
    outcome: defer.Deferred[None] = defer.Deferred()

    causes: list[str] = []

    def attemptFailed(cause: str) -> None:
        # a command gives up once every node failed once: its user is
        # waiting for an answer
        causes.append(cause)
        if not outcome.called and len(causes) >= len(settings.nodes or (settings.url,)):
            outcome.errback(CommandError("; and then: ".join(causes)))

    client = BrokerClient(
        settings.nodes or settings.url,
        queues,
        consumeFrom=consumeFrom,
        prefetch=prefetch,
        onDelivery=onDelivery,
        reactor=reactor,
        onAttemptFailed=attemptFailed,
    )
    client.startService()
    client.whenConnected().addCallbacks(
        lambda _: None if outcome.called else outcome.callback(None), lambda failure: None
    )
    outcome.addTimeout(settings.timeout, reactor)
    try:
        await outcome
    except defer.TimeoutError:
        await client.stopService()
        raise CommandError(
            f"cannot reach RabbitMQ at {', '.join(url.redacted() for url in settings.nodes or (settings.url,))}: "
            f"no connection within "
            f"{settings.timeout:g} s: check that it runs there and that no firewall drops "
            f"the connection, or give --timeout more seconds"
        ) from None
    except BaseException:
        await client.stopService()
        raise
    finishing: defer.Deferred[None] | None = None

    def finish() -> defer.Deferred[None]:
        nonlocal finishing
        if finishing is None:
            finishing = defer.ensureDeferred(_finish(client, cleanup))
        return finishing

    trigger = reactor.addSystemEventTrigger("before", "shutdown", finish)
    try:
        yield client
    finally:
        reactor.removeSystemEventTrigger(trigger)
        await finish()


async def _finish(client: BrokerClient, cleanup: Callable[[BrokerClient], Awaitable[None]] | None) -> None:
    try:
        if cleanup is not None:
            await cleanup(client)
    finally:
        await client.stopService()
