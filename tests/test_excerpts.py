"""
A description or a log line quotes at most a short, escaped excerpt of a
bad value from a job: every check that refuses a value of a megabyte says
so in a line of under 200 characters that names the property and the
problem, with no CR, LF or lone surrogate of the value in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers_smtpprotocol import Connection, failureOf
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mqtwist.config import Config, SMTPTimeouts
from mqtwist.content.dkimsign import DKIMKeys, parseDKIM
from mqtwist.content.headeredits import applyHeaderEdits, checkHeaderEdits, checkHeaderName, foldHeader
from mqtwist.content.message import Message
from mqtwist.content.mime import buildMime
from mqtwist.delivery.policy import DeliveryPolicy
from mqtwist.delivery.routing import Router
from mqtwist.errors import AttemptFailed, InvalidMessage
from mqtwist.hostport import hostPort
from mqtwist.smtp.connect import Credentials, openConnection
from mqtwist.smtp.pool import Destination
from mqtwist.validation import checkAddress, excerpt, shownName

#: a megabyte: what the 1 MB recipient of the issue was
MB = 1_000_000
#: one of each thing an excerpt must escape: CR, LF, a lone surrogate
NASTY = "\r\n\ud800"
#: a value that is bad but for its size: no control character, no surrogate
#: (refused before the check at hand), so the nasty ones go where they may
LONG = "a" * MB


def refusal(check: Callable[[], Any]) -> str:
    """The description of the L{InvalidMessage} that C{check} raises."""
    with pytest.raises(InvalidMessage) as caught:
        check()
    return caught.value.description


def assertShort(description: str, *says: str) -> None:
    """
    C{description} is short, can be written as UTF-8 on one line, and says
    each of C{says}.
    """
    # the excerpt is 40 characters (more where they are escaped); the rest
    # is what the description explains, at most about 200 characters
    assert len(description) < 250, (len(description), description[:300])
    assert "\r" not in description and "\n" not in description
    description.encode("utf-8")  # no lone surrogate
    for part in says:
        assert part in description, (part, description)


def test_excerptAndShownName() -> None:
    assert excerpt("a" * MB) == "'" + "a" * 40 + f"'... ({MB - 40} more characters)"
    assert excerpt("x" + NASTY) == "'x\\r\\n\\ud800'"
    # names read as they are while they are plain, like an excerpt otherwise
    assert shownName("X-Campaign") == "X-Campaign"
    assert shownName("mx.example.com", 253) == "mx.example.com"
    assert shownName("a b") == "'a b'"
    assert shownName("a" * 41) == "'" + "a" * 40 + "'... (1 more characters)"
    assert shownName("a" * MB, 253) == excerpt("a" * MB)


# -- addresses (mqtwist.validation) -------------------------------------------


def test_aMegabyteRecipient() -> None:
    """The issue's case: the description had 1,000,060 characters."""
    description = refusal(lambda: Message.fromObject({"recipient": "a" * MB + "@example.com", "mime": "x"}))
    assert description == f"recipient 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'... ({MB + 12 - 40} more characters) " \
        "is longer than 254 bytes (RFC 5321)"
    assertShort(description)


@pytest.mark.parametrize(
    "address, problem",
    [
        (LONG + "\r@example.com", "control character '\\r' at position 1000000"),
        (LONG + "@example.com", "longer than 254 bytes"),
        ("\ud800" + LONG + "@example.com", "'\\ud800aaa"),
        ("\ud800" + LONG + "@example.com", "lone surrogate at position 0"),
        ("é" * 100 + "@" + "b" * 100 + "\ud800", "lone surrogate at position 201"),
        (LONG[:200], "not an address of the form local@domain"),
        ("a b" + "a" * 200 + "@example.com", "contains ' '"),
        ("a" * 65 + "@example.com", "local part longer than 64 bytes"),
        ("a..b" + "c" * 50 + "@example.com", "malformed local part 'a..bcc"),
        ("a@" + "b" * 100 + "-.com", "malformed domain 'bbb"),
    ],
)
def test_checkAddress(address: str, problem: str) -> None:
    description = refusal(lambda: checkAddress("envelope", address))
    assertShort(description, "envelope", problem)


# -- header edits ----------------------------------------------------------------


@pytest.mark.parametrize(
    "edits, says",
    [
        ({"a" * MB: [], "remove": "X " * MB}, ["headers.remove", "is not a header field name"]),
        ({"remove": ["X " * MB]}, ["headers.remove", "is not a header field name"]),
        ({"remove": [NASTY + LONG]}, ["headers.remove: '\\r\\n\\ud800aaa", "is not a header field name"]),
        ({"append": {"X" * MB: 3}}, ["headers.append.'XXX", "must be a string"]),
        ({"append": {"X" * MB: "a\r\nb"}}, ["headers.append.'XXX", "control character '\\r'"]),
        ({"update": {"X-Tag": ["ok", "x" * MB + "\n"]}}, ["headers.update.X-Tag", "control character '\\n'"]),
    ],
)
def test_checkHeaderEdits(edits: dict[str, Any], says: list[str]) -> None:
    assertShort(refusal(lambda: checkHeaderEdits(edits)), *says)


