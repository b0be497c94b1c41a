"""
The C{headers} property as MailerQ 5.6 documents it ("Changing the MIME
headers" in its JSON specification, ../shared/reference/mailerq-5.6/
json-messages.md): its example job, copied exactly, parsed as a job and
applied to its message; then the whole path, through the real RabbitMQ
outbox and a real SMTP server, for that job and for every form of edit
(C{remove} as a string, C{add}, C{replace} of a missing field, C{update}
that adds nothing, a key that is not an edit) with long edits, which the
processor applies in a thread.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest_twisted
from helpers_endtoend import decoded, makeConfig, publishAll, running

from mqtwist.content.headeredits import applyHeaderEdits
from mqtwist.content.message import Message
from mqtwist.service import MailerService

#: MailerQ's example, exactly as its documentation prints it
DOCUMENTED = r"""{
    "envelope": "my-sender-address@my-domain.com",
    "recipient": "info@example.org",
    "mime": "From: ex@ex.com\r\nTo: info@ex.com\r\nDummy: xyz\r\nSubject: ...",
    "headers": {
        "remove" : ["dummy", "bcc"],
        "prepend" : {
            "cc" : "cc@ex.com",
            "x-example" :  ["example 1", "example 2"]
        },
        "append"  : ...,
        "replace" : {
            "from" : "xe@xe.com"
        }
        "update"  : ...,
    }
}"""

#: what it does: dummy removed (bcc was not there), cc and both x-example
#: on top in that order, from replaced where From was; the message had no
#: body, so the header block is ended by the blank line
DOCUMENTED_RESULT = (
    b"cc: cc@ex.com\r\n"
    b"x-example: example 1\r\n"
    b"x-example: example 2\r\n"
    b"from: xe@xe.com\r\n"
    b"To: info@ex.com\r\n"
    b"Subject: ...\r\n"
    b"\r\n"
)


def withoutPlaceholders(text: str) -> str:
    """
    The documented example without its two C{...} placeholders, which is
    JSON (the comma the example misses after C{replace} goes with them).
    """
    return "\n".join(line for line in text.split("\n") if ": ...," not in line)


def test_documentedExampleIsNotJSONAsPrinted() -> None:
    """
    The example holds placeholders (C{...}) and misses a comma: no JSON
    parser takes it as printed, MailerQ's included.
    """
    try:
        json.loads(DOCUMENTED)
    except ValueError:
        pass
    else:
        raise AssertionError("the documented example parsed as JSON")


def test_documentedExample() -> None:
    message = Message.fromJSON(withoutPlaceholders(DOCUMENTED))
    assert message.headerEdits is not None
    assert applyHeaderEdits(message.mime, message.headerEdits) == DOCUMENTED_RESULT


def test_documentedExampleWithItsPlaceholdersFilled() -> None:
    """
    The same example with its C{append} and C{update} placeholders given
    values: C{update} of a field the message has, and of one it has not.
    """
    text = DOCUMENTED.replace('"append"  : ...,', '"append"  : {"x-last": "z"},').replace(
        '"update"  : ...,', '"update"  : {"subject": "Hello", "x-missing": "never"}'
    ).replace('"xe@xe.com"\n        }', '"xe@xe.com"\n        },')
    message = Message.fromJSON(text)
    assert message.headerEdits is not None
    assert applyHeaderEdits(message.mime, message.headerEdits) == (
        b"cc: cc@ex.com\r\n"
        b"x-example: example 1\r\n"
        b"x-example: example 2\r\n"
        b"from: xe@xe.com\r\n"
        b"To: info@ex.com\r\n"
        b"subject: Hello\r\n"
        b"x-last: z\r\n"
        b"\r\n"
    )


#: a value long enough for the processor to apply the edits in a thread
LONG = " ".join(["long"] * 100)

#: every form of edit in one job: (its C{headers}, the header block sent)
FORMS = {
    "remove string, add, replace missing": (
        {"remove": "dummy", "add": {"X-Long": LONG}, "replace": {"X-Campaign": "c1"}},
        b"From: ex@ex.com\r\nTo: info@ex.com\r\nSubject: s\r\nX-Campaign: c1\r\nX-Long: " + LONG.encode(),
    ),
    "update present and missing, append and add, unknown key": (
        {"update": {"to": "other@ex.com", "X-Missing": LONG}, "append": {"X-A": "1"}, "add": {"X-B": "2"},
         "set": {"Subject": "not an edit"}},
        b"From: ex@ex.com\r\nto: other@ex.com\r\nDummy: xyz\r\nSubject: s\r\nX-A: 1\r\nX-B: 2",
    ),
    "replace present, prepend": (
        {"replace": {"dummy": ["1", LONG]}, "prepend": {"X-First": "0"}},
        b"X-First: 0\r\nFrom: ex@ex.com\r\nTo: info@ex.com\r\ndummy: 1\r\ndummy: " + LONG.encode() + b"\r\nSubject: s",
    ),
}


def unfolded(data: bytes) -> bytes:
    return data.replace(b"\r\n ", b" ")


@pytest_twisted.ensureDeferred
async def test_everyFormDeliveredExactly(rabbitmq, amqp, smtpServer, queues, monkeypatch):
    """
    Through the real outbox to a real SMTP server: the documented example
    and every form of edit arrive with exactly the header block expected
    and the body as published; the edits whose values are long are applied
    in a thread (the processor counts C{remove} as a string and C{add}
    right); every result carries the C{headers} object as it was published,
    keys that are not edits included.
    """
    import mqtwist.delivery.transaction
    import mqtwist.outbox.processor

    onReactor: list[bool] = []

    def recording(module: Any) -> Any:
        apply = module.applyHeaderEdits

        def applyHeaderEdits(mime: bytes, edits: Any) -> bytes:
            onReactor.append(threading.current_thread() is threading.main_thread())
            return apply(mime, edits)

        return applyHeaderEdits

    for module in (mqtwist.outbox.processor, mqtwist.delivery.transaction):
        monkeypatch.setattr(module, "applyHeaderEdits", recording(module))

    documented = json.loads(withoutPlaceholders(DOCUMENTED))
    documented["id"] = "documented"
    jobs = [json.dumps(documented).encode()]
    expected = {"info@example.org": DOCUMENTED_RESULT}
    for number, (edits, head) in enumerate(FORMS.values()):
        recipient = f"rcpt{number}@example.com"
        jobs.append(json.dumps({
            "id": f"form-{number}",
            "envelope": "sender@example.org",
            "recipient": recipient,
            "mime": "From: ex@ex.com\r\nTo: info@ex.com\r\nDummy: xyz\r\nSubject: s\r\n\r\nbody\r\n",
            "headers": edits,
        }).encode())
        expected[recipient] = head + b"\r\n\r\nbody\r\n"

    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], jobs)
        results = decoded(await amqp.collect(queues["success"], len(jobs)))
        received = await smtpServer.waitForMessages(len(jobs))

    data = {m.rcptTos[0]: unfolded(m.data) for m in received}
    assert data == expected
    # the documented job is short: on the reactor thread; the three others in a thread
    assert sorted(onReactor) == [False, False, False, True]
    published = {json.loads(body)["id"]: json.loads(body)["headers"] for body in jobs}
    assert {r["id"]: r["headers"] for r in results} == published
    assert published["form-1"]["set"] == {"Subject": "not an edit"}
