"""
C{data} and C{inlinecss} through the whole service, from the real RabbitMQ
outbox to a real SMTP server: MailerQ's personalization examples (its
"Personalization" page and its JSON specification, copied exactly, their
C{"...."} placeholders filled) arrive personalized byte for byte; an
C{inlinecss} job arrives with style attributes; a personalized, inlined,
DKIM-signed message verifies; big messages are rewritten in a thread,
before the C{headers} edits; the outbox object keeps the template; bad
values are C{process}/C{invalid} results.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers_dkim import RSA_KEY, needsMailDKIM, pem, verify
from helpers_endtoend import decoded, makeConfig, normalised, publishAll, running

from mqtwist.service import MailerService

REFERENCE = Path(__file__).parent.parent.parent / "shared" / "reference" / "mailerq-5.6"

# personalization.md: the job and the message, exactly as printed
PERSONALIZATION_JOB = """\
{
    "recipient": "john@example.com",
    "mime": "....",
    "data": {
        "ourname": "The MailerQ test team",
        "name": "John Doe",
        "age": 33,
        "job": "programmer",
        "children": [
            "Peter", "Angela", "Brandon"
        ]
    }
}
"""
PERSONALIZATION_MIME = """\
From: {$ourname} <info@example.org>
To: {$name} <{$recipient}>
Subject: Hello {$name}!
Content-Type: text/plain

Hi {$name},

Your age is {$age}, and your job is {$job}.

Cheers,

{$ourname}
"""
PERSONALIZATION_SENT = normalised("""\
From: The MailerQ test team <info@example.org>
To: John Doe <john@example.com>
Subject: Hello John Doe!
Content-Type: text/plain

Hi John Doe,

Your age is 33, and your job is programmer.

Cheers,

