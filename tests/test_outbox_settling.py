"""
Every outbox message is settled (L{mqtwist.outbox.processor.OutboxProcessor}), with
the broker and the delivery core replaced by fakes: a final result when one
can be built and published, the dead-letter queue when not, a reject when
not even that; never left unacknowledged, never back on the outbox for
ever.  The same paths against a real broker are in C{test_poison_fuzz.py}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from helpers_outbox import FakeDelivery
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from mqtwist.amqp.client import PublishFailed
from mqtwist.config import Config
from mqtwist.content.joblimits import JobLimits
from mqtwist.content.message import Message, ParseSettings, ResultEntry
from mqtwist.outbox.journal import DeliveryJournal
from mqtwist.outbox.processor import OutboxProcessor
from mqtwist.outbox.schedule import RetrySchedule


class Publisher:
    """
    Confirms every publish, except to the queues in C{refuse}, which it
    nacks.
    """

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.published: list[tuple[str, bytes, Mapping[str, object] | None]] = []
        self.refuse = refuse

    def publish(
        self, queue: str, body: bytes, *, priority: int | None = None, headers: Mapping[str, object] | None = None
    ) -> Deferred[None]:
        self.published.append((queue, body, headers))
        if queue in self.refuse:
            return fail(PublishFailed(f"the broker refused a message to {queue!r} (basic.nack)"))
        return succeed(None)

    def to(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(body) for name, body, _ in self.published if name == queue]


def processor(
    deliver: Callable[[Message], Deferred[ResultEntry]],
    publisher: Publisher,
    limits: JobLimits | None = None,
    journal: DeliveryJournal | None = None,
    **settings: Any,
) -> OutboxProcessor:
    config = Config(ehloName="x", smarthost="127.0.0.1:2525", **settings)
    parseSettings = ParseSettings(hostname="x", limits=limits or JobLimits())
    return OutboxProcessor(
        config, deliver, publisher, RetrySchedule("outbox", [1], [1], 60), Clock(), parseSettings, journal or DeliveryJournal(None, 100)
    )


def accepted(message: Message) -> Deferred[ResultEntry]:
    return succeed(ResultEntry("message", "accepted", 0, True, code=250))


JOB = json.dumps({"id": "job-1", "recipient": "a@example.com", "mime": "x"}).encode()


def test_a_bug_in_the_delivery_core_ends_in_a_process_error_result():
    """
    A bug met while a message is handled (here the delivery core raising
    instead of answering) is logged with its traceback, and the message
    ends with a final process/error result that names the error and says
    what to do; it is acknowledged.
    """

    def broken(message: Message) -> Deferred[ResultEntry]:
        raise ZeroDivisionError("a bug in the delivery core")

    publisher = Publisher()
    outbox = processor(broken, publisher)
    delivery = FakeDelivery(JOB)
    with capturedLogs() as events:
        outbox.handle(delivery)
    assert delivery.settled == "ack"
    assert outbox.inFlight == {}
    (failure,) = [event["log_failure"] for event in events if "log_failure" in event]
    assert failure.check(ZeroDivisionError)
    (result,) = publisher.to("failure")
    assert publisher.to("results") == [result]
    assert result["id"] == "job-1" and "mime" not in result
    (entry,) = result["results"]
    assert (entry["state"], entry["result"]) == ("process", "error")
    assert entry["description"].startswith(
        "mqtwist could not handle the message (ZeroDivisionError: 'a bug in the delivery core'); "
        "it is not delivered: report this"
    )


def test_a_failure_after_the_mail_was_accepted_still_publishes_accepted():
    """
    When concluding a delivered message fails (here the message's own
    result cannot be built), the result is made from the job as it
    arrived, with the accepted entry, to results and success: the mail is
    never sent again and never reported as failed.
    """
    publisher = Publisher()
    outbox = processor(accepted, publisher)

    def brokenResult(self: Message) -> bytes:
        raise RuntimeError("a plugin left something unencodable")

    original = Message.resultJSON
    Message.resultJSON = brokenResult  # type: ignore[method-assign]
    try:
        delivery = FakeDelivery(JOB)
        with capturedLogs():
            outbox.handle(delivery)
    finally:
        Message.resultJSON = original  # type: ignore[method-assign]
    assert delivery.settled == "ack"
    (result,) = publisher.to("success")
    assert publisher.to("results") == [result] and publisher.to("failure") == []
    assert result["id"] == "job-1"
    assert [(e["state"], e["result"], e["code"]) for e in result["results"]] == [("message", "accepted", 250)]


def test_results_refused_again_and_again_send_the_message_to_the_dead_letter_queue():
    """
    A message whose results the broker nacks goes back to the outbox; when
    it comes back after --settle-attempts such refusals, it is copied,
    unchanged and with the reason in a header, to the dead-letter queue,
    and acknowledged, instead of being tried for ever.
    """
    publisher = Publisher(refuse=("results",))
    outbox = processor(accepted, publisher, settleAttempts=2)
    settled = []
    with capturedLogs() as events:
        for redelivered in (False, True, True):
            delivery = FakeDelivery(JOB, redelivered=redelivered)
            outbox.handle(delivery)
            settled.append(delivery.settled)
    assert settled == ["release", "release", "ack"]
    (queue, body, headers), = [p for p in publisher.published if p[0] == "outbox.dead"]
    assert body == JOB
    assert headers == {
        "x-mqtwist-reason": "its results were not confirmed by the broker 2 times (last: the broker "
        "refused a message to 'results' (basic.nack)); it was delivered at 1970-01-01 00:00:00",
        "x-mqtwist-outbox": "outbox",
    }
    (line,) = [formatEvent(e) for e in events if "dead-letter" in e.get("log_format", "")]
    assert line.startswith("outbox message job-1 goes to the dead-letter queue outbox.dead: its results")


def test_a_message_not_redelivered_is_never_dead_lettered_for_earlier_refusals():
    """
    The refusals count only for the same bytes coming back (a redelivery):
    a message published again as new is handled afresh.
    """
    publisher = Publisher(refuse=("results",))
    outbox = processor(accepted, publisher, settleAttempts=1)
    outbox.handle(FakeDelivery(JOB))
    publisher.refuse = ()
    delivery = FakeDelivery(JOB)
    outbox.handle(delivery)
    assert delivery.settled == "ack"
    assert [queue for queue, _, _ in publisher.published] == ["results", "success"] * 2


@pytest.mark.parametrize(
    "deadLetterQueue, refuse, why",
    [
        ("", (), "no --dead-letter-queue is set"),
        ("outbox.dead", ("outbox.dead",), "the dead-letter queue 'outbox.dead' did not take it"),
    ],
)
def test_without_a_dead_letter_queue_the_message_is_rejected_and_logged(deadLetterQueue, refuse, why):
    """
    With no dead-letter queue, or one that the broker refuses, the message
    is rejected (dropped), with a critical log line that names it and
    says why: it does not circle for ever.
    """
    publisher = Publisher(refuse=("results", *refuse))
    outbox = processor(accepted, publisher, settleAttempts=1, deadLetterQueue=deadLetterQueue)
    outbox.handle(FakeDelivery(JOB))
    delivery = FakeDelivery(JOB, redelivered=True)
    with capturedLogs() as events:
        outbox.handle(delivery)
    assert delivery.settled == "reject"
    (line,) = [formatEvent(e) for e in events if e["log_level"].name == "critical"]
    assert line.startswith(f"outbox message job-1 ({len(JOB)} bytes) is dropped: its results were not confirmed")
    assert why in line


def test_a_job_too_deep_for_the_parser_is_invalid_and_acknowledged():
    """
    A job nested deeper than Python's JSON parser goes (about 1,000 levels)
    raised RecursionError, which left it unacknowledged; now it is invalid
    like one past --max-job-depth, with its raw text (cut) as input.
    """
    body = b'{"id":"p","recipient":"a@example.com","mime":"x","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    publisher = Publisher()
    outbox = processor(accepted, publisher, JobLimits(maxString=100))
    delivery = FakeDelivery(body)
    outbox.handle(delivery)
    assert delivery.settled == "ack"
    (result,) = publisher.to("failure")
    assert result["input"] == body[:100].decode() and result["inputsize"] == len(body)
    (entry,) = result["results"]
    assert (entry["state"], entry["result"]) == ("process", "invalid")
    assert entry["description"] == (
        "the message nests objects and lists deeper than the 32 levels an outbox job may have "
        "(--max-job-depth); flatten it"
    )
