"""
Postfix as the receiving MTA for tests, and a recording TCP proxy to see
what the client wrote.

L{PostfixReceiver} runs a private Postfix instance: its own configuration,
queue and data directories under a temporary directory, SMTP servers on
free ports of 127.0.0.1 (one per L{Listener}: with or without PIPELINING,
STARTTLS or AUTH), no chroot, no DNS.  Mail for C{postfix.test} is
accepted for every local part except those starting with C{unknown}
(refused at RCPT with 550 5.1.1) and handed by a C{pipe} transport, one
recipient at a time, to a shell script that writes it to a file: the
message exactly as Postfix stored it, with LF line ends (Postfix's own),
the C{Received:} header smtpd put on top and nothing else added (C{pipe}
without flags adds no C{Delivered-To}, C{Return-Path} or
C{X-Original-To}; with C{local_header_rewrite_clients} empty cleanup adds
no missing headers and rewrites none).  Postfix's log goes to a file in
the same directory; its C{disconnect from} lines count the commands of
every session.  Both are watched with inotify, so tests wait for events.

AUTH is Cyrus SASL's, configured privately in C{etc/sasl} (Debian's
Postfix reads it from C{$config_directory/sasl}, others from
C{cyrus_sasl_config_path}, which names it too): each listener with AUTH
has an application configuration of its own (C{smtpd_sasl_path}), so each
offers its own mechanisms, all checking passwords against one sasldb
there, which C{saslpasswd2} fills with the receiver's users (realm
L{SASL_REALM}).  smtpd logs C{sasl_method=...} and C{sasl_username=...}
(with the realm) on the C{client=} line of every message received after
a successful AUTH.

Postfix's master process must run as root: L{postfixUnavailable} says why
a test cannot run here, L{saslUnavailable} why AUTH cannot.

L{RecordingProxy} sits between the client and a server and keeps every
chunk each side sent on each connection; L{RecordedConnection.transcript}
turns a connection into its commands and message bodies (up to STARTTLS).

Fixtures:

  - C{postfixReceiver} (module scope): a started L{PostfixReceiver} with
    the listeners C{"pipelining"}, C{"lockstep"} (PIPELINING not
    announced) and C{"tls"} (STARTTLS with the server certificate of the
    C{certificates} fixture, L{fixtures_tls}); unless
    L{saslUnavailable}, for AUTH as L{SASL_USERNAME} with
    L{SASL_PASSWORD}: C{"auth-plain"}, C{"auth-login"} and
    C{"auth-cram-md5"} (no TLS, that one mechanism each), C{"auth"} (no
    TLS, all three) and C{"auth-tls"} (all three, offered only after
    STARTTLS).
  - C{startRecordingProxy}: a function returning (a Deferred of) a
    started L{RecordingProxy} to a port; stopped after the test.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import pytest_twisted
from fixtures_smtp import unusedPort
from twisted.internet import inotify, reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, ServerFactory, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

#: seconds a wait for a delivery or a log line may take before the test fails
DEFAULT_TIMEOUT = 10.0
#: the domain Postfix takes mail for
DOMAIN = "postfix.test"
#: the user the delivery script runs as (pipe(8) refuses root)
DELIVERY_USER = "nobody"
SEARCH_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
#: the SASL realm of the receiver's users (smtpd's C{smtpd_sasl_local_domain})
SASL_REALM = DOMAIN
#: the user the C{postfixReceiver} fixture's listeners with AUTH accept
SASL_USERNAME = "mailer"
#: its password, not all ASCII: sent as UTF-8
SASL_PASSWORD = "Pf-s3cret/p\u00e455"
#: the SASL mechanisms a listener offers when it offers all
SASL_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
#: the Cyrus SASL plugins of those mechanisms and of the sasldb password store
_SASL_PLUGINS = ("libplain.so", "liblogin.so", "libcrammd5.so", "libsasldb.so")

def postfixUnavailable() -> str | None:
    """
    @return: why a private Postfix cannot run here, or C{None} when it can.
    """
    if shutil.which("postfix", path=SEARCH_PATH) is None:
        return (
            "Postfix is not installed (Debian: echo 'postfix postfix/main_mailer_type select No configuration' "
            "| debconf-set-selections && apt-get install postfix, or ./dev test)"
        )
    if os.geteuid() != 0:
        return "Postfix's master process needs root; run the tests as root"
    try:
        pwd.getpwnam(DELIVERY_USER)
    except KeyError:
        return f"the delivery user {DELIVERY_USER!r} does not exist on this host"
    return None


def saslUnavailable() -> str | None:
    """
    @return: why Postfix cannot offer AUTH here (Cyrus SASL's tools or
        plugins missing), or C{None} when it can.
    """
    if shutil.which("saslpasswd2", path=SEARCH_PATH) is None:
        return "saslpasswd2 is not installed (Debian: apt-get install sasl2-bin, or ./dev test)"
    missing = [name for name in _SASL_PLUGINS if not glob.glob(f"/usr/lib/*/sasl2/{name}")]
    if missing:
        return (
            f"the Cyrus SASL plugins {', '.join(missing)} are not installed "
            f"(Debian: apt-get install libsasl2-modules libsasl2-modules-db, or ./dev test)"
        )
    return None


@dataclass(frozen=True)
class Listener:
    """
    One SMTP server of the Postfix instance.

    @ivar authMechanisms: the SASL mechanisms it offers with AUTH; none:
        no AUTH.
    @ivar authOnlyWithTLS: AUTH offered and accepted only after STARTTLS
        (C{smtpd_tls_auth_only}).
    """

    pipelining: bool = True
    starttls: bool = False
    authMechanisms: tuple[str, ...] = ()
    authOnlyWithTLS: bool = False

    def __post_init__(self) -> None:
        if self.authOnlyWithTLS and not (self.starttls and self.authMechanisms):
            raise ValueError("a listener with AUTH only after TLS needs starttls and authMechanisms")


@dataclass(frozen=True)
class DeliveredMessage:
    """
    One message as Postfix delivered it to one recipient.

    @ivar received: the C{Received:} header Postfix put on top (folded
        lines, LF line ends).
    @ivar content: everything after it: the message as the client sent it,
        with each CRLF as LF (how Postfix stores and delivers lines).
    """

    recipient: str
    queueId: str
    received: bytes
    content: bytes

    @classmethod
    def fromFile(cls, recipient: str, queueId: str, data: bytes) -> DeliveredMessage:
        if not data.startswith(b"Received: "):
            raise AssertionError(f"Postfix delivered {queueId} without its Received: header on top: {data[:200]!r}")
        end = 0
        while True:
            end = data.index(b"\n", end) + 1
            if data[end : end + 1] not in (b" ", b"\t"):
                break
        return cls(recipient, queueId, data[:end], data[end:])


_T = TypeVar("_T")


class _Waits:
    """
    Conditions that tests wait for, checked again after every change.
    """

    def __init__(self, describe: Callable[[], str]) -> None:
        self._pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self._describe = describe

    def waitFor(self, check: Callable[[], _T | None], what: str, timeout: float) -> Deferred[_T]:
        """
        @return: a Deferred firing with the first value of C{check()} that is
            not C{None} (checked now and after every L{changed}); it fails
            with an C{AssertionError} naming C{what} after C{timeout} seconds.
        """
        value = check()
        if value is not None:
            return succeed(value)
        waiter: Deferred[_T] = Deferred()
        entry = (check, waiter)
        self._pending.append(entry)

        def timedOut() -> None:
            if entry in self._pending:
                self._pending.remove(entry)
                waiter.errback(AssertionError(f"still waiting after {timeout:g} s for {what}; {self._describe()}"))

        timer = reactor.callLater(timeout, timedOut)

        def stopTimer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return waiter.addBoth(stopTimer)

    def changed(self) -> None:
        for entry in list(self._pending):
            check, waiter = entry
            value = check()
            if value is not None and entry in self._pending:
                self._pending.remove(entry)
                waiter.callback(value)


_DELIVERY_SCRIPT = """#!/bin/sh
# deliver DIRECTORY QUEUE_ID RECIPIENT: standard input to DIRECTORY/RECIPIENT.QUEUE_ID,
# renamed into place once complete so that a watcher never reads half a message
umask 022
partial="$1/.$3.$2"
cat > "$partial" && mv "$partial" "$1/$3.$2"
"""

# Postfix's internal services, none chrooted (the directories are private)
_MASTER_SERVICES = """\
pickup     unix       n - n 60    1 pickup
cleanup    unix       n - n -     0 cleanup
qmgr       unix       n - n 300   1 qmgr
tlsmgr     unix       - - n 1000? 1 tlsmgr
rewrite    unix       - - n -     - trivial-rewrite
bounce     unix       - - n -     0 bounce
defer      unix       - - n -     0 bounce
trace      unix       - - n -     0 bounce
verify     unix       - - n -     1 verify
flush      unix       n - n 1000? 0 flush
proxymap   unix       - - n -     - proxymap
proxywrite unix       - - n -     1 proxymap
showq      unix       n - n -     - showq
error      unix       - - n -     - error
retry      unix       - - n -     - error
discard    unix       - - n -     - discard
anvil      unix       - - n -     1 anvil
scache     unix       - - n -     1 scache
postlog    unix-dgram n - n -     1 postlogd
"""

_DISCONNECT = re.compile(r"postfix/smtpd\[\d+\]: disconnect from \S+ (.*)$")


class PostfixReceiver:
    """
    A private Postfix instance that delivers mail for L{DOMAIN} into files.

    @ivar ports: the port of each listener, by name.
    @ivar deliveries: the messages delivered so far, by recipient.
    @ivar logLines: Postfix's log so far, a line each.
    """

    def __init__(
        self,
        directory: str,
        listeners: dict[str, Listener],
        *,
        tlsCertFile: str | None = None,
        tlsKeyFile: str | None = None,
        hostname: str = "mx." + DOMAIN,
        saslUsers: dict[str, str] | None = None,
    ) -> None:
        """
        @param saslUsers: the passwords of the users the listeners with
            AUTH accept, by user name.
        """
        if any(listener.starttls for listener in listeners.values()) and not (tlsCertFile and tlsKeyFile):
            raise ValueError("a Postfix listener with STARTTLS needs tlsCertFile and tlsKeyFile")
        if any(listener.authMechanisms for listener in listeners.values()) and not saslUsers:
            raise ValueError("a Postfix listener with AUTH needs saslUsers")
        self.directory = directory
        self.listeners = listeners
        self.tlsCertFile = tlsCertFile
        self.tlsKeyFile = tlsKeyFile
        self.hostname = hostname
        self.configDirectory = os.path.join(directory, "etc")
        self.queueDirectory = os.path.join(directory, "queue")
        self.mailDirectory = os.path.join(directory, "mail")
        self.logFile = os.path.join(directory, "maillog")
        # where Debian's Postfix looks whatever cyrus_sasl_config_path says
        self.saslDirectory = os.path.join(self.configDirectory, "sasl")
        self.saslUsers = dict(saslUsers or {})
        self.ports: dict[str, int] = {}
        self.deliveries: dict[str, list[DeliveredMessage]] = {}
        self.logLines: list[str] = []
        self._logOffset = 0
        self._logPartial = b""
        self._seenFiles: set[str] = set()
        self._notifier: inotify.INotify | None = None
        self._waits = _Waits(self._describe)
        self._masterPid: int | None = None

    # -- start and stop ------------------------------------------------------

    async def start(self) -> None:
        """
        Write the configuration, start Postfix and watch its log and mail
        directory; done when Postfix's master listens on every port.

        @raise RuntimeError: Postfix did not start; the message has its output.
        """
        self._writeConfiguration()
        if any(listener.authMechanisms for listener in self.listeners.values()):
            await self._writeSASLUsers()
        self._notifier = inotify.INotify()
        self._notifier.startReading()
        mask = inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE
        for watched in (self.directory, self.mailDirectory):
            self._notifier.watch(FilePath(watched), mask=mask, callbacks=[self._changed])
        # "postfix start" runs master -w, which returns once master has
        # opened its listening sockets (or failed)
        await self._postfix("start")
        self._masterPid = self._readMasterPid()

    def _readMasterPid(self) -> int:
        with open(os.path.join(self.queueDirectory, "pid", "master.pid")) as pidFile:
            return int(pidFile.read().split()[0])

    async def stop(self) -> None:
        """
        Stop Postfix ("postfix stop", then SIGKILL for any process of it that
        is left), stop watching and remove the directory.
        """
        try:
            if self._masterPid is not None:
                children = _childrenOf(self._masterPid)
                await self._postfix("stop")
                for pid in [self._masterPid, *children]:
                    _killIfAlive(pid)
                self._masterPid = None
        finally:
            if self._notifier is not None:
                self._notifier.loseConnection()
                self._notifier = None
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _postfix(self, command: str) -> None:
        program = shutil.which("postfix", path=SEARCH_PATH)
        assert program is not None, postfixUnavailable()
        out, err, code = await getProcessOutputAndValue(
            program, ["-c", self.configDirectory, command], env=dict(os.environ), reactor=reactor
        )
        if code != 0:
            self._readLog()
            raise RuntimeError(
                f"'postfix -c {self.configDirectory} {command}' exited with {code}: "
                f"{(out + err).decode(errors='replace')}; its log ends: {self.logLines[-20:]!r}"
            )

    async def _writeSASLUsers(self) -> None:
        program = shutil.which("saslpasswd2", path=SEARCH_PATH)
        assert program is not None, postfixUnavailable()
        database = os.path.join(self.saslDirectory, "sasldb2")
        for username, password in self.saslUsers.items():
            # the password goes on standard input, never on a command line
            arguments = ["-f", database, "-p", "-c", "-u", SASL_REALM, username]
            output, code = await _runWithInput(program, arguments, password.encode("utf-8"))
            if code != 0:
                raise RuntimeError(
                    f"'saslpasswd2 {' '.join(arguments)}' exited with {code}: {output.decode(errors='replace')}"
                )
        # smtpd reads it as mail_owner after dropping root; "postfix check"
        # wants root to own what is under the configuration directory
        shutil.chown(database, "root", "postfix")
        os.chmod(database, 0o640)

    def _writeSASLConfiguration(self, name: str, listener: Listener) -> str:
        """
        Write the Cyrus SASL configuration of the listener C{name}.

        @return: its name for C{smtpd_sasl_path}.
        """
        application = f"smtpd-{name}"
        with open(os.path.join(self.saslDirectory, f"{application}.conf"), "w") as f:
            f.write(
                "pwcheck_method: auxprop\n"
                "auxprop_plugin: sasldb\n"
                f"sasldb_path: {os.path.join(self.saslDirectory, 'sasldb2')}\n"
                f"mech_list: {' '.join(listener.authMechanisms)}\n"
            )
        return application

    def _writeConfiguration(self) -> None:
        nobody = pwd.getpwnam(DELIVERY_USER)
        dataDirectory = os.path.join(self.directory, "data")
        for directory in (
            self.configDirectory, self.queueDirectory, dataDirectory, self.mailDirectory, self.saslDirectory
        ):
            os.makedirs(directory)
        # the delivery script (as nobody) must reach the mail directory
        os.chmod(self.directory, 0o755)
        shutil.chown(dataDirectory, "postfix")
        os.chown(self.mailDirectory, nobody.pw_uid, nobody.pw_gid)
        script = os.path.join(self.directory, "deliver.sh")
        with open(script, "w") as f:
            f.write(_DELIVERY_SCRIPT)
        os.chmod(script, 0o755)
        recipients = os.path.join(self.configDirectory, "recipients.regexp")
        with open(recipients, "w") as f:
            f.write("!/^unknown/ OK\n")
        tls = ""
        if self.tlsCertFile and self.tlsKeyFile:
            key = os.path.join(self.configDirectory, "key.pem")
            cert = os.path.join(self.configDirectory, "cert.pem")
            shutil.copy(self.tlsKeyFile, key)
            os.chmod(key, 0o600)
            shutil.copy(self.tlsCertFile, cert)
            tls = f"smtpd_tls_chain_files = {key}, {cert}\nsmtpd_tls_loglevel = 1\n"
        with open(os.path.join(self.configDirectory, "main.cf"), "w") as f:
            f.write(
                "compatibility_level = 3.6\n"
                f"queue_directory = {self.queueDirectory}\n"
                f"data_directory = {dataDirectory}\n"
                "mail_owner = postfix\n"
                "setgid_group = postdrop\n"
                f"myhostname = {self.hostname}\n"
                f"mydomain = {DOMAIN}\n"
                f"mydestination = {DOMAIN}\n"
                "inet_interfaces = 127.0.0.1\n"
                "inet_protocols = ipv4\n"
                "mynetworks = 127.0.0.0/8\n"
                "smtp_dns_support_level = disabled\n"
                "smtpd_peername_lookup = no\n"
                # no header rewriting and no added headers for these clients
                "local_header_rewrite_clients =\n"
                "local_transport = testpipe\n"
                f"local_recipient_maps = regexp:{recipients}\n"
                "testpipe_destination_recipient_limit = 1\n"
                "alias_maps =\n"
                "alias_database =\n"
                "biff = no\n"
                "smtpd_tls_security_level = none\n"
                f"cyrus_sasl_config_path = {self.saslDirectory}\n"
                f"smtpd_sasl_local_domain = {SASL_REALM}\n"
                + tls
                + f"maillog_file = {self.logFile}\n"
                f"maillog_file_prefixes = {self.directory}\n"
            )
        lines = [_MASTER_SERVICES]
        for name, listener in self.listeners.items():
            self.ports[name] = unusedPort()
            options: list[str] = []
            if not listener.pipelining:
                options += ["-o", "smtpd_discard_ehlo_keywords=pipelining"]
            if listener.starttls:
                options += ["-o", "smtpd_tls_security_level=may"]
            if listener.authMechanisms:
                application = self._writeSASLConfiguration(name, listener)
                options += ["-o", "smtpd_sasl_auth_enable=yes", "-o", f"smtpd_sasl_path={application}"]
            if listener.authOnlyWithTLS:
                options += ["-o", "smtpd_tls_auth_only=yes"]
            lines.append(f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd {' '.join(options)}\n")
        lines.append(
            f"testpipe unix - n n - - pipe flags= user={DELIVERY_USER} "
            f"argv={script} {self.mailDirectory} ${{queue_id}} ${{recipient}}\n"
        )
        with open(os.path.join(self.configDirectory, "master.cf"), "w") as f:
            f.writelines(lines)

    # -- events ----------------------------------------------------------------

    def _changed(self, _: Any, path: FilePath, mask: int) -> None:
        self._readLog()
        self._readDeliveries()
        self._waits.changed()

    def _readLog(self) -> None:
        try:
            with open(self.logFile, "rb") as f:
                f.seek(self._logOffset)
                data = f.read()
        except FileNotFoundError:
            return
        self._logOffset += len(data)
        lines = (self._logPartial + data).split(b"\n")
        self._logPartial = lines.pop()
        self.logLines.extend(line.decode("utf-8", "replace") for line in lines)

    def _readDeliveries(self) -> None:
        for name in sorted(set(os.listdir(self.mailDirectory)) - self._seenFiles):
            if name.startswith("."):
                continue  # still being written
            self._seenFiles.add(name)
            recipient, _, queueId = name.rpartition(".")
            with open(os.path.join(self.mailDirectory, name), "rb") as f:
                data = f.read()
            self.deliveries.setdefault(recipient, []).append(DeliveredMessage.fromFile(recipient, queueId, data))

    def _describe(self) -> str:
        return f"delivered to {sorted(self.deliveries)!r}; Postfix's log ends: {self.logLines[-10:]!r}"

    # -- for tests ---------------------------------------------------------------

    def waitForDeliveries(
        self, recipients: list[str], timeout: float = DEFAULT_TIMEOUT
    ) -> Deferred[list[DeliveredMessage]]:
        """
        @return: a Deferred firing, once Postfix has delivered a message to
            each of C{recipients}, with the first message of each, in that
            order.
        """

        def check() -> list[DeliveredMessage] | None:
            if all(recipient in self.deliveries for recipient in recipients):
                return [self.deliveries[recipient][0] for recipient in recipients]
            return None

        return self._waits.waitFor(check, f"deliveries to {recipients!r}", timeout)

    def logMark(self) -> int:
        """@return: a position in L{logLines}: what comes after it is new."""
        self._readLog()
        return len(self.logLines)

    def waitForLog(
        self, predicate: Callable[[list[str]], bool], what: str, since: int = 0, timeout: float = DEFAULT_TIMEOUT
    ) -> Deferred[list[str]]:
        """
        @return: a Deferred firing with the log lines after position
            C{since} once C{predicate} is true of them.
        """

        def check() -> list[str] | None:
            lines = self.logLines[since:]
            return lines if predicate(lines) else None

        self._readLog()
        return self._waits.waitFor(check, what, timeout)

    def waitForSessions(self, count: int, since: int, timeout: float = DEFAULT_TIMEOUT) -> Deferred[list[dict[str, str]]]:
        """
        @return: a Deferred firing, once smtpd has logged the end of
            C{count} sessions after log position C{since}, with their
            command counts as Postfix logs them (C{{"ehlo": "1", "mail":
            "2", "rcpt": "1/2", ..., "commands": "7/8"}}: a pair is
            accepted/sent), in order.
        """
        return self.waitForLog(
            lambda lines: len(sessionsIn(lines)) >= count, f"{count} smtpd sessions to end", since, timeout
        ).addCallback(sessionsIn)


def sessionsIn(lines: list[str]) -> list[dict[str, str]]:
    """The command counts of the smtpd sessions whose end is in C{lines}."""
    sessions = []
    for line in lines:
        found = _DISCONNECT.search(line)
        if found:
            sessions.append(dict(item.split("=", 1) for item in found.group(1).split()))
    return sessions


#: what the client sends -> what must be on the wire (CRLF line ends, unstuffed)
BODIES = [
    (b"Subject: bare LF\n\nline one\nline two\n", b"Subject: bare LF\r\n\r\nline one\r\nline two\r\n"),
    (b"Subject: bare CR\r\n\r\na\rb\r\n", b"Subject: bare CR\r\n\r\na\r\nb\r\n"),
    (
        b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n.\r\nno final newline",
        b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n.\r\nno final newline\r\n",
    ),
    (
        b"Subject: 8-bit\r\n\r\ncaf\xc3\xa9 \xe9\xff\x80\x00\r\n",
        b"Subject: 8-bit\r\n\r\ncaf\xc3\xa9 \xe9\xff\x80\x00\r\n",
    ),
    (
        b"Subject: long lines\r\nX-Long: " + b"h" * 980 + b"\r\n\r\n" + b"x" * 998 + b"\r\n" + b"y" * 997 + b"\n.",
        b"Subject: long lines\r\nX-Long: " + b"h" * 980 + b"\r\n\r\n" + b"x" * 998 + b"\r\n" + b"y" * 997
        + b"\r\n.\r\n",
    ),
]


def _improperPipelining(postfix: PostfixReceiver, mark: int) -> list[str]:
    return [line for line in postfix.logLines[mark:] if "improper command pipelining" in line]


class _InputAndOutput(ProcessProtocol):
    """
    Writes C{data} to a process's standard input and closes it; collects
    what it writes to standard output and error.
    """

    transport: Any

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.output: list[bytes] = []
        self.ended: Deferred[tuple[bytes, int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((b"".join(self.output), reason.value.exitCode))


def _runWithInput(program: str, arguments: list[str], data: bytes) -> Deferred[tuple[bytes, int]]:
    """
    @return: a Deferred firing with the output (standard output and error)
        and exit code of C{program} run with C{data} on its standard input.
    """
    process = _InputAndOutput(data)
    reactor.spawnProcess(process, program, [program, *arguments], env=dict(os.environ))
    return process.ended


def _childrenOf(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _killIfAlive(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return
    if state != "Z":
        os.kill(pid, signal.SIGKILL)


# -- recording proxy -------------------------------------------------------------


@dataclass
class RecordedConnection:
    """
    What went through one proxied connection.

    @ivar clientChunks: the client's bytes, in the chunks they arrived in
        (on loopback one chunk per write of the client).
    """

    number: int
    clientChunks: list[bytes] = field(default_factory=list)
    serverChunks: list[bytes] = field(default_factory=list)
    closed: bool = False

    def transcript(self) -> tuple[list[bytes], list[bytes]]:
        """
        The client's commands (lines without CRLF) and the bodies it sent
        after a 354 (dot-stuffing removed, CRLFs kept), up to STARTTLS
        accepted with 220 (after which all is encrypted).
        """
        codes = [line[:3] for line in b"".join(self.serverChunks).split(b"\r\n")[:-1] if line[3:4] != b"-"]
        stream = b"".join(self.clientChunks)
        commands: list[bytes] = []
        bodies: list[bytes] = []
        position, reply = 0, 1  # codes[0] is the greeting
        while (end := stream.find(b"\r\n", position)) >= 0:
            line, position = stream[position:end], end + 2
            commands.append(line)
            code = codes[reply] if reply < len(codes) else None
            reply += 1
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"STARTTLS" and code == b"220":
                break
            if verb == b"DATA" and code == b"354":
                # from the CRLF ending DATA, so that an empty body is found too
                final = stream.find(b"\r\n.\r\n", position - 2)
                if final < 0:
                    break
                stuffed = stream[position : final + 2]
                bodies.append(b"\r\n".join(line[1:] if line.startswith(b".") else line for line in stuffed.split(b"\r\n")))
                position = final + 5
                reply += 1
        return commands, bodies


class _ServerSide(Protocol):
    transport: Any

    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.record.serverChunks.append(data)
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.transport.loseConnection()


class _ClientSide(Protocol):
    transport: Any

    def __init__(self, proxy: RecordingProxy, record: RecordedConnection) -> None:
        self.proxy = proxy
        self.record = record
        self.server: _ServerSide | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.targetPort, timeout=5)
        endpoint.connect(Factory.forProtocol(lambda: _ServerSide(self))).addCallbacks(
            self._connected, lambda failure: self.transport.abortConnection()
        )

    def _connected(self, server: _ServerSide) -> None:
        self.server = server
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.record.clientChunks.append(data)
        assert self.server is not None
        self.server.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.server is not None:
            self.server.transport.loseConnection()
        self.record.closed = True
        self.proxy._waits.changed()


class _ProxyFactory(ServerFactory):
    def __init__(self, proxy: RecordingProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _ClientSide:
        record = RecordedConnection(len(self.proxy.connections) + 1)
        self.proxy.connections.append(record)
        return _ClientSide(self.proxy, record)


class RecordingProxy:
    """
    A TCP proxy on 127.0.0.1 to C{targetPort} that records every connection.

    @ivar port: where it listens (after L{start}).
    @ivar connections: the connections so far, in order.
    """

    def __init__(self, targetPort: int) -> None:
        self.targetPort = targetPort
        self.port = 0
        self.connections: list[RecordedConnection] = []
        self._waits = _Waits(lambda: f"{len(self.connections)} connections to the proxy")
        self._listening: Any = None

    def start(self) -> RecordingProxy:
        self._listening = reactor.listenTCP(0, _ProxyFactory(self), interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self

    def waitForClosed(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[list[RecordedConnection]]:
        """
        @return: a Deferred firing with all connections once every one of
            them has closed.
        """
        return self._waits.waitFor(
            lambda: self.connections if all(c.closed for c in self.connections) else None,
            "every proxied connection to close",
            timeout,
        )

    def stop(self) -> Deferred[None]:
        return self._listening.stopListening()


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postfixReceiver(certificates: dict[str, str]) -> Iterator[PostfixReceiver]:
    """
    A private Postfix for the test module, with the listeners of the
    module's docstring; skips the test when Postfix cannot run here.
    """
    reason = postfixUnavailable()
    if reason:
        pytest.skip(reason)
    listeners = {"pipelining": Listener(), "lockstep": Listener(pipelining=False), "tls": Listener(starttls=True)}
    if saslUnavailable() is None:
        for mechanism in SASL_MECHANISMS:
            listeners[f"auth-{mechanism.lower()}"] = Listener(authMechanisms=(mechanism,))
        listeners["auth"] = Listener(authMechanisms=SASL_MECHANISMS)
        listeners["auth-tls"] = Listener(starttls=True, authMechanisms=SASL_MECHANISMS, authOnlyWithTLS=True)
    receiver = PostfixReceiver(
        tempfile.mkdtemp(prefix="mqtwist-postfix-"),
        listeners,
        tlsCertFile=certificates["cert"],
        tlsKeyFile=certificates["key"],
        saslUsers={SASL_USERNAME: SASL_PASSWORD},
    )
    try:
        pytest_twisted.blockon(ensureDeferred(receiver.start()))
        yield receiver
    finally:
        pytest_twisted.blockon(ensureDeferred(receiver.stop()))


@pytest.fixture
def startRecordingProxy() -> Iterator[Callable[[int], RecordingProxy]]:
    """
    A function that starts a L{RecordingProxy} to a port of 127.0.0.1; the
    proxies are stopped after the test.
    """
    proxies: list[RecordingProxy] = []

    def start(targetPort: int) -> RecordingProxy:
        proxy = RecordingProxy(targetPort).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        pytest_twisted.blockon(proxy.stop())
