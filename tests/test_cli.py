"""
The C{mqtwist} command as its user runs it: the console script of the
virtualenv, as a subprocess, against the session's RabbitMQ node and, for
the end-to-end cases, the real service delivering to a test SMTP server.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import sys
import uuid

import pytest
import pytest_twisted
from helpers_endtoend import brokerURL, decoded, job, makeConfig, normalised, publishAll, running
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue

from mqtwist.service import MailerService

#: the console script that setup.cfg declares, installed in the virtualenv
MQTWIST = os.path.join(os.path.dirname(sys.executable), "mqtwist")


async def mqtwist(*arguments: str) -> tuple[str, str, int]:
    """
    Run the C{mqtwist} command; fires with its standard output, standard
    error and exit status.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("MQTWIST_")}
    out, err, code = await getProcessOutputAndValue(MQTWIST, arguments, env=env, reactor=reactor)
    return out.decode(), err.decode(), code


def test_the_console_script_is_installed():
    assert os.access(MQTWIST, os.X_OK), "pip install -e . makes it (setup.cfg's console_scripts)"


@pytest_twisted.ensureDeferred
async def test_send_from_flags_arrives_as_built(rabbitmq, smtpServer, queues):
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        out, err, code = await mqtwist(
            "send", "--amqp", brokerURL(rabbitmq), "--queue", queues["outbox"],
            "--from", "alice@example.org", "--to", "bob@example.com", "--subject", "Hello \u00e9t\u00e9",
            "--body", "first line\nsecond line\n", "--header", "X-Campaign: spring 1",
            "--header", "X-Campaign: spring 2", "--id", "flags-1",
        )
        assert (code, err) == (0, ""), out + err
        assert out == f"published job flags-1 to queue {queues['outbox']!r}\n"
        (received,) = await smtpServer.waitForMessages(1)
    assert received.mailFrom == "alice@example.org"
    assert received.rcptTos == ("bob@example.com",)
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message["From"] == "alice@example.org"
    assert message["To"] == "bob@example.com"
    assert message["Subject"] == "Hello \u00e9t\u00e9"
    assert message.get_all("X-Campaign") == ["spring 1", "spring 2"]
    assert message.get_content_type() == "text/plain"
    headers, _, body = received.data.partition(b"\r\n\r\n")
    assert body == b"first line\r\nsecond line\r\n"
    assert b"\r\nX-Campaign: spring 1\r\nX-Campaign: spring 2\r\n" in headers + b"\r\n"


@pytest_twisted.ensureDeferred
async def test_send_json_job_arrives_byte_exact(rabbitmq, smtpServer, queues, tmp_path):
    mime = "Subject: as given\r\nX-Odd:  two  spaces \r\n\r\nline\r\n.dot\r\n\u00e9\r\n"
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"id": "json-1", "envelope": "a@example.org", "recipient": "x@example.com", "mime": mime}))
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        out, err, code = await mqtwist(
            "send", "--amqp", brokerURL(rabbitmq), "--queue", queues["outbox"], "--json", str(path),
            "--to", "y@example.com",
        )
        assert code == 0, out + err
        (received,) = await smtpServer.waitForMessages(1)
    assert received.rcptTos == ("y@example.com",)
    assert received.data == normalised(mime)


@pytest_twisted.ensureDeferred
async def test_send_wait_delivered_exits_0_and_prints_the_result(rabbitmq, amqp, smtpServer, queues):
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        out, err, code = await mqtwist(
            "send", "--amqp", brokerURL(rabbitmq), "--queue", queues["outbox"], "--wait",
            "--from", "a@example.org", "--to", "good@example.com", "--body", "hi", "--id", "wait-ok",
        )
        # the run's results went to its own queue, not to the configured one;
        # success results still go where the configuration says
        (success,) = decoded(await amqp.collect(queues["success"], 1))
        assert await amqp.count(queues["results"]) == 0
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"published job wait-ok to queue {queues['outbox']!r}"
    assert lines[1].split() == ["ID", "RECIPIENT", "OUTCOME", "STATE", "RESULT", "CODE", "DESCRIPTION"]
    assert lines[2].split()[:6] == ["wait-ok", "good@example.com", "delivered", "message", "accepted", "250"]
    assert len(lines) == 3
    assert err == "1 delivered, 0 failed\n"
    assert success["id"] == "wait-ok"
    assert success["queues"]["results"].startswith("mqtwist-send-")
    # the run's queue is gone with the run
    with pytest.raises(Exception, match="NOT_FOUND"):
        await amqp.count(success["queues"]["results"])


