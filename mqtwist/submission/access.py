"""
Who may submit mail: the users of the users file (each with an argon2
password hash) and the trusted networks, each with its job defaults and its
rate limit; and the per-process rate limiter.

The users file is TOML::

    [users.alice]
    password = "$argon2id$v=19$m=65536,t=3,p=4$..."   # mqtwist hash-password
    messages-per-minute = 600                         # optional; 0: no limit
    defaults = { tags = ["alice"], queues = { results = "alice.results" } }

    [[networks]]
    network = "10.1.0.0/16"
    messages-per-minute = 0
    defaults = { tags = ["app-servers"] }

Passwords are checked in a thread of the reactor's pool, never on the
reactor thread (an argon2 check takes tens of milliseconds on purpose).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from mqtwist.content.message import Message, ParseSettings
from mqtwist.errors import InvalidMessage
from mqtwist.submission.envelope import Recipient, Submission
from mqtwist.submission.jobs import buildJobs


@dataclass(frozen=True)
class Account:
    """
    Who submits: a user (C{name} is the user name) or a trusted network
    (C{name} is the network, C{10.1.0.0/16}).

    @ivar defaults: the job properties this account's jobs get unless a job
        sets them (C{tags}, C{queues}, C{dkim}, ...).
    @ivar messagesPerMinute: 0 for no limit, else the messages this
        account may submit per minute (in all the processes of a cluster).
    @ivar senders: the envelope senders this account may use, as
        case-insensitive glob patterns (C{*@example.com}); none: any.
    """

    name: str
    kind: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    messagesPerMinute: int = 0
    senders: tuple[str, ...] = ()

    def mayUse(self, sender: str) -> bool:
        """
        Whether this account may send with the envelope sender C{sender}:
        the null sender (bounces) always, another when no C{senders} are
        given or one matches.
        """
        if not sender or not self.senders:
            return True
        folded = sender.lower()
        return any(fnmatchcase(folded, pattern) for pattern in self.senders)


@dataclass(frozen=True)
class User:
    """One user of the users file."""

    account: Account
    passwordHash: str


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseNetwork(text: str) -> Network:
    """
    The network of C{text}: a CIDR (C{10.0.0.0/8}) or a single address.

    @raise ValueError: saying what is accepted.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is no network; give an address or a CIDR such as 10.0.0.0/8") from None


def _rate(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}: messages-per-minute must be a whole number, 0 or more")
    return value