The MailerQ test team
""")

# json-messages.md, "Personalization data": the job exactly as printed
SPECIFICATION_JOB = r"""{
    "envelope": "my-sender-address@my-domain.com",
    "recipient": "info@example.org",
    "mime": "From: ...\r\nTo: ...\r\nSubject: Message from {$firstname}\r\n...",
    "data": {
        "firstname": "Emiel",
        "lastname": "Bruijntjes",
        "email": "emiel.bruijntjes@copernica.com"
    }
}"""
# its "..." lines are header fields of no name: a message without a body,
# which gets the line end RFC 5321 ends data with
SPECIFICATION_SENT = b"From: ...\r\nTo: ...\r\nSubject: Message from Emiel\r\n...\r\n"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="MailerQ's pages are not beside the checkout")
def test_examplesAreCopiedExactly() -> None:
    personalization = (REFERENCE / "personalization.md").read_text()
    assert PERSONALIZATION_JOB in personalization
    assert PERSONALIZATION_MIME in personalization
    assert SPECIFICATION_JOB in (REFERENCE / "json-messages.md").read_text()


def personalizationJob() -> dict[str, Any]:
    job: dict[str, Any] = json.loads(PERSONALIZATION_JOB)
    assert job["mime"] == "...."
    job["mime"] = PERSONALIZATION_MIME
    return job


@pytest_twisted.ensureDeferred
async def test_mailerQExamplesArrivePersonalized(rabbitmq, amqp, smtpServer, queues):
    """
    Both examples arrive exactly as MailerQ documents them; the success
    results carry the job as published, C{data} and the template (with
    C{keepmime}) included, so that another attempt starts from it.
    """
    personalization = personalizationJob()
    personalization["keepmime"] = True
    specification = json.loads(SPECIFICATION_JOB)
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [json.dumps(personalization).encode(), SPECIFICATION_JOB.encode()])
        results = decoded(await amqp.collect(queues["success"], 2))
        received = await smtpServer.waitForMessages(2)

    data = {message.rcptTos[0]: message.data for message in received}
    assert data == {"john@example.com": PERSONALIZATION_SENT, "info@example.org": SPECIFICATION_SENT}
    byRecipient = {result["recipient"]: result for result in results}
    assert byRecipient["john@example.com"]["mime"] == PERSONALIZATION_MIME
    assert byRecipient["john@example.com"]["data"] == personalization["data"]
    assert byRecipient["info@example.org"]["data"] == specification["data"]
    assert [r["results"][-1]["result"] for r in results] == ["accepted", "accepted"]


STYLED_HTML = """\
<html><head><style>
h1 { color: #cc0000; font-size: 20px; }
p.note { margin: 0; }
</style><link rel="stylesheet" href="http://127.0.0.1:9/never.css"></head>
<body><h1>Hello {$name}</h1><p class="note">Your code is {$code|toupper}.</p>
<p>{$quote}</p></body></html>
"""


def styledJob(recipient: str, **extra: Any) -> dict[str, Any]:
    job = {
        "id": f"styled-{recipient}",
        "envelope": "news@example.com",
        "recipient": recipient,
        "mime": {
            "from": {"name": "News", "email": "news@example.com"},
            "to": recipient,
            "subject": "News for {$name}",
            "text": "Hello {$name}, your code is {$code|toupper}.",
            "html": STYLED_HTML,
        },
        "data": {"name": "Jörg", "code": "ab12", "quote": "<Tom & Jerry>"},
        "inlinecss": True,
    }
    job.update(extra)
    return job


def partsOf(data: bytes) -> dict[str, str]:
    import email
    import email.policy

    message = email.message_from_bytes(data, policy=email.policy.default)
    parts = {"subject": str(message["Subject"])}
    for part in message.walk():
        if not part.is_multipart():
            parts[part.get_content_type()] = part.get_content()
    return parts


@needsMailDKIM
@pytest_twisted.ensureDeferred
async def test_inlineCSSAndDKIM(rabbitmq, amqp, smtpServer, queues, nameServer):
    """
    A C{mime} object with C{data}, C{inlinecss} and C{dkim}: the HTML
    part arrives with style attributes and escaped values, the text part
    and the subject personalized, and the signature over what was sent
    verifies (Mail::DKIM).
    """
    records, dnsPort = nameServer
    records.publish("x", "example.com", RSA_KEY)
    job = styledJob(
        "reader@example.org", dkim={"domain": "example.com", "selector": "x", "key": pem(RSA_KEY)}
    )
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [json.dumps(job).encode()])
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        (received,) = await smtpServer.waitForMessages(1)

    assert success["results"][-1]["result"] == "accepted"
    assert re.search(rb"\r\nSubject: News for =\?utf-8\?q\?J=C3=B6rg\?=\r\n", received.data)
    parts = partsOf(received.data)
    assert parts["subject"] == "News for Jörg"
    assert parts["text/plain"].startswith("Hello Jörg, your code is AB12.")
    html = parts["text/html"]
    assert '<h1 style="color: #cc0000;font-size: 20px;">Hello Jörg</h1>' in html
    assert '<p class="note" style="margin: 0;">Your code is AB12.</p>' in html
    assert "<p>&lt;Tom &amp; Jerry&gt;</p>" in html
    assert '<link rel="stylesheet" href="http://127.0.0.1:9/never.css">' in html
    assert "<style>" not in html
    verdicts = await verify(dnsPort, received.data)
    assert verdicts[0][:3] == ["pass", "example.com", "x"]


@pytest_twisted.ensureDeferred
async def test_personalizedInAThreadBeforeHeaderEdits(rabbitmq, amqp, smtpServer, queues, monkeypatch):
    """
    A job with C{data} is personalized in a thread whatever its size (a
    template's cost does not follow it); one with C{inlinecss} alone in a
    thread above --content-thread-bytes only, below it on the reactor
    thread; either way before the C{headers} edits, which see the
    personalized message (and whose values are no templates).
    """
    import mqtwist.outbox.processor as processor

    onReactor: dict[str, bool] = {}
    rewrite = processor.rewrittenContent

    def recording(mime: bytes, message: Any, limits: Any) -> bytes:
        onReactor[message.recipient] = threading.current_thread() is threading.main_thread()
        return rewrite(mime, message, limits)

    monkeypatch.setattr(processor, "rewrittenContent", recording)
    edits = {"replace": {"X-Note": "by {$name}"}, "remove": "x-drop"}
    mime = "Subject: Hi {$name}\r\nX-Drop: {$name}\r\n\r\n{$name}: {$body}\r\n"
    small = {"id": "small", "recipient": "small@example.com", "mime": mime, "data": {"name": "Ann", "body": "x"},
             "headers": edits}
    big = dict(small, id="big", recipient="big@example.com", data={"name": "Bob", "body": "y" * 500})
    big["mime"] = mime + "filler\r\n" * 100
    css = {"id": "css", "recipient": "css@example.com", "inlinecss": True,
           "mime": "Content-Type: text/html\r\n\r\n<style>p {color: red}</style><p>x</p>\r\n"}
    config = makeConfig(rabbitmq, smtpServer, queues, contentThreadBytes=400)
    service = MailerService(config, plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [json.dumps(job).encode() for job in (small, big, css)])
        await amqp.collect(queues["success"], 3)
        received = await smtpServer.waitForMessages(3)

    data = {message.rcptTos[0]: message.data for message in received}
    assert data["small@example.com"] == b"Subject: Hi Ann\r\nX-Note: by {$name}\r\n\r\nAnn: x\r\n"
    assert data["big@example.com"] == (
        b"Subject: Hi Bob\r\nX-Note: by {$name}\r\n\r\nBob: " + b"y" * 500 + b"\r\n" + b"filler\r\n" * 100
    )
    assert b'<p style="color: red;">x</p>' in data["css@example.com"]
    assert onReactor == {"small@example.com": False, "big@example.com": False, "css@example.com": True}


@pytest_twisted.ensureDeferred
async def test_costlyTemplatesAreInvalid(rabbitmq, amqp, smtpServer, queues):
    """
    A template whose work passes a limit ends its job as
    C{process}/C{invalid} naming the limit, and the service goes on with
    the next job; an RFC 2047 word that would decode to a line break in a
    personalized field is refused the same way; a block without variables
    is rendered.
    """
    head = "From: a@example.org\r\nSubject: {if $vip}Gold{else}Hello{/if}\r\n\r\n"
    loops = "{foreach $a as $x}{foreach $a as $y}{foreach $a as $z}{$x}{/foreach}{/foreach}{/foreach}"
    jobs = {
        "loops": {"mime": head + loops, "data": {"a": list(range(200))}},
        "regex": {"mime": head + '{$s|regex_replace:"(a|aa)+b"}', "data": {"s": "a" * 80}},
        "output": {"mime": head + "{$s|indent:50000000}", "data": {"s": "x"}},
        "depth": {"mime": head + "{if 1}" * 1000 + "x" + "{/if}" * 1000, "data": {}},
        "injection": {
            "mime": "Subject: =?utf-8?q?Hi_{$name}=0D=0ABcc:_victim@evil.example?=\r\n\r\nbody\r\n",
            "data": {"name": "Bob"},
        },
        "fine": {"mime": head + "{if $vip}Dear member{else}Welcome{/if}\r\n", "data": {"vip": False}},
    }
    bodies = [json.dumps(dict(job, id=name, recipient=f"{name}@example.com")).encode() for name, job in jobs.items()]
    config = makeConfig(rabbitmq, smtpServer, queues, maxJobBytes=1024 * 1024, templateRegexSeconds=0.2)
    service = MailerService(config, plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], bodies)
        failures = decoded(await amqp.collect(queues["failure"], 5))
        await amqp.collect(queues["success"], 1)
        (received,) = await smtpServer.waitForMessages(1)

    descriptions = {}
    for failure in failures:
        (entry,) = failure["results"]
        assert (entry["state"], entry["result"]) == ("process", "invalid")
        descriptions[failure["id"]] = entry["description"]
    assert "more than 10000 times (limit --template-loops)" in descriptions["loops"]
    assert "(limit --template-regex-seconds)" in descriptions["regex"]
    assert "more than 1048576 characters (limit --max-job-bytes)" in descriptions["output"]
    assert "nested more than 100 deep (limit --template-depth)" in descriptions["depth"]
    assert descriptions["injection"].startswith(
        "property 'mime': the Subject field's RFC 2047 encoded words hold a line break"
    )
    assert list(received.rcptTos) == ["fine@example.com"]
    assert received.data == b"From: a@example.org\r\nSubject: Hello\r\n\r\nWelcome\r\n"


@pytest_twisted.ensureDeferred
async def test_badValuesAreInvalid(rabbitmq, amqp, smtpServer, queues):
    """
    C{data} that is not an object, C{inlinecss} that is not a boolean, and
    a value that would put a line break in a header field are
    C{process}/C{invalid} results naming the cause; nothing is sent.
    """
    mime = "Subject: Hi {$name}\r\n\r\nbody\r\n"
    jobs = {
        "list": {"recipient": "a@example.com", "mime": mime, "data": ["name"]},
        "string": {"recipient": "a@example.com", "mime": mime, "inlinecss": "yes"},
        "injection": {"recipient": "a@example.com", "mime": mime, "data": {"name": "x\r\nBcc: b@example.com"}},
    }
    bodies = [json.dumps(dict(job, id=name)).encode() for name, job in jobs.items()]
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], bodies)
        failures = decoded(await amqp.collect(queues["failure"], 3))

    descriptions = {}
    for failure in failures:
        (entry,) = failure["results"]
        assert (entry["state"], entry["result"]) == ("process", "invalid")
        descriptions[failure["id"]] = entry["description"]
    assert descriptions["list"].startswith("property 'data' must be an object")
    assert descriptions["string"].startswith("property 'inlinecss' must be true or false")
    assert descriptions["injection"].startswith("property 'data': variable 'name' would put a line break")
    assert smtpServer.messages == []


@pytest_twisted.ensureDeferred
async def test_retriesPersonalizeTheTemplateAgain(rabbitmq, amqp, smtpServer, queues):
    """
    A job whose body is deferred (452) goes back through the delay queue
    with its template, and its second attempt sends exactly the bytes of
    the first; the final result (with C{keepmime}) still holds the template.
    """
    mime = "Subject: Hi {$name}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDear {$name|ucfirst}, {$n}\r\n"
    job = {"id": "retried", "recipient": "tempdata@example.com", "mime": mime, "data": {"name": "zoë", "n": 1.5},
           "retries": [1], "maxattempts": 2, "keepmime": True}
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], [json.dumps(job).encode()])
        (failure,) = decoded(await amqp.collect(queues["failure"], 1))

    first, second = smtpServer.rejected
    assert first.data == second.data == (
        b"Subject: Hi =?utf-8?q?zo=C3=AB?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\nDear Zo=C3=AB, 1.5\r\n"
    )
    assert failure["mime"] == mime
    # two attempts, then out of attempts
    assert [(r["state"], r["result"]) for r in failure["results"]] == [("message", "error")] * 2 + [
        ("process", "timeout")
    ]
