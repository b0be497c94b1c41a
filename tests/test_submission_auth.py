"""
TLS and AUTH of the submission server with real clients: STARTTLS and
implicit TLS (an C{ssl:} endpoint) with smtplib and swaks, AUTH PLAIN and
LOGIN against a users file of argon2 hashes made by C{mqtwist
hash-password}, AUTH refused before TLS, what a client pipelines after
STARTTLS thrown away, failures counted by mechanism, and no password in
any log event.  Also the users file's format and its errors.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers_submission import Running, inThread, startServer, stopServer, swaks, swaksMissing
from twisted.logger import formatEvent, globalLogPublisher

from mqtwist.submission.access import Access, readUsersFile
from mqtwist.submission.listener import ServerTLS, splitTLSEndpoint

PASSWORD = "Tr0ub4dor&3 with spaces"

MESSAGE = b"Subject: authenticated\r\n\r\nhello\r\n"


def _hashed(password: str) -> str:
    """The hash as C{mqtwist hash-password} prints it, run as a command."""
    result = subprocess.run(
        [sys.executable, "-m", "mqtwist.cli", "hash-password"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def usersFile(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("users") / "users.toml"
    path.write_text(
        "[users.alice]\n"
        f'password = "{_hashed(PASSWORD)}"\n'
        "messages-per-minute = 100\n"
        'defaults = { tags = ["alice"], queues = { results = "alice.results" } }\n'
        "\n"
        "[[networks]]\n"
        'network = "127.0.0.3/32"\n'
        'defaults = { tags = ["app"] }\n'
    )
    return str(path)


async def _server(usersFile: str, certificates: dict[str, str], **changes: Any) -> Running:
    access = Access.fromSettings([], usersFile)
    tls = ServerTLS(certificates["cert"], certificates["key"])
    return await startServer(access=access, tls=tls, **changes)


def _context(certificates: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificates["ca"])


def _starttlsLogin(port: int, certificates: dict[str, str], mechanism: str, password: str) -> Any:
    with smtplib.SMTP("localhost", port, timeout=30) as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        client.starttls(context=_context(certificates))
        client.ehlo("client.example")
        assert client.has_extn("auth") and not client.has_extn("starttls")
        client.user, client.password = "alice", password
        code, text = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
        return code, text


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest_twisted.ensureDeferred
async def test_starttlsThenAuth(usersFile: str, certificates: dict[str, str], mechanism: str) -> None:
    running = await _server(usersFile, certificates)
    try:
        code, _ = await inThread(_starttlsLogin, running.port, certificates, mechanism, PASSWORD)
        assert code == 235
        [submission] = running.queue.submissions
        assert submission.user == "alice" and submission.tls
        assert submission.defaults == {"tags": ["alice"], "queues": {"results": "alice.results"}}
        assert b" with ESMTPSA id " in submission.mime
        assert re.match(
            rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
            rb"\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+ \(\d+/\d+ bits\)\)\r\n"
            rb"\tby mx\.submission\.test \(mqtwist\) with ESMTPSA id [0-9A-F]{16}\r\n"
            rb"\tfor <bob@example\.org>;\r\n",
            submission.mime,
        ), submission.mime[:300]
        assert submission.mime.endswith(MESSAGE)
        assert running.metrics.value("mqtwist_submission_auth_total", mechanism=mechanism, result="success") == 1
    finally:
        await stopServer(running)


@pytest_twisted.ensureDeferred
async def test_wrongPasswordIsRefusedAndNeverLogged(usersFile: str, certificates: dict[str, str]) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    running = await _server(usersFile, certificates)
    try:
        for mechanism in ("PLAIN", "LOGIN"):
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                await inThread(_starttlsLogin, running.port, certificates, mechanism, "a wrong s3cret")
            assert refused.value.smtp_code == 535
            assert running.metrics.value(
                "mqtwist_submission_auth_total", mechanism=mechanism, result="failure"
            ) == 1
        await inThread(_starttlsLogin, running.port, certificates, "PLAIN", PASSWORD)
        assert len(running.queue.submissions) == 1
    finally:
        await stopServer(running)
        globalLogPublisher.removeObserver(events.append)
    logged = "\n".join(formatEvent(event) + repr(event) for event in events)
    assert "AUTH PLAIN failed for 127.0.0.1 (user alice)" in logged
    for secret in ("a wrong s3cret", PASSWORD, base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode()):
        assert secret not in logged


def _beforeTLS(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        return client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode())


@pytest_twisted.ensureDeferred
async def test_noAuthBeforeTLS(usersFile: str, certificates: dict[str, str]) -> None:
    running = await _server(usersFile, certificates)
    try:
        assert await inThread(_beforeTLS, running.port) == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
    finally:
        await stopServer(running)
    loopback = await _server(usersFile, certificates, authCleartext="loopback")
    try:
        code, _ = await inThread(_beforeTLS, loopback.port)
        assert code == 235
    finally:
        await stopServer(loopback)


def _implicit(port: int, certificates: dict[str, str]) -> Any:
    with smtplib.SMTP_SSL("localhost", port, context=_context(certificates), timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("auth") and not client.has_extn("starttls")
        client.login("alice", PASSWORD)
        return client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)


@pytest_twisted.ensureDeferred
async def test_implicitTLSEndpoint(usersFile: str, certificates: dict[str, str]) -> None:
    running = await _server(
        usersFile, certificates, endpoints=("tcp:0:interface=127.0.0.1", "ssl:0:interface=127.0.0.1")
    )
    try:
        assert await inThread(_implicit, running.portOf(1), certificates) == {}
        [submission] = running.queue.submissions
        assert submission.tls and submission.user == "alice"
        assert b"\r\n\t(using TLSv1." in submission.mime.split(b"\r\n\r\n")[0]
    finally:
        await stopServer(running)


def test_tlsEndpointStrings() -> None:
    assert splitTLSEndpoint("tcp:587") is None
    assert splitTLSEndpoint("ssl:465") == ("tcp:465", None, None)
    assert splitTLSEndpoint(r"ssl:465:interface=0.0.0.0:privateKey=/k\:ey.pem:certKey=/c.pem") == (
        "tcp:465:interface=0.0.0.0",
        "/c.pem",
        "/k:ey.pem",
    )


def _injection(port: int, certificates: dict[str, str]) -> tuple[bytes, list[bytes]]:
    """STARTTLS with a command behind it in the same packet, in clear."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO c\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        ready = reader.readline()
        wrapped = _context(certificates).wrap_socket(sock, server_hostname="localhost")
        wrapped.sendall(b"NOOP\r\nQUIT\r\n")
        after = []
        data = b""
        while chunk := wrapped.recv(4096):
            data += chunk
        after = data.split(b"\r\n")
        return ready, after