def test_foldHeader() -> None:
    assertShort(refusal(lambda: checkHeaderName("headers.append", 7)), "headers.append", "7 is not")
    assertShort(
        refusal(lambda: foldHeader("headers.append", "X-" + "a" * MB, "x")),
        "headers.append.'X-aaa", "word too long",
    )
    # the email package's parser breaks on some values: refused, not a crash
    description = refusal(lambda: foldHeader("headers.append", "To", ".:?:" + LONG))
    assert description == (
        f"headers.append.To: '.:?:{LONG[:36]}'... ({MB - 36} more characters) cannot be written as a "
        f"To field; check its syntax (RFC 5322)"
    )
    description = refusal(lambda: applyHeaderEdits(b"Subject: x\r\n\r\nx", {"append": {"Cc": '"'}}))
    assert description == "headers.append.Cc: '\"' cannot be written as a Cc field; check its syntax (RFC 5322)"


# -- mime objects --------------------------------------------------------------


def built(**obj: Any) -> Callable[[], bytes]:
    base: dict[str, Any] = {"from": "a@example.org", "text": "x"}
    base.update(obj)
    return lambda: buildMime(base, now=0, hostname="mqtwist.test")


@pytest.mark.parametrize(
    "check, says",
    [
        (built(text="a", textVersion="x" * MB), ["mime.text", "mime.textVersion", "give one"]),
        (built(**{"from": "a" * MB + "@example.org"}), ["mime.from", "longer than 254 bytes"]),
        (built(**{"from": {"email": "a@example.org", "address": "x" * MB}}), ["mime.from", "'address' 'xxx"]),
        (built(**{"from": {"name": "a" * MB + "\n", "address": "a@example.org"}}), ["mime.from.name", "control"]),
        (built(to=["b@example.org", "é" * 30 + "@example.org"]), ["mime.to[1]", "non-ASCII local part"]),
        (built(to={"name": "x", "address": "b@" + "é" * 63 + ".org"}), ["mime.to", "not valid IDNA"]),
        (built(attachments=[{"name": "a", "type": "x" * MB, "data": ""}]), ["attachments[0].type", "MIME type"]),
        (built(attachments=[{"name": "a", "type": "y" * MB + "/z", "data": ""}]), ["unknown top-level type 'yyy"]),
        (built(attachments=[{"name": "a", "type": "multipart/" + "z" * MB, "data": ""}]), ["structure"]),
        (built(attachments=[{"name": "a", "data": "!" * MB}]), ["attachments[0].data", "not valid base64"]),
        (built(attachments=[{"name": "a" * MB + NASTY, "type": "a/b", "data": ""}]), ["attachments[0].name"]),
        (built(headers={"X" * MB: 1}), ["mime.headers.'XXX", "must be a string"]),
        (built(headers={"X" * MB: "a\rb"}), ["mime.headers.'XXX", "control character"]),
        (built(headers={"X " * MB: "a"}), ["mime.headers", "is not a header field name"]),
        (built(headers={"X" * MB: "a"}), ["the 'XXX", "word longer than a line"]),
        (built(headers={"To": "<"}), ["mime.headers.To", "cannot be written as a To field"]),
        (built(headers={"Reply-To": ".:?:" + LONG}), ["mime.headers.Reply-To", "cannot be written as a Reply-To"]),
        (built(headers={"Message-ID": "é" * MB}), ["mime.headers.Message-ID", "non-ASCII"]),
    ],
)
def test_buildMime(check: Callable[[], bytes], says: list[str]) -> None:
    assertShort(refusal(check), *says)


# -- DKIM ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, says",
    [
        ({"domain": "a" * MB + NASTY}, ["dkim.domain", "is not a valid domain name"]),
        # an unknown key is kept, a bad value of a known one is not
        ({"domain": "example.com", "x" * MB: 1, "protocols": ["x" * MB]}, ["dkim.protocols", "'xxx"]),
        ({"domain": "example.com", "selector": NASTY + LONG}, ["dkim.selector", "DKIM selector", "'\\r\\n"]),
        ({"domain": "example.com", "selector": ["x"] * 3}, ["dkim.selector", "not a list of 3 items"]),
        ({"domain": "example.com", "headers": ["From", "a b" * MB]}, ["dkim.headers", "not a header field name"]),
        ({"domain": "example.com", "canonicalization": "x" * MB}, ["dkim.canonicalization", "simple or relaxed"]),
        ({"domain": "b" * 60 + ".example.com"}, ["no key for domain 'bbb"]),
    ],
)
def test_parseDKIM(value: dict[str, Any], says: list[str]) -> None:
    keys = DKIMKeys({"example.com": {"selector": "s", "key": _configuredKey()}})
    assertShort(refusal(lambda: parseDKIM(value, keys)), *says)


