"""
When a message is tried again, and when it is given up.

Waiting messages live in RabbitMQ, not in this process: a message to be tried
later is published to a delay queue whose fixed TTL dead-letters it back into
the outbox.  There is one delay queue per configured bucket, and a delay is
rounded up to the next bucket, so a message is never tried early and the
broker never holds a message behind a longer-waiting one.

With quorum queues, a message's way back from a delay queue into the
outbox is RabbitMQ's at-least-once dead-lettering: the delay queue keeps the
message until the outbox has confirmed its copy, so a node lost meanwhile
loses none (it may bring one twice, as any redelivery may).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mqtwist.amqp.client import QueueSpec, typeArguments

if TYPE_CHECKING:
    # for annotations only: the mqtwist command reads reservedQueues
    # without loading the message parser
    from mqtwist.config import Config
    from mqtwist.content.message import Message


@dataclass(frozen=True)
class RetryDecision:
    """
    What to do with a message whose attempt failed softly.

    @ivar expired: C{True} when the message must be given up instead, with
        C{reason} saying why.
    @ivar delay: seconds until the next attempt (before bucket rounding).
    """

    expired: bool
    delay: float = 0.0
    reason: str = ""


class RetrySchedule:
    """
    The retry policy of one service: default delays, default expiry and the
    delay queues that carry waiting messages back into the outbox.

    @param outbox: the outbox queue the delay queues dead-letter into.
    @param buckets: the delays, in seconds, that have a queue of their own.
    @param defaultRetries: delays between attempts for messages without
        C{retries}; the last one repeats.
    @param defaultMaxDeliverTime: seconds after the first attempt when a
        message without C{maxdelivertime} expires.
    @param queueType: C{classic} or C{quorum}, the type of the delay queues.
    """

    def __init__(
        self,
        outbox: str,
        buckets: Sequence[int],
        defaultRetries: Sequence[int],
        defaultMaxDeliverTime: float,
        queueType: str = "classic",
    ) -> None:
        if not buckets or any(b <= 0 for b in buckets):
            raise ValueError(
                "delay buckets must be a non-empty list of positive seconds"
            )
        self.outbox = outbox
        self.buckets = sorted(set(buckets))
        self.defaultRetries = list(defaultRetries)
        self.defaultMaxDeliverTime = defaultMaxDeliverTime
        self.typeArguments = typeArguments(queueType)

    def delayQueueName(self, seconds: int) -> str:
        """
        The name of the delay queue of one bucket.
        """
        return f"{self.outbox}.delay.{seconds}s"

    def delayQueues(self) -> list[QueueSpec]:
        """
        The delay queues to declare: one a bucket, with the bucket as its
        message TTL and the outbox as its dead-letter route.  Quorum delay
        queues dead-letter at least once, which RabbitMQ does only for a
        queue that refuses publishes when full (C{x-overflow}
        C{reject-publish}; without a length limit it never is): at most
        once, its default, drops a message whose copy the outbox did not
        confirm, e.g. when the outbox's leader node is lost.
        """
        arguments = dict(self.typeArguments)
        if arguments:
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return [
            QueueSpec(
                self.delayQueueName(seconds),
                {
                    **arguments,
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.outbox,
                },
            )
            for seconds in self.buckets
        ]

    def queueSpec(self, name: str, arguments: Mapping[str, object] | None = None) -> QueueSpec:
        """
        One of mqtwist's other queues (outbox, results, dead letters, held
        messages), of the type of the delay queues.
        """
        return QueueSpec(name, {**self.typeArguments, **(arguments or {})})

    def bucketFor(self, delay: float) -> int:
        """
        The smallest bucket that is at least C{delay} seconds (the largest
        bucket for longer delays: the message comes back, sees that its time
        has not come and waits again).
        """
        index = bisect.bisect_left(self.buckets, delay)
        return self.buckets[min(index, len(self.buckets) - 1)]

    def bucketBy(self, delay: float) -> int:
        """
        A bucket for a message that must be back C{delay} seconds from now,
        or soon after (for its expiry): the largest bucket of at most
        C{delay} when it is at least half of it (the message comes back
        early and waits the rest, so each return halves what is left), else
        the next bucket up (late by at most what it exceeds twice the one
        below it: 60 s with the default buckets).
        """
        index = bisect.bisect_right(self.buckets, delay)
        if index and self.buckets[index - 1] * 2 >= delay:
            return self.buckets[index - 1]
        return self.buckets[min(index, len(self.buckets) - 1)]

    def expiryTime(self, message: Message, now: float) -> float:
        """
        The POSIX time after which C{message} is given up.
        """
        if message.maxdelivertime is not None:
            return message.maxdelivertime
        # a message that was only ever deferred expires too
        first = message.firstTryTime or now
        seconds = message.maxdeliverseconds or self.defaultMaxDeliverTime
        return first + seconds

    def expiredBeforeAttempt(self, message: Message, now: float) -> str | None:
        """
        Why C{message} must not be tried at all any more, or C{None}.
        """
        if message.maxattempts is not None and message.attempts >= message.maxattempts:
            return f"gave up after {_attempts(message.attempts)} (maxattempts {message.maxattempts})"
        if now >= self.expiryTime(message, now):
            return "gave up: the message expired (maxdelivertime) before it could be delivered"
        return None

    def afterSoftFailure(
        self, message: Message, now: float, delay: float | None = None
    ) -> RetryDecision:
        """
        Decide what follows a soft failure that is already recorded in
        C{message}'s results.

        @param delay: seconds until the next attempt when the failure itself
            says (greylisting), instead of the message's C{retries}.
        """
        attempts = message.attempts
        if message.maxattempts is not None and attempts >= message.maxattempts:
            return RetryDecision(
                True,
                reason=f"gave up after {_attempts(attempts)} (maxattempts {message.maxattempts})",
            )
        if delay is None:
            retries = message.retries or self.defaultRetries
            delay = float(retries[min(attempts, len(retries)) - 1]) if attempts else 0.0
        if now + delay >= self.expiryTime(message, now):
            return RetryDecision(
                True,
                delay,
                reason=(
                    f"gave up after {_attempts(attempts)}: the next one would "
                    f"come after maxdelivertime"
                ),
            )
        return RetryDecision(False, delay)


def reservedQueues(config: Config) -> frozenset[str]:
    """
    The queues of mqtwist's own that carry delivery jobs: the outbox, its
    held queue, the dead-letter queue and the delay queues of C{config}.
    A result published to one would come back as a job; a reader other
    than the service would take jobs away from it.
    """
    schedule = RetrySchedule(
        config.outbox, config.delayBuckets, config.retries, config.maxDeliverTime, config.queueType
    )
    return frozenset(
        [config.outbox, config.deadLetterQueue, config.heldQueueName]
        + [queue.name for queue in schedule.delayQueues()]
    )


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"
