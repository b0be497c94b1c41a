"""
The SMTP submission server with real clients over real sockets: Python's
smtplib (in a thread) and swaks (a subprocess), against a server on a
loopback port whose queue records what it is given.
"""

from __future__ import annotations

import dataclasses
import shutil
import smtplib
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers_submission import HOSTNAME, inThread, startServer, stopServer, swaks, swaksMissing
from prometheus_client import generate_latest
from test_smtp_session import hasIPv6Loopback
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from mqtwist.config import Config, PoolRule
from mqtwist.service import MailerService
from mqtwist.submission.access import Access, hashPassword
from mqtwist.submission.envelope import Recipient

MESSAGE = (
    b"From: Sender <sender@example.com>\r\n"
    b"To: Rcpt <rcpt@example.org>\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that begins with a dot.\r\n"
    b"..Two dots.\r\n"
    b"Last line.\r\n"
)


def _send(port: int, sender: str, recipients: list[str], message: bytes, **options: object) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.com", timeout=30) as client:
        refused = client.sendmail(sender, recipients, message, **options)  # type: ignore[arg-type]
        return dict(refused)


@pytest_twisted.ensureDeferred
async def test_smtplib_message_is_queued_byte_exact() -> None:
    """
    A message sent with smtplib reaches the queue with its envelope, its
    bytes as sent (dot-stuffing undone) under a Received header, and the
    client's address and HELO name; the reply came after the queue fired.
    """
    running = await startServer()
    try:
        refused = await inThread(
            _send, running.port, "sender@example.com", ["rcpt@example.org", "two@example.net"], MESSAGE
        )
        assert refused == {}
        [submission] = running.queue.submissions
        assert submission.sender == "sender@example.com"
        assert submission.recipients == (Recipient("rcpt@example.org"), Recipient("two@example.net"))
        received, rest = submission.mime.split(b"\r\nFrom: ", 1)
        assert b"From: " + rest == MESSAGE
        assert received.startswith(b"Received: from client.example.com ([127.0.0.1])\r\n\tby " + HOSTNAME.encode())
        assert b" with ESMTP id " in received
        assert submission.clientAddress == "127.0.0.1"
        assert submission.heloName == "client.example.com"
        assert submission.tls is False and submission.user is None
        assert running.metrics.value("mqtwist_submission_messages_total") == 1
        assert running.metrics.value("mqtwist_submission_recipients_total") == 2
    finally:
        await stopServer(running)


