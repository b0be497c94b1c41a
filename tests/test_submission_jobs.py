"""
L{mqtwist.submission.jobs}: a submission becomes one outbox job per
recipient, and every job goes through mqtwist's own job parser unchanged,
delivering the message's bytes as they were received.
"""

from __future__ import annotations

import json
import string
from dataclasses import replace
from typing import Any

import pytest
from helpers_dkim import RSA_KEY, pem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtwist.content.message import Message, ParseSettings
from mqtwist.delivery.transaction import xtext
from mqtwist.submission.envelope import Recipient, Submission
from mqtwist.submission.jobs import buildJobs
from mqtwist.submission.syntax import xtextDecode

MIME = (
    b"Received: from client.example (client.example [192.0.2.7])\r\n"
    b"\tby mx.example.net with ESMTP; Sun, 6 Dec 2026 23:40:00 +0000\r\n"
    b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n"
    b"Hello.\r\n.leading dot kept\r\n"
)


def submission(**changes: Any) -> Submission:
    base = Submission(
        sender="a@example.org",
        recipients=(Recipient("b@example.com"), Recipient("c@example.net")),
        mime=MIME,
        clientAddress="192.0.2.7",
        clientPort=40123,
        heloName="client.example",
        received=1_796_600_400.75,
        localAddress="192.0.2.1",
        localPort=587,
    )
    return replace(base, **changes)


def ids():
    numbers = iter(range(1000))
    return lambda: f"id{next(numbers)}"


def parsed(body: bytes) -> Message:
    """The job as the outbox consumer reads it; fails the test if refused."""
    return Message.fromJSON(body, ParseSettings())


def test_one_job_per_recipient_with_the_incoming_properties():
    jobs = buildJobs(submission(), "mx.example.net", ids())
    assert [job.recipient for job in jobs] == ["b@example.com", "c@example.net"]
    assert [job.messageId for job in jobs] == ["id0", "id1"]
    first, second = (json.loads(job.body) for job in jobs)
    assert first == {
        "envelope": "a@example.org",
        "recipient": "b@example.com",
        "mime": MIME.decode("ascii"),
        "hostname": "mx.example.net",
        "received": "2026-12-06 23:40:00",
        "message-id": "id0",
        "connection": {
            "local-ip": "192.0.2.1",
            "local-port": 587,
            "remote-ip": "192.0.2.7",
            "remote-port": 40123,
            "helo": "client.example",
            "secure": False,
        },
    }
    assert second["recipient"] == "c@example.net"
    assert second["message-id"] == "id1"
    assert "dsn" not in first
    for job in jobs:
        message = parsed(job.body)
        assert message.mime == MIME
        assert message.envelope == "a@example.org"
        assert message.recipient == job.recipient
        assert job.priority is None
        assert job.size == len(job.body)


def test_message_ids_are_unique_by_default():
    many = submission(recipients=tuple(Recipient(f"r{n}@example.com") for n in range(500)))
    jobs = buildJobs(many, "mx.example.net")
    assert len({job.messageId for job in jobs}) == 500
    assert all(len(job.messageId) == 20 and set(job.messageId) <= set(string.hexdigits.lower()) for job in jobs)


def test_null_sender_is_an_empty_envelope():
    (job,) = buildJobs(submission(sender="", recipients=(Recipient("b@example.com"),)), "h", ids())
    assert json.loads(job.body)["envelope"] == ""
    assert parsed(job.body).envelope == ""


def test_tls_and_authenticated_user_are_connection_properties():
    (job,) = buildJobs(submission(tls=True, user="alice", recipients=(Recipient("b@example.com"),)), "h", ids())
    assert json.loads(job.body)["connection"] == {
        "local-ip": "192.0.2.1",
        "local-port": 587,
        "remote-ip": "192.0.2.7",
        "remote-port": 40123,
        "helo": "client.example",
        "secure": True,
        "user": "alice",
    }
    parsed(job.body)


