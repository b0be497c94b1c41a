"""
Bookkeeping for RabbitMQ publisher confirms on one channel.

After C{confirm.select} the broker numbers every C{basic.publish} on the
channel from 1 and answers each with C{basic.ack} (stored) or C{basic.nack}
(not stored); one answer with C{multiple} set covers every number up to and
including its C{delivery-tag}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred


class PendingConfirms:
    """
    The publishes on one confirm-mode channel that the broker has not
    answered yet, each with the Deferred its publisher waits on.
    """

    def __init__(self) -> None:
        # ordered by sequence number, so that 'multiple' pops from the front
        self._pending: OrderedDict[int, tuple[Deferred[None], str]] = OrderedDict()
        self._lastSequence = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, queue: str) -> Deferred[None]:
        """
        Record the next publish on the channel; call it right before sending
        the C{basic.publish}.

        @param queue: where the message goes, for error messages.
        @return: a Deferred that fires with C{None} when the broker
            confirms this publish, or errbacks as L{nack} or L{failAll}
            decide.
        """
        self._lastSequence += 1
        d: Deferred[None] = Deferred()
        self._pending[self._lastSequence] = (d, queue)
        return d

    def ack(self, deliveryTag: int, multiple: bool) -> None:
        """
        The broker stored publish C{deliveryTag} (and all before it when
        C{multiple}).
        """
        for d, _ in self._settle(deliveryTag, multiple):
            d.callback(None)

    def nack(
        self, deliveryTag: int, multiple: bool, error: Callable[[str], Exception]
    ) -> None:
        """
        The broker did not store publish C{deliveryTag} (and all before it
        when C{multiple}).

        @param error: makes the exception for a publish to the given queue.
        """
        for d, queue in self._settle(deliveryTag, multiple):
            d.errback(error(queue))

    def failAll(self, error: Callable[[str], Exception]) -> None:
        """
        The channel is gone: no answer will come for anything pending.

        @param error: makes the exception for a publish to the given queue.
        """
        pending, self._pending = self._pending, OrderedDict()
        for d, queue in pending.values():
            d.errback(error(queue))

    def _settle(self, deliveryTag: int, multiple: bool) -> list[tuple[Deferred[None], str]]:
        if not multiple:
            entry = self._pending.pop(deliveryTag, None)
            return [] if entry is None else [entry]
        settled = []
        while self._pending:
            sequence = next(iter(self._pending))
            if sequence > deliveryTag:
                break
            settled.append(self._pending.popitem(last=False)[1])
        return settled
