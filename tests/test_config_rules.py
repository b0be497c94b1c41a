"""
Tests for the checks of L{mqtwist.config.ThrottleRule.fromTable} and
L{mqtwist.config.BackoffRule.fromTable}: C{[[throttles]]} and C{[[backoff]]}
tables that could never do what they say are refused, with an error that
names the file, the rule, the key, the value and what to give.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from mqtwist.config import BackoffRule, Config, ThrottleRule
from mqtwist.tap import Options
from mqtwist.validation import canonicalIP

WHERE = "[[throttles]] number 1 in mqtwist.toml"
BACKOFF = "[[backoff]] number 1 in mqtwist.toml"
IP_HINT = (
    'give an IPv4 or IPv6 address or a glob pattern of one, e.g. "192.0.2.1", '
    '"10.*", "10.0.0.[1-4]" or "2001:db8::*"'
)


def throttleError(table: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as raised:
        ThrottleRule.fromTable(table, WHERE)
    return str(raised.value)


def backoffError(table: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as raised:
        BackoffRule.fromTable(table, BACKOFF)
    return str(raised.value)


class TestThrottleIP:
    """
    C{ip} is a glob pattern of the local address: one that no IPv4 or IPv6
    address can match is refused.
    """

    @pytest.mark.parametrize(
        "pattern",
        [
            "10.*",
            "192.0.2.1",
            "10.0.0.[1-4]",
            "10.0.0.[!0]",
            "10.0.?.1",
            "2001:db8::*",
            "2001:DB8::1",
            "::ffff:192.0.2.1",
            "*",
        ],
    )
    def test_accepted(self, pattern: str) -> None:
        # kept in the canonical form of an address (see below)
        assert ThrottleRule.fromTable({"domain": "*", "ip": pattern}, WHERE).ip == canonicalIP(pattern).lower()

    def test_notAnAddressCharacter(self) -> None:
        assert throttleError({"domain": "*", "ip": "not-an-ip"}) == (
            f"{WHERE}: 'ip' is 'not-an-ip', which no local address can match: 'n' is never in an "
            "IP address (only hex digits, '.' and ':' are, besides the glob characters * ? [ ]); "
            + IP_HINT
        )

    def test_hostName(self) -> None:
        assert "'m' is never in an IP address" in throttleError({"domain": "*", "ip": "mail.example.com"})

    def test_notAnAddress(self) -> None:
        assert throttleError({"domain": "*", "ip": "999.1.1.1"}) == (
            f"{WHERE}: 'ip' is '999.1.1.1', which no local address can match: it has no glob "
            "characters (* ? [ ]) and is not an IPv4 or IPv6 address; " + IP_HINT
        )

    def test_badCharacterInASet(self) -> None:
        assert "'x' is never in an IP address" in throttleError({"domain": "*", "ip": "10.0.0.[x]"})

    def test_unclosedSet(self) -> None:
        assert "its '[' has no closing ']'" in throttleError({"domain": "*", "ip": "10.0.0.[1"})

    def test_empty(self) -> None:
        assert throttleError({"domain": "*", "ip": ""}) == (
            f"{WHERE}: 'ip' is '', which no local address can match: an empty pattern matches no "
            f"address; {IP_HINT}, or leave 'ip' out to match every local address"
        )

    def test_namesTheFile(self, tmp_path: Path) -> None:
        """
        Through C{--config}, the error names the file and which rule.
        """
        path = tmp_path / "mqtwist.toml"
        path.write_text('[[throttles]]\ndomain = "*"\n\n[[throttles]]\nmx = "*.example.net"\nip = "999.1.1.1"\n')
        options = Options({})
        with pytest.raises(usage.UsageError) as raised:
            options.parseOptions(["--config", str(path), "--plugins="])
        assert str(raised.value).startswith(
            f"[[throttles]] number 2 in {path}: 'ip' is '999.1.1.1', which no local address can match"
        )


class TestThrottleNames:
    """
    An empty C{domain} or C{mx} pattern is refused.
    """

    def test_emptyDomain(self) -> None:
        assert throttleError({"domain": ""}) == (
            f"{WHERE}: 'domain' is ''; give a glob pattern of the recipient's domain, "
            'e.g. "example.com" or "*.example.com"'
        )

    def test_blankDomain(self) -> None:
        assert throttleError({"domain": "  "}).startswith(f"{WHERE}: 'domain' is '  '; give a glob pattern")

    def test_emptyMX(self) -> None:
        assert throttleError({"mx": ""}) == (
            f"{WHERE}: 'mx' is ''; give a glob pattern of a mail exchanger's host name, "
            'e.g. "*.google.com"'
        )

    def test_emptyNextToTheOther(self) -> None:
        """
        An empty C{domain} beside an C{mx} is reported as empty, not as
        both given.
        """
        assert throttleError({"domain": "", "mx": "*.example.net"}).startswith(f"{WHERE}: 'domain' is ''")


class TestBackoffConnections:
    """
    C{connections} belongs to C{action = "reduce"} only, and then is 1 when
    left out.
    """

    @pytest.mark.parametrize("action", ["retry", "pause"])
    def test_otherActions(self, action: str) -> None:
        table = {"action": action, "seconds": 60, "code": "^421$", "connections": 3}
        assert backoffError(table) == (
            f"{BACKOFF}: 'connections' is only for action = \"reduce\" (the deliveries at once "
            f"it leaves), not for {action!r}; leave 'connections' out, or give action = \"reduce\""
        )

    def test_reduce(self) -> None:
        table = {"action": "reduce", "seconds": 60, "code": "^421$", "connections": 3}
        assert BackoffRule.fromTable(table, BACKOFF).connections == 3

    def test_reduceDefaultsToOne(self) -> None:
        table = {"action": "reduce", "seconds": 60, "code": "^421$"}
        assert BackoffRule.fromTable(table, BACKOFF).connections == 1

    def test_otherActionsWithout(self) -> None:
        for action in ("retry", "pause"):
            table = {"action": action, "seconds": 60, "code": "^421$"}
            assert BackoffRule.fromTable(table, BACKOFF).action == action

    def test_reduceToZero(self) -> None:
        """
        C{connections = 0} used to become 1 without a word.
        """
        table = {"action": "reduce", "seconds": 60, "code": "^421$", "connections": 0}
        assert backoffError(table) == (
            f"{BACKOFF}: 'connections' is 0; give 1 or more (to stop all deliveries for a while, "
            'give action = "pause")'
        )


def test_ip_rules_and_message_addresses_meet_in_canonical_form():
    """
    An IPv6 address written in capitals or uncompressed, in a rule or in a
    message's C{ips}, is the same address: both are compared in canonical
    form (lower case, compressed).
    """
    from mqtwist.content.message import Message
    from mqtwist.delivery.policy import DeliveryPolicy
    from mqtwist.delivery.routing import Route
    from mqtwist.smtp.pool import Destination

    rule = ThrottleRule.fromTable({"domain": "*", "ip": "2001:DB8:0::1", "connections": 2}, "[[throttles]] number 1")
    assert rule.ip == "2001:db8::1"
    assert ThrottleRule.fromTable({"domain": "*", "ip": "2001:DB8::*"}, "here").ip == "2001:db8::*"
    message = Message.fromJSON('{"recipient": "a@b.test", "mime": "x", "ips": ["2001:0DB8::0:1", "192.0.2.1"]}')
    assert message.ips == ["2001:db8::1", "192.0.2.1"]
    policy = DeliveryPolicy(Config(ehloName="x", throttles=[rule]), None, lambda destination: 0)
    route = Route(Destination((("192.0.2.9", 25),), message.ips[0]), "b.test", ("mx.b.test",), "b.test")
    assert policy.destinationOf(route) == ("domain * from 2001:db8::1", rule)


def test_pools_are_read_and_checked(tmp_path) -> None:
    from mqtwist.config import PoolRule

    path = tmp_path / "pools.toml"
    path.write_text('[[pools]]\nname = "bulk"\nips = ["192.0.2.10", "2001:DB8::1"]\n')
    options = Options({})
    options.parseOptions(["--config", str(path), "--plugins="])
    assert options.config.pools == [PoolRule("bulk", ("192.0.2.10", "2001:db8::1"))]
    for table, words in [
        ('name = "bulk"\nips = []', "'ips' must be a non-empty list"),
        ('name = "bulk"\nips = ["mx.example.com"]', "'mx.example.com' in 'ips' is no IPv4 or IPv6 address"),
        ('ips = ["192.0.2.1"]', "'name' is missing or empty"),
        ('name = "b"\nips = ["192.0.2.1"]\ncolour = "red"', "unknown key 'colour'"),
    ]:
        path.write_text("[[pools]]\n" + table + "\n")
        with pytest.raises(usage.UsageError, match=re.escape(words)):
            Options({}).parseOptions(["--config", str(path), "--plugins="])