def _configuredKey() -> str:
    from helpers_dkim import RSA_KEY, pem

    return pem(RSA_KEY)


# -- SMTP: commands, connections, destinations ------------------------------------


def test_aLineBreakInAnEnvelope() -> None:
    """Checked when the message is read, and again before it goes on the wire."""
    connection = Connection()
    client = connection.introduce()
    failure = failureOf(client.rcptTo("a" * MB + "\r\n@example.com", ["ORCPT=rfc822;" + "b" * MB]))
    assert (failure.state, failure.result) == ("rcptto", "invalid")
    assertShort(failure.description, "the RCPT TO command 'RCPT TO:<aaa", "line break")


def test_aLongCommandIsLoggedAsAnExcerpt() -> None:
    connection = Connection()
    client = connection.introduce()
    client.rcptTo("a@example.com", ["ORCPT=rfc822;" + "b" * MB])
    (command,) = client._queue
    line = "RCPT TO:<a@example.com> ORCPT=rfc822;" + "b" * MB
    assert command.shown == "'" + line[:510] + f"'... ({len(line) - 510} more characters)"
    assert command.data == line.encode("ascii") + b"\r\n"


TIMEOUTS = SMTPTimeouts(connect=5)


def connectionFailure(**options: Any) -> AttemptFailed:
    opening = openConnection(MemoryReactorClock(), ehloName="client.test", timeouts=TIMEOUTS, **options)
    return SynchronousTestCase().failureResultOf(opening, AttemptFailed).value


def test_aSmarthostThatCannotBeAHostName() -> None:
    """
    A name IDNA cannot encode made C{HostnameEndpoint} fail with a bare
    C{ValueError} that quoted all of it (and no attempt result at all).
    """
    from twisted.internet import reactor

    for host in ("a" * MB, "exa mple.com", "-a.example.com"):
        opening = openConnection(reactor, host=host, port=25, ehloName="client.test", timeouts=TIMEOUTS)
        failure = SynchronousTestCase().failureResultOf(opening, AttemptFailed).value
        assert (failure.state, failure.result) == ("connect", "error")
        assert failure.description == (
            f"cannot connect to port 25 of {excerpt(host)}: it is not a valid host name; "
            f"correct the smarthost's hostname"
        )
        assertShort(failure.description)


def test_aLocalAddressThatIsNoAddress() -> None:
    failure = connectionFailure(host="192.0.2.7", port=25, bindAddress="x" * MB)
    assert (failure.state, failure.result) == ("bind", "error")
    assertShort(failure.description, "local address 'xxx", "192.0.2.7:25", "not an IP address")


def test_destinationsHostsAndRoutes() -> None:
    """Names built from a message's smarthost and ips, in logs and deferrals."""
    assert hostPort("mx.example.com", 25) == "mx.example.com:25"
    assert hostPort("2001:db8::1", 25) == "[2001:db8::1]:25"
    assertShort(hostPort("h" * MB + NASTY, 25), "'hhh", ":25")
    assertShort(str(Destination((("h" * MB, 25),))), "'hhh")
    assertShort(str(Destination((("h", 25),), NASTY + LONG)), "from '\\r\\n")
    assertShort(str(Destination((("h", 25),), None, "required", Credentials(NASTY + LONG, "p"))), "as '\\r\\n")
    assert str(Destination((("h", 25),), "192.0.2.1", None, Credentials("mailer", "p"))) == "h:25 from 192.0.2.1 as mailer"

    # parsing refuses such values now, briefly; names stay short even so
    for job in ({"smarthost": {"hostname": "h" * MB}}, {"ips": ["i" * MB]}):
        with pytest.raises(InvalidMessage) as refused:
            Message.fromObject({"recipient": "a@example.com", "mime": "x", **job})
        assertShort(refused.value.description, "'hhh" if "smarthost" in job else "ips holds 'iii")
    message = Message.fromObject(
        {"recipient": "a@example.com", "mime": "x", "smarthost": {"hostname": "h"}, "ips": ["192.0.2.1"]}
    )
    message.smarthost.hostname = "h" * MB
    message.ips = ["i" * MB]
    router = Router(smarthost=None, mxPort=25, nameservers=["127.0.0.1:53"], reactor=MemoryReactorClock())
    route = SynchronousTestCase().successResultOf(router.route(message))
    assertShort(route.name, "'hhh", ":25")
    name, _ = DeliveryPolicy(Config(), MemoryReactorClock(), lambda destination: 0).destinationOf(route)
    assertShort(name, "'hhh", "from 'iii")
