"""
Retry delays, expiry and the delay queues that carry waiting messages.
"""

import json

import pytest_twisted
from fixtures_smtp import unusedPort
from helpers_endtoend import makeConfig, publishAll, running
from helpers_outbox import FakeDelivery
from twisted.internet import reactor
from twisted.logger import formatEvent

from mqtwist.content.message import Message
from mqtwist.outbox.journal import DeliveryJournal
from mqtwist.outbox.schedule import RetrySchedule
from mqtwist.service import MailerService
from mqtwist.timeformat import formatTime

NOW = 1_800_000_000.0


def message(**extra):
    obj = {"recipient": "a@example.com", "mime": "x"}
    obj.update(extra)
    return Message.fromJSON(json.dumps(obj))


def attempts(n, start=NOW):
    return [{"time": formatTime(start + i * 60), "state": "rcptto", "result": "error"} for i in range(n)]


schedule = RetrySchedule("outbox", [1, 10, 60, 600], [10, 60, 600], 3600)


def test_delay_queues_dead_letter_into_the_outbox():
    queues = schedule.delayQueues()
    assert [q.name for q in queues] == ["outbox.delay.1s", "outbox.delay.10s", "outbox.delay.60s", "outbox.delay.600s"]
    assert queues[2].arguments == {
        "x-message-ttl": 60_000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "outbox",
    }


def test_delays_round_up_to_a_bucket():
    assert schedule.bucketFor(0) == 1
    assert schedule.bucketFor(1) == 1
    assert schedule.bucketFor(1.5) == 10
    assert schedule.bucketFor(60) == 60
    assert schedule.bucketFor(86400) == 600


def test_a_time_to_be_back_by_takes_few_parks_and_is_missed_by_little():
    # buckets 1, 10, 60, 600: the one below when it is at least half the
    # wait, so each return halves what is left; else the one above
    assert schedule.bucketBy(0.5) == 1
    assert schedule.bucketBy(1) == 1
    assert schedule.bucketBy(2) == 1
    assert schedule.bucketBy(3) == 10
    assert schedule.bucketBy(20) == 10
    assert schedule.bucketBy(21) == 60
    assert schedule.bucketBy(120) == 60
    assert schedule.bucketBy(121) == 600
    assert schedule.bucketBy(86400) == 600


def test_default_retries_with_the_last_repeating():
    delays = [schedule.afterSoftFailure(message(results=attempts(n)), NOW).delay for n in (1, 2, 3, 4, 5)]
    assert delays == [10, 60, 600, 600, 600]


def test_message_retries_override_the_default():
    m = message(retries=[5, 7], results=attempts(2))
    decision = schedule.afterSoftFailure(m, NOW)
    assert not decision.expired and decision.delay == 7


def test_maxattempts():
    m = message(maxattempts=2, results=attempts(2))
    decision = schedule.afterSoftFailure(m, NOW)
    assert decision.expired and decision.reason == "gave up after 2 attempts (maxattempts 2)"
    assert schedule.afterSoftFailure(message(maxattempts=1, results=attempts(1)), NOW).reason == (
        "gave up after 1 attempt (maxattempts 1)"
    )
    assert "maxattempts 2" in schedule.expiredBeforeAttempt(m, NOW)
    assert schedule.expiredBeforeAttempt(message(maxattempts=3, results=attempts(2)), NOW) is None


def test_default_expiry_counts_from_the_first_attempt():
    m = message(results=attempts(1, start=NOW - 3590))
    # the next attempt (10 s) would come after the one hour default
    assert schedule.afterSoftFailure(m, NOW).expired
    assert schedule.expiredBeforeAttempt(m, NOW) is None
    assert schedule.expiredBeforeAttempt(m, NOW + 10) is not None


def test_a_message_only_ever_deferred_expires_too():
    deferred = [{"time": formatTime(NOW - 3590), "state": "process", "result": "deferred"}]
    assert schedule.expiredBeforeAttempt(message(results=deferred), NOW) is None
    assert "expired" in schedule.expiredBeforeAttempt(message(results=deferred), NOW + 10)


def test_maxdelivertime_absolute_and_relative():
    absolute = message(maxdelivertime=formatTime(NOW + 30))
    assert schedule.expiredBeforeAttempt(absolute, NOW) is None
    assert "expired" in schedule.expiredBeforeAttempt(absolute, NOW + 31)
    relative = message(maxdelivertime=100, results=attempts(1, start=NOW - 95))
    assert schedule.afterSoftFailure(relative, NOW).expired
    assert not schedule.afterSoftFailure(message(maxdelivertime=100, results=attempts(1)), NOW).expired


