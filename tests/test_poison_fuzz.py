"""
Poison messages against a real broker (issue 14, part 3): whatever is
published to the outbox, every message is settled -- exactly one final
result, or a copy on the dead-letter queue -- no good job behind the bad
ones is held up or mangled, and the consumer's unacknowledged count returns
to 0.  L{MailerService} runs against the session's private RabbitMQ node
and a real SMTP server (aiosmtpd in its own process), as in
C{test_end_to_end.py}; C{test_outbox_settling.py} has the same paths with
fakes.

How hypothesis runs against the reactor
=======================================

pytest-twisted runs the reactor in a greenlet, and runs every test function
in that greenlet too: a test may not block, so C{@given} cannot wrap a test
that waits for the broker, and hypothesis cannot drive an C{async} test
body.  So L{test_every_message_is_settled_whatever_it_holds} is an
C{async} test that starts one service and then runs the hypothesis engine
in a thread of the reactor's pool (C{deferToThread}) on an inner function
decorated with C{@given}.  Each example is a I{batch} of messages (good
jobs mixed with poison); the inner function hands it to the reactor with
C{blockingCallFromThread}, which publishes it, waits until every message is
accounted for and checks it, while the engine's thread waits.  That is
ordinary property-based testing -- generation, explicit examples, a
falsifying example printed on failure, shrinking when asked for -- with one
service and one broker for the whole run: an example costs a round trip
through the broker, not a service start.

- Reproducible: C{derandomize=True} (the seed comes from the test's code)
  and no example database: every run publishes the same batches.
- Bounded: L{EXAMPLES} (100) generated batches of 11 to 39 messages, plus
  two explicit ones (the wrong-type matrix, 377 messages, and the edges of
  every limit): about 2,100 messages in about 7 s; the whole file takes
  about 20 s with the broker's start.  Shrinking is off, since each step
  is a batch through the broker and a failing batch is printed whole, with
  what went wrong for each message; C{MQTWIST_FUZZ_SHRINK=1} turns it on,
  C{MQTWIST_FUZZ_EXAMPLES=N} sets the number of batches.
- Small limits: the service runs with C{maxJobItems}, C{maxJobString} and
  C{maxJobBytes} lowered (L{LIMITS}), so that "wide", "long" and "huge"
  inputs past them cost kilobytes, not megabytes.

What a batch holds, and what is checked for each kind
=====================================================

Each message carries a marker that its result gives back: an object gets
an C{id} (unique over the whole run, assigned when it is published, so
that replays of an example never collide) written first in its text, so
that the id is also at the start of the C{input} of a result made from the
raw text; raw data is matched by its C{input} (the text, cut after
C{maxJobString} characters).

- C{good}: a valid job with a unique C{Message-ID}, a body with bare CR,
  bare LF, dot lines, 8-bit text, tabs, form feeds, U+2028..., and copied
  properties with every kind of JSON value (NUL, CR/LF, surrogate pairs as
  escapes or UTF-8, big numbers, nesting) and valid optional properties:
  delivered once, byte-exact (line ends made CRLF), and exactly one
  C{accepted} result that echoes the job as it arrived (less C{mime}).
- C{wrong}: a valid job with one known property given a value that is
  wrong (every type that property does not take, and bad values of the
  right type): exactly one C{process}/C{invalid} result naming it.
- C{matrix} (an explicit example): every known property with each of a
  dozen values of every JSON type: exactly one final result, which, when
  it is C{process}/C{invalid}, names the property.
- C{limit}: one limit broken -- nesting 33 to 5,000 levels (as text: past
  about 1,000 the JSON parser itself gives up), objects and lists wider
  than C{maxJobItems}, strings and keys longer than C{maxJobString}, more
  bytes than C{maxJobBytes}, a lone surrogate escape (C{"\\ud800"}) in a
  value, a key, the recipient, the C{mime}, a list, or as raw UTF-8 bytes
  (CESU): one C{process}/C{invalid} result naming that limit.
- C{raw}: arbitrary bytes (invalid UTF-8, BOMs, NULs, truncated JSON,
  C{NaN}) and arbitrary JSON values that are not objects: one
  C{process}/C{invalid} result whose C{input} is the text.
- C{any}: objects whose known properties hold arbitrary JSON values (lone
  surrogates included): exactly one final result or a dead letter.
- C{valid}: valid jobs with unusual valid properties (a C{mime} object, the
  job's own smarthost and source address, header edits, a past
  C{nextattempt}...): accepted and delivered once.

For every result: strict UTF-8 JSON (no C{NaN}/C{Infinity}), a final entry
last, a C{description} of at most L{MAX_DESCRIPTION} characters, an
C{input} of at most C{maxJobString}.  After all batches: nothing left in
the outbox, no unacknowledged outbox message (C{rabbitmqctl list_queues},
the service still running), no late or duplicated result, and the server
received exactly as many messages as there were C{accepted} results.

Nothing leaves the machine
==========================

The service's smarthost is the test server, which takes every message that
names no smarthost of its own.  Fuzzed C{smarthost} and C{ips} values are
drawn from strategies that are either invalid or loopback, the C{any}
strategy drops any routing property that would make a job valid and send
it elsewhere, and every body is parsed with mqtwist's own parser before it
is published (L{assertStaysLocal}): one that would be accepted with a
smarthost or source address other than 127.0.0.1, a TLS policy the test
server cannot meet, or a C{nextattempt} in the future fails the test
instead of being published.

C{queues} values name only this test's queues, or are invalid, or too long
(then the defaults apply): a result goes to whatever name a job gives, even
one refused as invalid (C{"queues": {"results": "a\\nb"}}), and the broker
drops it when no such queue exists; such names are fuzzed for the other
kinds only, so that each final result stays where the test can count it.

The reproductions
=================

After the fuzz test come plain tests: the issue's two reproductions (214
jobs nested 1,000 levels deep ahead of 50 good ones with a prefetch of 200;
a good job with C{"campaign": "\\ud800"}, then a restart), a 1 MB recipient
(a short description and log line), and the four bugs this file found when
it was written, each fixed since: a job routing its results into the
outbox, a description naming a path of long keys whole, 1e999 written back
as Infinity, and a job refused by a limit losing its id.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from helpers_endtoend import makeConfig as endToEndConfig
from helpers_endtoend import normalised
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from mqtwist.config import Config
from mqtwist.content.joblimits import JobLimits
from mqtwist.content.message import Message, ParseSettings
from mqtwist.errors import InvalidMessage
from mqtwist.service import MailerService
from mqtwist.smtp.tls import OPPORTUNISTIC, OPTIONAL

# -- the run ------------------------------------------------------------------

#: generated batches (the explicit examples come on top)
EXAMPLES = int(os.environ.get("MQTWIST_FUZZ_EXAMPLES", "100"))
#: whether a failing batch is shrunk (each step is a batch through the broker)
SHRINK = os.environ.get("MQTWIST_FUZZ_SHRINK") == "1"

#: the limits of the fuzzed service: small, so that past them is cheap
LIMITS = JobLimits(maxBytes=128 * 1024, maxDepth=32, maxItems=64, maxString=1024)
#: the longest description a result may have: a bad value is quoted by an
#: excerpt of 40 characters (up to 10 each when escaped, as C{\\U0010ffff}),
#: a JSON error by 200, a property by its path (kept short in the fuzz: see
#: the long path bug below)
MAX_DESCRIPTION = 1000
#: seconds a batch may take to be settled
SETTLE_TIMEOUT = 30.0

#: this module's queues, unique in the broker's session
RUN = uuid.uuid4().hex[:8]
PREFIX = f"poison-fuzz-{RUN}"
QUEUES = {kind: f"{PREFIX}.{kind}" for kind in ("outbox", "results", "success", "failure", "retry")}
DEAD = f"{PREFIX}.dead"
#: queues a job's C{queues} property may send its results to instead
ALT = {kind: f"{PREFIX}.alt-{kind}" for kind in ("results", "success", "failure", "retry")}

#: stands for the id of a job in its text until it is published
ID = "@@ID@@"
#: stands for the test server's port (a JSON string in the text, replaced
#: with the number)
PORT = "@@PORT@@"
#: the token that finds a job's mail among those the server received
TOKEN = re.compile(rb"fuzzid-([0-9a-f]{8}-\d+)@fuzz\.test")
#: the id at the start of the text of a job refused whole
ID_IN_INPUT = re.compile(r'\{"id": "([0-9a-f]{8}-\d+)"')

KNOWN = (
    "recipient", "envelope", "mime", "ips", "smarthost", "security", "dsn", "priority", "tags",
    "retries", "maxattempts", "maxdelivertime", "nextattempt", "queues", "results", "headers",
    "dkim", "keepmime",
)
#: keys a copied property may not have
#: (and the documented properties this test does not give wrong values yet)
RESERVED = frozenset(KNOWN) | {"id", "pool", "data", "inlinecss", "key", "force"}
QUEUE_KINDS = ("results", "success", "failure", "retry", "dsn")
EDIT_KINDS = ("remove", "replace", "update", "prepend", "append", "add")


def parseSettings(limits: JobLimits = LIMITS) -> ParseSettings:
    return ParseSettings(hostname="client.test", limits=limits)


# -- items --------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """
    One message of a batch, before it has its id.

    @ivar kind: what it is and so what is checked (see the module).
    @ivar template: its body, with L{ID} (and L{PORT}) to be replaced.
    @ivar prop: the property a C{wrong} or C{matrix} item gets wrong.
    @ivar needles: for a C{limit} item, what its description names (one
        of them).
    @ivar mime: for a C{good} item, its C{mime}, with L{ID}.
    """

    kind: str
    template: bytes
    prop: str | None = None
    needles: tuple[str, ...] = ()
    mime: str | None = None

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # how hypothesis shows a falsifying batch
        printer.text(repr(self))

    def __repr__(self) -> str:
        shown = self.template[:160]
        more = f"...({len(self.template)} bytes)" if len(self.template) > 160 else ""
        prop = f", prop={self.prop!r}" if self.prop else ""
        return f"Item({self.kind!r}{prop}, {shown!r}{more})"


@dataclass
class Published:
    ident: str
    item: Item
    body: bytes

    @property
    def kind(self) -> str:
        return self.item.kind


def js(value: Any, ascii: bool = True) -> str:
    """
    C{value} as JSON text: with C{ascii}, every non-ASCII character (and so
    a lone surrogate) as a C{\\u} escape; without, as itself (a lone
    surrogate then becomes invalid UTF-8 in L{objectText}).
    """
    return json.dumps(value, ensure_ascii=ascii)


def objectText(fields: list[tuple[str, str]], ascii: bool = True) -> bytes:
    """
    A job's text: C{"id"} first (so that a result quoting the text names
    it), then C{fields}, each a key and the JSON text of its value.
    """
    parts = [f'"id": "{ID}"'] + [f"{js(key, ascii)}: {text}" for key, text in fields]
    return ("{" + ", ".join(parts) + "}").encode("utf-8", "surrogatepass")


def isJSONObject(data: bytes) -> bool:
    """Whether C{data} is a JSON object by the outbox's strict rules."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict)