@pytest_twisted.ensureDeferred
async def test_send_wait_refused_exits_1_and_prints_the_reply(rabbitmq, smtpServer, queues):
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        out, err, code = await mqtwist(
            "send", "--amqp", brokerURL(rabbitmq), "--queue", queues["outbox"], "--wait", "--output", "json",
            "--from", "a@example.org", "--to", "reject@example.com", "--to", "fine@example.com",
            "--body", "hi", "--id", "wait-mixed",
        )
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"published 2 jobs to queue {queues['outbox']!r} in ")
    results = {r["id"]: r for r in map(json.loads, lines[1:])}
    assert sorted(results) == ["wait-mixed-1", "wait-mixed-2"]
    refused = results["wait-mixed-1"]
    assert refused["recipient"] == "reject@example.com"
    entry = refused["results"][-1]
    assert (entry["state"], entry["result"], entry["code"], entry["status"]) == ("rcptto", "error", 550, "5.1.1")
    assert results["wait-mixed-2"]["results"][-1]["result"] == "accepted"
    assert err.endswith("1 delivered, 1 failed\n")


@pytest_twisted.ensureDeferred
async def test_send_count_publishes_distinct_ids(rabbitmq, amqp):
    queue = f"cli-count-{uuid.uuid4().hex[:8]}"
    # a priority outbox, as mqtwist --max-priority 10 declares it
    await amqp.declare(queue, {"x-max-priority": 10})
    try:
        out, err, code = await mqtwist(
            "send", "--amqp", brokerURL(rabbitmq), "--queue", queue, "--count", "50", "--window", "7",
            "--from", "a@example.org", "--to", "b@example.com", "--body", "load", "--id", "n",
            "--tag", "load-test", "--priority", "3",
        )
        assert code == 0, out + err
        assert out.startswith(f"published 50 jobs to queue {queue!r} in ")
        assert out.rstrip().endswith(" messages/s)")
        # not a terminal: progress as plain lines on standard error
        assert "published 7/50" in err or "published 14/50" in err
        received = await amqp.collect(queue, 50)
        jobs = decoded(received)
        assert sorted(j["id"] for j in jobs) == sorted(f"n-{i}" for i in range(1, 51))
        assert all(j["tags"] == ["load-test"] and j["priority"] == 3 for j in jobs)
        assert all(r.properties["priority"] == 3 and r.properties["delivery-mode"] == 2 for r in received)
        assert await amqp.count(queue) == 0
    finally:
        await amqp.delete(queue)


@pytest_twisted.ensureDeferred
async def test_send_to_a_queue_that_does_not_exist_fails(rabbitmq, amqp):
    queue = f"cli-missing-{uuid.uuid4().hex[:8]}"
    out, err, code = await mqtwist(
        "send", "--amqp", brokerURL(rabbitmq), "--queue", queue,
        "--from", "a@example.org", "--to", "b@example.com", "--body", "lost?",
    )
    assert code == 1
    assert out == ""
    assert err.startswith("mqtwist send: error: AMQP broker amqp://guest:***@")
    assert f"returned the message published to queue {queue!r} (312 NO_ROUTE): no queue of that name exists" in err
    # and publishing did not make the queue
    with pytest.raises(Exception, match="NOT_FOUND"):
        await amqp.count(queue)


