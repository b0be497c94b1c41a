"""
C{mqtwist.loadgen}: test jobs of the requested size, published with
confirms to a real RabbitMQ node, and the command line.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from mqtwist.content.message import Message
from mqtwist.loadgen import makeJob, makeMime, parseArguments, publishFromArguments


@pytest.mark.parametrize("size", [0, 200, 301, 5000, 100_000])
def test_mime_has_the_size_asked_for(size):
    mime = makeMime(7, size, sender="a@example.org", recipient="b@example.com", prefix="p")
    headers, _, body = mime.partition("\r\n\r\n")
    assert len(mime) == max(size, len(headers) + 4)
    assert "Message-ID: <p-7@mqtwist.invalid>" in headers
    # CRLF line ends only, lines well within RFC 5322's 78 characters
    assert mime.endswith("\r\n")
    assert "\n" not in mime.replace("\r\n", "")
    assert max(len(line) for line in mime.split("\r\n")) <= 78
    assert body.isascii()


def test_job_is_a_valid_outbox_message():
    dkim = {"domain": "example.org", "selector": "s1", "key": "PEM"}
    job = makeJob(3, 1000, prefix="run1", sender="s@example.org", domain="example.net", dkim=dkim)
    assert job["id"] == "run1-3"
    assert job["envelope"] == "s@example.org"
    assert job["recipient"] == "rcpt3@example.net"
    assert job["dkim"] == dkim
    assert len(job["mime"]) == 1000
    assert "dkim" not in makeJob(3, 1000)
    message = Message.fromJSON(json.dumps(makeJob(3, 1000)).encode())
    assert message.recipient == "rcpt3@example.com"


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        parseArguments(["--count", "-1"])
    assert "--count -1 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parseArguments(["--amqp", "http://localhost/"])
    assert "is not amqp:// or amqps://" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_publishes_every_job_confirmed(rabbitmq, amqp):
    queue = f"publish-{uuid.uuid4().hex[:8]}"
    url = f"amqp://{rabbitmq.username}:{rabbitmq.password}@{rabbitmq.host}:{rabbitmq.port}/"
    arguments = parseArguments(
        ["--amqp", url, "--queue", queue, "--count", "25", "--size", "3000",
         "--start", "100", "--prefix", "t", "--window", "7"]
    )
    try:
        published = await publishFromArguments(reactor, arguments)
        assert published == 25
        received = await amqp.collect(queue, 25)
        jobs = [json.loads(r.body) for r in received]
        assert sorted(job["id"] for job in jobs) == sorted(f"t-{n}" for n in range(100, 125))
        assert all(len(job["mime"]) == 3000 for job in jobs)
        assert all(r.properties["delivery-mode"] == 2 for r in received)
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_command_line(rabbitmq, amqp, tmp_path):
    queue = f"publish-cli-{uuid.uuid4().hex[:8]}"
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n")
    url = f"amqp://{rabbitmq.username}:{rabbitmq.password}@{rabbitmq.host}:{rabbitmq.port}/"
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "mqtwist.loadgen", "--amqp", url, "--queue", queue, "--count", "3",
             "--size", "500", "--dkim-key", str(key), "--dkim-selector", "sel"],
            env=dict(os.environ),
            path=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            reactor=reactor,
        )
        assert code == 0, (out + err).decode()
        assert out.startswith(f"published 3 messages to queue '{queue}'".encode())
        received = await amqp.collect(queue, 3)
        job = json.loads(received[0].body)
        assert job["dkim"] == {"domain": "example.org", "selector": "sel", "key": key.read_text()}
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_command_line_names_an_unreachable_broker(tmp_path):
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "mqtwist.loadgen", "--amqp", "amqp://guest:guest@127.0.0.1:1/?connection_timeout=2"],
        env=dict(os.environ),
        path=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        reactor=reactor,
    )
    assert code == 1
    assert b"could not connect to AMQP broker amqp://guest:***@127.0.0.1:1/" in err