# -- with RabbitMQ and a real SMTP server --------------------------------------


@pytest_twisted.ensureDeferred
async def test_nextattempt_in_the_future_waits_without_an_attempt(rabbitmq, amqp, smtpServer, queues):
    at = reactor.seconds() + 3
    async with running(MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])):
        await publishAll(amqp, queues["outbox"], [json.dumps(
            {"id": "later", "recipient": "r@example.com", "mime": "x", "nextattempt": {"time": formatTime(at)}}
        ).encode()])
        (success,) = [json.loads(r.body) for r in await amqp.collect(queues["success"], 1)]
        arrived = reactor.seconds()
    assert [e["state"] for e in success["results"]] == ["message"]  # no attempt before it
    assert arrived >= int(at)  # nextattempt has whole seconds
    assert await amqp.count(queues["retry"]) == 0


@pytest_twisted.ensureDeferred
async def test_expiry_gives_process_timeout_on_failure(rabbitmq, amqp, smtpServer, queues):
    config = makeConfig(rabbitmq, smtpServer, queues, smarthost=f"127.0.0.1:{unusedPort()}", retries=[1])
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [json.dumps(
            {"id": "old", "recipient": "r@example.com", "mime": "x", "maxdelivertime": 2}
        ).encode()])
        (failure,) = [json.loads(r.body) for r in await amqp.collect(queues["failure"], 1)]
    states = [(e["state"], e["result"]) for e in failure["results"]]
    assert states[-1] == ("process", "timeout") and "maxdelivertime" in failure["results"][-1]["description"]
    assert set(states[:-1]) == {("connect", "error")}
    # the expiry says what the last attempt met
    description = failure["results"][-1]["description"]
    assert description.endswith(f"; the last attempt: connect/error {failure['results'][-2]['description']}")


def test_a_message_deferred_again_and_again_expires_on_time():
    """
    Deferrals in a row share one result entry, stamped with the latest;
    the expiry clock still runs from the first of them.
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings
    from mqtwist.delivery.policy import Deferral
    from mqtwist.outbox.processor import OutboxProcessor
    from mqtwist.service import deliveryEngine
    from mqtwist.timeformat import parseTime

    clock = Clock()
    clock.advance(NOW)
    config = Config(ehloName="x", smarthost="127.0.0.1:2525", parkDelayMax=900, maxDeliverTime=3600)
    engine = deliveryEngine(config, [], clock)
    published: list[tuple[str, bytes]] = []

    class Publisher:
        def publish(self, queue, body, *, priority=None):
            published.append((queue, body))
            return succeed(None)

    def stillPaused(message):
        return succeed(engine._deferred(message, Deferral("mx x", "paused", clock.seconds() + 30)))

    processor = OutboxProcessor(
        config, stillPaused, Publisher(), RetrySchedule("outbox", config.delayBuckets, [600], 3600), clock,
        ParseSettings(hostname="x"), DeliveryJournal(None, 100),
    )
    body = json.dumps({"recipient": "a@example.com", "mime": "x"}).encode()
    for _ in range(100):
        published.clear()
        processor.handle(FakeDelivery(body))
        ((queue, body), *rest) = published
        if queue != "outbox.delay.900s" and not queue.startswith("outbox.delay."):
            break
        clock.advance(parseTime(json.loads(body)["nextattempt"]["time"]) - clock.seconds())
    result = json.loads(body)
    assert result["results"][-1]["state"] == "process" and result["results"][-1]["result"] == "timeout"
    assert result["results"][-1]["description"].endswith("; the last deferral: not tried: destination mx x paused")
    deferred = result["results"][-2]
    assert deferred["deferrals"] > 2 and parseTime(deferred["since"]) == NOW
    # parks end near the expiry (the last ones shorter): it expired within
    # a minute of the hour (the default buckets' most), not up to a 900 s
    # park later
    assert NOW + 3600 <= clock.seconds() <= NOW + 3600 + 60


def test_a_publish_that_raises_gives_the_message_back():
    """
    A publish that fails before it returns a Deferred settles the outbox
    message like one the broker did not confirm: it goes back to the
    outbox, and the publications already made are not left unhandled.
    """
    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.task import Clock

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings, ResultEntry
    from mqtwist.outbox.processor import OutboxProcessor

    first: Deferred[None] = Deferred()

    class Publisher:
        def publish(self, queue, body, *, priority=None):
            if queue == "results":
                return first
            raise RuntimeError("the publishing channel broke")

    clock = Clock()
    config = Config(ehloName="x", smarthost="127.0.0.1:2525")
    accepted = lambda message: succeed(ResultEntry("message", "accepted", 0, True, code=250))  # noqa: E731
    processor = OutboxProcessor(
        config, accepted, Publisher(), RetrySchedule("outbox", [1], [1], 60), clock, ParseSettings(hostname="x"), DeliveryJournal(None, 100)
    )
    delivery = FakeDelivery(json.dumps({"recipient": "a@example.com", "mime": "x"}).encode())
    processor.handle(delivery)
    assert delivery.settled == "release"
    first.errback(RuntimeError("nack"))  # handled: no unhandled error in the log


def test_a_results_entry_that_is_not_an_object_is_refused_and_acknowledged():
    """
    An outbox message whose C{results} holds something other than objects
    is refused as invalid (published to failure, acknowledged), instead of
    breaking the attempt count and staying unacknowledged.
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings, ResultEntry
    from mqtwist.outbox.processor import OutboxProcessor

    published: list[tuple[str, bytes]] = []

    class Publisher:
        def publish(self, queue, body, *, priority=None):
            published.append((queue, body))
            return succeed(None)

    accepted = lambda message: succeed(ResultEntry("message", "accepted", 0, True, code=250))  # noqa: E731
    processor = OutboxProcessor(
        Config(ehloName="x", smarthost="127.0.0.1:2525"), accepted, Publisher(),
        RetrySchedule("outbox", [1], [1], 60), Clock(), ParseSettings(hostname="x"), DeliveryJournal(None, 100),
    )
    delivery = FakeDelivery(json.dumps({"id": "p", "recipient": "a@example.com", "mime": "x", "results": [None]}).encode())
    processor.handle(delivery)
    assert delivery.settled == "ack"
    assert [queue for queue, _ in published] == ["results", "failure"]
    entry = json.loads(published[1][1])["results"][-1]
    assert (entry["state"], entry["result"]) == ("process", "invalid")
    assert "'results' must be a list of result entries (objects)" in entry["description"]


