"""
The settings of one mqtwist service: each declared once, here, with its
type, default, help text and check.

The command line, the environment variables, the TOML file
(L{mqtwist.config.sources}) and the README's table are derived from these
declarations, and L{Config} checks itself with them, so a program that
embeds L{mqtwist.service.MailerService} gets the same checks as
C{twistd mqtwist}.  Attribute names are the option names in camelCase:
C{ehloName} is C{--ehlo-name}, C{ehlo-name} in TOML and
C{MQTWIST_EHLO_NAME} in the environment; C{timeouts.connect} is
C{--timeouts-connect} and C{connect} in a C{[timeouts]} table.

To add a setting: one attribute with L{setting} here, then use it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mqtwist.config.rules import BackoffRule, CategoryRule, DKIMKeyRule, PoolRule, ThrottleRule
from mqtwist.smtp.timeouts import SMTPTimeouts
from mqtwist.smtp.tls import POLICIES

#: what L{setting} keeps in a field's metadata
HELP = "help"
CHECK = "check"
DEFAULT_TEXT = "defaultText"
#: the reader of one TOML table, for the settings that are arrays of tables
TOML_TABLE = "toml"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    check: Callable[[Any], None] | None = None,
    factory: Callable[[], Any] | None = None,
    defaultText: str | None = None,
    secret: bool = False,
) -> Any:
    """
    Declare one setting: an attribute of L{Config} (or of a settings class
    nested in it, such as L{SMTPTimeouts}).

    @param help: what it does, as C{--help} and the README say it.
    @param check: what its value must be beyond its type; raises
        C{ValueError} saying what is wrong and what is accepted.  Without
        one, a number must not be negative.
    @param factory: makes the default, for a list.
    @param defaultText: what C{--help} says of a default that is computed
        (the host name), instead of computing it.
    @param secret: a password: never in C{repr}.
    """
    metadata = {HELP: help, CHECK: check, DEFAULT_TEXT: defaultText}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


def tables(reader: Callable[..., Any], *, help: str) -> Any:
    """
    Declare a setting that is a TOML array of tables only (C{[[throttles]]}),
    each read by C{reader}.
    """
    return field(default_factory=list, metadata={HELP: help, TOML_TABLE: reader})


def _notNegative(value: float) -> None:
    if value < 0:
        raise ValueError(f"{value:g} is negative; give 0 or more")


def positive(value: int) -> None:
    """
    A whole number of 1 or more.
    """
    if value < 1:
        raise ValueError(f"{value} is too small; give a whole number of 1 or more")


def _positiveSeconds(value: float) -> None:
    if value <= 0:
        raise ValueError(f"{value:g} is too small; give a number of seconds greater than 0")


def _port(value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"{value} is not a port number; give a port 1-65535")


def _niceness(value: int) -> None:
    if not -20 <= value <= 19:
        raise ValueError(f"{value} is not a niceness; give -20 (first) to 19 (last)")


def _maxPriority(value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"{value} is not a priority; give 0 (no priority queue) or 1-255 (10 at most is advised)")


def _queueType(value: str) -> None:
    if value not in ("classic", "quorum"):
        raise ValueError(f"{value!r} is neither classic nor quorum")


def _ipv6Prefix(value: int) -> None:
    if not 1 <= value <= 128:
        raise ValueError(f"{value} is not an IPv6 prefix length; give 1-128")


def _cluster(value: str) -> None:
    if value not in ("shared", "off"):
        raise ValueError(f"{value!r} is neither shared nor off")


def _notEmpty(value: str) -> None:
    if not value:
        raise ValueError("it is empty; give a name")


def _dsnDefault(key: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        from mqtwist.content.message import DSN
        from mqtwist.errors import InvalidMessage

        try:
            DSN.fromJSON({key: value})
        except InvalidMessage as e:
            raise ValueError(e.description.replace(f"property 'dsn.{key}' is", "it is")) from None

    return check


def _hostPort(value: str | None) -> None:
    from mqtwist.hostport import parseHostPort

    if value is not None and parseHostPort(value, 0)[1] == 0:
        raise ValueError(f"{value!r} has no port; use host:port, e.g. relay.example.com:587")


def _nameservers(values: list[str]) -> None:
    from mqtwist.hostport import parseHostPort

    for value in values:
        parseHostPort(value, 53)


def _amqpURL(value: str | None) -> None:
    from mqtwist.amqp.url import parseBrokerURLs

    if value is not None:
        parseBrokerURLs(value)


def _addresses(values: list[str]) -> None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is no IPv4 or IPv6 address") from None


def _delays(values: list[int]) -> None:
    if not values:
        raise ValueError("the list is empty; give at least one number of seconds")
    for value in values:
        _notNegative(value)


def _buckets(values: list[int]) -> None:
    if not values:
        raise ValueError("the list is empty; give at least one number of seconds")
    for value in values:
        if value < 1:
            raise ValueError(f"{value} is too small; every delay queue holds messages 1 second or more")


def _tlsPolicy(value: str) -> None:
    if value not in POLICIES:
        raise ValueError(f"{value!r} is not a TLS policy; use one of {', '.join(POLICIES)}")


def _messageStoreURL(value: str | None) -> None:
    if value is not None and "://" not in value:
        raise ValueError("it is no URL; give scheme://..., e.g. redis://127.0.0.1:6379/0")


def _messageStoreCleanup(value: str) -> None:
    if value not in ("delete", "keep"):
        raise ValueError(f"{value!r} is neither delete nor keep")


def _categoryRules(value: str | None) -> None:
    from mqtwist.delivery.categories import readRules

    if value:
        readRules(value)


def _logFormat(value: str) -> None:
    from mqtwist.logformat import checkLogFormat

    checkLogFormat(value)


def _dkimSign(value: str) -> None:
    if value not in ("matching", "named"):
        raise ValueError(f"{value!r} is neither matching nor named")


def _networks(values: list[str]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is no address or network; give e.g. 10.0.0.0/8 or 192.0.2.1") from None


def _submissionTls(value: str) -> None:
    if value not in ("optional", "required"):
        raise ValueError(f"{value!r} is neither optional nor required")


def _authCleartext(value: str) -> None:
    if value not in ("never", "loopback"):
        raise ValueError(f"{value!r} is neither never nor loopback")


def _logLevel(value: str) -> None:
    from mqtwist.loglevel import parseLogLevel

    parseLogLevel(value)


@dataclass
class Config:
    """
    Everything a L{mqtwist.service.MailerService} needs to know.  Each
    attribute is a setting (see L{setting}): its help says what it does.

    @raise ValueError: at construction, and from L{check}, for a value that
        the setting's check refuses, naming the setting and its option.
    """

    amqp: str | None = setting(
        None,
        help="RabbitMQ URL, amqp[s]://user:password@host:port/vhost?heartbeat=30, or the URLs "
        "of the nodes of a cluster separated by commas (tried in turn: the next after a failed "
        "attempt or a lost connection); when not given, mqtwist starts a private RabbitMQ node "
        "of its own",
        check=_amqpURL,
    )
    brokerDir: str = setting(".state/rabbitmq", help="directory where the private RabbitMQ node keeps its data")
    brokerPort: int = setting(5672, help="AMQP port of the private RabbitMQ node", check=_port)
    brokerNice: int = setting(
        10,
        help="CPU priority (nice, -20 to 19) of the private RabbitMQ node; above 0 it leaves "
        "the CPU to mqtwist first",
        check=_niceness,
    )

    outbox: str = setting("outbox", help="queue that delivery jobs are taken from", check=_notEmpty)
    maxPriority: int = setting(
        0,
        help="highest priority of the outbox, declared as a RabbitMQ priority queue "
        "(x-max-priority) when 1-255; RabbitMQ recommends 10 at most, as every level costs "
        "memory and CPU (0: an ordinary queue); a job's 'priority' is also the AMQP priority "
        "of every copy mqtwist puts back in the outbox; an existing outbox must have the same "
        "x-max-priority, which RabbitMQ cannot change",
        check=_maxPriority,
    )
    queueType: str = setting(
        "classic",
        help="type of the queues mqtwist declares (outbox, delay, result, dead-letter and held "
        "queues): classic, or quorum for a RabbitMQ cluster (replicated: they survive the loss "
        "of a node; RabbitMQ 3.10 or later; no --max-priority); existing queues must be of "
        "the same type, which RabbitMQ cannot change",
        check=_queueType,
    )
    cluster: str = setting(
        "shared",
        help="shared: the mqtwist processes of one outbox hear one another on a control exchange of "
        "the broker, each takes its share of every destination's limits (connections, messages and "
        "connections a minute) among those alive, and the pauses and backoff that replies cause, and "
        "the admin API's actions, apply to all of them; off: each process on its own, with the "
        "whole limits",
        check=_cluster,
    )
    clusterExchange: str = setting(
        "",
        help="the fanout exchange the processes of one outbox talk on (empty: the outbox's name "
        "and .control)",
        defaultText="OUTBOX.control",
    )
    clusterMember: str = setting(
        "",
        help="this process's name among the processes of its outbox (unique among them; empty: the "
        "host name and the process id)",
        defaultText="HOST:PID",
    )
    clusterHeartbeat: float = setting(
        1.0, help="seconds between two heartbeats of a process on the control exchange", check=_positiveSeconds
    )
    clusterMemberTimeout: float = setting(
        5.0,
        help="seconds without a heartbeat after which a process is taken for gone (crashed, or cut "
        "off from the broker) and the others take its share; at least twice --cluster-heartbeat",
        check=_positiveSeconds,
    )
    clusterSettle: float = setting(
        2.0,
        help="the longest wait of a starting process for the processes already consuming the outbox "
        "to answer its hello, before it consumes too: it then knows them and takes its share of "
        "each limit, not the whole of it (alone, it starts at once)",
        check=_positiveSeconds,
    )
    results: str = setting("results", help="queue that receives every final result (empty: none)")
    success: str = setting(
        "success", help="queue that receives the results of delivered messages (empty: none)"
    )
    failure: str = setting("failure", help="queue that receives the results of failed messages (empty: none)")
    retry: str = setting(
        "retry", help="queue that receives a notice of every attempt to be retried (empty: none)"
    )
    dsnQueue: str = setting(
        "",
        help="queue that receives the delivery status notifications (bounces, RFC 3464) mqtwist "
        "makes, as jobs to the envelope sender; the outbox delivers them itself (empty: none are "
        "made; a job's queues.dsn overrides)",
    )
    dsnNotify: str = setting(
        "FAILURE",
        help="comma-separated events reported to the envelope sender of a job without "
        "dsn.notify: FAILURE, DELAY, SUCCESS, or NEVER (with --dsn-queue)",
        check=_dsnDefault("notify"),
    )
    dsnRet: str = setting(
        "HDRS",
        help="what of the original a report carries for a job without dsn.ret: HDRS (its header "
        "block) or FULL (the whole message)",
        check=_dsnDefault("ret"),
    )

    smarthost: str | None = setting(
        None, help="host:port of a relay that takes all mail instead of MX delivery", check=_hostPort
    )
    mxPort: int = setting(25, help="TCP port used for delivery to MX hosts", check=_port)
    nameservers: list[str] = setting(
        help="comma-separated host:port of the DNS servers for MX lookups (empty: those of "
        "/etc/resolv.conf)",
        factory=list,
        check=_nameservers,
    )
    dnsTimeout: float = setting(20.0, help="seconds a DNS query may take, retransmissions included")
    dnsMinCacheTime: float = setting(
        60.0, help="seconds an MX lookup stays cached at least, whatever its TTL"
    )
    mxAddressesPerAttempt: int = setting(
        5,
        help="addresses of a domain's mail exchangers tried within one attempt, in MX order, "
        "when one refuses, times out or answers 421",
    )

    plugins: list[str] | None = setting(
        None,
        help="comma-separated names of the data plugins to run, in order (not given: every "
        "plugin found, ordered by name; empty: none)",
    )
    pluginTimeout: float = setting(
        30.0, help="seconds a data plugin may take before it is cancelled", check=_positiveSeconds
    )
    pluginRuns: int = setting(
        3, help="how many times the plugin chain runs before the attempt fails", check=positive
    )
    pluginRetryDelay: float = setting(1.0, help="seconds between two runs of the plugin chain")

    prefetch: int = setting(
        200, help="outbox messages handed to this process before it acknowledges any", check=positive
    )
    concurrency: int = setting(100, help="deliveries in progress at once", check=positive)
    ehloName: str = setting(
        help="the name this host gives in EHLO/HELO",
        factory=socket.getfqdn,
        check=_notEmpty,
        defaultText="this host's fully qualified name",
    )

    security: str = setting(
        "opportunistic",
        help="TLS policy of messages without 'security': optional (TLS when offered), "
        "opportunistic (TLS when offered, in clear if the handshake fails), required (TLS or no "
        "delivery) or verified (TLS with a certificate valid for the MX host name)",
        check=_tlsPolicy,
    )
    tlsCertificate: str | None = setting(
        None,
        help="PEM file with the client certificate (and key, unless --tls-key) shown to servers "
        "that ask for one",
    )
    tlsKey: str | None = setting(None, help="PEM file with the private key of --tls-certificate")
    tlsCaFile: str | None = setting(
        None,
        help="PEM file of the CA certificates trusted by the 'verified' policy (not given: the "
        "system's)",
    )
    smarthostUsername: str | None = setting(None, help="AUTH user name for --smarthost")
    smarthostPassword: str | None = setting(
        None,
        help="AUTH password for --smarthost (prefer the environment or the TOML file to the "
        "command line); a login the server refuses fails the attempt as auth/error to be "
        "retried, not bounced, since the credentials are at fault and not the message",
        secret=True,
    )
    authCleartextHosts: list[str] = setting(
        help="comma-separated host names (or '*' for every host) to which AUTH may be sent on a connection "
        "without TLS",
        factory=list,
    )

    maxConnectionsPerDestination: int = setting(
        10, help="SMTP connections open at once to one destination, for all the processes of the outbox",
        check=positive,
    )
    maxMessagesPerConnection: int = setting(
        100, help="messages one SMTP connection carries before it is closed", check=positive
    )
    idleTimeout: float = setting(
        10.0, help="seconds an unused SMTP connection stays open for the next message"
    )
    messagesPerMinute: int = setting(
        0, help="messages per minute to one destination, for all the processes of the outbox (0: no limit)"
    )
    connectionsPerMinute: int = setting(
        0,
        help="new SMTP connections per minute to one destination, for all the processes of the outbox "
        "(0: no limit)",
    )
    throttles: list[ThrottleRule] = tables(
        ThrottleRule.fromTable, help="limits of particular destinations ([[throttles]] tables)"
    )
    backoff: list[BackoffRule] = tables(
        BackoffRule.fromTable,
        help="reply patterns that pause or slow a destination, checked before the built-in "
        "ones ([[backoff]] tables)",
    )
    categories: list[CategoryRule] = tables(
        CategoryRule.fromTable,
        help="rules that give failed attempts their category, checked before the shipped ones "
        "([[categories]] tables)",
    )
    categoryRules: str | None = setting(
        None,
        help="TOML file of [[categories]] tables that replaces the shipped category rules "
        "(mqtwist/delivery/categories.toml)",
        check=_categoryRules,
    )
    destinationBacklog: int = setting(
        10,
        help="messages per destination that wait in this process for a connection; more are "
        "parked in a delay queue",
    )
    stuckAfter: float = setting(
        1.0,
        help="seconds without an ended delivery after which a busy destination counts as stuck, "
        "and only --destination-backlog of its messages wait",
    )
    stuckAfterOthers: int = setting(
        50,
        help="deliveries to other destinations that may end while a destination with messages "
        "waiting ends none, before it counts as stuck too (0: no such limit)",
    )
    parkDelay: float = setting(30.0, help="seconds a message is parked when its destination is busy")
    parkDelayMax: float = setting(
        900.0,
        help="the longest a message is parked, in seconds: every deferral in a row doubles its "
        "park time (from the pause or --park-delay) up to this",
    )
    deferralLogInterval: float = setting(
        1.0,
        help="seconds over which the deferrals of one destination are gathered into one log "
        "line (0: a line for each)",
    )
    greylistDelay: float = setting(300.0, help="seconds until a greylisted message is tried again")
    downAfterFailures: int = setting(
        5, help="failed connections in a row after which a destination is marked down"
    )
    downTime: float = setting(300.0, help="seconds a destination stays marked down")
    timeouts: SMTPTimeouts = field(default_factory=SMTPTimeouts)

    pools: list[PoolRule] = tables(
        PoolRule.fromTable, help="named sets of local addresses that a message's 'pool' selects ([[pools]] tables)"
    )
    defaultIps: list[str] = setting(
        help="comma-separated local addresses to send from when a message gives neither 'ips' nor "
        "'pool' (empty: the system's choice)",
        factory=list,
        check=_addresses,
    )
    dkimKeys: list[DKIMKeyRule] = tables(
        DKIMKeyRule.fromTable, help="DKIM keys by signing domain ([[dkim-keys]] tables)"
    )
    dkimSign: str = setting(
        "matching",
        help="which [[dkim-keys]] sign a message: matching (each key whose domain is the domain "
        "of the message's From address, or a parent of it, besides the keys its dkim names, as "
        "MailerQ signs with every matching key of its database) or named (only keys a message's "
        "dkim names)",
        check=_dkimSign,
    )
    dkimKeyCache: int = setting(
        1000,
        help="DKIM private keys sent in messages that stay parsed, least recently used dropped "
        "first",
    )
    contentThreadBytes: int = setting(
        16 * 1024,
        help="bytes of mime above which a job's 'inlinecss' is applied in a thread rather than on "
        "the reactor thread (a job with 'data' is always personalized in a thread)",
        check=positive,
    )
    templateLoops: int = setting(
        10_000,
        help="{foreach} iterations the personalization of one message may run, all loops "
        "together; past it the job is process/invalid (so is a personalized message bigger "
        "than --max-job-bytes)",
        check=positive,
    )
    templateDepth: int = setting(
        100,
        help="{if} and {foreach} blocks a personalization template may nest within one "
        "another; a deeper one makes the job process/invalid",
        check=positive,
    )
    templateRegexSeconds: float = setting(
        1.0,
        help="seconds all the regex_replace modifiers of one message may take together; past "
        "it the job is process/invalid",
        check=_positiveSeconds,
    )

    retries: list[int] = setting(
        help="comma-separated seconds between attempts for messages without 'retries'; the "
        "last one repeats",
        factory=lambda: [600, 600, 1800, 1800, 3600, 3600, 7200],
        check=_delays,
    )
    maxDeliverTime: int = setting(
        86400,
        help="seconds after the first attempt when a message without 'maxdelivertime' expires",
    )
    delayBuckets: list[int] = setting(
        help="comma-separated delays, in seconds, that have a delay queue of their own; a retry "
        "delay is rounded up to the next one",
        factory=lambda: [1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200],
        check=_buckets,
    )

    deadLetterQueue: str = setting(
        "outbox.dead",
        help="queue that takes a copy of each outbox message that cannot be settled with a "
        "result, the reason in its x-mqtwist-reason header (empty: such a message is dropped, "
        "with a log line)",
    )
    heldQueue: str = setting(
        "",
        help="queue where the messages an operator's pause holds back wait (no one consumes it); "
        "they go back to the outbox when a pause ends, and when mqtwist starts (empty: the "
        "outbox's name and .held)",
        defaultText="OUTBOX.held",
    )
    settleAttempts: int = setting(
        3,
        help="times the broker may fail to confirm the results of an outbox message before the "
        "message, when it comes back, goes to the dead-letter queue",
        check=positive,
    )
    deliveryJournal: str = setting(
        ".state/delivered.journal",
        help="file that records the outbox messages delivered recently, so that one the broker "
        "hands out again after a crash is not sent twice (its result is published again "
        "instead); one for each mqtwist process (empty: in memory only, which covers a crash of "
        "the broker, not of mqtwist)",
    )
    deliveryJournalSize: int = setting(
        50_000,
        help="deliveries the journal remembers at least, which must cover those whose "
        "acknowledgements a crashed broker may lose (up to ~20,000 were measured) and the "
        "prefetch; it keeps up to twice as many, about 0.5 KB of memory and 0.35 KB of disk each",
        check=positive,
    )
    maxJobBytes: int = setting(
        64 * 1024 * 1024,
        help="bytes an outbox job may have, its mime included; a bigger one is refused as "
        "process/invalid",
        check=positive,
    )
    maxJobDepth: int = setting(
        32, help="objects and lists inside one another that an outbox job may have", check=positive
    )
    maxJobItems: int = setting(
        10_000, help="keys of one object, or items of one list, that an outbox job may have", check=positive
    )
    maxJobString: int = setting(
        65_536, help="characters of one key of an outbox job, and of one string outside its mime", check=positive
    )

    messageStore: str | None = setting(
        None,
        help="URL of the external message store that jobs with 'key' instead of 'mime' are "
        "loaded from, once their SMTP connection is ready: redis://[:password@]host:6379/0, "
        "rediss:// (TLS) or unix:///path/redis.sock?db=0; backend plugins add schemes (not given: "
        "no store, and such a job fails as process/invalid); never logged with its credentials",
        check=_messageStoreURL,
        secret=True,
    )
    messageStoreTimeout: float = setting(
        20.0,
        help="seconds a message store operation may take; a load that takes longer fails the "
        "attempt as storage/timeout, to be retried",
        check=_positiveSeconds,
    )
    messageStoreMaxBytes: int = setting(
        64 * 1024 * 1024,
        help="bytes a message loaded from the message store may have (and no more than "
        "--max-job-bytes); a bigger one fails the job as storage/error",
        check=positive,
    )
    messageStoreThreads: int = setting(
        4,
        help="threads, each with its connection, that a message store backend whose client blocks "
        "(Redis) works in: the loads in progress at once",
        check=positive,
    )
    messageStoreCleanup: str = setting(
        "delete",
        help="what becomes of a stored message once its job has ended (delivered, or failed for "
        "good): delete (unless the job has keepmime, as MailerQ) or keep (left to the store's own "
        "expiry)",
        check=_messageStoreCleanup,
    )

    metrics: str = setting(
        "",
        help="where Prometheus scrapes /metrics: a port, or a Twisted endpoint string such as "
        "tcp:9100:interface=0.0.0.0 (a tcp one without interface= listens on 127.0.0.1; empty: off)",
    )
    metricsDestinations: int = setting(
        50,
        help="destinations that get a metrics label of their own; the others are counted together "
        "as 'other'",
        check=positive,
    )
    admin: str = setting(
        "",
        help="where the admin API and its dashboard listen: a port, or a Twisted endpoint string "
        "(a tcp one without interface= listens on 127.0.0.1; empty: off); every API call needs the "
        "token of --admin-token-file or MQTWIST_ADMIN_TOKEN",
    )
    adminTokenFile: str | None = setting(
        None,
        help="file whose first line is the admin API's bearer token (or set MQTWIST_ADMIN_TOKEN; "
        "never the token itself as an option, where ps would show it)",
    )

    submission: list[str] = setting(
        help="comma-separated endpoints where the SMTP submission server listens: a port, or a "
        "Twisted endpoint string such as tcp:587:interface=0.0.0.0 (a tcp one without interface= "
        "listens on 127.0.0.1), or ssl:465 for implicit TLS with --submission-tls-certificate "
        "(empty: off); the mail it takes becomes jobs on --submission-queue",
        factory=list,
    )
    submissionQueue: str = setting(
        "",
        help="queue that the jobs of the mail taken in over SMTP go to (empty: the outbox)",
        defaultText="OUTBOX",
    )
    submissionHostname: str = setting(
        "",
        help="the name the submission server greets with and writes in the Received headers it "
        "adds (empty: --ehlo-name)",
        defaultText="EHLO-NAME",
    )
    submissionTlsCertificate: str | None = setting(
        None,
        help="PEM file with the submission server's certificate (and its chain, and its key unless "
        "--submission-tls-key); given, STARTTLS is offered, and ssl: endpoints use it",
    )
    submissionTlsKey: str | None = setting(
        None, help="PEM file with the private key of --submission-tls-certificate"
    )
    submissionTls: str = setting(
        "optional",
        help="optional (STARTTLS offered) or required: MAIL FROM is refused with 530 5.7.0 until "
        "the session is encrypted (STARTTLS, or an ssl: endpoint), for every client, trusted "
        "networks included; needs --submission-tls-certificate",
        check=_submissionTls,
    )
    submissionUsers: str | None = setting(
        None,
        help="TOML file of the users who may submit after AUTH (argon2 password hashes, made with "
        "mqtwist hash-password), with their job defaults and rates, and of more trusted networks "
        "(see docs/submission.rst)",
    )
    submissionTrustedNetworks: list[str] = setting(
        help="comma-separated addresses or CIDR networks whose clients may submit without AUTH "
        "(empty: none; every other client must authenticate, or has every RCPT refused)",
        factory=lambda: ["127.0.0.1/32", "::1/128"],
        check=_networks,
    )
    submissionAuthCleartext: str = setting(
        "never",
        help="where AUTH is offered without TLS: never (only after STARTTLS or on an ssl: endpoint) "
        "or loopback (also to clients on 127.0.0.0/8 and ::1)",
        check=_authCleartext,
    )
    submissionMaxSize: int = setting(
        10 * 1024 * 1024,
        help="bytes a submitted message may have (announced as SIZE; a bigger one is refused with 552)",
        check=positive,
    )
    submissionMaxMemory: int = setting(
        1024 * 1024 * 1024,
        help="bytes of messages that all submission sessions together may hold, from DATA until the broker "
        "confirms their jobs; a message that would go over it is answered 451 4.3.1 after its dot, and "
        "DATA 452 4.3.1 while it is spent (at least --submission-max-size)",
        check=positive,
    )
    submissionMaxRecipients: int = setting(
        1000, help="recipients of one submitted message; more are refused with 452", check=positive
    )
    submissionMaxConnections: int = setting(
        1000, help="submission connections open at once; more are refused with 421", check=positive
    )
    submissionMaxConnectionsPerClient: int = setting(
        50,
        help="submission connections open at once from one client address; more are refused with 421",
        check=positive,
    )
    submissionIpv6ClientPrefix: int = setting(
        64,
        help="bits of an IPv6 client address that make one client for --submission-max-connections-per-client "
        "(64: a host's whole /64 counts as one, as it may use any address of it; 128: each address)",
        check=_ipv6Prefix,
    )
    submissionCommandTimeout: float = setting(
        300.0,
        help="seconds the submission server waits for a command before it closes the connection with 421",
        check=_positiveSeconds,
    )
    submissionDataTimeout: float = setting(
        300.0,
        help="seconds the submission server waits for more of a message in DATA before it closes the "
        "connection with 421",
        check=_positiveSeconds,
    )
    submissionQueueTimeout: float = setting(
        120.0,
        help="seconds a submitted message may wait for the broker's confirmation of its jobs; then the "
        "client is answered 451 and keeps the message",
        check=_positiveSeconds,
    )
    submissionMaxBadCommands: int = setting(
        20,
        help="refused commands (bad syntax, out of sequence, relaying) after which a submission "
        "connection is closed with 421",
        check=positive,
    )
    submissionMaxAuthFailures: int = setting(
        3,
        help="failed AUTH attempts after which a submission connection is closed with 421",
        check=positive,
    )
    submissionAuthThreads: int = setting(
        2,
        help="submission password checks (argon2, tens of milliseconds and 64 MiB each) run at a time in "
        "the thread pool that DKIM signing shares; the others wait their turn",
        check=positive,
    )
    submissionMessagesPerMinute: int = setting(
        0,
        help="messages per minute that one user or trusted network may submit, to all the processes of "
        "the outbox (0: no limit; the users file can set each account's own)",
    )

    shutdownTimeout: float = setting(30.0, help="seconds that stopping waits for deliveries in flight")
    reconnectMaxDelay: float = setting(
        30.0, help="the longest wait, in seconds, between reconnection attempts to RabbitMQ"
    )
    logLevel: str = setting(
        "info",
        help="lowest level of the log events written: debug (every SMTP command and reply), "
        "info, warn, error or critical; lower ones are dropped before they are formatted",
        check=_logLevel,
    )
    logFormat: str = setting(
        "text",
        help="how twistd's log (its --logfile, or standard output with -n) is written: text "
        "(readable lines) or json (one JSON object a line: time, level, namespace, text, and the "
        "event's fields)",
        check=_logFormat,
    )

    def __post_init__(self) -> None:
        self.check()

    @property
    def heldQueueName(self) -> str:
        """The queue of held messages: C{heldQueue}, else the outbox's name and C{.held}."""
        return self.heldQueue or f"{self.outbox}.held"

    @property
    def clusterExchangeName(self) -> str:
        """The control exchange: C{clusterExchange}, else the outbox's name and C{.control}."""
        return self.clusterExchange or f"{self.outbox}.control"

    def check(self) -> None:
        """
        Check every setting's value as C{twistd mqtwist} checks what it is
        given: for a program that builds or changes a L{Config} itself.

        @raise ValueError: naming the first setting (attribute and option)
            whose value is refused, and why.
        """
        for path, declaration, value in _values(self):
            try:
                checkValue(declaration, value)
            except ValueError as e:
                option = "--" + "-".join(kebab(name) for name in path.split("."))
                raise ValueError(f"setting {path} ({option}): {e}") from None
        if self.queueType == "quorum" and self.maxPriority:
            raise ValueError(
                f"setting maxPriority (--max-priority) is {self.maxPriority} with queueType "
                "(--queue-type) quorum: RabbitMQ's quorum queues (before 4.0) have no "
                "priorities (no x-max-priority); give --max-priority 0 with quorum queues, "
                "or keep classic queues"
            )
        if self.submission and self.submissionMaxSize > self.maxJobBytes:
            raise ValueError(
                f"setting submissionMaxSize (--submission-max-size) is {self.submissionMaxSize} bytes, more "
                f"than maxJobBytes (--max-job-bytes) {self.maxJobBytes}: a message taken in with 250 would make "
                "a job the outbox refuses; give a smaller --submission-max-size (an outbox job is a little "
                "bigger than its message) or a bigger --max-job-bytes"
            )
        if self.submission and self.submissionMaxMemory < self.submissionMaxSize:
            raise ValueError(
                f"setting submissionMaxMemory (--submission-max-memory) is {self.submissionMaxMemory} bytes, "
                f"less than submissionMaxSize (--submission-max-size) {self.submissionMaxSize}: a message of "
                "the largest size would always be refused; give a bigger --submission-max-memory or a smaller "
                "--submission-max-size"
            )
        if self.clusterMemberTimeout < 2 * self.clusterHeartbeat:
            raise ValueError(
                f"setting clusterMemberTimeout (--cluster-member-timeout) is {self.clusterMemberTimeout:g} s "
                f"with clusterHeartbeat (--cluster-heartbeat) {self.clusterHeartbeat:g} s: a member would be "
                "taken for gone after missing a single heartbeat; give a time-out of at least twice the "
                "heartbeat"
            )


def checkValue(declaration: dataclasses.Field[Any], value: Any) -> None:
    """
    Check C{value} against the declaration of its setting.

    @raise ValueError: saying what is wrong and what is accepted.
    """
    check = declaration.metadata.get(CHECK)
    if check is not None:
        check(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _notNegative(value)


def kebab(name: str) -> str:
    """
    The option spelling of an attribute name: C{ehloName} is C{ehlo-name}.
    """
    return "".join(f"-{char.lower()}" if char.isupper() else char for char in name)


def _values(settings: Any, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    for declaration in dataclasses.fields(settings):
        value = getattr(settings, declaration.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _values(value, f"{prefix}{declaration.name}.")
        elif TOML_TABLE not in declaration.metadata:
            yield f"{prefix}{declaration.name}", declaration, value