def _refuse(name: str) -> None:
    raise ValueError(name)


def rawKey(data: bytes) -> str:
    """The C{input} of the result of raw data: its text, cut."""
    return data.decode("utf-8", "replace")[: LIMITS.maxString]


def routesElsewhere(body: bytes) -> list[str]:
    """
    The properties that would make mqtwist, accepting C{body}, send it
    somewhere other than the test server, or wait with it: empty when the
    body is refused or harmless.
    """
    try:
        message = Message.fromJSON(body.replace(ID.encode(), b"x-1"), parseSettings())
    except InvalidMessage:
        return []
    except Exception:
        # a crash of the parser: the service must settle it; it sends nothing
        return []
    bad = []
    if message.smarthost is not None and message.smarthost.hostname != "127.0.0.1":
        bad.append("smarthost")
    if any(ip != "127.0.0.1" for ip in message.ips):
        bad.append("ips")
    if message.security not in (None, OPTIONAL, OPPORTUNISTIC):
        bad.append("security")
    if message.nextattempt is not None and message.nextattempt > time.time() - 60:
        bad.append("nextattempt")
    return bad


def assertStaysLocal(body: bytes) -> None:
    bad = routesElsewhere(body)
    assert not bad, f"the test would publish a job routed off the test server by {bad}: {body[:300]!r}"


# -- strategies ---------------------------------------------------------------

NASTY = [
    "\x00", "\r", "\n", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
    "\ufeff", "\ufffd", "\uffff", "\U0010ffff", "\U0001f600", '"', "\\", "'", "@", "<", ">", ".",
    "é", "\u0301",
]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\udc00\ud800", "\ud83d"]

# (hypothesis may draw a surrogate from st.characters() unless told not to)
cleanChar = st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(NASTY))
cleanText = st.text(cleanChar, max_size=24)
lone = st.sampled_from(SURROGATES)
surrogateText = st.builds(lambda a, s, b: a + s + b, cleanText, lone, cleanText)
anyText = st.one_of(cleanText, cleanText, surrogateText)
alnum = st.text(st.sampled_from("abcxyz019-_."), max_size=6)
floats = st.floats(allow_nan=False, allow_infinity=False)
bigInts = st.integers(min_value=-(2**80), max_value=2**80)


def jsonValues(
    text: st.SearchStrategy[str], leaves: int = 12, keys: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), bigInts, floats, text)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text if keys is None else keys, inner, max_size=4),
        max_leaves=leaves,
    )


#: keys inside copied values (a description names a property by its
#: path, cut short)
KEY_SIZE = 24
cleanValues = jsonValues(cleanText, 10, st.text(cleanChar, max_size=KEY_SIZE))
anyValues = jsonValues(anyText, 12, st.one_of(st.text(cleanChar, max_size=KEY_SIZE), lone))
small = jsonValues(st.text(cleanChar, max_size=5), 5)
copiedKeys = st.text(cleanChar, min_size=1, max_size=KEY_SIZE).filter(lambda key: key not in RESERVED)
cleanExtras = st.dictionaries(copiedKeys, cleanValues, max_size=4)

# values that are not of one JSON type (None is left out: it means "absent"
# for most properties; the strategies add it where it is wrong)
lists = st.lists(small, max_size=3)
dicts = st.dictionaries(st.text(cleanChar, max_size=5), small, max_size=3)
nonStr = st.one_of(st.booleans(), st.integers(), floats, lists, dicts)
nonDict = st.one_of(st.booleans(), st.integers(), floats, cleanText, lists)
nonList = st.one_of(st.booleans(), st.integers(), floats, cleanText, dicts)
nonInt = st.one_of(st.booleans(), floats, cleanText, lists, dicts)
control = st.sampled_from(["\x00", "\r", "\n", "\r\n", "\x01", "\x1b", "\x1f", "\x7f", "\t"])
withControl = st.builds(lambda a, c, b: a + c + b, alnum, control, alnum)
notAt = st.text(cleanChar.filter(lambda c: c != "@"), max_size=20)
badAddress = st.one_of(
    notAt,
    st.builds(lambda c: f"a{c}b@example.com", control),
    st.sampled_from([
        "@example.com", "a@", "@", "<a@example.com>", "a b@example.com", '"a"@example.com',
        ".a@example.com", "a.@example.com", "a..b@example.com", "a@b@c", "a" * 65 + "@example.com",
        "a@" + "b" * 300, "a@example.com>", "a(b)@example.com", "a\\b@example.com",
    ]),
)
badPort: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([0, -1, 65536, 10**9, True, False, 1.5, "", "abc", "0", "65536", "25 ", None, [], {}]),
    st.integers(max_value=0),
    st.integers(min_value=65536),
)
badHeaderName = st.one_of(
    st.sampled_from(["", "Bad Name", "X:Y", "X\u00e9", "X-\x00"]),
    withControl,
    nonStr,
)
queueKind = st.sampled_from(QUEUE_KINDS)
listWith = lambda good, bad: st.builds(  # noqa: E731
    lambda head, wrong, tail: head + [wrong] + tail, st.lists(good, max_size=2), bad, st.lists(good, max_size=2)
)

