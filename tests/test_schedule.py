"""
Retry delays, expiry and the delay queues that carry waiting messages.
"""

import json

from mqtwist.message import Message
from mqtwist.schedule import RetrySchedule
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
    assert decision.expired and "maxattempts 2" in decision.reason
    assert "maxattempts 2" in schedule.expiredBeforeAttempt(m, NOW)
    assert schedule.expiredBeforeAttempt(message(maxattempts=3, results=attempts(2)), NOW) is None


def test_default_expiry_counts_from_the_first_attempt():
    m = message(results=attempts(1, start=NOW - 3590))
    # the next attempt (10 s) would come after the one hour default
    assert schedule.afterSoftFailure(m, NOW).expired
    assert schedule.expiredBeforeAttempt(m, NOW) is None
    assert schedule.expiredBeforeAttempt(m, NOW + 10) is not None


def test_maxdelivertime_absolute_and_relative():
    absolute = message(maxdelivertime=formatTime(NOW + 30))
    assert schedule.expiredBeforeAttempt(absolute, NOW) is None
    assert "expired" in schedule.expiredBeforeAttempt(absolute, NOW + 31)
    relative = message(maxdelivertime=100, results=attempts(1, start=NOW - 95))
    assert schedule.afterSoftFailure(relative, NOW).expired
    assert not schedule.afterSoftFailure(message(maxdelivertime=100, results=attempts(1)), NOW).expired
