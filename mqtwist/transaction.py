"""
One SMTP mail transaction on an open connection: envelope, data plugins,
body, reply.

The data plugins run while the envelope's replies are on their way and
always finish before the first byte of the body is sent
(C{spec/plugins.md}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from mqtwist.chain import ConnectionInfo, PluginChain, PluginMessage
from mqtwist.errors import AttemptFailed
from mqtwist.message import Message
from mqtwist.smtp.protocol import ESMTPClient
from mqtwist.smtp.reply import Reply


class TransactionFailed(AttemptFailed):
    """
    An L{AttemptFailed} that also says whether the SMTP session was left in
    the middle of a transaction (and needs RSET before it is used again).
    """

    def __init__(self, failure: AttemptFailed, *, midTransaction: bool) -> None:
        super().__init__(
            failure.state,
            failure.result,
            failure.description,
            code=failure.code,
            status=failure.status,
            permanent=failure.permanent,
            plugin=failure.plugin,
        )
        self.midTransaction = midTransaction


def connectionInfo(client: ESMTPClient) -> ConnectionInfo:
    """
    What data plugins may know about C{client}'s connection.
    """
    return ConnectionInfo(
        hostname=client.mta or "",
        address=client.remoteAddress,
        localAddress=client.localAddress,
        greeting=client.greeting.text if client.greeting else "",
        extensions=dict(client.extensions),
        tls=False,
        store=client.pluginData,
    )


def connectionFacts(client: ESMTPClient) -> dict[str, Any]:
    """
    The connection's part of a result entry: C{mta}, C{from}, C{to},
    C{messages} and C{sent} of C{spec/messages.md}.
    """
    facts: dict[str, Any] = {
        "from": client.localAddress,
        "to": client.remoteAddress,
        "messages": client.messages,
        "sent": {"connection": client.bytesSent, "data": client.bodyBytesSent},
    }
    if client.mta:
        facts["mta"] = client.mta
    return facts


def _check(reply: Reply, state: str, expected: int = 2) -> Reply:
    if reply.code // 100 != expected:
        raise reply.failure(state)
    return reply


async def sendMessage(client: ESMTPClient, message: Message, chain: PluginChain) -> Reply:
    """
    Send C{message} on C{client}, running C{chain} to get the body.

    @return: the server's final reply to the body (2xx).
    @raise TransactionFailed: for a negative reply, a failed plugin chain, a
        time-out or a lost connection; C{midTransaction} tells the caller
        whether RSET is due before the connection carries another message.
    """
    mailReply = client.mailFrom(message.envelope)
    rcptReply = client.rcptTo(message.recipient)
    body = chain.run(
        connectionInfo(client),
        PluginMessage(message.json, message.envelope, message.recipient, message.mime),
    )
    try:
        _check(await mailReply, "mailfrom")
        _check(await rcptReply, "rcptto")
        encodedBody = await body
        _check(await client.data(), "data", expected=3)
    except AttemptFailed as failure:
        _abandon(body, rcptReply)
        raise TransactionFailed(failure, midTransaction=True) from None
    try:
        return _check(await client.sendBody(encodedBody), "message")
    except AttemptFailed as failure:
        # after the reply to the body the transaction is over, whatever it said
        raise TransactionFailed(failure, midTransaction=False) from None


def _abandon(body: Deferred[bytes], rcptReply: Deferred[Reply]) -> None:
    """
    Stop caring about the rest of a transaction that failed: stop the data
    plugins, and swallow results that no one waits for any more.  The SMTP
    command is left to complete: its reply keeps the protocol in step.
    """
    body.cancel()
    for deferred in (body, rcptReply):
        deferred.addErrback(lambda _: None)