@pytest_twisted.ensureDeferred
async def test_unreachable_broker_is_named_without_its_password():
    from fixtures_smtp import unusedPort

    port = unusedPort()
    out, err, code = await mqtwist(
        "send", "--amqp", f"amqp://guest:s3cret@127.0.0.1:{port}/", "--from", "a@example.org",
        "--to", "b@example.com", "--body", "x",
    )
    assert code == 1
    assert err.startswith(
        f"mqtwist send: error: cannot reach AMQP broker amqp://guest:***@127.0.0.1:{port}/%2F: "
        f"127.0.0.1:{port} refused the connection"
    )
    assert "s3cret" not in out + err
    out, err, code = await mqtwist("results", "--amqp", f"amqp://guest:s3cret@127.0.0.1:{port}/")
    assert code == 1
    assert err.startswith("mqtwist results: error: cannot reach AMQP broker")


@pytest_twisted.ensureDeferred
async def test_results_failed_json_prints_exactly_the_failed(rabbitmq, amqp, smtpServer, queues):
    # the test server refuses reject@ with 550 5.1.1
    bodies = [job(n) for n in range(3)] + [job(n, recipient="reject@example.com") for n in (3, 4)]
    service = MailerService(makeConfig(rabbitmq, smtpServer, queues), plugins=[])
    async with running(service):
        await publishAll(amqp, queues["outbox"], bodies)
        await amqp.collect(queues["failure"], 2)
        await amqp.collect(queues["success"], 3)
    out, err, code = await mqtwist(
        "results", "--amqp", brokerURL(rabbitmq), "--queue", queues["results"], "--failed", "--json", "--limit", "5",
    )
    assert (code, err) == (0, ""), out + err
    printed = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["id"] for r in printed) == ["job-3", "job-4"]
    assert all(r["results"][-1]["code"] == 550 for r in printed)
    # the command took what it read, printed or not
    assert await amqp.count(queues["results"]) == 0


@pytest_twisted.ensureDeferred
async def test_results_table_with_a_tag_filter(rabbitmq, amqp, queues):
    queue = queues["results"]
    delivered = {"id": "t-1", "recipient": "a@example.com", "tags": ["x"],
                 "results": [{"state": "message", "result": "accepted", "code": 250, "description": "Ok"}]}
    failed = {"id": "t-2", "recipient": "b@example.com", "tags": ["y"],
              "results": [{"state": "rcptto", "result": "error", "code": 550,
                           "description": "no such user\x1b[2J " + "x" * 200}]}
    await publishAll(amqp, queue, [json.dumps(delivered).encode(), json.dumps(failed).encode(), b"not json"])
    try:
        out, err, code = await mqtwist(
            "results", "--amqp", brokerURL(rabbitmq), "--queue", queue, "--tag", "y", "--limit", "3",
        )
    finally:
        await amqp.delete(queue)
    assert code == 0, out + err
    header, row = out.splitlines()
    assert header.split() == ["ID", "RECIPIENT", "OUTCOME", "STATE", "RESULT", "CODE", "DESCRIPTION"]
    assert row.split()[:6] == ["t-2", "b@example.com", "failed", "rcptto", "error", "550"]
    # the reply's escape sequence is shown, not sent to the terminal, and cut
    assert "no such user\\x1b[2J xxx" in row and "\x1b" not in row
    assert row.endswith("...") and len(row.split("  ")[-1].strip()) == 70
    assert err.startswith("skipped a message that is no result, not JSON")


