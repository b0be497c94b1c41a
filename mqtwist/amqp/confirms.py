"""
Bookkeeping for RabbitMQ publisher confirms on one channel.

After C{confirm.select} the broker numbers every C{basic.publish} on the
channel from 1 and answers each with C{basic.ack} (stored) or C{basic.nack}
(not stored); one answer with C{multiple} set covers every number up to and
including its C{delivery-tag}.  A publish with C{mandatory} that no queue
takes comes back first as a C{basic.return} (with the message, not its
number), then is confirmed: L{PendingConfirms.returned} marks it, so that its
confirm fails it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred


@dataclass(slots=True)
class _Pending:
    confirmed: Deferred[None]
    queue: str
    #: the body of a mandatory publish (to recognise its basic.return), or
    #: None
    body: bytes | None = None
    #: what its confirm errbacks with, once it came back (basic.return)
    returned: Exception | None = None


class PendingConfirms:
    """
    The publishes on one confirm-mode channel that the broker has not
    answered yet, each with the Deferred its publisher waits on.
    """

    def __init__(self) -> None:
        # ordered by sequence number, so that 'multiple' pops from the front
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._lastSequence = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, queue: str, mandatory: bytes | None = None) -> Deferred[None]:
        """
        Record the next publish on the channel; call it right before sending
        the C{basic.publish}.

        @param queue: where the message goes, for error messages.
        @param mandatory: the body of a publish with C{mandatory}, or
            C{None}.
        @return: a Deferred that fires with C{None} when the broker
            confirms this publish, or errbacks as L{nack}, L{returned} or
            L{failAll} decide.
        """
        self._lastSequence += 1
        d: Deferred[None] = Deferred()
        self._pending[self._lastSequence] = _Pending(d, queue, mandatory)
        return d

    def returned(self, queue: str, body: bytes, error: Exception) -> bool:
        """
        The broker returned (C{basic.return}) a mandatory publish to
        C{queue}: its confirm, which follows, errbacks with C{error}.

        The return does not carry the publish's number: it is the first
        mandatory publish to C{queue} with this C{body} not returned yet
        (the broker returns them in the order they were published; two
        publishes alike are one as good as the other).

        @return: C{False} when no pending publish matches.
        """
        for pending in self._pending.values():
            if pending.returned is None and pending.queue == queue and pending.body == body:
                pending.returned = error
                return True
        return False

    def answered(self, deliveryTag: int, multiple: bool) -> int:
        """
        How many pending publishes an answer to C{deliveryTag} (and all
        before it when C{multiple}) settles, before it does.
        """
        if not multiple:
            return 1 if deliveryTag in self._pending else 0
        count = 0
        for sequence in self._pending:
            if sequence > deliveryTag:
                break
            count += 1
        return count

    def ack(self, deliveryTag: int, multiple: bool) -> None:
        """
        The broker stored publish C{deliveryTag} (and all before it when
        C{multiple}); one it returned fails with the return's error.
        """
        for pending in self._settle(deliveryTag, multiple):
            if pending.returned is None:
                pending.confirmed.callback(None)
            else:
                pending.confirmed.errback(pending.returned)

    def nack(
        self, deliveryTag: int, multiple: bool, error: Callable[[str], Exception]
    ) -> None:
        """
        The broker did not store publish C{deliveryTag} (and all before it
        when C{multiple}).

        @param error: makes the exception for a publish to the given queue.
        """
        for pending in self._settle(deliveryTag, multiple):
            pending.confirmed.errback(error(pending.queue))

    def failAll(self, error: Callable[[str], Exception]) -> None:
        """
        The channel is gone: no answer will come for anything pending.

        @param error: makes the exception for a publish to the given queue.
        """
        pending, self._pending = self._pending, OrderedDict()
        for entry in pending.values():
            entry.confirmed.errback(error(entry.queue))

    def _settle(self, deliveryTag: int, multiple: bool) -> list[_Pending]:
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