def _exchange(port: int, lines: list[bytes]) -> bytes:
    """Send raw lines (all at once), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(lines))
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return received
            received += data


@pytest_twisted.ensureDeferred
async def test_pipelined_session_in_one_write() -> None:
    """
    A whole session written at once (PIPELINING, the commands after the
    dot waiting for the queue's answer) gets every reply in order.
    """
    running = await startServer()
    try:
        session = [
            b"EHLO pipeline.example\r\n",
            b"MAIL FROM:<a@example.com>\r\n",
            b"RCPT TO:<b@example.org>\r\n",
            b"DATA\r\n",
            b"Subject: one\r\n\r\nbody one\r\n.\r\n",
            b"MAIL FROM:<a@example.com>\r\n",
            b"RCPT TO:<c@example.org>\r\n",
            b"DATA\r\n",
            b"Subject: two\r\n\r\nbody two\r\n.\r\n",
            b"QUIT\r\n",
        ]
        received = await inThread(_exchange, running.port, session)
        replies = [line for line in received.split(b"\r\n") if line and not line.startswith(b"250-")]
        assert [reply[:3] for reply in replies] == [
            b"220", b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250", b"221"
        ]
        assert [s.mime.split(b"\r\n\r\n", 1)[1] for s in running.queue.submissions] == [b"body one\r\n", b"body two\r\n"]
    finally:
        await stopServer(running)


@pytest.mark.skipif(swaksMissing() is not None, reason=swaksMissing() or "")
@pytest_twisted.ensureDeferred
async def test_swaks_message_is_queued() -> None:
    running = await startServer()
    try:
        result = await inThread(
            swaks,
            "--server", f"127.0.0.1:{running.port}",
            "--from", "sender@example.com",
            "--to", "rcpt@example.org",
            "--helo", "swaks.example",
            "--header", "Subject: from swaks",
            "--body", "hello from swaks",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        [submission] = running.queue.submissions
        assert submission.recipients == (Recipient("rcpt@example.org"),)
        assert b"Subject: from swaks\r\n" in submission.mime
        assert b"\tfor <rcpt@example.org>;" in submission.mime
    finally:
        await stopServer(running)


@pytest_twisted.ensureDeferred
async def test_metricsExposition() -> None:
    """The submission figures are in what Prometheus scrapes."""
    running = await startServer()
    try:
        await inThread(_send, running.port, "a@example.com", ["b@example.org"], MESSAGE)
        text = generate_latest(running.metrics.registry).decode()
    finally:
        await stopServer(running)
    assert 'mqtwist_submission_sessions_total{result="accepted"} 1.0' in text
    assert "mqtwist_submission_messages_total 1.0" in text
    assert "mqtwist_submission_recipients_total 1.0" in text
    # as sent: with the two dots that smtplib doubled
    assert f"mqtwist_submission_received_bytes_total {float(len(MESSAGE) + 2)}" in text


def _service(tmp_path: Path, **settings: Any) -> MailerService:
    values: dict[str, Any] = {
        "amqp": "amqp://guest:guest@127.0.0.1:1/",
        "submission": ["tcp:0"],
        "deliveryJournal": str(tmp_path / "journal"),
        "plugins": [],
    }
    values.update(settings)
    return MailerService(Config(**values))


def test_serviceListensOnEachEndpoint(tmp_path: Path, certificates: dict[str, str]) -> None:
    service = _service(
        tmp_path,
        submission=["tcp:0", "tcp:0:interface=127.0.0.2", "ssl:0"],
        submissionTlsCertificate=certificates["cert"],
        submissionTlsKey=certificates["key"],
    )
    assert [listener.endpointString for listener in service.submissionListeners] == [
        "tcp:0:interface=127.0.0.1",
        "tcp:0:interface=127.0.0.2",
        "tcp:0:interface=127.0.0.1",
    ]
    assert [listener.implicitTLS for listener in service.submissionListeners] == [False, False, True]
    assert service.submission is not None and service.submission.settings.tls is not None
    assert _service(tmp_path, submission=[]).submission is None


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"submission": ["nonsense:1"]}, "is not a Twisted endpoint string"),
        ({"submission": ["ssl:0"]}, "an ssl: endpoint needs a certificate"),
        ({"submissionTls": "required"}, "--submission-tls required needs a certificate"),
        ({"submissionTlsCertificate": "/nowhere.pem"}, "cannot load the submission server's TLS files"),
        ({"submissionUsers": "/nowhere.toml"}, "--submission-users: cannot read /nowhere.toml"),
    ],
)
def test_serviceRefusesWhatCannotWork(tmp_path: Path, settings: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace(".", r"\.")):
        _service(tmp_path, **settings)


def test_reloadReadsTheUsersFileAgain(tmp_path: Path) -> None:
    """
    SIGHUP's reconfigure reads the users file again, with the trusted
    networks, without naming them as waiting for a restart; a bad file
    changes nothing.
    """
    users = tmp_path / "users.toml"
    users.write_text(f'[users.alice]\npassword = "{hashPassword("one")}"\n')
    service = _service(tmp_path, submissionUsers=str(users))
    assert service.submission is not None
    assert list(service.submission.access.users) == ["alice"]
    users.write_text(f'[users.bob]\npassword = "{hashPassword("two")}"\n')
    changed = _service(tmp_path, submissionUsers=str(users), submissionTrustedNetworks=["10.0.0.0/8"]).config
    assert service.reconfigure(changed) == []
    assert list(service.submission.access.users) == ["bob"]
    assert service.submission.access.network("10.1.2.3") is not None
    assert service.submission.access.network("127.0.0.1") is None
    users.write_text('[users.carol]\npassword = "plain"\n')
    with pytest.raises(ValueError, match="password must be an argon2 hash"):
        service.reconfigure(changed)
    assert list(service.submission.access.users) == ["bob"]
    assert service.reconfigure(dataclasses.replace(changed, submissionMaxSize=5, submissionUsers=None)) == [
        "submission-max-size"
    ]


def _smtpSource(port: int, sessions: int, messages: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", "5120", "-f", "source@example.com",
         "-t", "sink@example.org", "-M", "smtp-source.example", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(shutil.which("smtp-source") is None, reason="Postfix's smtp-source is not installed")
@pytest_twisted.ensureDeferred
async def test_smtpSourceSessions() -> None:
    """Postfix's smtp-source, 5 sessions at once, 100 messages of 5 KB."""
    running = await startServer()
    try:
        result = await inThread(_smtpSource, running.port, 5, 100)
        assert result.returncode == 0, result.stdout + result.stderr
        submissions = running.queue.submissions
        assert len(submissions) == 100
        assert {s.sender for s in submissions} == {"source@example.com"}
        assert {s.recipients for s in submissions} == {(Recipient("sink@example.org"),)}
        assert {s.heloName for s in submissions} == {"smtp-source.example"}
        for submission in submissions:
            _, _, body = submission.mime.partition(b"\r\n\r\n")
            assert len(body) >= 5120 and b"\n" not in body.replace(b"\r\n", b"")
        assert running.metrics.value("mqtwist_submission_messages_total") == 100
    finally:
        await stopServer(running)


def _sendWithOptions(port: int, message: bytes) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        return dict(
            client.sendmail(
                "sender@example.com",
                ["dsn@example.org"],
                message,
                mail_options=["BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=env+2B1"],
                rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;dsn@example.org"],
            )
        )


@pytest_twisted.ensureDeferred
async def test_eightBitDSNAndABigMessage() -> None:
    """
    smtplib with 8BITMIME, SMTPUTF8 and the DSN parameters, a UTF-8 body,
    then a 5 MB message: each reaches the queue byte for byte.
    """
    running = await startServer()
    try:
        utf8 = "Subject: Grüße\r\n\r\nZoë sagt: schön.\r\n".encode()
        assert await inThread(_sendWithOptions, running.port, utf8) == {}
        [submission] = running.queue.submissions
        assert submission.mime.endswith(utf8)
        assert (submission.smtputf8, submission.ret, submission.envid) == (True, "HDRS", "env+1")
        assert submission.recipients == (
            Recipient("dsn@example.org", ("SUCCESS", "DELAY"), "rfc822;dsn@example.org"),
        )
        big = b"Subject: big\r\n\r\n" + b"".join(b"%07d " % n + b"x" * 90 + b"\r\n" for n in range(50_000))
        assert await inThread(_send, running.port, "a@example.com", ["b@example.org"], big) == {}
        assert running.queue.submissions[1].mime.endswith(big)
    finally:
        await stopServer(running)


def _sendOverIPv6(port: int) -> dict[str, object]:
    with smtplib.SMTP("::1", port, local_hostname="six.example", timeout=30) as client:
        return dict(client.sendmail("a@example.com", ["b@example.org"], MESSAGE))


@pytest.mark.skipif(not hasIPv6Loopback(), reason="no IPv6 loopback here")
@pytest_twisted.ensureDeferred
async def test_ipv6Client() -> None:
    """A tcp6 endpoint without interface= listens on ::1, trusted by default."""
    running = await startServer(
        endpoints=("tcp6:0",), access=Access.fromSettings(Config().submissionTrustedNetworks, None)
    )
    try:
        assert running.listeners[0].endpointString == r"tcp6:0:interface=\:\:1"
        assert await inThread(_sendOverIPv6, running.port) == {}
        [submission] = running.queue.submissions
        assert submission.clientAddress == "::1"
        assert submission.mime.startswith(b"Received: from six.example ([IPv6:::1])\r\n")
    finally:
        await stopServer(running)


def test_serviceWarnsOfUsersWithoutTLS(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text(f'[users.alice]\npassword = "{hashPassword("one")}"\n')
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _service(tmp_path, submissionUsers=str(users))
        _service(tmp_path, submissionUsers=str(users), submissionAuthCleartext="loopback")
        _service(tmp_path, submissionTrustedNetworks=[])
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(event) for event in events if event.get("log_level") == LogLevel.warn]
    assert warnings == [
        "--submission: users but no --submission-tls-certificate: AUTH is offered only nowhere (it needs "
        "TLS, or --submission-auth-cleartext loopback)",
        "--submission: users but no --submission-tls-certificate: AUTH is offered only to loopback clients, "
        "in clear",
        "--submission: no users (--submission-users) and no trusted networks (--submission-trusted-networks): "
        "every recipient will be refused",
    ]


async def _until(condition: Any, what: str, limit: float = 30.0) -> None:
    """Poll C{condition} every 20 ms until it holds; fail after C{limit} seconds."""
    from twisted.internet import reactor, task

    waited = 0.0
    while not condition():
        assert waited < limit, f"still not {what} after {limit} s"
        await task.deferLater(reactor, 0.02)
        waited += 0.02


@pytest_twisted.ensureDeferred
async def test_timedOutClientThatDoesNotReadIsDisconnected() -> None:
    """
    A client that sends commands and never reads the replies fills the
    server's write buffer; when its command time-out comes, the 421 cannot
    be written, and the connection is aborted instead of waiting for ever
    for writes that never drain (it kept its slot in the connection
    limits).
    """
    running = await startServer(commandTimeout=0.5)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    try:
        client.connect_ex(("127.0.0.1", running.port))
        await _until(lambda: running.server.openConnections() == 1, "connected")
        [session] = running.server.connections

        def blocked() -> bool:
            # what does not fit in the socket now is simply not sent
            try:
                client.send(b"NOOP\r\n" * 1000)
            except BlockingIOError:
                pass
            return session._writeBlocked

        await _until(blocked, "blocked on writes")
        await _until(lambda: running.server.openConnections() == 0, "disconnected")
        assert running.server.byClient == {}
        assert running.metrics.value("mqtwist_submission_refused_total", reason="timeout") == 1
        assert running.metrics.value("mqtwist_submission_refused_total", reason="not-reading") == 0
    finally:
        client.close()
        await stopServer(running)


def test_serviceGivesTheServerItsSettingsAndChecksDefaultsWithItsPools(tmp_path: Path) -> None:
    # a network's default naming a configured IP pool: a job the outbox
    # reads under this service's settings, not under bare ones
    users = tmp_path / "users.toml"
    users.write_text('[[networks]]\nnetwork = "10.0.0.0/8"\ndefaults = { pool = "bulk" }\n')
    service = _service(
        tmp_path,
        submissionUsers=str(users),
        submissionAuthThreads=3,
        submissionMaxMemory=64 * 1024 * 1024,
        pools=[PoolRule("bulk", ("127.0.0.1",))],
    )
    assert service.submission is not None
    assert (service.submission.settings.authThreads, service.submission.settings.maxMemory) == (3, 64 * 1024 * 1024)
    assert service.submission.access.network("10.1.2.3").defaults == {"pool": "bulk"}
    with pytest.raises(ValueError) as info:
        _service(tmp_path, submissionUsers=str(users))
    assert "bulk" in str(info.value)
