"""
No relaying: a client that is neither in a trusted network nor
authenticated gets every recipient refused, whatever form the address
takes (source routes, percent hacks, quoted local parts, bang paths,
address literals) and after failed AUTH, with real clients over real
sockets: smtplib bound to 127.0.0.2 (only 127.0.0.1/32 is trusted), raw
pipelined sessions and swaks.  Nothing ever reaches the queue from them,
while the same addresses from the trusted address, or after a good AUTH,
are taken.
"""

from __future__ import annotations

import base64
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers_submission import Running, inThread, startServer, stopServer, swaks, swaksMissing

from mqtwist.submission.access import Access, hashPassword

UNTRUSTED = "127.0.0.2"
PASSWORD = "correct horse battery staple"

#: the forms of addresses that open relays have been fooled with
FORMS = [
    "victim@example.org",
    "<@relay.example.net:victim@example.org>",
    "<@a.example,@b.example:victim@example.org>",
    "victim%example.org@example.net",
    "example.org!victim@example.net",
    '"victim@example.org"@example.net',
    "victim@[192.0.2.1]",
    "VICTIM@EXAMPLE.ORG",
]


@pytest.fixture(scope="module")
def usersFile(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("users") / "users.toml"
    path.write_text(f'[users.alice]\npassword = "{hashPassword(PASSWORD)}"\n')
    return str(path)


async def _server(usersFile: str, **changes: Any) -> Running:
    access = Access.fromSettings(["127.0.0.1/32"], usersFile)
    return await startServer(access=access, authCleartext="loopback", **changes)


def _path(form: str) -> str:
    return form if form.startswith("<") else f"<{form}>"


def _rcpt(port: int, source: str, form: str, login: str | None = None) -> tuple[int, bytes, int | None]:
    """MAIL and RCPT from C{source}: the RCPT reply, and the AUTH reply if any."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as client:
        client.ehlo("relay-test.example")
        authCode = None
        if login is not None:
            authCode, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice\0{login}".encode()).decode())
        client.mail("sender@example.com")
        code, text = client.docmd("RCPT TO:" + _path(form))
        return code, text, authCode


@pytest.mark.parametrize("form", FORMS)
@pytest_twisted.ensureDeferred
async def test_untrustedClientCannotRelay(usersFile: str, form: str) -> None:
    running = await _server(usersFile)
    try:
        code, text, _ = await inThread(_rcpt, running.port, UNTRUSTED, form)
        assert code >= 500, text
        if form != '"victim@example.org"@example.net':
            assert (code, text) == (530, b"5.7.0 Authentication required")
        wrong, _, authCode = await inThread(_rcpt, running.port, UNTRUSTED, form, "not the password")
        assert authCode == 535
        assert wrong >= 500
        assert running.queue.submissions == []
    finally:
        await stopServer(running)


@pytest.mark.parametrize("form", [form for form in FORMS if not form.startswith('"')])
@pytest_twisted.ensureDeferred
async def test_trustedOrAuthenticatedClientMay(usersFile: str, form: str) -> None:
    """
    The control: the same forms from the trusted address, or after a good
    AUTH from the untrusted one, are taken (a source route stripped).
    """
    running = await _server(usersFile)
    try:
        trusted, text, _ = await inThread(_rcpt, running.port, "127.0.0.1", form)
        assert trusted == 250, text
        authenticated, text, authCode = await inThread(_rcpt, running.port, UNTRUSTED, form, PASSWORD)
        assert (authCode, authenticated) == (235, 250), text
    finally:
        await stopServer(running)


def _sendmail(port: int, source: str, recipients: list[str]) -> Any:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as client:
        return client.sendmail("sender@example.com", recipients, b"Subject: relay?\r\n\r\nhello\r\n")


@pytest_twisted.ensureDeferred
async def test_sendmailFromUntrustedIsRefusedWhole(usersFile: str) -> None:
    running = await _server(usersFile)
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await inThread(_sendmail, running.port, UNTRUSTED, ["a@example.org", "b@example.net"])
        assert {code for code, _ in refused.value.recipients.values()} == {530}
        assert running.queue.submissions == []
        assert running.metrics.value("mqtwist_submission_refused_total", stage="rcpt", reason="relay") == 2
    finally:
        await stopServer(running)


def _raw(port: int, source: str, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest_twisted.ensureDeferred
async def test_pipelinedRelayAttemptQueuesNothing(usersFile: str) -> None:
    """
    A whole relay attempt in one write, failed AUTH included: every
    recipient refused, DATA refused, the message's first header line read
    as a command (which closes the session: no SMTP client says that),
    nothing queued.
    """
    running = await _server(usersFile)
    try:
        wrong = base64.b64encode(b"\0alice\0guess").decode()
        session = (
            f"EHLO relay.example\r\nAUTH PLAIN {wrong}\r\nMAIL FROM:<spam@example.com>\r\n"
            "RCPT TO:<victim@example.org>\r\nRCPT TO:<@x.example:victim@example.org>\r\nDATA\r\n"
            "Subject: spam\r\n\r\nbuy\r\n.\r\nQUIT\r\n"
        ).encode()
        received = await inThread(_raw, running.port, UNTRUSTED, session)
        codes = [line[:3] for line in received.split(b"\r\n") if line[3:4] == b" "]
        assert codes == [b"220", b"250", b"535", b"250", b"530", b"530", b"554", b"421"]
        assert running.queue.submissions == []
    finally:
        await stopServer(running)


@pytest_twisted.ensureDeferred
async def test_addressAfterAddressIsCutOff(usersFile: str) -> None:
    running = await _server(usersFile, maxBadCommands=5)
    try:
        attempts = "".join(f"RCPT TO:<victim{n}@example.org>\r\n" for n in range(20))
        received = await inThread(
            _raw, running.port, UNTRUSTED, f"EHLO r\r\nMAIL FROM:<s@example.com>\r\n{attempts}".encode()
        )
        codes = [line[:3] for line in received.split(b"\r\n") if line[3:4] == b" "]
        assert codes == [b"220", b"250", b"250"] + [b"530"] * 5 + [b"421"]
    finally:
        await stopServer(running)


@pytest.mark.skipif(swaksMissing() is not None, reason=swaksMissing() or "")
@pytest_twisted.ensureDeferred
async def test_swaksFromUntrusted(usersFile: str) -> None:
    running = await _server(usersFile)
    try:
        common = ("--server", f"127.0.0.1:{running.port}", "--local-interface", UNTRUSTED,
                  "--from", "s@example.com", "--to", "victim@example.org")
        refused = await inThread(swaks, *common)
        assert refused.returncode != 0
        assert "<** 530 5.7.0 Authentication required" in refused.stdout
        failedAuth = await inThread(swaks, *common, "--auth", "LOGIN", "--auth-user", "alice",
                                    "--auth-password", "wrong")
        assert failedAuth.returncode != 0
        assert "535 5.7.8" in failedAuth.stdout
        assert running.queue.submissions == []
        accepted = await inThread(swaks, *common, "--auth", "LOGIN", "--auth-user", "alice",
                                  "--auth-password", PASSWORD)
        assert accepted.returncode == 0, accepted.stdout
        [submission] = running.queue.submissions
        assert submission.user == "alice" and submission.clientAddress == UNTRUSTED
    finally:
        await stopServer(running)


@pytest_twisted.ensureDeferred
async def test_noTrustedNetworksNoUsersRefusesEveryone(tmp_path: Path) -> None:
    running = await startServer(access=Access.fromSettings([], None))
    try:
        code, text, _ = await inThread(_rcpt, running.port, "127.0.0.1", "a@example.org")
        assert (code, text) == (530, b"5.7.0 Authentication required")
    finally:
        await stopServer(running)