def test_nextattempt_is_the_time_the_message_comes_back_and_final_results_have_none():
    """
    The C{nextattempt} published with a retry is the time its delay queue
    gives the message back (the delay rounded up to a bucket), and a final
    result carries no C{nextattempt} left from an earlier retry.
    """
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings, ResultEntry
    from mqtwist.outbox.processor import OutboxProcessor
    from mqtwist.timeformat import parseTime

    clock = Clock()
    clock.advance(NOW)
    published: list[tuple[str, bytes]] = []

    class Publisher:
        def publish(self, queue, body, *, priority=None):
            published.append((queue, body))
            return succeed(None)

    outcomes = [
        ResultEntry("rcptto", "error", NOW, False, code=450, description="mailbox busy"),
        ResultEntry("message", "accepted", NOW, True, code=250),
    ]
    processor = OutboxProcessor(
        Config(ehloName="x", smarthost="127.0.0.1:2525"), lambda message: succeed(outcomes.pop(0)), Publisher(),
        RetrySchedule("outbox", [1, 5, 10, 30, 60], [11], 3600), clock, ParseSettings(hostname="x"), DeliveryJournal(None, 100),
    )
    processor.handle(FakeDelivery(json.dumps({"recipient": "a@example.com", "mime": "x"}).encode()))
    queues = {queue: json.loads(body) for queue, body in published}
    assert set(queues) == {"outbox.delay.30s", "retry"}
    # retries [11] go to the 30 s queue: back in 30 s, not 11
    assert parseTime(queues["outbox.delay.30s"]["nextattempt"]["time"]) == NOW + 30
    assert queues["retry"]["nextattempt"] == queues["outbox.delay.30s"]["nextattempt"]
    published.clear()
    clock.advance(30)
    processor.handle(FakeDelivery(json.dumps(queues["outbox.delay.30s"]).encode()))
    final = {queue: json.loads(body) for queue, body in published}
    assert set(final) == {"results", "success"}
    assert "nextattempt" not in final["success"] and "nextattempt" not in final["results"]


