"""
The operators' pauses and cancels (L{mqtwist.admin.controls}): what a
request may say, what each one selects, and how long it lasts.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from twisted.internet.task import Clock

from mqtwist.admin.controls import (
    CANCEL_KEYS,
    PAUSE_KEYS,
    ControlError,
    Controls,
    Selector,
    readDuration,
    readText,
)


@pytest.mark.parametrize(
    "request_, says",
    [
        ({}, "give at least one of destination, domain, mta, tag"),
        ({"domain": 5}, "'domain' must be a non-empty string, not 5"),
        ({"domain": ""}, "'domain' must be a non-empty string"),
        ({"domain": "exa mple.com"}, "no host name or IP address"),
        ({"mta": "10.0.0.300"}, "no IPv4 or IPv6 address"),
        ({"tag": "a\r\nb"}, "control character"),
    ],
)
def test_a_bad_selector_says_what_is_wrong(request_: dict[str, Any], says: str) -> None:
    with pytest.raises(ControlError, match=says):
        Selector.fromJSON(request_, PAUSE_KEYS)


def test_a_selector_is_normalised() -> None:
    selector = Selector.fromJSON({"domain": "Example.COM.", "mta": "2001:DB8::1", "colour": "red"}, PAUSE_KEYS)
    assert selector == Selector(domain="example.com", mta="2001:db8::1")
    assert str(selector) == "domain=example.com mta=2001:db8::1"


def test_a_cancel_takes_only_a_domain_or_a_tag() -> None:
    with pytest.raises(ControlError, match="give at least one of domain, tag"):
        Selector.fromJSON({"destination": "example.com"}, CANCEL_KEYS)


@pytest.mark.parametrize(
    "request_, seconds",
    [({}, math.inf), ({"seconds": None}, math.inf), ({"seconds": 90}, 90.0), ({"seconds": 0.5}, 0.5)],
)
def test_duration(request_: dict[str, Any], seconds: float) -> None:
    assert readDuration(request_) == seconds


@pytest.mark.parametrize("seconds", [0, -1, True, "60", float("inf"), 3e11, 366 * 24 * 3600 + 1])
def test_a_bad_duration_is_refused(seconds: object) -> None:
    with pytest.raises(ControlError, match="'seconds' must be a positive number"):
        readDuration({"seconds": seconds})


def test_free_text_is_bounded_and_printable() -> None:
    assert readText({}, "reason", "default") == "default"
    assert readText({"reason": "spam trap hit"}, "reason", "") == "spam trap hit"
    with pytest.raises(ControlError, match="at most 200 characters"):
        readText({"reason": "x" * 201}, "reason", "")
    with pytest.raises(ControlError, match="control character"):
        readText({"by": "eve\nINJECTED"}, "by", "")


def facts(**given: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"destination": "example.com", "domain": "example.com", "mtas": (), "tags": ()}
    values.update(given)
    return values


def test_a_pause_selects_by_every_field_it_gives() -> None:
    controls = Controls(Clock())
    controls.pause(Selector(domain="example.com", tag="spring"), math.inf, "campaign on hold", "ops")
    assert controls.pauseFor(**facts(tags=("spring", "x"))) is not None
    assert controls.pauseFor(**facts(tags=("autumn",))) is None
    assert controls.pauseFor(**facts(domain="example.org", tags=("spring",))) is None


def test_a_pause_of_a_source_address() -> None:
    controls = Controls(Clock())
    controls.pause(Selector(mta="192.0.2.7"), math.inf, "listed", "ops")
    assert controls.pauseFor(**facts(mtas=("192.0.2.7",))) is not None
    assert controls.pauseFor(**facts(mtas=("192.0.2.8",))) is None
    # the system's choice of address is no configured one
    assert controls.pauseFor(**facts(mtas=())) is None


def test_pauses_end_by_themselves_or_when_resumed() -> None:
    clock = Clock()
    controls = Controls(clock)
    short = controls.pause(Selector(domain="example.com"), 60, "a minute", "ops")
    controls.pause(Selector(tag="t"), math.inf, "until resumed", "ops")
    assert short.toJSON() == {
        "domain": "example.com",
        "until": "1970-01-01 00:01:00",
        "since": "1970-01-01 00:00:00",
        "reason": "a minute",
        "by": "ops",
    }
    clock.advance(60)
    assert controls.pauseFor(**facts()) is None
    assert [c.selector for c in controls.pauses()] == [Selector(tag="t")]
    assert controls.pauses()[0].toJSON()["until"] is None
    assert controls.resume(Selector(tag="other")) is None
    assert controls.resume(Selector(tag="t")) is not None
    assert controls.pauses() == [] and not controls.pausing


def test_the_longest_of_several_matching_pauses_is_the_one_given() -> None:
    controls = Controls(Clock())
    controls.pause(Selector(domain="example.com"), 60, "short", "ops")
    controls.pause(Selector(destination="example.com"), 600, "long", "ops")
    pause = controls.pauseFor(**facts())
    assert pause is not None and pause.reason == "long"


def test_a_new_control_of_the_same_selector_replaces_the_old() -> None:
    clock = Clock()
    controls = Controls(clock)
    controls.cancel(Selector(tag="spam"), 60, "first", "a")
    clock.advance(10)
    controls.cancel(Selector(tag="spam"), 600, "second", "b")
    (cancel,) = controls.cancels()
    assert (cancel.reason, cancel.by, cancel.until) == ("second", "b", 610)


def test_a_cancel_selects_by_domain_or_tag() -> None:
    controls = Controls(Clock())
    controls.cancel(Selector(domain="example.org"), math.inf, "bad list", "ops")
    assert controls.cancelFor(domain="example.org", tags=()) is not None
    assert controls.cancelFor(domain="example.com", tags=()) is None
    assert controls.uncancel(Selector(domain="example.org")) is not None
    assert controls.cancelFor(domain="example.org", tags=()) is None


def test_the_end_of_a_pause_is_told() -> None:
    """
    onPauseEnded is called when a pause is resumed and when one runs out,
    not when a pause is replaced or a cancel ends.
    """
    clock = Clock()
    controls = Controls(clock)
    ended: list[float] = []
    controls.onPauseEnded = lambda: ended.append(clock.seconds())
    controls.pause(Selector(domain="a.example"), 60, "", "ops")
    controls.pause(Selector(domain="a.example"), 120, "longer", "ops")
    controls.pause(Selector(tag="t"), math.inf, "", "ops")
    controls.cancel(Selector(tag="c"), 10, "", "ops")
    clock.advance(60)
    assert ended == []
    clock.advance(60)
    assert ended == [120]
    controls.resume(Selector(tag="t"))
    assert ended == [120, 120]
    controls.resume(Selector(tag="t"))
    assert ended == [120, 120]
    controls.pause(Selector(tag="x"), 30, "", "ops")
    controls.stop()
    clock.advance(30)
    assert ended == [120, 120] and clock.getDelayedCalls() == []