def test_dsn_parameters():
    sub = submission(
        recipients=(
            Recipient("b@example.com", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;B+2Bx@example.com"),
            Recipient("c@example.net", notify=("NEVER",)),
            Recipient("d@example.net"),
        ),
        ret="HDRS",
        envid="QQ314159",
    )
    first, second, third = buildJobs(sub, "h", ids())
    assert json.loads(first.body)["dsn"] == {
        "notify": ["SUCCESS", "FAILURE"],
        "ret": "HDRS",
        "orcpt": "rfc822;B+x@example.com",
        "envid": "QQ314159",
    }
    assert json.loads(second.body)["dsn"] == {"notify": ["NEVER"], "ret": "HDRS", "envid": "QQ314159"}
    assert json.loads(third.body)["dsn"] == {"ret": "HDRS", "envid": "QQ314159"}
    dsn = parsed(first.body).dsn
    assert (dsn.notify, dsn.ret, dsn.orcpt, dsn.envid) == (["SUCCESS", "FAILURE"], "HDRS", "rfc822;B+x@example.com", "QQ314159")
    # the delivery side gives the server the ORCPT the client gave
    kind, _, address = dsn.orcpt.partition(";")
    assert f"{kind};{xtext(address)}" == "rfc822;B+2Bx@example.com"
    assert parsed(second.body).dsn.notify == ["NEVER"]


@pytest.mark.parametrize(
    ("orcpt", "why"),
    [
        ("b@example.com", "is not addr-type;xtext"),
        ("rfc822;b+0D+0Ax@example.com", "control character"),
        ("rfc822;b+2x@example.com", "two upper-case hexadecimal digits"),
        ("rfc822;b+FF@example.com", "not UTF-8"),
    ],
)
def test_orcpt_that_cannot_be_sent_on_is_refused(orcpt, why):
    sub = submission(recipients=(Recipient("b@example.com", orcpt=orcpt),))
    with pytest.raises(ValueError, match=why) as info:
        buildJobs(sub, "h", ids())
    assert "b@example.com" in str(info.value)


def test_defaults_fill_in_what_the_job_does_not_set():
    key = pem(RSA_KEY)
    defaults = {
        "tags": ["smtp", "alice"],
        "queues": {"success": "alice-success", "failure": None},
        "dkim": {"domain": "example.org", "selector": "s1", "key": key},
        "retries": [60, 300],
        "priority": 3,
        "campaign": "c-17",
        # what the job sets itself is not overridden
        "recipient": "evil@example.net",
        "envelope": "evil@example.net",
        "mime": "Subject: evil\r\n\r\nevil\r\n",
        "hostname": "elsewhere",
        "connection": {"user": "mallory"},
    }
    sub = submission(user="alice", defaults=defaults)
    jobs = buildJobs(sub, "mx.example.net", ids())
    for job in jobs:
        obj = json.loads(job.body)
        assert obj["recipient"] == job.recipient
        assert obj["envelope"] == "a@example.org"
        assert obj["mime"] == MIME.decode("ascii")
        assert obj["hostname"] == "mx.example.net"
        assert obj["connection"]["user"] == "alice"
        assert obj["tags"] == ["smtp", "alice"]
        assert obj["queues"] == {"success": "alice-success", "failure": None}
        assert obj["dkim"]["key"] == key
        assert obj["campaign"] == "c-17"
        assert job.priority == 3
        message = parsed(job.body)
        assert message.tags == ["smtp", "alice"]
        assert message.retries == [60, 300]
        assert message.priority == 3
        assert [spec.domain for spec in message.dkim] == ["example.org"]
        assert message.queueFor("success", "success") == "alice-success"
        assert message.queueFor("failure", "failure") is None
    # the configured defaults themselves are left as they were
    assert defaults["recipient"] == "evil@example.net"


def test_default_dsn_applies_when_the_client_gave_none():
    defaults = {"dsn": {"notify": "FAILURE", "ret": "HDRS"}}
    plain, withNotify = buildJobs(
        submission(recipients=(Recipient("b@example.com"), Recipient("c@example.net", notify=("NEVER",))), defaults=defaults),
        "h",
        ids(),
    )
    assert json.loads(plain.body)["dsn"] == {"notify": "FAILURE", "ret": "HDRS"}
    assert json.loads(withNotify.body)["dsn"] == {"notify": ["NEVER"]}
    assert parsed(plain.body).dsn.notify == ["FAILURE"]


def test_utf8_message_and_addresses_are_kept():
    mime = "Subject: Grüße\r\nFrom: jörg@exämple.org\r\n\r\nÄpfel — 林檎 🍎\r\n".encode()
    sub = submission(
        sender="jörg@exämple.org", recipients=(Recipient("zoë@example.com"),), mime=mime, smtputf8=True
    )
    (job,) = buildJobs(sub, "h", ids())
    message = parsed(job.body)
    assert message.mime == mime
    assert (message.envelope, message.recipient) == ("jörg@exämple.org", "zoë@example.com")


def test_a_message_that_is_not_utf8_is_carried_byte_for_byte():
    mime = MIME + b"Gr\xfc\xdfe aus K\xf6ln, caf\xc3\xa9 \xff\x80\r\n"
    job = buildJobs(submission(mime=mime), "h", ids())[0]
    # the bytes that are not UTF-8 as escapes, the UTF-8 ones as they are
    assert b'Gr\\udcfc\\udcdfe aus K\\udcf6ln, caf\xc3\xa9 \\udcff\\udc80' in job.body
    assert parsed(job.body).mime == mime


@pytest.mark.parametrize(
    "address",
    ["b@example.com\r\nRCPT TO:<x@example.net>", "b\x00@example.com", "b@exa\x7fmple.com", "not-an-address", "<b@example.com>"],
)
def test_a_recipient_the_parser_would_refuse_makes_no_jobs(address):
    sub = submission(recipients=(Recipient("ok@example.com"), Recipient(address)))
    with pytest.raises(ValueError, match="recipient"):
        buildJobs(sub, "h", ids())


def test_a_sender_with_a_line_break_makes_no_jobs():
    with pytest.raises(ValueError, match="sender"):
        buildJobs(submission(sender="a@example.org\nX: y"), "h", ids())


def test_decode_xtext():
    """
    The one xtext decoder (the server's, for ENVID and ORCPT, and the jobs')
    reads the bytes as UTF-8, undoing what the delivery side's encoder does.
    """
    assert xtextDecode("plain@example.com") == "plain@example.com"
    assert xtextDecode("a+2Bb+3Dc+20d@example.com") == "a+b=c d@example.com"
    assert xtextDecode("j+C3+B6rg@example.com") == "jörg@example.com"
    assert xtextDecode("caf+C3+A9") == "café"
    for text in ("café", "a+b=c d", "Äpfel 林檎 🍎", "x\r\ny"):
        assert xtextDecode(xtext(text)) == text
    for bad in ("a+2", "a+2b", "a=b", "a b", "+C3"):
        with pytest.raises(ValueError):
            xtextDecode(bad)


# -- properties ----------------------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
localParts = st.lists(st.text(ATEXT, min_size=1, max_size=12), min_size=1, max_size=3).map(".".join)
labels = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
domains = st.lists(labels, min_size=1, max_size=3).map(lambda parts: ".".join([*parts, "example"]))
addresses = st.builds(lambda local, domain: f"{local}@{domain}", localParts, domains)
notifies = st.one_of(
    st.just(()),
    st.just(("NEVER",)),
    st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1, unique=True).map(tuple),
)
# what a client can put in ORCPT's xtext and ENVID: printable ASCII but + and =
# are xtext's own, so any text shows through xtext()
printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)
lineText = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80)
bodies = st.lists(lineText, max_size=20).map(lambda lines: "".join(line + "\r\n" for line in lines))
recipients = st.builds(
    Recipient, addresses, notifies, st.one_of(st.none(), printable.map(lambda text: f"rfc822;{xtext(text)}"))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sender=st.one_of(st.just(""), addresses),
    rcpts=st.lists(recipients, min_size=1, max_size=4),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    envid=st.one_of(st.none(), printable),
    body=bodies,
    user=st.one_of(st.none(), st.text(string.ascii_letters + "@.", min_size=1, max_size=20)),
    tls=st.booleans(),
)
def test_every_job_goes_through_the_parser_unchanged(sender, rcpts, ret, envid, body, user, tls):
    mime = b"Received: from x by y; Sun, 6 Dec 2026 23:40:00 +0000\r\nSubject: t\r\n\r\n" + body.encode()
    sub = submission(
        sender=sender, recipients=tuple(rcpts), ret=ret, envid=envid, mime=mime, user=user, tls=tls
    )
    jobs = buildJobs(sub, "mx.example.net")
    assert [job.recipient for job in jobs] == [r.address for r in rcpts]
    for job, recipient in zip(jobs, rcpts):
        obj = json.loads(job.body)
        message = parsed(job.body)
        assert message.mime == mime
        assert message.envelope == sender
        assert message.recipient == recipient.address
        # the parser kept the job as it is: results carry it back unchanged
        assert message.json == obj
        dsn = message.dsn
        if not (recipient.notify or recipient.orcpt or ret or envid):
            assert dsn is None
            continue
        assert dsn.notify == (list(recipient.notify) or None)
        assert dsn.ret == ret
        assert dsn.envid == envid
        if recipient.orcpt is None:
            assert dsn.orcpt is None
        else:
            kind, _, address = dsn.orcpt.partition(";")
            assert f"{kind};{xtext(address)}" == recipient.orcpt
        assert obj["connection"]["secure"] is tls
        assert obj["connection"].get("user") == user