def test_stopping_while_results_await_their_confirms_says_so():
    """
    A drain that runs out of time while the broker has not confirmed a
    message's results gives the message back with a warning that says the
    service stopped, for one publication and for several alike.
    """
    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings, ResultEntry
    from mqtwist.outbox.processor import OutboxProcessor

    class Publisher:
        def publish(self, queue, body, *, priority=None):
            return Deferred()

    accepted = lambda message: succeed(ResultEntry("message", "accepted", 0, True, code=250))  # noqa: E731
    warnings = []
    leftOver = []
    for success in (None, "success"):
        clock = Clock()
        config = Config(ehloName="x", smarthost="127.0.0.1:2525", results="results", success=success)
        processor = OutboxProcessor(
            config, accepted, Publisher(), RetrySchedule("outbox", [1], [1], 60), clock, ParseSettings(hostname="x"), DeliveryJournal(None, 100)
        )
        delivery = FakeDelivery(json.dumps({"id": "m1", "recipient": "a@example.com", "mime": "x"}).encode())
        with capturedLogs() as events:
            processor.handle(delivery)
            drained = processor.drain(5)
            clock.advance(5)
        assert drained.called and delivery.settled == "release"
        warnings += [event for event in events if "were not confirmed" in event["log_format"]]
        leftOver += [event for event in events if "did not end within" in event["log_format"]]
    assert [event["error"] for event in warnings] == ["the service stopped before the broker confirmed them"] * 2
    assert [(event["count"], event["messages"]) for event in warnings] == [(1, ["m1"])] * 2
    assert [formatEvent(event) for event in leftOver] == [
        "1 of the deliveries in flight did not end within 5s (m1); they go back to the outbox and will be delivered again"
    ] * 2


def test_a_drain_gives_back_what_it_stops_and_an_undrain_stops_nothing():
    """
    The deliveries a drain (or stop) stops at its time-out go back to the
    outbox at once (released), not when the connection ends; cancelling
    the drain's wait (an undrain) stops its timer and no delivery.
    """
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.internet.task import Clock

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings
    from mqtwist.outbox.processor import OutboxProcessor

    attempts: list[Deferred] = []

    def deliver(message):
        attempts.append(Deferred())
        return attempts[-1]

    clock = Clock()
    config = Config(ehloName="x", smarthost="127.0.0.1:2525")
    processor = OutboxProcessor(
        config, deliver, object(), RetrySchedule("outbox", [1], [1], 60), clock, ParseSettings(hostname="x"),
        DeliveryJournal(None, 100),
    )
    first, second = (
        FakeDelivery(json.dumps({"id": f"m{n}", "recipient": "a@example.com", "mime": "x"}).encode()) for n in (1, 2)
    )
    processor.handle(first)
    drained = processor.drain(5)
    clock.advance(5)
    assert drained.called and first.settled == "release" and attempts[0].called
    processor.handle(second)
    waiting = processor.drain(5)
    waiting.cancel()
    waiting.addErrback(lambda failure: failure.trap(CancelledError))
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert second.settled is None and not attempts[1].called


def test_results_left_unconfirmed_together_are_logged_together():
    """
    A lost connection fails every confirm awaited at once: one warning
    names all the messages given back, not one warning each.
    """
    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs

    from mqtwist.config import Config
    from mqtwist.content.message import ParseSettings, ResultEntry
    from mqtwist.outbox.processor import OutboxProcessor

    awaited: list[Deferred[None]] = []

    class Publisher:
        def publish(self, queue, body, *, priority=None):
            awaited.append(Deferred())
            return awaited[-1]

    accepted = lambda message: succeed(ResultEntry("message", "accepted", 0, True, code=250))  # noqa: E731
    clock = Clock()
    config = Config(ehloName="x", smarthost="127.0.0.1:2525", results="results")
    processor = OutboxProcessor(
        config, accepted, Publisher(), RetrySchedule("outbox", [1], [1], 60), clock, ParseSettings(hostname="x"), DeliveryJournal(None, 100)
    )
    deliveries = [
        FakeDelivery(json.dumps({"id": f"m{n}", "recipient": "a@example.com", "mime": "x"}).encode())
        for n in range(5)
    ]
    with capturedLogs() as events:
        for delivery in deliveries:
            processor.handle(delivery)
        for publication in awaited:
            publication.errback(RuntimeError("the connection was lost"))
        assert [delivery.settled for delivery in deliveries] == ["release"] * 5
        clock.advance(0)
    (warning,) = [event for event in events if "were not confirmed" in event["log_format"]]
    assert formatEvent(warning) == (
        "results of 5 message(s) were not confirmed (the connection was lost): m0, m1, m2, ... m4; "
        "they go back to the outbox and will be tried again"
    )
    assert warning["messages"] == ["m0", "m1", "m2", "m3", "m4"]
