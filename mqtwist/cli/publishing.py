"""
Publishing many messages fast, with publisher confirms: a window of them
unconfirmed at a time.  Used by C{mqtwist send} and by the benchmarks
(C{bench/}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.python.failure import Failure

from mqtwist.amqp.client import BrokerClient


async def publishBodies(
    client: BrokerClient,
    queue: str,
    bodies: Iterable[bytes],
    *,
    window: int = 2000,
    priority: int | None = None,
    mandatory: bool = False,
    onConfirmed: Callable[[int], None] | None = None,
) -> int:
    """
    Publish C{bodies} to C{queue}, at most C{window} of them unconfirmed at
    a time, with the AMQP C{priority} (none when C{None}).

    @param mandatory: see L{BrokerClient.publish}: the queue is not
        declared, and a queue that does not exist fails the publish.
    @param onConfirmed: called with the number confirmed so far, after
        each window.
    @return: (a coroutine returning) how many messages were published and
        confirmed.
    @raise mqtwist.amqp.client.PublishFailed: the broker rejected or
        returned a message or the connection was lost; some messages may
        have been stored.
    """
    if window < 1:
        raise ValueError(f"publish window {window} must be at least 1")
    published = 0
    batch: list[defer.Deferred[None]] = []
    for body in bodies:
        batch.append(client.publish(queue, body, priority=priority, mandatory=mandatory))
        if len(batch) >= window:
            published += await _confirmed(batch)
            batch = []
            if onConfirmed is not None:
                onConfirmed(published)
    if batch:
        published += await _confirmed(batch)
        if onConfirmed is not None:
            onConfirmed(published)
    return published


async def _confirmed(batch: list[defer.Deferred[None]]) -> int:
    await defer.gatherResults(batch, consumeErrors=True).addErrback(_firstError)
    return len(batch)


def _firstError(failure: Failure) -> Failure:
    # gatherResults wraps the first failure in a FirstError: give the caller
    # the PublishFailed itself
    first = failure.value
    return first.subFailure if isinstance(first, defer.FirstError) else failure
