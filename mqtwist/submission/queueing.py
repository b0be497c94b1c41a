"""
Queueing a submission on the outbox: L{OutboxQueue} publishes the jobs of
L{mqtwist.submission.jobs.buildJobs} and answers once the broker has
confirmed every one, so that the server says C{250} only for mail that is
stored.

Delivery is at least once.  The jobs of a message are published in the
order of its recipients, as many at a time as fit in a window of bytes
(so that a big message to many recipients is not copied into memory once
per recipient all at once), and confirmed one by one; when one fails (not
connected, a nack, the connection lost before its confirm), no more are
published, the submission fails as a whole, the server answers C{451},
and the client sends the message again, to every recipient: those whose
jobs were confirmed the first time get it twice.  A job whose confirm was
lost with the connection, or still awaited when the server stopped
waiting, may be stored too.  Nothing confirmed is ever taken back, since a
duplicate is better than a lost message.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtwist.amqp.client import BrokerClient
from mqtwist.content.message import labelsShown
from mqtwist.submission.envelope import Submission
from mqtwist.submission.jobs import Job, buildJobs


class QueueingFailed(Exception):
    """
    Some job of a submission may not be stored: the client must keep the
    message and send it again.

    @ivar failed: the recipients whose jobs were not confirmed.
    @ivar confirmed: the recipients whose jobs the broker confirmed (they
        may get the message twice once the client sends it again).
    """

    def __init__(self, description: str, failed: tuple[str, ...], confirmed: tuple[str, ...]) -> None:
        super().__init__(description)
        self.failed = failed
        self.confirmed = confirmed


class OutboxQueue:
    """
    The L{mqtwist.submission.envelope.Queue} that publishes each recipient's
    job to an outbox queue, persistent and confirmed.
    """

    log = Logger()

    def __init__(
        self,
        broker: BrokerClient,
        queue: str,
        hostname: str,
        *,
        windowBytes: int = 32 * 1024 * 1024,
        maxJobBytes: int = 64 * 1024 * 1024,
    ) -> None:
        """
        @param broker: the service's broker connection.
        @param queue: the outbox queue the jobs go to.
        @param hostname: the C{hostname} property of the jobs: this server.
        @param windowBytes: the most bytes of one message's jobs published
            and not yet confirmed (at least one job is): a message to many
            recipients is not copied whole into memory once per recipient.
        @param maxJobBytes: the most bytes of one job: the C{--max-job-bytes}
            of the processes that consume the queue, which would refuse a
            bigger job after the client was told 250.
        """
        self.broker = broker
        self.queue = queue
        self.hostname = hostname
        self.windowBytes = windowBytes
        self.maxJobBytes = maxJobBytes

    def __call__(self, submission: Submission) -> defer.Deferred[None]:
        """
        Publish the jobs of C{submission}.

        @return: a Deferred that fires with C{None} once the broker has
            confirmed every job, or fails with L{QueueingFailed} (naming the
            message, the recipients not confirmed and why) once a publish
            failed and the others published have answered: not connected,
            rejected (C{basic.nack}), returned (no such queue: the jobs are
            published mandatory), or the connection or channel lost
            before its confirm, or the Deferred cancelled (the jobs not
            confirmed by then may still be stored later).  After a failure
            no more of its jobs are published.  It fails at once, publishing
            nothing, with L{ValueError} when the submission cannot be made
            into jobs (see
            L{mqtwist.submission.jobs.buildJobs}).
        """
        try:
            jobs = buildJobs(submission, self.hostname)
            biggest = max((job.size for job in jobs), default=0)
            if biggest > self.maxJobBytes:
                raise ValueError(
                    f"as an outbox job the message would have {biggest} bytes, more than the "
                    f"{self.maxJobBytes} of --max-job-bytes; send it smaller"
                )
        except ValueError as e:
            self.log.warn(
                "Message from {sender} (client {client}) not queued: {why}",
                sender=_path(submission.sender),
                client=submission.clientAddress,
                why=str(e),
            )
            return defer.fail(e)
        return _Publishing(self, submission, jobs).start()

    def _settled(self, submission: Submission, jobs: list[Job], outcomes: dict[int, Failure | None]) -> None:
        """
        Log how the jobs of C{submission} ended: C{outcomes} has C{None} for
        each job confirmed, the failure of each job that failed, and
        nothing for a job not published.

        @raise QueueingFailed: unless every job was confirmed.
        """
        if len(outcomes) == len(jobs) and all(outcome is None for outcome in outcomes.values()):
            self.log.debug(
                "Message from {sender} (client {client}) queued on {queue} for {count} "
                "recipients: {ids}",
                sender=_path(submission.sender),
                client=submission.clientAddress,
                queue=self.queue,
                count=len(jobs),
                ids=", ".join(f"{job.messageId} for {job.recipient}" for job in jobs),
            )
            return
        failed = tuple(job.recipient for index, job in enumerate(jobs) if outcomes.get(index, True) is not None)
        confirmed = tuple(jobs[index].recipient for index, outcome in sorted(outcomes.items()) if outcome is None)
        unpublished = len(jobs) - len(outcomes)
        # the publishes of one message mostly fail for one reason: say it once
        reasons = list(dict.fromkeys(_reason(outcome) for outcome in outcomes.values() if outcome is not None))
        description = (
            f"message from {_path(submission.sender)} (client {submission.clientAddress}) was "
            f"not queued on {self.queue!r} for {len(failed)} of its {len(jobs)} recipients "
            f"({labelsShown(failed, 5)}): {'; '.join(reasons)}"
        )
        if unpublished:
            description += f" ({unpublished} jobs not published after that)"
        description += ". The client is told to send it again"
        if confirmed:
            description += (
                f"; the jobs of {len(confirmed)} recipients were confirmed, and they get it twice "
                f"when it comes again ({labelsShown(confirmed, 5)})"
            )
        self.log.warn(
            "Message from {sender} (client {client}) not queued on {queue}: {failed} of "
            "{count} jobs not confirmed ({reasons}); {confirmed} confirmed, which the "
            "client's retry duplicates",
            sender=_path(submission.sender),
            client=submission.clientAddress,
            queue=self.queue,
            failed=len(failed),
            count=len(jobs),
            reasons="; ".join(reasons),
            confirmed=len(confirmed),
        )
        raise QueueingFailed(description, failed, confirmed)


class _Publishing:
    """
    The publishes of one submission's jobs, in order, with at most the
    queue's C{windowBytes} of them unconfirmed at a time, and none after one
    failed.
    """

    def __init__(self, queue: OutboxQueue, submission: Submission, jobs: list[Job]) -> None:
        self.queue = queue
        self.submission = submission
        self.jobs = jobs
        self.outcomes: dict[int, Failure | None] = {}
        self.pending: dict[int, defer.Deferred[None]] = {}
        self.next = 0
        self.unconfirmed = 0
        self.stopped = False
        self.done: defer.Deferred[None] = defer.Deferred(self._cancel)

    def start(self) -> defer.Deferred[None]:
        self._publishMore()
        return self.done

    def _publishMore(self) -> None:
        queue = self.queue
        while not self.stopped and self.next < len(self.jobs):
            job = self.jobs[self.next]
            if self.pending and self.unconfirmed + job.size > queue.windowBytes:
                return
            index, self.next = self.next, self.next + 1
            try:
                # mandatory: a job the broker cannot route (the queue was
                # deleted) comes back as a failure, where it would be
                # dropped and the client told 250 for lost mail
                published = queue.broker.publish(queue.queue, job.body, priority=job.priority, mandatory=True)
            except ValueError as e:
                # a priority out of range, from the configured defaults
                published = defer.fail(e)
            self.unconfirmed += job.size
            self.pending[index] = published
            # (fires at once when the publish failed at once)
            published.addBoth(self._answered, index)
        if not self.pending and not self.done.called:
            self._finish()

    def _answered(self, result: Any, index: int) -> None:
        del self.pending[index]
        self.unconfirmed -= self.jobs[index].size
        if isinstance(result, Failure):
            self.outcomes[index] = result
            self.stopped = True
        else:
            self.outcomes[index] = None
        self._publishMore()

    def _finish(self) -> None:
        try:
            self.queue._settled(self.submission, self.jobs, self.outcomes)
        except QueueingFailed as e:
            self.done.errback(e)
        else:
            self.done.callback(None)

    def _cancel(self, done: defer.Deferred[None]) -> None:
        self.stopped = True
        for published in list(self.pending.values()):
            published.cancel()


def _path(address: str) -> str:
    return f"<{address}>"


def _reason(failure: Failure) -> str:
    if failure.check(defer.CancelledError):
        # the server gave up waiting (its --submission-queue-timeout)
        return (
            "the broker had not confirmed it when the wait was cancelled (a broker that blocks "
            "publishers, e.g. on a memory or disk alarm, confirms nothing); it may still be stored"
        )
    return failure.getErrorMessage()
