"""
The delivery core: one message in, one result entry out.

Nothing here knows about AMQP.  L{DeliveryEngine.deliver} routes a message,
takes a connection from the pool, runs the transaction with the data plugins
and says what happened, so any Twisted program can send mail with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from mqtwist.chain import PluginChain
from mqtwist.config import Config
from mqtwist.errors import AttemptFailed
from mqtwist.interfaces import IDataPlugin
from mqtwist.message import Message, ResultEntry
from mqtwist.routing import Router
from mqtwist.smtp.pool import ConnectionPool
from mqtwist.transaction import TransactionFailed, connectionFacts, sendMessage


class DeliveryEngine:
    """
    Routes and sends messages over pooled SMTP connections.

    @param plugins: the data plugins, in the order they run.
    """

    log = Logger()

    def __init__(self, config: Config, plugins: Sequence[IDataPlugin], reactor: Any) -> None:
        self.reactor = reactor
        self.router = Router(
            smarthost=config.smarthost,
            mxPort=config.mxPort,
            nameservers=config.nameservers,
        )
        self.pool = ConnectionPool(
            reactor,
            ehloName=config.ehloName,
            timeouts=config.timeouts,
            maxConnectionsPerDestination=config.maxConnectionsPerDestination,
            maxMessagesPerConnection=config.maxMessagesPerConnection,
            idleTimeout=config.idleTimeout,
        )
        self.chain = PluginChain(plugins, reactor=reactor, config=config)

    def deliver(self, message: Message) -> Deferred[ResultEntry]:
        """
        Make one delivery attempt for C{message}.

        @return: a Deferred firing with the L{ResultEntry} of the attempt,
            accepted or not (C{final} tells a permanent failure from one to
            retry); it does not fail for delivery problems.
        """
        return ensureDeferred(self._deliver(message))

    async def _deliver(self, message: Message) -> ResultEntry:
        try:
            destination = await self.router.destinationFor(message)
            client = await self.pool.acquire(destination)
        except AttemptFailed as failure:
            return self._failed(message, failure)
        try:
            reply = await sendMessage(client, message, self.chain)
        except TransactionFailed as failure:
            self.pool.release(client, clean=not failure.midTransaction)
            return self._failed(message, failure, connectionFacts(client))
        self.pool.release(client)
        self.log.info(
            "delivered {message} to {recipient} via {mta}: {code} {text}",
            message=message.label,
            recipient=message.recipient,
            mta=client.mta,
            code=reply.code,
            text=reply.text,
        )
        return ResultEntry(
            state="message",
            result="accepted",
            time=self.reactor.seconds(),
            final=True,
            code=reply.code,
            status=reply.status,
            description=reply.text,
            connection=connectionFacts(client),
        )

    def _failed(
        self, message: Message, failure: AttemptFailed, facts: dict[str, Any] | None = None
    ) -> ResultEntry:
        self.log.info(
            "attempt for {message} to {recipient} failed at {state}: {result} {description}",
            message=message.label,
            recipient=message.recipient,
            state=failure.state,
            result=failure.result,
            description=failure.description,
            permanent=failure.permanent,
        )
        return ResultEntry.fromFailure(failure, self.reactor.seconds(), facts)

    def close(self) -> Deferred[None]:
        """
        Close the pooled SMTP connections (QUIT).

        @return: a Deferred firing when all are closed.
        """
        return self.pool.closeAll()