@pytest_twisted.ensureDeferred
async def test_commandsPipelinedAfterStarttlsAreDropped(usersFile: str, certificates: dict[str, str]) -> None:
    """
    RFC 3207 5: what came in clear behind STARTTLS is not taken as a
    command of the encrypted session (CVE-2011-0411).
    """
    running = await _server(usersFile, certificates)
    try:
        ready, after = await inThread(_injection, running.port, certificates)
        assert ready == b"220 2.0.0 Ready to start TLS\r\n"
        assert after == [b"250 2.0.0 Ok", b"221 2.0.0 Bye", b""]
    finally:
        await stopServer(running)


@pytest.mark.skipif(swaksMissing() is not None, reason=swaksMissing() or "")
@pytest_twisted.ensureDeferred
async def test_swaksStarttlsAuth(usersFile: str, certificates: dict[str, str]) -> None:
    running = await _server(usersFile, certificates)
    try:
        for mechanism in ("PLAIN", "LOGIN"):
            result = await inThread(
                swaks, "--server", f"127.0.0.1:{running.port}", "--tls", "--auth", mechanism,
                "--auth-user", "alice", "--auth-password", PASSWORD,
                "--from", "alice@example.com", "--to", "bob@example.org",
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "235 2.7.0 Authentication successful" in result.stdout
        assert [s.user for s in running.queue.submissions] == ["alice", "alice"]
        assert all(s.tls for s in running.queue.submissions)
    finally:
        await stopServer(running)


def _fromNetwork(port: int) -> Any:
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.3", 0), timeout=30) as client:
        return client.sendmail("app@example.com", ["bob@example.org"], MESSAGE)


@pytest_twisted.ensureDeferred
async def test_networkOfTheUsersFileWithItsDefaults(usersFile: str, certificates: dict[str, str]) -> None:
    running = await _server(usersFile, certificates)
    try:
        assert await inThread(_fromNetwork, running.port) == {}
        [submission] = running.queue.submissions
        assert submission.user is None and submission.defaults == {"tags": ["app"]}
    finally:
        await stopServer(running)


@pytest.mark.parametrize(
    "text, error",
    [
        ('[users.bob]\npassword = "plain"\n', "password must be an argon2 hash"),
        ('[users.bob]\npassword = "$argon2id$nonsense"\n', "no valid argon2 hash"),
        ("[users.bob]\n", "password must be an argon2 hash"),
        ('[users.bob]\npassword = "{hash}"\nsecret = 1\n', "unknown key(s) secret"),
        ('[users.bob]\npassword = "{hash}"\nmessages-per-minute = -1\n', "messages-per-minute"),
        ('[users.bob]\npassword = "{hash}"\ndefaults = 3\n', "defaults must be a table"),
        ('[users.bob]\npassword = "{hash}"\nsenders = "bob@example.com"\n', "senders must be a list"),
        ('[users.bob]\npassword = "{hash}"\nsenders = ["bob @example.com"]\n', "has a space or a control"),
        ('[[networks]]\nnetwork = "10.0.0.300/8"\n', "is no network"),
        ("[[networks]]\n", 'needs network = "CIDR"'),
        ("passwords = 1\n", "unknown key(s) passwords"),
        ("[users\n", "is not valid TOML"),
    ],
)
def test_usersFileErrors(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text.replace("{hash}", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$" + "A" * 43))
    with pytest.raises(ValueError) as raised:
        readUsersFile(str(path))
    assert error in str(raised.value)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "defaults, reason",
    [
        ('{ tags = "x" }', "'tags' must be a list of strings"),
        ('{ priority = "high" }', "'priority' must be an integer 0-255"),
        ("{ queues = 5 }", "queues"),
    ],
)
def test_usersFileDefaultsThatMakeInvalidJobs(tmp_path: Path, defaults: str, reason: str) -> None:
    """
    An account's C{defaults} that would make jobs the consumer refuses (the
    server answered 250 for them) are refused when the file is read,
    naming the user, the keys and the parser's reason; for a network too.
    """
    hashed = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$" + "A" * 43
    path = tmp_path / "users.toml"
    path.write_text(f'[users.bob]\npassword = "{hashed}"\ndefaults = {defaults}\n')
    with pytest.raises(ValueError) as raised:
        readUsersFile(str(path))
    message = str(raised.value)
    assert f"{path}: [users.bob]: defaults (" in message and "would make jobs that mqtwist refuses" in message
    assert reason in message
    path.write_text(f'[[networks]]\nnetwork = "10.0.0.0/8"\ndefaults = {defaults}\n')
    with pytest.raises(ValueError, match=r"\[\[networks\]\] number 1: defaults"):
        Access.fromSettings([], str(path))
    # what the parser takes is taken
    path.write_text(
        f'[users.bob]\npassword = "{hashed}"\n'
        'defaults = { tags = ["x"], priority = 3, queues = { results = "bob.results" } }\n'
    )
    users, _ = readUsersFile(str(path))
    assert users["bob"].account.defaults["tags"] == ["x"]


def test_usersFileMissing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--submission-users: cannot read"):
        Access.fromSettings([], str(tmp_path / "nowhere.toml"))


def test_serverTLSFilesThatCannotLoad(tmp_path: Path, certificates: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot load the submission server's TLS files"):
        ServerTLS(str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="the key belongs to the certificate"):
        ServerTLS(certificates["cert"], certificates["ca"])


def _hashPasswordCommand(*arguments: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqtwist.cli", "hash-password", *arguments],
        input=stdin, capture_output=True, text=True, timeout=60,
    )


def test_hashPasswordCommand(tmp_path: Path) -> None:
    """
    C{mqtwist hash-password --user NAME} prints a table that the users file
    takes as it is, whose hash the password matches; an empty password is
    refused with status 1.
    """
    result = _hashPasswordCommand("--user", "ann@example.com", stdin="open sesame\n")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "users.toml"
    path.write_text(result.stdout)
    users, networks = readUsersFile(str(path))
    assert list(users) == ["ann@example.com"] and networks == []
    assert users["ann@example.com"].passwordHash.startswith("$argon2id$")
    access = Access(users)
    assert access._check(users["ann@example.com"], "open sesame") == users["ann@example.com"].account
    assert access._check(users["ann@example.com"], "open sesame ") is None
    assert "open sesame" not in result.stdout + result.stderr
    # a name beyond the BMP is written as TOML, not as JSON's surrogate pair
    emoji = _hashPasswordCommand("--user", "\U0001f600 \"q\"", stdin="pw\n")
    assert emoji.returncode == 0, emoji.stderr
    assert emoji.stdout.startswith('[users."\U0001f600 \\"q\\""]\n')
    path.write_text(emoji.stdout, encoding="utf-8")
    assert list(readUsersFile(str(path))[0]) == ["\U0001f600 \"q\""]
    empty = _hashPasswordCommand(stdin="\n")
    assert (empty.returncode, empty.stdout) == (1, "")
    assert "the password is empty" in empty.stderr


def test_usersFileSenders(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        '[users.bob]\npassword = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$' + "A" * 43 + '"\n'
        'senders = ["Bob@Example.com", "*@bob.example"]\n'
        '[[networks]]\nnetwork = "10.0.0.0/8"\nsenders = ["noreply@example.com"]\n'
    )
    users, networks = readUsersFile(str(path))
    bob = users["bob"].account
    assert bob.senders == ("bob@example.com", "*@bob.example")
    assert [bob.mayUse(s) for s in ("BOB@example.com", "x@bob.example", "x@example.com", "")] == [True, True, False, True]
    assert networks[0][1].senders == ("noreply@example.com",)