@pytest_twisted.ensureDeferred
async def test_wrong_options_are_told():
    out, err, code = await mqtwist("send", "--from", "a@example.org", "--body", "x")
    assert code == 1
    assert err == "mqtwist send: error: give --from and --to (or a whole job with --json)\n"
    out, err, code = await mqtwist("send", "--json", "-", "--subject", "s")
    assert err == "mqtwist send: error: --json reads the whole job: --subject cannot go with it\n"
    out, err, code = await mqtwist("send", "--from", "a@example.org", "--to", "b@example.com", "--body", "x",
                                   "--header", "X-A: 1\r\nBcc: c@example.net")
    assert code == 1
    assert "mqtwist send: error: the message cannot be built: mime.headers.X-A contains the control character '\\r'" in err
    out, err, code = await mqtwist("send", "--priority", "256", "--from", "a@example.org", "--to", "b@example.com",
                                   "--body", "x")
    assert err == "mqtwist send: error: --priority 256 is out of range: give 0-255\n"
    out, err, code = await mqtwist("send", "--amqp", "http://localhost/")
    assert code == 2
    assert "is not amqp:// or amqps://" in err


class _Lines(ProcessProtocol):
    """
    A command's output as it comes: C{firstLine} fires with the first line
    of its standard output, C{ended} with its exit status.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.firstLine: Deferred[str] = Deferred()
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"\n" in self.out and not self.firstLine.called:
            self.firstLine.callback(self.out.split(b"\n")[0].decode())

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_ctrl_c_while_waiting_exits_130_and_deletes_the_run_queue(rabbitmq, amqp, queues):
    # no service runs: the job waits in the outbox, and so does the command
    outbox = queues["outbox"]
    await amqp.declare(outbox)
    command = _Lines()
    env = {name: value for name, value in os.environ.items() if not name.startswith("MQTWIST_")}
    process = reactor.spawnProcess(
        command, MQTWIST,
        [MQTWIST, "send", "--amqp", brokerURL(rabbitmq), "--queue", outbox, "--wait",
         "--from", "a@example.org", "--to", "b@example.com", "--body", "hi", "--id", "interrupted"],
        env=env,
    )
    try:
        assert await command.firstLine == f"published job interrupted to queue {outbox!r}"
        (waiting,) = decoded(await amqp.collect(outbox, 1))
        runQueue = waiting["queues"]["results"]
        assert waiting["queues"]["retry"] == runQueue
        # the run's queue exists while the command waits
        assert await amqp.count(runQueue) == 0
        process.signalProcess("INT")
        assert await command.ended == 130
    finally:
        await amqp.delete(outbox)
    assert command.err.decode().endswith("mqtwist send: interrupted\n")
    with pytest.raises(Exception, match="NOT_FOUND"):
        await amqp.count(runQueue)


@pytest_twisted.ensureDeferred
async def test_results_refuses_the_outbox(rabbitmq, queues):
    out, err, code = await mqtwist("results", "--amqp", brokerURL(rabbitmq), "--queue", "outbox")
    assert code == 1
    assert err == (
        "mqtwist results: error: 'outbox' is the outbox: reading it would take the delivery jobs "
        "from mqtwist; give a result queue\n"
    )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("queue", "configured"),
    [
        ("outbox.held", ""),
        ("outbox.delay.60s", ""),
        ("outbox.dead", ""),
        # the names the configuration gives them
        ("paused", 'outbox = "jobs"\nheld-queue = "paused"\n'),
        ("jobs.delay.45s", 'outbox = "jobs"\ndelay-buckets = [45, 900]\n'),
        ("graveyard", 'dead-letter-queue = "graveyard"\n'),
    ],
)
async def test_results_refuses_the_queues_that_hold_jobs(rabbitmq, tmp_path, queue, configured):
    """
    The held queue, the delay queues and the dead-letter queue hold jobs
    too: C{mqtwist results} would acknowledge them away; it refuses them
    before it connects, as the service names them.
    """
    configFile = tmp_path / "mqtwist.toml"
    configFile.write_text(configured)
    out, err, code = await mqtwist("results", "--amqp", brokerURL(rabbitmq), "--config", str(configFile), "--queue", queue)
    assert (out, code) == ("", 1)
    assert err == (
        f"mqtwist results: error: {queue!r} is one of mqtwist's own queues (its held queue, a delay queue "
        f"or the dead-letter queue): reading it would take the jobs in it away for good; give a result queue\n"
    )