#: for each known property, values that make a job invalid because of it
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "recipient": st.one_of(st.none(), nonStr, badAddress),
    "envelope": st.one_of(nonStr, badAddress.filter(bool)),
    "mime": st.one_of(
        st.none(), st.booleans(), st.integers(), floats, lists,
        st.just({}),
        st.builds(lambda t: {"text": t}, cleanText),  # no From
        st.builds(lambda v: {"text": "x", "from": v}, st.one_of(nonStr, badAddress)),
        st.builds(lambda v: {"text": v, "from": "a@example.com"}, nonStr),
        st.builds(lambda u: {"text": "x", "from": "a@example.com", "attachments": [{"url": u}]}, cleanText),
        st.just({"text": "x", "from": "a@example.com", "content": {"blocks": []}}),
        st.builds(lambda v: {"text": "x", "from": "a@example.com", "subject": v}, st.one_of(withControl, nonStr)),
        st.builds(lambda v: {"text": "x", "from": "a@example.com", "attachments": v}, nonList),
        st.builds(lambda v: {"text": "x", "from": "a@example.com", "attachments": [v]}, nonDict),
    ),
    "ips": st.one_of(
        st.none(), st.booleans(), st.integers(), floats, cleanText, dicts,
        listWith(st.just("127.0.0.1"), st.one_of(st.none(), nonStr)),
        listWith(st.just("127.0.0.1"), withControl),
    ),
    "smarthost": st.one_of(
        st.booleans(), st.integers(), floats, cleanText, lists,
        st.just({}),
        st.builds(lambda h: {"hostname": h, "port": 1}, st.one_of(st.none(), nonStr, st.just(""), withControl)),
        st.builds(lambda p: {"hostname": "127.0.0.1", "port": p}, badPort),
        st.builds(lambda k, v: {"hostname": "127.0.0.1", "port": 1, k: v},
                  st.sampled_from(["username", "password"]), nonStr),
    ),
    "security": st.one_of(nonStr, cleanText.filter(lambda s: s not in ("optional", "opportunistic", "required", "verified"))),
    "dsn": st.one_of(
        # (a key of its own is no longer wrong: it is kept, as MailerQ keeps it)
        st.booleans(), st.integers(), floats, cleanText, lists,
        st.builds(lambda v: {"notify": v}, st.one_of(
            st.sampled_from(["", " ", ",", "SOMETIMES", "NEVER,SUCCESS", ["NEVER", "DELAY"], [], [1], [None]]),
            st.booleans(), st.integers(), dicts)),
        st.builds(lambda v: {"ret": v}, st.sampled_from(["", "FULL ", "BOTH", 1, [], {}, True])),
        st.builds(lambda k, v: {k: v}, st.sampled_from(["orcpt", "envid"]),
                  st.one_of(st.just(""), nonStr, withControl)),
        st.just({"envid": "e" * 101}),
    ),
    "priority": st.one_of(st.booleans(), st.integers(max_value=-1), st.integers(min_value=256), floats,
                          cleanText, lists, dicts),
    "tags": st.one_of(st.none(), st.booleans(), st.integers(), floats, cleanText, dicts,
                      listWith(cleanText, st.one_of(st.none(), nonStr))),
    "retries": st.one_of(
        st.booleans(), st.integers(), floats, cleanText, dicts, st.just([]),
        listWith(st.integers(0, 5), st.one_of(st.integers(max_value=-1), st.booleans(), floats,
                                               cleanText, st.none(), lists)),
    ),
    "maxattempts": st.one_of(st.integers(max_value=0), nonInt),
    "maxdelivertime": st.one_of(
        st.booleans(), st.integers(max_value=0), st.floats(max_value=0, allow_nan=False, allow_infinity=False), lists, dicts,
        cleanText.map(lambda s: "x" + s),
    ),
    "nextattempt": st.one_of(
        st.booleans(), st.integers(), floats, cleanText, lists, st.just({}),
        st.builds(lambda t: {"time": t}, st.one_of(st.none(), nonStr, cleanText.map(lambda s: "x" + s))),
    ),
    "queues": st.one_of(
        st.none(), st.booleans(), st.integers(), floats, cleanText, lists,
        st.builds(lambda k, v: {k: v}, queueKind, nonStr),
        st.builds(lambda k: {k: "q" * 256}, queueKind),
        # a name with a control character: only where it cannot take the
        # final result away (see the module's notes on queues)
        st.builds(lambda k, v: {k: v}, st.sampled_from(["success", "failure", "retry"]), withControl),
    ),
    "results": st.one_of(st.none(), st.booleans(), st.integers(), floats, cleanText, dicts,
                         listWith(st.just({}), st.one_of(st.none(), nonDict))),
    "headers": st.one_of(
        st.booleans(), st.integers(), floats, cleanText, lists,
        # a key that is not an edit is ignored, a bad edit beside it is not
        st.builds(lambda k: {k: {}, "remove": 5}, st.text(cleanChar, min_size=1, max_size=8).filter(lambda k: k not in EDIT_KINDS)),
        st.builds(lambda v: {"remove": v}, st.one_of(st.none(), st.booleans(), st.integers(), floats, dicts)),
        st.builds(lambda n: {"remove": n}, badHeaderName.filter(lambda n: isinstance(n, str))),
        st.builds(lambda n: {"remove": [n]}, badHeaderName),
        st.builds(lambda k, v: {k: v}, st.sampled_from(EDIT_KINDS[1:]), st.one_of(st.none(), nonDict)),
        st.builds(lambda k, n: {k: {n: "v"}}, st.sampled_from(EDIT_KINDS[1:]),
                  badHeaderName.filter(lambda n: isinstance(n, str))),
        st.builds(lambda k, v: {k: {"X-Fuzz": v}}, st.sampled_from(EDIT_KINDS[1:]),
                  st.one_of(st.none(), st.booleans(), st.integers(), floats, dicts, st.just([]), withControl)),
    ),
    "dkim": st.one_of(
        st.just([]), st.booleans(), st.integers(), floats, cleanText, st.just({}),
        # a key that means nothing is kept, a bad value beside it is not
        st.builds(lambda k, v: {"domain": "example.com", k: 1, "report": v}, st.text(cleanChar, min_size=1, max_size=8).filter(
            lambda k: k not in ("domain", "selector", "key", "headers", "canonicalization", "expire", "report", "protocols")),
            st.one_of(st.integers(), cleanText, lists, dicts)),
        st.builds(lambda v: {"domain": "example.com", "protocols": v},
                  st.one_of(st.just([]), st.integers(), cleanText, st.lists(cleanText.filter(lambda t: t.lower() not in ("dkim", "arc")), min_size=1, max_size=2))),
        st.just({"domain": "example.com"}),
        st.builds(lambda d: {"domain": d}, st.one_of(st.none(), nonStr, withControl, st.just(""))),
        st.just({"domain": "example.com", "selector": "s", "key": 5}),
        st.just({"domain": "example.com", "selector": "s", "key": "not a PEM key"}),
        st.just({"domain": "example.com", "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
        st.lists(nonDict, min_size=1, max_size=2),
    ),
    "keepmime": st.one_of(st.none(), st.integers(), floats, cleanText, lists, dicts),
}
assert set(WRONG) == set(KNOWN)

#: a smarthost that is valid and local: the test server itself
LOCAL_SMARTHOST = {"hostname": "127.0.0.1", "port": PORT}

#: for the C{any} items: properties whose arbitrary values could route a
#: job elsewhere get wrong or local ones
ANY = {prop: anyValues for prop in KNOWN}
ANY.update(
    smarthost=st.one_of(WRONG["smarthost"], st.just(LOCAL_SMARTHOST), st.none()),
    ips=st.one_of(WRONG["ips"], st.just(["127.0.0.1"]), st.just([])),
    security=st.one_of(WRONG["security"], st.sampled_from([OPTIONAL, OPPORTUNISTIC, None])),
    queues=st.one_of(WRONG["queues"], st.just({"results": ALT["results"]})),
)


def base(ident: str = ID, avoid: str | None = None) -> dict[str, Any]:
    fields = {
        "envelope": "sender@example.org",
        "recipient": f"fuzzid-{ident}@example.com",
        "mime": f"Message-ID: <fuzzid-{ident}@fuzz.test>\r\nSubject: x\r\n\r\nx\r\n",
    }
    if avoid is not None:
        fields.pop(avoid, None)
    return fields


@st.composite
def wrongJobs(draw: Any) -> Item:
    prop = draw(st.sampled_from(KNOWN))
    fields = dict(base(avoid=prop), **{prop: draw(WRONG[prop])})
    fields.update(draw(cleanExtras))
    order = draw(st.permutations(list(fields)))
    ascii = draw(st.booleans())
    template = objectText([(key, js(fields[key], ascii)) for key in order], ascii)
    return Item("wrong", template, prop=prop)


@st.composite
def anyJobs(draw: Any) -> Item:
    props = draw(st.lists(st.sampled_from(KNOWN), min_size=1, max_size=len(KNOWN), unique=True))
    fields = {prop: draw(ANY[prop]) for prop in props}
    fields.update(draw(st.dictionaries(copiedKeys, anyValues, max_size=3)))
    ascii = draw(st.booleans())
    template = objectText([(key, js(value, ascii)) for key, value in fields.items()], ascii)
    if draw(st.booleans()):
        # a number too big for a float (test_a_number_too_big_for_a_float_...)
        overflow = draw(st.sampled_from(["1e999", "-1e999", "[1e400]", '{"n": 2e308}']))
        template = template[:-1] + b', "overflow": ' + overflow.encode() + b"}"
    for _ in range(3):
        # a job that mqtwist would accept and send elsewhere loses the
        # properties that would do it (this does not change the rest)
        bad = routesElsewhere(template.replace(js(PORT).encode(), b"2525"))
        if not bad:
            break
        fields = {key: value for key, value in fields.items() if key not in bad}
        template = objectText([(key, js(value, ascii)) for key, value in fields.items()], ascii)
    return Item("any", template)


bodyChar = st.one_of(
    st.characters(exclude_categories=["Cs", "Cc"]),
    st.sampled_from(["\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u2028", "\u2029", "\ufeff", ".", " "]),
)
lineEnd = st.sampled_from(["\r\n", "\n", "\r"])
bodyLine = st.one_of(
    st.text(bodyChar, max_size=120),
    st.sampled_from([".", "..", ".x", "..x", "", " ", "From x", "-- ", "\x0c"]),
)


@st.composite
def bodies(draw: Any) -> str:
    if draw(st.integers(0, 15)) == 0:
        # a big one, well within maxJobBytes
        lines = ["z" * 76 + str(n % 10) for n in range(draw(st.integers(100, 1200)))]
        ends = ["\r\n"] * len(lines)
    else:
        lines = draw(st.lists(bodyLine, max_size=12))
        ends = [draw(lineEnd) for _ in lines]
    text = "".join(line + end for line, end in zip(lines, ends))
    if lines and draw(st.booleans()):
        text = text[: -len(ends[-1])]  # no line end at the very end
    return text


goodOptions = st.fixed_dictionaries(
    {},
    optional={
        "envelope": st.sampled_from(["", None, "sender@example.org", "b.o+unce@example.org"]),
        "tags": st.lists(cleanText, max_size=4),
        "priority": st.integers(0, 255),
        "keepmime": st.booleans(),
        "queues": st.fixed_dictionaries({}, optional={
            "results": st.sampled_from([ALT["results"], QUEUES["results"]]),
            "success": st.sampled_from([ALT["success"], None, ""]),
            "failure": st.sampled_from([ALT["failure"], None]),
            "retry": st.sampled_from([ALT["retry"], None]),
        }),
        "dsn": st.just({"notify": ["SUCCESS", "FAILURE"], "ret": "HDRS", "envid": "fuzz"}),
        "maxdelivertime": st.integers(3600, 10**7),
        "maxattempts": st.integers(1, 5),
        "retries": st.lists(st.integers(0, 3), min_size=1, max_size=3),
        "results": st.just([]),
        "nextattempt": st.just({"time": "2001-02-03 04:05:06"}),
    },
)


@st.composite
def goodJobs(draw: Any) -> Item:
    subject = draw(st.text(bodyChar, max_size=40))
    mime = f"Message-ID: <fuzzid-{ID}@fuzz.test>\r\nSubject: {subject}\r\n\r\n" + draw(bodies())
    fields = dict(base(), mime=mime)
    fields.update(draw(goodOptions))
    fields.update(draw(cleanExtras))
    order = draw(st.permutations(list(fields)))
    ascii = draw(st.booleans())
    template = objectText([(key, js(fields[key], ascii)) for key in order], ascii)
    return Item("good", template, mime=mime)


@st.composite
def validJobs(draw: Any) -> Item:
    """Valid jobs with the unusual valid properties a good job has not."""
    fields: dict[str, Any] = base()
    variant = draw(st.sampled_from(["mime object", "smarthost", "ips", "headers", "security", "all"]))
    if variant in ("mime object", "all"):
        fields["mime"] = {
            "from": {"name": "Sender \u00e9", "address": "sender@example.org"},
            "to": "fuzz@example.com",
            "subject": draw(st.text(bodyChar.filter(lambda c: c >= " " and c not in "\x7f\x85\u2028\u2029"), max_size=30)),
            "text": draw(st.text(bodyChar, max_size=200)),
            "headers": {"X-Fuzz-Id": f"fuzzid-{ID}@fuzz.test"},
        }
    if variant in ("smarthost", "all"):
        fields["smarthost"] = LOCAL_SMARTHOST
    if variant in ("ips", "all"):
        fields["ips"] = ["127.0.0.1"]
    if variant in ("headers", "all"):
        fields["headers"] = {"append": {"X-Fuzz": draw(st.text(st.sampled_from("abc é"), max_size=10))},
                             "remove": ["X-Nothing"]}
    if variant in ("security", "all"):
        fields["security"] = draw(st.sampled_from([OPTIONAL, OPPORTUNISTIC]))
    template = objectText([(key, js(value)) for key, value in fields.items()])
    return Item("valid", template)


def nested(depth: int, shape: str) -> str:
    """A JSON value nested C{depth} levels deep, as text (json.dumps recurses)."""
    if shape == "list":
        return "[" * depth + "]" * depth
    if shape == "object":
        return '{"a": ' * depth + "0" + "}" * depth
    opens = ['{"k": ' if level % 2 else "[" for level in range(depth)]
    closes = ["}" if level % 2 else "]" for level in reversed(range(depth))]
    return "".join(opens) + "1" + "".join(closes)


def limitItem(fields: list[tuple[str, str]], needles: tuple[str, ...], ascii: bool = True) -> Item:
    return Item("limit", objectText(fields, ascii), needles=needles)


def baseFields(avoid: str | None = None) -> list[tuple[str, str]]:
    return [(key, js(value)) for key, value in base(avoid=avoid).items()]


DEPTH = ("--max-job-depth",)
ITEMS = ("--max-job-items",)
STRING = ("--max-job-string",)
BYTES = ("--max-job-bytes",)
SURROGATE = ("lone surrogate",)
NOT_UTF8 = ("not UTF-8",)


@st.composite
def limitJobs(draw: Any) -> Item:
    kinds = ["deep", "wide list", "wide object", "wide job", "long string", "long key", "huge", "surrogate",
             "surrogate bytes"]
    kind = draw(st.sampled_from(kinds + ["long path"]))
    where = draw(st.sampled_from(["x", "campaign", "headers", "tags", "mime", "results", "dkim"]))
    if kind == "deep":
        depth = draw(st.one_of(st.integers(33, 120), st.sampled_from([500, 990, 999, 1000, 1001, 1200, 3000, 5000])))
        shape = draw(st.sampled_from(["list", "object", "mixed"]))
        return limitItem(baseFields(where) + [(where, nested(depth, shape))], DEPTH)
    if kind == "wide list":
        count = draw(st.integers(LIMITS.maxItems + 1, 4 * LIMITS.maxItems))
        item = draw(st.sampled_from(["0", '"t"', "{}", "null"]))
        inner = "[" + ", ".join([item] * count) + "]"
        if draw(st.booleans()):
            inner = '{"deeper": [1, ' + inner + "]}"
        return limitItem(baseFields(where) + [(where, inner)], ITEMS)
    if kind == "wide object":
        count = draw(st.integers(LIMITS.maxItems + 1, 4 * LIMITS.maxItems))
        inner = "{" + ", ".join(f'"k{n}": {n}' for n in range(count)) + "}"
        return limitItem(baseFields(where) + [(where, inner)], ITEMS)
    if kind == "wide job":
        count = draw(st.integers(LIMITS.maxItems - 3, 3 * LIMITS.maxItems))
        return limitItem(baseFields() + [(f"k{n}", str(n)) for n in range(count)], ITEMS)
    if kind == "long string":
        length = draw(st.integers(LIMITS.maxString + 1, 4 * LIMITS.maxString))
        char = draw(cleanChar.filter(lambda c: len(c) == 1))
        prop = draw(st.sampled_from(["x", "campaign", "recipient", "envelope", "tags", "security", "headers"]))
        value = char * length
        if prop == "recipient":
            value = value[:-12] + "@example.com"
        text = js([value]) if prop == "tags" else js({"append": {"X-A": value}}) if prop == "headers" else js(value)
        return limitItem(baseFields(prop) + [(prop, text)], STRING)
    if kind == "long key":
        length = draw(st.integers(LIMITS.maxString + 1, 4 * LIMITS.maxString))
        key = draw(st.sampled_from("kéx\x00")) * length
        if draw(st.booleans()):
            return limitItem(baseFields() + [(key, "1")], STRING)
        return limitItem(baseFields(where) + [(where, js({key: 1}))], STRING)
    if kind == "long path":
        # keys as long as allowed, nested until a limit (test_a_long_property_path_...)
        key = "p" * LIMITS.maxString
        levels = draw(st.integers(2, LIMITS.maxDepth + 1))
        # the job is level 1: the innermost object is at levels + 1
        bad, needles = ('"\\ud800"', SURROGATE) if levels < LIMITS.maxDepth else ("1", DEPTH)
        value = f'{{"{key}": ' * levels + bad + "}" * levels
        return limitItem(baseFields() + [("campaign", value)], needles)
    if kind == "huge":
        size = draw(st.integers(LIMITS.maxBytes + 1, LIMITS.maxBytes + 64 * 1024))
        where = draw(st.sampled_from(["mime", "x", "recipient"]))
        line = "y" * 78 + "\r\n"
        value = "Subject: huge\r\n\r\n" + line * (size // len(line) + 1)
        return limitItem(baseFields(where) + [(where, js(value))], BYTES)
    # a lone surrogate
    value = draw(surrogateText)
    prop = draw(st.sampled_from(["campaign", "x", "key", "recipient", "envelope", "mime", "tags", "list",
                                 "headers", "security"]))
    if prop == "key":
        return _surrogateItem(baseFields() + [(value, "1")], kind)
    if prop == "recipient":
        value = "a" + value.replace("@", "") + "@example.com"
    text = {
        "tags": lambda: js(["ok", value]),
        "list": lambda: js([[1, {"deep": value}]]),
        "headers": lambda: js({"append": {"X-A": value}}),
    }.get(prop, lambda: js(value))()
    where = "x" if prop == "list" else prop
    if kind == "surrogate bytes":
        text = js(json.loads(text), ascii=False)
    return _surrogateItem(baseFields(where) + [(where, text)], kind)


def _surrogateItem(fields: list[tuple[str, str]], kind: str) -> Item:
    if kind == "surrogate":
        # every key and value is ASCII JSON text: the surrogates are escapes
        return limitItem(fields, SURROGATE)
    # the surrogate as the three bytes UTF-8 forbids (ED A0 80...)
    return Item("limit", objectText(fields, ascii=False), needles=NOT_UTF8)


RAW_CRAFTED = [
    b"", b" ", b"\n", b"null", b"true", b"0", b"-0", b"1e999", b'"x"', b"[]", b"[{}]", b'"{}"',
    b"NaN", b"-Infinity", b"[NaN]", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"{",
    b"}", b"{}{}", b"[] []", b'{"a": 1}x', b'{"id": 1', b'{"recipient": "a@example.com", "mime": "x"',
    b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"\xfe\xff\x00{\x00}", b"\x00", b"\x00" * 64,
    b"\xed\xa0\x80", b"\xed\xb0\x80", b'"\\ud800"', b'["\\udc00\\ud800"]', b'{"a": "\\ud800"',
    b"\xc0\xaf", b"\xc0\x80", b"\xf5\x80\x80\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82",
    b"\x1b[31mred\x1b[0m", b"\r\n\r\n.\r\n", b"QUIT\r\n", b"{'a': 1}", b'{"a" 1}', b'{"a": 01}',
    b'{"a": 1,}', b"[1,]", b'{"a": .5}', b'{"a": +1}', b'{"a": 0x10}', b'{"a": "\x00"}',
    b'{"a": "\\x41"}', b'{"a": "\\u12"}', b'{"a": "\t"}', b"1" * 5000, b"[" + b"1," * 100 + b"]",
    b'{"id": "' + b"x" * 3000 + b'"',
]


@st.composite
def rawData(draw: Any) -> Item:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        data = draw(st.sampled_from(RAW_CRAFTED))
    elif choice == 1:
        data = draw(st.binary(max_size=300))
    elif choice == 2:
        value = draw(anyValues.filter(lambda v: not isinstance(v, dict)))
        data = js(value, draw(st.booleans())).encode("utf-8", "surrogatepass")
    elif choice == 3:
        data = nested(draw(st.sampled_from([33, 999, 1000, 1001, 5000])), draw(st.sampled_from(["list", "mixed"]))).encode()
    elif choice == 4:
        # a string longer than maxJobString, or than maxJobBytes
        size = draw(st.sampled_from([LIMITS.maxString + 1, 4 * LIMITS.maxString + 3, LIMITS.maxBytes + 1]))
        data = js(draw(cleanChar) * size).encode()
    else:
        # valid JSON object text with garbage after it, or cut short
        text = objectText(baseFields()).replace(ID.encode(), b"x")
        cut = draw(st.integers(1, len(text) - 1))
        data = text[:cut] if draw(st.booleans()) else text + draw(st.binary(min_size=1, max_size=20))
    if isJSONObject(data):
        # not raw after all: an object without its marker
        data = b"[" + data + b"]"
    return Item("raw", data)


#: the kinds of a generated batch, each with how many of them it has
BATCH_KINDS = [
    (goodJobs(), 2, 8),
    (wrongJobs(), 2, 8),
    (anyJobs(), 2, 6),
    (limitJobs(), 2, 8),
    (rawData(), 2, 6),
    (validJobs(), 1, 3),
]


@st.composite
def batches(draw: Any) -> list[Item]:
    """Some of every kind (11 to 39 messages), in a random order."""
    items = []
    for strategy, least, most in BATCH_KINDS:
        items += draw(st.lists(strategy, min_size=least, max_size=most))
    return draw(st.permutations(items))


# -- explicit examples ----------------------------------------------------------

#: a value of every JSON type, and some of each that are special
MATRIX_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 10**20, -(10**20), 5e-324, "", "x", "\x00", "a\r\nb", [], [1], ["x"],
    [None], [[]], {}, {"a": 1}, {"": None},
]


def matrixBatch() -> list[Item]:
    """Every known property with each of L{MATRIX_VALUES}."""
    items = []
    for prop in KNOWN:
        for value in MATRIX_VALUES:
            fields = dict(base(avoid=prop), **{prop: value})
            template = objectText([(key, js(v)) for key, v in fields.items()])
            if routesElsewhere(template):
                continue
            items.append(Item("matrix", template, prop=prop))
    return items


def edgesBatch() -> list[Item]:
    """One of every limit, at and around its edge, and the issue's cases."""
    items = []
    for depth in (33, 999, 1000, 1001, 5000):
        items.append(limitItem(baseFields() + [("x", nested(depth, "list"))], DEPTH))
    items.append(limitItem(baseFields() + [("x", nested(31, "list"))], ()))
    items.append(limitItem(baseFields() + [("campaign", '"\\ud800"')], SURROGATE))
    items.append(limitItem(baseFields() + [("campaign", '"\\ud83d\\ude00\\udc00"')], SURROGATE))
    items.append(limitItem(baseFields() + [("\udfff", "1")], SURROGATE))
    items.append(limitItem(baseFields() + [("x", js(["t"] * (LIMITS.maxItems + 1)))], ITEMS))
    items.append(limitItem(baseFields() + [("x", js("s" * (LIMITS.maxString + 1)))], STRING))
    items.append(limitItem(baseFields("recipient") + [("recipient", js("r" * 1_000_000 + "@example.com"))], BYTES))
    items.append(Item("raw", b"\xed\xa0\x80"))
    # within the limits, just: good jobs
    good = []
    for name, value in [
        ("x", js(["t"] * LIMITS.maxItems)),
        ("campaign", js("s" * LIMITS.maxString)),
        ("pair", '"\\ud83d\\ude00"'),
        ("deep", nested(30, "mixed")),
    ]:
        mime = f"Message-ID: <fuzzid-{ID}@fuzz.test>\r\nSubject: edge {name}\r\n\r\nedge\r\n"
        fields = [(key, js(value)) for key, value in dict(base(), mime=mime).items()] + [(name, value)]
        good.append(Item("good", objectText(fields), mime=mime))
    return good + items


# -- the service and the accounting ----------------------------------------------


def makeConfig(rabbitmq: Any, server: Any, queues: dict[str, Any], **settings: Any) -> Config:
    # soft failures come back within the test: one second between attempts
    return endToEndConfig(rabbitmq, server, queues, retries=[1], **settings)


async def queueCounts(node: Any, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of C{queue}, as the broker counts them."""
    out = await node.rabbitmqctl(
        "list_queues", "--quiet", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"
    )
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"rabbitmqctl list_queues does not list {queue!r}: {out!r}")


async def assertOutboxSettled(node: Any, queue: str, timeout: float = 15.0) -> None:
    """Wait until the outbox has no message, ready or unacknowledged."""
    deadline = reactor.seconds() + timeout
    while True:
        counts = await queueCounts(node, queue)
        if counts == (0, 0):
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"outbox {queue!r}: {counts[0]} ready, {counts[1]} unacknowledged messages")
        await deferLater(reactor, 0.2, lambda: None)


async def gather(amqp: Any, queues: list[str], count: int, timeout: float) -> dict[str, list[Any]]:
    """What arrives in C{queues} until there are C{count} messages in all."""
    got: dict[str, list[Any]] = {queue: [] for queue in queues}
    deadline = reactor.seconds() + timeout
    while sum(map(len, got.values())) < count and reactor.seconds() < deadline:
        for queue in queues:
            got[queue] += await amqp.fetch(queue)
        if sum(map(len, got.values())) < count:
            await deferLater(reactor, 0.02, lambda: None)
    return got


def readResult(body: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """
    A result, and what is wrong with it: it must be strict UTF-8 and strict
    JSON (no C{NaN}, no C{Infinity}), an object with a final entry last, a
    short description and a short C{input}.

    @return: the object (C{None} when it cannot be read as one) and the
        complaints.
    """
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=lambda name: _fail(f"{name} in a result"))
    except (ValueError, AssertionError) as e:
        return None, [f"not strict UTF-8 JSON ({e})"]
    entries = obj.get("results") if isinstance(obj, dict) else None
    if not (isinstance(entries, list) and entries and isinstance(entries[-1], dict)
            and {"state", "result", "time"} <= set(entries[-1])):
        return None, ["not a result object with a final entry last"]
    complaints = []
    description = entries[-1].get("description", "")
    if len(description) > MAX_DESCRIPTION:
        complaints.append(f"a description of {len(description)} characters: {description[:200]!r}...")
    if len(obj.get("input", "")) > LIMITS.maxString:
        complaints.append(f"an input of {len(obj['input'])} characters")
    return obj, complaints


def _fail(message: str) -> None:
    raise AssertionError(message)


@dataclass
class Fuzz:
    """One service run, fed batches; counts what the whole run saw."""

    amqp: Any
    server: Any
    node: Any
    idents: Iterator = field(default_factory=lambda: (f"{RUN}-{n}" for n in itertools.count(1)))
    #: how many messages of each kind were published
    published: Counter = field(default_factory=Counter)
    #: (kind, outcome) of every message
    outcomes: Counter = field(default_factory=Counter)
    accepted: int = 0
    deadLetters: int = 0
    batches: int = 0

    def body(self, item: Item, ident: str) -> bytes:
        body = item.template.replace(ID.encode(), ident.encode())
        return body.replace(js(PORT).encode(), str(self.server.port).encode())

    async def run(self, batch: list[Item]) -> None:
        published = [Published(ident, item, self.body(item, ident)) for item, ident in zip(batch, self.idents)]
        for p in published:
            assertStaysLocal(p.body)
        self.batches += 1
        self.published.update(p.kind for p in published)
        await gatherResults([self.amqp.publish(QUEUES["outbox"], p.body) for p in published])
        resultQueues = [QUEUES["results"], ALT["results"], DEAD]
        got = await gather(self.amqp, resultQueues, len(published), SETTLE_TIMEOUT)
        problems = self.account(published, got)
        if not problems:
            problems = await self.checkDeliveries(published, got)
        if problems:
            raise AssertionError(
                f"{len(problems)} problems in a batch of {len(published)} messages "
                f"({dict(Counter(p.kind for p in published))}):\n" + "\n".join(problems[:40])
            )

    def account(self, published: list[Published], got: dict[str, list[Any]]) -> list[str]:
        problems: list[str] = []
        byIdent = {p.ident: p for p in published if p.kind != "raw"}
        rawExpected = Counter(rawKey(p.body) for p in published if p.kind == "raw")
        rawSeen: Counter = Counter()
        byBody = {p.body: p for p in published}
        outcomes: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        for queue, received in got.items():
            for message in received:
                if queue == DEAD:
                    self.deadLetters += 1
                    reason = (message.properties.get("headers") or {}).get("x-mqtwist-reason")
                    p = byBody.get(message.body)
                    if p is None:
                        problems.append(f"a dead letter that is no message of this batch: {message.body[:200]!r}")
                    elif not reason:
                        problems.append(f"dead letter of {p.item!r} without x-mqtwist-reason")
                    elif p.kind == "raw":
                        rawSeen[rawKey(p.body)] += 1
                    else:
                        outcomes[p.ident].append(("dead", reason))
                    continue
                obj, complaints = readResult(message.body)
                problems += [f"a result in {queue} has {c}: {message.body[:200]!r}" for c in complaints]
                if obj is None:
                    continue
                ident = obj.get("id") if isinstance(obj.get("id"), str) else None
                if ident is None and isinstance(obj.get("input"), str):
                    if rawExpected[obj["input"]] > rawSeen[obj["input"]]:
                        rawSeen[obj["input"]] += 1
                        entry = obj["results"][-1]
                        self.outcomes["raw", f"{entry['state']}/{entry['result']}"] += 1
                        if (entry["state"], entry["result"]) != ("process", "invalid"):
                            problems.append(f"raw data {obj['input'][:100]!r} ended {entry}")
                        continue
                    match = ID_IN_INPUT.match(obj["input"])
                    ident = match.group(1) if match else None
                if ident is None or ident not in byIdent:
                    problems.append(f"a result in {queue} for no message of this batch: {message.body[:300]!r}")
                    continue
                outcomes[ident].append((queue, obj))
        if rawSeen != rawExpected:
            missing = rawExpected - rawSeen
            problems.append(f"raw data without a result: {[key[:80] for key in missing]}")
        for ident, p in byIdent.items():
            problems += self.check(p, outcomes.get(ident, []))
        return problems

    def check(self, p: Published, outcomes: list[tuple[str, Any]]) -> list[str]:
        """What is wrong with the outcomes of one message, as lines."""
        if len(outcomes) != 1:
            return [f"{len(outcomes)} outcomes for {p.ident} {p.item!r}: {[o[1] for o in outcomes][:3]}"]
        ((queue, obj),) = outcomes
        if queue != "dead":
            self.outcomes[p.kind, "{state}/{result}".format(**obj["results"][-1])] += 1
        else:
            self.outcomes[p.kind, "dead letter"] += 1
        if queue == "dead":
            if p.kind in ("any", "matrix"):
                return []
            return [f"{p.ident} {p.item!r} went to the dead-letter queue: {obj}"]
        entry = obj["results"][-1]
        outcome = f"{entry['state']}/{entry['result']}"
        description = entry.get("description", "")
        said = f"{p.ident} {p.item!r} ended {outcome} ({description!r})"
        if entry["result"] == "accepted":
            self.accepted += 1
        if p.kind in ("good", "valid"):
            if entry["result"] != "accepted":
                return [said]
            if p.kind == "good":
                return self.checkEcho(p, queue, obj)
            return []
        if p.kind == "wrong" and not (outcome == "process/invalid" and p.item.prop in description):
            return [said + f": expected process/invalid naming {p.item.prop!r}"]
        if p.kind == "matrix" and outcome == "process/invalid" and p.item.prop not in description:
            return [said + f": does not name {p.item.prop!r}"]
        if p.kind == "limit":
            if not p.item.needles:
                return [] if entry["result"] == "accepted" else [said + ": expected accepted"]
            if outcome != "process/invalid" or not any(n in description for n in p.item.needles):
                return [said + f": expected process/invalid naming one of {p.item.needles}"]
        return []

    def checkEcho(self, p: Published, queue: str, obj: dict[str, Any]) -> list[str]:
        job = json.loads(p.body)
        routed = job.get("queues", {}).get("results", QUEUES["results"])
        if queue != routed:
            return [f"{p.ident}: its result went to {queue}, not {routed}"]
        # a final result has no next attempt
        dropped = {"results", "nextattempt"} | (set() if job.get("keepmime") else {"mime"})
        expected = {k: v for k, v in job.items() if k not in dropped}
        echoed = {k: v for k, v in obj.items() if k != "results"}
        if echoed != expected:
            return [f"{p.ident}: the result does not echo the job: {echoed!r} != {expected!r}"]
        return []

    async def checkDeliveries(self, published: list[Published], got: dict[str, list[Any]]) -> list[str]:
        """Each accepted good or valid job arrived at the server once, byte-exact for good ones."""
        wanted = {p.ident: p for p in published if p.kind in ("good", "valid")}

        def arrived(server: Any) -> bool:
            return wanted.keys() <= set(self.delivered(server))

        try:
            await self.server.waitUntil(arrived, f"{len(wanted)} good jobs", timeout=10)
        except AssertionError as e:
            missing = wanted.keys() - set(self.delivered(self.server))
            return [f"never delivered: {[wanted[ident].item for ident in sorted(missing)][:5]}: {e}"]
        problems = []
        delivered = self.delivered(self.server)
        for ident, p in wanted.items():
            copies = delivered[ident]
            if len(copies) != 1:
                problems.append(f"{ident} {p.item!r} was delivered {len(copies)} times")
            elif p.kind == "good":
                expected = normalised((p.item.mime or "").replace(ID, ident))
                if copies[0].data != expected:
                    problems.append(f"{ident} arrived as {copies[0].data[:300]!r}, not {expected[:300]!r}")
        return problems

    @staticmethod
    def delivered(server: Any) -> dict[str, list[Any]]:
        byIdent: dict[str, list[Any]] = defaultdict(list)
        for message in server.messages:
            tokens = {match.decode() for match in TOKEN.findall(message.data)}
            for ident in tokens:
                byIdent[ident].append(message)
        return byIdent


# -- the property ---------------------------------------------------------------


@pytest.fixture
def fuzzService(rabbitmq, rabbitmqNode, amqp, smtpServer):
    config = makeConfig(
        rabbitmq, smtpServer, QUEUES,
        deadLetterQueue=DEAD,
        maxJobBytes=LIMITS.maxBytes,
        maxJobDepth=LIMITS.maxDepth,
        maxJobItems=LIMITS.maxItems,
        maxJobString=LIMITS.maxString,
        maxDeliverTime=10,
    )
    service = MailerService(config, plugins=[])
    service.startService()
    try:
        pytest_twisted.blockon(service.whenConnected())
        pytest_twisted.blockon(gatherResults([amqp.declare(queue) for queue in ALT.values()]))
        yield Fuzz(amqp, smtpServer, rabbitmqNode)
    finally:
        pytest_twisted.blockon(service.stopService())


@pytest_twisted.ensureDeferred
async def test_every_message_is_settled_whatever_it_holds(fuzzService: Fuzz) -> None:
    """
    Batches of good jobs mixed with poison: every message is accounted for
    exactly once, every good job arrives byte-exact, and the outbox ends
    with nothing ready or unacknowledged.
    """
    fuzz = fuzzService

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else []),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        report_multiple_bugs=False,
    )
    @given(batch=batches())
    @example(batch=matrixBatch())
    @example(batch=edgesBatch())
    def settles(batch: list[Item]) -> None:
        # in the engine's thread: the batch runs in the reactor's
        blockingCallFromThread(reactor, lambda: ensureDeferred(fuzz.run(batch)))

    await deferToThread(settles)

    # the service is still running: its consumer has acknowledged all
    await assertOutboxSettled(fuzz.node, QUEUES["outbox"])
    await deferLater(reactor, 0.5, lambda: None)
    late = {queue: await fuzz.amqp.fetch(queue) for queue in (QUEUES["results"], ALT["results"], DEAD)}
    assert not any(late.values()), f"late or duplicated results: {late}"
    assert await fuzz.amqp.count(QUEUES["outbox"]) == 0
    # nothing was sent twice, nothing without its accepted result
    assert len(fuzz.server.messages) == fuzz.accepted, (len(fuzz.server.messages), fuzz.accepted)
    print(f"\n{fuzz.batches} batches, {sum(fuzz.published.values())} messages: {dict(fuzz.published)}; "
          f"{fuzz.accepted} accepted, {fuzz.deadLetters} dead letters")
    for (kind, outcome), count in sorted(fuzz.outcomes.items()):
        print(f"  {kind:7} {outcome:22} {count}")


# -- the reproductions of the issue, and the bugs found --------------------------

KINDS = ("outbox", "results", "success", "failure", "retry", "dead")


@pytest.fixture
def queues(request: pytest.FixtureRequest) -> dict[str, str]:
    """Queue names of this test only."""
    base = re.sub(r"\W+", "-", request.node.name)[:40] + "-" + uuid.uuid4().hex[:6]
    return {kind: f"{base}.{kind}" for kind in KINDS}


def regressionConfig(rabbitmq: Any, server: Any, queues: dict[str, str], **settings: Any) -> Config:
    names = {kind: name for kind, name in queues.items() if kind != "dead"}
    return makeConfig(rabbitmq, server, names, deadLetterQueue=queues["dead"], **settings)


class running:
    """
    C{async with running(service) as events}: the service started and
    connected, and the log events emitted until it stopped.
    """

    def __init__(self, service: MailerService) -> None:
        self.service = service
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> list[dict[str, Any]]:
        globalLogPublisher.addObserver(self.events.append)
        self.service.startService()
        await self.service.whenConnected()
        return self.events

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.service.stopService()
        finally:
            globalLogPublisher.removeObserver(self.events.append)


def goodJob(ident: str, **extra: Any) -> tuple[bytes, bytes]:
    """A job and the body it must arrive as."""
    mime = f"Message-ID: <{ident}@poison.test>\r\nSubject: {ident}\r\n\r\nbody of {ident}\r\n"
    job = {"id": ident, "envelope": "sender@example.org", "recipient": f"{ident}@example.com", "mime": mime}
    return json.dumps(dict(job, **extra)).encode(), normalised(mime)


async def publishAll(amqp: Any, queue: str, bodies: list[bytes]) -> None:
    await amqp.declare(queue)
    await gatherResults([amqp.publish(queue, body) for body in bodies])


def strictResult(body: bytes) -> dict[str, Any]:
    """A result read as strictly as a consumer may: UTF-8, no NaN or Infinity."""
    return json.loads(body.decode("utf-8"), parse_constant=lambda name: _fail(f"{name} in a result"))


def byMessageID(server: Any) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = defaultdict(list)
    for message in server.messages:
        match = re.search(rb"Message-ID: <([^@>]+)@poison\.test>", message.data)
        found[match.group(1).decode() if match else "?"].append(message.data)
    return found


def failuresLogged(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_failure") is not None]


@pytest_twisted.ensureDeferred
async def test_jobs_too_deep_for_the_parser_do_not_hold_up_the_good_ones(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues
):
    """
    The issue's first reproduction: 214 jobs nested 1,000 levels deep took
    all 200 prefetch slots, unacknowledged, and the 50 good jobs behind
    them were never delivered.
    """
    deep = [
        ('{"id":"p' + str(n) + '","recipient":"a@example.com","mime":"x","x":' + nested(1000, "list") + "}").encode()
        for n in range(214)
    ]
    good = {f"g{n}": goodJob(f"g{n}") for n in range(50)}
    service = MailerService(regressionConfig(rabbitmq, smtpServer, queues, prefetch=200), plugins=[])
    async with running(service) as events:
        await publishAll(amqp, queues["outbox"], deep + [body for body, _ in good.values()])
        results = [strictResult(r.body) for r in await amqp.collect(queues["results"], 264)]
        await smtpServer.waitForMessages(50)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    invalid = [r for r in results if "input" in r]
    assert sorted(r["input"][: r["input"].index(",")] for r in invalid) == sorted(
        f'{{"id":"p{n}"' for n in range(214)
    )
    for result in invalid:
        (entry,) = result["results"]
        assert (entry["state"], entry["result"]) == ("process", "invalid")
        assert "--max-job-depth" in entry["description"]
    accepted = {r["id"]: r for r in results if "input" not in r}
    assert accepted.keys() == good.keys()
    assert all(r["results"][-1]["result"] == "accepted" for r in accepted.values())
    delivered = byMessageID(smtpServer)
    assert {ident: copies for ident, copies in delivered.items()} == {
        ident: [data] for ident, (_, data) in good.items()
    }
    assert await amqp.count(queues["dead"]) == 0
    assert failuresLogged(events) == []



@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_a_copied_property_is_refused_and_never_sent(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues
):
    """
    The issue's second reproduction: a good job with C{"campaign":
    "\\ud800"} was delivered, then its result could not be built; it stayed
    unacknowledged and every restart sent it again.
    """
    body, _ = goodJob("s1")
    body = body[:-1] + b', "campaign": "\\ud800"}'
    config = regressionConfig(rabbitmq, smtpServer, queues)
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [body])
        (received,) = await amqp.collect(queues["results"], 1)
        (failure,) = await amqp.collect(queues["failure"], 1)
        # something behind it is delivered: the outbox moves on
        await publishAll(amqp, queues["outbox"], [goodJob("after1")[0]])
        await amqp.collect(queues["results"], 1)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    # a restart finds nothing to send again
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [goodJob("after2")[0]])
        await amqp.collect(queues["results"], 1)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
        await deferLater(reactor, 0.3, lambda: None)
    result = strictResult(received.body)
    assert failure.body == received.body
    (entry,) = result["results"]
    assert (entry["state"], entry["result"]) == ("process", "invalid")
    assert "'campaign'" in entry["description"] and "lone surrogate" in entry["description"]
    assert "\\ud800" in entry["description"]
    assert result["input"].startswith('{"id": "s1"')
    assert sorted(byMessageID(smtpServer)) == ["after1", "after2"]
    assert await amqp.fetch(queues["results"]) == []
    assert await amqp.count(queues["dead"]) == 0


@pytest.mark.parametrize("maxJobString", [65_536, 2_000_000], ids=["past --max-job-string", "within it"])
@pytest_twisted.ensureDeferred
async def test_a_megabyte_recipient_is_quoted_in_a_few_words(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues, maxJobString
):
    """
    A 1 MB recipient gave a 1,000,060-character description and log line:
    refused by the string limit, or (with the limit raised) by the address
    check, it is quoted by an excerpt.
    """
    recipient = "r" * 1_000_000 + "@example.com"
    body = json.dumps({"id": "big", "recipient": recipient, "mime": "x"}).encode()
    config = regressionConfig(rabbitmq, smtpServer, queues, maxJobString=maxJobString)
    async with running(MailerService(config, plugins=[])) as events:
        await publishAll(amqp, queues["outbox"], [body])
        (received,) = await amqp.collect(queues["results"], 1)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    (entry,) = strictResult(received.body)["results"]
    assert (entry["state"], entry["result"]) == ("process", "invalid")
    assert "recipient" in entry["description"]
    assert len(entry["description"]) < 300, entry["description"]
    lines = [formatEvent(e) for e in events]
    (refused,) = [line for line in lines if line.startswith("refused outbox message")]
    assert "recipient" in refused
    assert max(map(len, lines)) < 1000, max(lines, key=len)[:300]


@pytest.mark.parametrize("case", ["a long key holding a lone surrogate", "nesting under long keys"])
@pytest_twisted.ensureDeferred
async def test_a_long_property_path_is_quoted_in_a_few_words(rabbitmq, rabbitmqNode, amqp, smtpServer, queues, case):
    if case == "a long key holding a lone surrogate":
        campaign = '{"%s": "\\ud800"}' % ("k" * 60_000)
    else:
        campaign = '{"%s": ' % ("k" * 2_000) * 33 + "1" + "}" * 33
    body = b'{"id": "path", "recipient": "a@example.com", "mime": "x", "campaign": %s}' % campaign.encode()
    async with running(MailerService(regressionConfig(rabbitmq, smtpServer, queues), plugins=[])) as events:
        await publishAll(amqp, queues["outbox"], [body])
        (received,) = await amqp.collect(queues["results"], 1)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    (entry,) = strictResult(received.body)["results"]
    assert (entry["state"], entry["result"]) == ("process", "invalid")
    lines = [formatEvent(e) for e in events]
    assert len(entry["description"]) < 300 and max(map(len, lines)) < 1000, (
        f"a description of {len(entry['description'])} characters, a log line of {max(map(len, lines))}"
    )


@pytest.mark.parametrize("where", ["campaign", "priority"])
@pytest_twisted.ensureDeferred
async def test_a_number_too_big_for_a_float_gives_a_strict_json_result(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues, where
):
    body, _ = goodJob("inf")
    body = body[:-1] + b', "%s": 1e999}' % where.encode()
    async with running(MailerService(regressionConfig(rabbitmq, smtpServer, queues), plugins=[])):
        await publishAll(amqp, queues["outbox"], [body])
        (received,) = await amqp.collect(queues["results"], 1)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    strictResult(received.body)


@pytest.mark.parametrize("poison", ["campaign", "recipient", "depth"])
@pytest_twisted.ensureDeferred
async def test_a_job_refused_by_a_limit_keeps_its_id(rabbitmq, rabbitmqNode, amqp, smtpServer, queues, poison):
    value = {
        "campaign": '"\\ud800"',
        "recipient": json.dumps("r" * 70_000 + "@example.com"),
        "depth": nested(40, "list"),
    }[poison]
    body = b'{"recipient": "a@example.com", "mime": "x", "%s": %s, "id": "keep-me"}' % (
        poison.encode(), value.encode()
    )
    async with running(MailerService(regressionConfig(rabbitmq, smtpServer, queues), plugins=[])) as events:
        await publishAll(amqp, queues["outbox"], [body])
        (received,) = await amqp.collect(queues["results"], 1)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    result = strictResult(received.body)
    (refused,) = [formatEvent(e) for e in events if "refused outbox message" in e.get("log_format", "")]
    assert (result.get("id"), refused.split(":")[0]) == ("keep-me", "refused outbox message keep-me")


@pytest.mark.parametrize("keepmime", [False, True], ids=["without mime", "keepmime"])
@pytest_twisted.ensureDeferred
async def test_a_job_cannot_route_its_results_into_the_outbox(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues, keepmime
):
    """
    A job's C{queues} names any queue, the outbox included; its result must
    not come back as a job (refused, or sent to the default queues).
    """
    body, _ = goodJob("loop", queues={"results": queues["outbox"]}, keepmime=keepmime)
    # the loop ends when 'results' is too long: keep it short
    config = regressionConfig(rabbitmq, smtpServer, queues, maxJobItems=20)
    async with running(MailerService(config, plugins=[])):
        await publishAll(amqp, queues["outbox"], [body])
        await deferLater(reactor, 1.5, lambda: None)
        await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    # every round publishes one copy to success or failure
    rounds = len(await amqp.fetch(queues["success"])) + len(await amqp.fetch(queues["failure"]))
    deliveries = len(byMessageID(smtpServer)["loop"])
    assert (rounds, deliveries) in ((1, 0), (1, 1)), f"{rounds} rounds through the outbox, {deliveries} deliveries"


@pytest_twisted.ensureDeferred
async def test_messages_whose_results_the_broker_refuses_end_as_dead_letters(
    rabbitmq, rabbitmqNode, amqp, smtpServer, queues
):
    """
    The dead-letter path against the real broker: a policy makes it refuse
    (nack) every result; each message comes back --settle-attempts times,
    then goes unchanged to the dead-letter queue with the reason, and the
    outbox is left with nothing ready or unacknowledged.
    """
    bodies = [b'{"id": "refused-1", "recipient": "no-at-sign", "mime": "x"}', b"\xff not even JSON"]
    policy = queues["results"] + "-refuses"
    pattern = "^" + re.escape(queues["results"]) + "$|^" + re.escape(queues["failure"]) + "$"
    await rabbitmqNode.rabbitmqctl(
        "set_policy", "--apply-to", "queues", policy, pattern, '{"max-length": 0, "overflow": "reject-publish"}'
    )
    try:
        config = regressionConfig(rabbitmq, smtpServer, queues, settleAttempts=3)
        async with running(MailerService(config, plugins=[])):
            await publishAll(amqp, queues["outbox"], bodies)
            dead = await amqp.collect(queues["dead"], 2)
            await assertOutboxSettled(rabbitmqNode, queues["outbox"])
    finally:
        await rabbitmqNode.rabbitmqctl("clear_policy", policy)
    assert sorted(letter.body for letter in dead) == sorted(bodies)
    for letter in dead:
        headers = letter.properties["headers"]
        assert "not confirmed by the broker 3 times" in headers["x-mqtwist-reason"]
        assert headers["x-mqtwist-outbox"] == queues["outbox"]
    assert await amqp.fetch(queues["results"]) == []
    assert smtpServer.messages == []
