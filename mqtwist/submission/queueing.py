"""
Queueing a submission on the outbox: L{OutboxQueue} publishes the jobs of
L{mqtwist.submission.jobs.buildJobs} and answers once the broker has
confirmed every one, so that the server says C{250} only for mail that is
stored.

Delivery is at least once.  The jobs of a message are published together
and confirmed one by one; when some are confirmed and another fails (a
nack, the connection lost before its confirm), the submission fails as a
whole, the server answers C{451}, and the client sends the message again,
to every recipient: those whose jobs were confirmed the first time get it
twice.  A job whose confirm was lost with the connection may be stored too.
Nothing confirmed is ever taken back, since a duplicate is better than a
lost message.
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

    def __init__(self, broker: BrokerClient, queue: str, hostname: str) -> None:
        """
        @param broker: the service's broker connection.
        @param queue: the outbox queue the jobs go to.
        @param hostname: the C{hostname} property of the jobs: this server.
        """
        self.broker = broker
        self.queue = queue
        self.hostname = hostname

    def __call__(self, submission: Submission) -> defer.Deferred[None]:
        """
        Publish the jobs of C{submission}.

        @return: a Deferred that fires with C{None} once the broker has
            confirmed every job, or fails with L{QueueingFailed} (naming the
            message, the recipients not confirmed and why) as soon as all
            publishes have answered and one of them failed: not connected,
            rejected (C{basic.nack}), or the connection or channel lost
            before its confirm.  It fails at once, publishing nothing, with
            L{mqtwist.submission.jobs.NotUTF8} or L{ValueError} when the
            submission cannot be made into jobs (see
            L{mqtwist.submission.jobs.buildJobs}).
        """
        try:
            jobs = buildJobs(submission, self.hostname)
        except ValueError as e:
            self.log.warn(
                "Message from {sender} (client {client}) not queued: {why}",
                sender=_path(submission.sender),
                client=submission.clientAddress,
                why=str(e),
            )
            return defer.fail(e)
        published: list[defer.Deferred[None]] = []
        for job in jobs:
            try:
                published.append(self.broker.publish(self.queue, job.body, priority=job.priority))
            except ValueError as e:
                # a priority out of range, from the configured defaults
                published.append(defer.fail(e))
        answered = defer.DeferredList(published, consumeErrors=True)
        return answered.addCallback(self._answered, submission, jobs)

    def _answered(
        self, outcomes: list[tuple[bool, Any]], submission: Submission, jobs: list[Job]
    ) -> None:
        failures = [
            # (a failed publish's outcome is its Failure: consumeErrors)
            (job, outcome) for job, (ok, outcome) in zip(jobs, outcomes) if not ok and isinstance(outcome, Failure)
        ]
        if not failures:
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
        failed = tuple(job.recipient for job, _ in failures)
        confirmed = tuple(job.recipient for job, (ok, _) in zip(jobs, outcomes) if ok)
        # the publishes of one message mostly fail for one reason: say it once
        reasons = list(dict.fromkeys(failure.getErrorMessage() for _, failure in failures))
        description = (
            f"message from {_path(submission.sender)} (client {submission.clientAddress}) was "
            f"not queued on {self.queue!r} for {len(failed)} of its {len(jobs)} recipients "
            f"({labelsShown(failed, 5)}): {'; '.join(reasons)}. The client is told to "
            f"send it again"
        )
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


def _path(address: str) -> str:
    return f"<{address}>"