def _senders(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(
            f'{where}: senders must be a list of addresses or patterns, e.g. senders = ["*@example.com"]'
        )
    for item in value:
        if any(not char.isprintable() or char.isspace() for char in item):
            raise ValueError(f"{where}: senders: {item!r} has a space or a control character")
    return tuple(item.lower() for item in value)


def _defaults(value: object, where: str, parseSettings: ParseSettings | None) -> dict[str, Any]:
    """
    The C{defaults} table of an account, checked as the consumer of the
    outbox checks the jobs it makes: a sample job with these defaults, built
    by L{buildJobs}, must pass L{Message.fromJSON}; else the server would
    answer 250 for jobs that the consumer then refuses as invalid.

    @param parseSettings: what the service parses jobs with (its pools,
        DKIM keys, reserved queues); the defaults of L{ParseSettings} when
        C{None}.
    @raise ValueError: naming C{where} and the parser's reason.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{where}: defaults must be a table of job properties, e.g. defaults = {{ tags = [\"x\"] }}")
    sample = Submission(
        sender="sender@example.com",
        recipients=(Recipient("recipient@example.com"),),
        mime=b"Subject: sample\r\n\r\nsample\r\n",
        clientAddress="192.0.2.1",
        clientPort=587,
        heloName="client.example",
        received=0.0,
        defaults=value,
    )
    try:
        [job] = buildJobs(sample, "localhost", lambda: "0" * 20)
        Message.fromJSON(job.body, parseSettings)
    except (InvalidMessage, ValueError) as e:
        reason = e.description if isinstance(e, InvalidMessage) else str(e)
        keys = ", ".join(sorted(value)) or "none"
        raise ValueError(
            f"{where}: defaults ({keys}) would make jobs that mqtwist refuses: {reason}; fix the value "
            f"(see the job properties in docs/messages.rst)"
        ) from None
    return value


class Access:
    """
    The accounts that may submit.

    @param users: by user name.
    @param networks: the trusted networks and their accounts; the most
        specific one that holds an address is the address's.
    @param messagesPerMinute: the rate of an account that gives none.
    """

    def __init__(
        self,
        users: Mapping[str, User] | None = None,
        networks: Iterable[tuple[Network, Account]] = (),
        messagesPerMinute: int = 0,
    ) -> None:
        self.users = dict(users or {})
        self.networks = sorted(networks, key=lambda item: -item[0].prefixlen)
        self.messagesPerMinute = messagesPerMinute
        self._hasher: Any = None
        self._dummyHash: str | None = None

    @classmethod
    def fromSettings(
        cls,
        trustedNetworks: Iterable[str],
        usersFile: str | None,
        messagesPerMinute: int = 0,
        parseSettings: ParseSettings | None = None,
    ) -> Access:
        """
        The accounts of the settings: the trusted networks (without
        defaults) and what the users file holds.

        @param parseSettings: what the service parses jobs with, to check
            the accounts' C{defaults} (see L{readUsersFile}).
        @raise ValueError: naming the file and what is wrong in it.
        """
        networks = [
            (parseNetwork(text), Account(str(parseNetwork(text)), "network", {}, messagesPerMinute))
            for text in trustedNetworks
        ]
        users: dict[str, User] = {}
        if usersFile:
            fileUsers, fileNetworks = readUsersFile(usersFile, messagesPerMinute, parseSettings)
            users.update(fileUsers)
            networks.extend(fileNetworks)
        return cls(users, networks, messagesPerMinute)

    def account(self, kind: str, name: str) -> Account | None:
        """The account of C{kind} (C{user}, C{network}) named C{name}, if there is one."""
        if kind == "user":
            user = self.users.get(name)
            return user.account if user is not None else None
        return next((account for _, account in self.networks if account.name == name), None)

    def network(self, address: str) -> Account | None:
        """
        The trusted network account of the client C{address}, or C{None}.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for network, account in self.networks:
            if ip.version == network.version and ip in network:
                return account
        return None

    def verify(self, name: str, password: str, reactor: Any) -> Deferred[Account | None]:
        """
        Check C{password} for the user C{name}, in a thread.

        @return: a Deferred firing with the user's L{Account}, or C{None}
            when the name is unknown or the password wrong (an unknown name
            costs as much time as a wrong password).
        """
        user = self.users.get(name)
        return deferToThreadPool(reactor, reactor.getThreadPool(), self._check, user, password)

    def _check(self, user: User | None, password: str) -> Account | None:
        from argon2 import PasswordHasher
        from argon2.exceptions import Argon2Error, InvalidHashError

        if self._hasher is None:
            self._hasher = PasswordHasher()
        if user is None:
            if self._dummyHash is None:
                self._dummyHash = self._hasher.hash("an unknown user")
            hashed, account = self._dummyHash, None
        else:
            hashed, account = user.passwordHash, user.account
        try:
            self._hasher.verify(hashed, password)
        except (Argon2Error, InvalidHashError, ValueError):
            return None
        return account


def hashPassword(password: str) -> str:
    """
    The argon2id hash of C{password} for the users file, with
    argon2-cffi's default (RFC 9106 low-memory) parameters.
    """
    from argon2 import PasswordHasher

    return str(PasswordHasher().hash(password))


def readUsersFile(
    path: str, messagesPerMinute: int = 0, parseSettings: ParseSettings | None = None
) -> tuple[dict[str, User], list[tuple[Network, Account]]]:
    """
    Read the users file (see the module's docstring).  Each account's
    C{defaults} must make jobs that mqtwist's parser takes, with
    C{parseSettings} (those of the service that consumes the outbox).

    @return: the users by name, and the networks with their accounts.
    @raise ValueError: naming the file and what is wrong in it.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"--submission-users: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--submission-users: {path} is not valid TOML: {e}") from None
    unknown = set(document) - {"users", "networks"}
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; the file has [users.NAME] and [[networks]]"
        )
    users: dict[str, User] = {}
    table = document.get("users", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: users must be tables, [users.NAME]")
    from argon2 import extract_parameters
    from argon2.exceptions import InvalidHashError

    for name, entry in table.items():
        where = f"{path}: [users.{name}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a table")
        extra = set(entry) - {"password", "messages-per-minute", "defaults", "senders"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        hashed = entry.get("password")
        if not isinstance(hashed, str) or not hashed.startswith("$argon2"):
            raise ValueError(
                f"{where}: password must be an argon2 hash ($argon2id$...); make one with "
                f"'mqtwist hash-password' (a plain password is never stored)"
            )
        try:
            extract_parameters(hashed)
        except (InvalidHashError, ValueError):
            raise ValueError(f"{where}: password is no valid argon2 hash") from None
        if not name or any(not char.isprintable() for char in name):
            raise ValueError(f"{path}: a user name must be printable and not empty")
        users[name] = User(
            Account(
                name,
                "user",
                _defaults(entry.get("defaults", {}), where, parseSettings),
                _rate(entry.get("messages-per-minute", messagesPerMinute), where),
                _senders(entry.get("senders", []), where),
            ),
            hashed,
        )
    networks: list[tuple[Network, Account]] = []
    entries = document.get("networks", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: networks must be an array of tables, [[networks]]")
    for number, entry in enumerate(entries, 1):
        where = f"{path}: [[networks]] number {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("network"), str):
            raise ValueError(f"{where} needs network = \"CIDR\"")
        extra = set(entry) - {"network", "messages-per-minute", "defaults", "senders"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        try:
            network = parseNetwork(entry["network"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        networks.append(
            (
                network,
                Account(
                    str(network),
                    "network",
                    _defaults(entry.get("defaults", {}), where, parseSettings),
                    _rate(entry.get("messages-per-minute", messagesPerMinute), where),
                    _senders(entry.get("senders", []), where),
                ),
            )
        )
    return users, networks


class RateLimiter:
    """
    Messages per minute per account: a token bucket per account that holds
    a minute's worth and fills at the account's rate.  In a cluster, what
    the other processes took counts too (L{takenElsewhere}, told of within
    a fraction of a second), so the rate holds for all of them.

    @param clock: has C{seconds()}.
    @ivar onTaken: told of what L{taken} counts, for the other processes.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self.onTaken: Callable[[Account, int], None] | None = None

    def allows(self, account: Account) -> bool:
        """
        Whether C{account} may submit one more message now.
        """
        rate = account.messagesPerMinute
        if not rate:
            return True
        return self._level(account, rate) >= 1.0

    def taken(self, account: Account, count: int = 1) -> None:
        """C{account} submitted C{count} messages here."""
        if not account.messagesPerMinute:
            return
        self._spend(account, count)
        if self.onTaken is not None:
            self.onTaken(account, count)

    def takenElsewhere(self, account: Account, count: int) -> None:
        """C{account} submitted C{count} messages to another process of the cluster."""
        self._spend(account, count)

    def _spend(self, account: Account, count: int) -> None:
        rate = account.messagesPerMinute
        if not rate:
            return
        level = self._level(account, rate)
        self._buckets[(account.kind, account.name)] = (level - count, self.clock.seconds())

    def _level(self, account: Account, rate: int) -> float:
        now = self.clock.seconds()
        now = float(now)
        level, when = self._buckets.get((account.kind, account.name), (float(rate), now))
        level = min(float(rate), level + (now - when) * rate / 60.0)
        if level >= rate and len(self._buckets) > 10_000:
            # full buckets are the default: forget them, so that the table
            # stays small
            self._buckets.pop((account.kind, account.name), None)
        return level
