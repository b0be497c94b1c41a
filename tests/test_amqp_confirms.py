"""
Publisher-confirm bookkeeping: single and multiple acks and nacks.
"""

import pytest
from twisted.internet.defer import Deferred

from mqtwist.amqp.confirms import PendingConfirms


class Rejected(Exception):
    pass


def outcomes(deferreds: list[Deferred]) -> list[str]:
    results = []
    for d in deferreds:
        box: list[str] = []
        # called at once or never: box is this iteration's
        d.addCallbacks(lambda _, box=box: box.append("ok"), lambda f, box=box: box.append(f"failed:{f.value}"))
        results.append(box[0] if box else "pending")
    return results


def publish(confirms: PendingConfirms, n: int) -> list[Deferred]:
    return [confirms.add(f"q{i}") for i in range(1, n + 1)]


def test_single_ack_settles_only_its_tag():
    confirms = PendingConfirms()
    ds = publish(confirms, 3)
    confirms.ack(2, multiple=False)
    assert outcomes(ds) == ["pending", "ok", "pending"]
    assert len(confirms) == 2


def test_multiple_ack_settles_everything_up_to_the_tag():
    confirms = PendingConfirms()
    ds = publish(confirms, 5)
    confirms.ack(1, multiple=False)
    confirms.ack(4, multiple=True)
    assert outcomes(ds) == ["ok", "ok", "ok", "ok", "pending"]
    confirms.ack(5, multiple=True)
    assert outcomes(ds)[4] == "ok"
    assert len(confirms) == 0


def test_multiple_nack_fails_with_the_queue_names():
    confirms = PendingConfirms()
    ds = publish(confirms, 4)
    confirms.ack(1, multiple=False)
    confirms.nack(3, multiple=True, error=lambda q: Rejected(q))
    assert outcomes(ds) == ["ok", "failed:q2", "failed:q3", "pending"]


def test_fail_all():
    confirms = PendingConfirms()
    ds = publish(confirms, 3)
    confirms.ack(1, multiple=False)
    confirms.failAll(lambda q: Rejected(f"lost {q}"))
    assert outcomes(ds) == ["ok", "failed:lost q2", "failed:lost q3"]
    assert len(confirms) == 0


def test_unknown_tags_are_ignored():
    confirms = PendingConfirms()
    ds = publish(confirms, 2)
    confirms.ack(7, multiple=False)
    confirms.ack(1, multiple=False)
    confirms.ack(1, multiple=False)
    assert outcomes(ds) == ["ok", "pending"]


@pytest.mark.parametrize("n", [1, 1000])
def test_sequence_numbers_continue(n):
    confirms = PendingConfirms()
    publish(confirms, n)
    confirms.ack(n, multiple=True)
    later = confirms.add("next")
    confirms.ack(n + 1, multiple=False)
    assert outcomes([later]) == ["ok"]
