"""
Outbox JSON to L{Message}, and L{Message} plus what happened to result JSON.

The format is the one of C{docs/messages.rst}: MailerQ's, so that existing
publishers and result consumers work unchanged.  Parsing checks every
property that mqtwist acts on and reports the first problem as an
L{InvalidMessage} whose description names the property; everything else in
the object is kept as it is and travels into every result.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mqtwist.content.dkimsign import DKIMKeys, DKIMSpec, parseDKIM, withoutKeys
from mqtwist.content.headeredits import checkHeaderEdits
from mqtwist.content.joblimits import JobLimits, checkLimits, checkSize, encodeJSON, tooDeep
from mqtwist.content.mime import buildMime
from mqtwist.delivery.categories import shipped as shippedCategories
from mqtwist.errors import AttemptFailed, InvalidMessage
from mqtwist.smtp.tls import POLICIES as TLS_POLICIES
from mqtwist.timeformat import formatTime, parseTime
from mqtwist.validation import checkAddress, checkHeaderValue, checkHostName, checkIP, excerpt

#: the longest AMQP queue name, in bytes (a short string)
MAX_QUEUE_NAME = 255
#: result queue kinds, in the order of the C{queues} property
QUEUE_KINDS = ("results", "success", "failure", "retry", "dsn")

#: the values of C{dsn.notify} (RFC 3461 section 4.1)
DSN_NOTIFY = ("NEVER", "SUCCESS", "FAILURE", "DELAY")

#: the values of C{dsn.ret} (RFC 3461 section 4.3)
DSN_RET = ("FULL", "HDRS")

#: the longest C{dsn.orcpt} (RFC 3461 section 4.2)
MAX_ORCPT = 500

def _expect(obj: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = obj[key]
    # bool is an int in Python, but never what a sender meant by a number
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidMessage(f"property {key!r} must be {what}, not a boolean")
    if not isinstance(value, kinds):
        raise InvalidMessage(
            f"property {key!r} must be {what}, not {type(value).__name__} {excerpt(value)}"
        )
    return value


@dataclass
class Smarthost:
    """
    A relay that takes the message instead of the recipient's MX.
    """

    hostname: str
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def fromJSON(cls, value: Any) -> Smarthost:
        """
        Read the C{smarthost} property.

        @raise InvalidMessage: when it is not C{{hostname, port?, username?,
            password?}}.
        """
        if not isinstance(value, dict):
            raise InvalidMessage(
                "property 'smarthost' must be an object {hostname, port, "
                "username, password}"
            )
        hostname = value.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            raise InvalidMessage("property 'smarthost.hostname' must be a non-empty string")
        checkHostName("smarthost.hostname", hostname)
        port = value.get("port", 25)
        if isinstance(port, str) and port.isascii() and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidMessage("property 'smarthost.port' must be a port number 1-65535")
        credentials = []
        for key in ("username", "password"):
            item = value.get(key)
            if item is not None and not isinstance(item, str):
                raise InvalidMessage(f"property 'smarthost.{key}' must be a string")
            if item:
                # names the character and its place, never the value
                checkHeaderValue(f"smarthost.{key}", item)
            credentials.append(item or None)
        return cls(hostname, port, *credentials)


@dataclass
class DSN:
    """
    The delivery status notification parameters of RFC 3461, sent when the
    server announces DSN.

    @ivar notify: C{["NEVER"]} or some of C{SUCCESS}, C{FAILURE}, C{DELAY}.
    @ivar ret: C{FULL} or C{HDRS}.
    @ivar orcpt: the original recipient, as C{type;address} (C{rfc822;} when
        the message gave no type).
    @ivar envid: the sender's id of the message.
    """

    notify: list[str] | None = None
    ret: str | None = None
    orcpt: str | None = None
    envid: str | None = None

    @classmethod
    def fromJSON(cls, value: Any) -> DSN:
        """
        Read the C{dsn} property.

        @raise InvalidMessage: when it is not an object whose C{notify},
            C{ret}, C{orcpt} and C{envid} have values RFC 3461 allows.
        """
        if not isinstance(value, dict):
            raise InvalidMessage("property 'dsn' must be an object {notify, ret, orcpt, envid}")
        # other keys are the sender's own, as MailerQ has it: they stay in
        # the job, and so reach its results
        dsn = cls()
        notify = value.get("notify")
        if notify is not None:
            if isinstance(notify, str):
                notify = notify.split(",")
            if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
                raise InvalidMessage(
                    "property 'dsn.notify' must be a list or comma-separated string of "
                    + ", ".join(DSN_NOTIFY)
                )
            dsn.notify = [n.strip().upper() for n in notify if n.strip()]
            if not dsn.notify or not set(dsn.notify) <= set(DSN_NOTIFY) or (
                "NEVER" in dsn.notify and len(dsn.notify) > 1
            ):
                raise InvalidMessage(
                    f"property 'dsn.notify' is {excerpt(value.get('notify'))}; give NEVER alone, or some of "
                    f"SUCCESS, FAILURE, DELAY"
                )
        ret = value.get("ret")
        if ret is not None:
            if not isinstance(ret, str) or ret.upper() not in DSN_RET:
                raise InvalidMessage(f"property 'dsn.ret' is {excerpt(ret)}; give FULL or HDRS")
            dsn.ret = ret.upper()
        for key in ("orcpt", "envid"):
            item = value.get(key)
            if item is None:
                continue
            if not isinstance(item, str) or not item:
                raise InvalidMessage(f"property 'dsn.{key}' must be a non-empty string")
            checkHeaderValue(f"dsn.{key}", item)
            setattr(dsn, key, item)
        if dsn.orcpt is not None and len(dsn.orcpt) > MAX_ORCPT:
            raise InvalidMessage(
                f"property 'dsn.orcpt' is {len(dsn.orcpt)} characters long, more than the "
                f"{MAX_ORCPT} of RFC 3461 (section 4.2)"
            )
        if dsn.orcpt is not None and ";" not in dsn.orcpt:
            dsn.orcpt = "rfc822;" + dsn.orcpt
        if dsn.envid is not None and len(dsn.envid) > 100:
            raise InvalidMessage("property 'dsn.envid' is longer than 100 characters (RFC 3461)")
        return dsn


@dataclass(frozen=True)
class ParseSettings:
    """
    What parsing a message takes from the service's configuration.

    @ivar hostname: the domain of the Message-ID of generated messages.
    @ivar dkimKeys: signing keys by domain, for C{dkim} objects that name
        only their domain.
    @ivar limits: how big a job may be.
    @ivar reservedQueues: the queues of mqtwist's own (the outbox, its
        delay queues, the dead-letter queue), which a job's C{queues} may
        not name: a result published there would come back as a job.
    @ivar pools: the configured C{[[pools]]}.
    @ivar defaultIps: C{--default-ips}.
    """

    hostname: str = "localhost"
    dkimKeys: DKIMKeys = field(default_factory=DKIMKeys)
    limits: JobLimits = field(default_factory=JobLimits)
    reservedQueues: frozenset[str] = frozenset()
    #: local addresses by pool name, for a message's C{pool}
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: local addresses of a message that gives neither C{ips} nor C{pool}
    defaultIps: tuple[str, ...] = ()
    #: whether the configured keys sign the messages whose From domain they
    #: match, besides those their C{dkim} names (C{--dkim-sign matching})
    dkimMatching: bool = False
    #: the outbox, the one reserved queue that C{queues.dsn} may name: the
    #: reports are jobs, delivered like any other
    outbox: str = ""


@dataclass
class Message:
    """
    One delivery job from the outbox.

    @ivar json: the outbox object as it arrived, with every property
        (unknown ones included); results are built from it.
    @ivar envelope: the MAIL FROM address, C{""} for the null sender.
    @ivar recipient: the RCPT TO address.
    @ivar mime: the message to send, as bytes (UTF-8 of the JSON string);
        personalized (C{data}) and its CSS inlined (C{inlinecss}) before
        the first attempt, while C{json} keeps the template.
    """

    json: dict[str, Any]
    envelope: str
    recipient: str
    mime: bytes
    keepmime: bool = False
    #: send even what the server does not announce it takes (8-bit without
    #: 8BITMIME, non-ASCII addresses without SMTPUTF8, over its SIZE)
    force: bool = False
    ips: list[str] = field(default_factory=list)
    smarthost: Smarthost | None = None
    security: str | None = None
    dsn: DSN | None = None
    priority: int | None = None
    tags: list[str] = field(default_factory=list)
    retries: list[int] | None = None
    maxattempts: int | None = None
    #: POSIX time after which the message expires, when absolute
    maxdelivertime: float | None = None
    #: seconds after the first attempt after which it expires, when relative
    maxdeliverseconds: float | None = None
    #: POSIX time before which no attempt may be made
    nextattempt: float | None = None
    #: the C{headers} edits, applied to the body of every attempt
    headerEdits: dict[str, Any] | None = None
    #: C{mime} with C{headerEdits} applied, when that was done in a thread
    #: before the attempt (long edits); else the attempt applies them
    editedMime: bytes | None = None
    #: the DKIM signatures to add after the data plugins ran
    dkim: list[DKIMSpec] = field(default_factory=list)
    #: the configured keys that sign too when they match the From domain
    #: of the message as it is sent (C{--dkim-sign matching})
    dkimMatching: DKIMKeys | None = None
    #: the C{data} object: C{mime} is a personalization template
    data: dict[str, Any] | None = None
    #: the C{inlinecss} property: CSS rules become style attributes
    inlinecss: bool = False
    #: the C{key} of a job without C{mime}: its message is in the external
    #: message store, loaded for each attempt once a connection is ready
    #: (C{mime} is empty until then, and the loaded message, personalized,
    #: after)
    storeKey: str | None = None

    @property
    def results(self) -> list[dict[str, Any]]:
        """
        The result entries of earlier attempts (the C{results} property).
        """
        results = self.json.get("results")
        return results if isinstance(results, list) else []

    @property
    def attempts(self) -> int:
        """
        How many delivery attempts were made so far (entries that record an
        attempt; parking a message for later is not one).
        """
        return sum(1 for entry in self.results if entry.get("state") != "process")

    @property
    def deferralsInRow(self) -> int:
        """
        How many deferrals the last result entry stands for (consecutive
        deferrals share one entry with a C{deferrals} count); 0 when the
        last entry is not a deferral.
        """
        results = self.results
        if not results or results[-1].get("result") != "deferred":
            return 0
        count = results[-1].get("deferrals", 1)
        return count if isinstance(count, int) and count > 0 else 1

    @property
    def firstTryTime(self) -> float | None:
        """
        POSIX time of the first recorded attempt or deferral (when mqtwist
        first tried to send the message), or C{None}.  Other C{process}
        entries do not count; an entry that stands for several deferrals
        in a row counts from the first (its C{since}).
        """
        for entry in self.results:
            deferred = entry.get("result") == "deferred"
            if entry.get("state") == "process" and not deferred:
                continue
            try:
                return parseTime(entry.get("since", entry["time"]) if deferred else entry["time"])
            except (KeyError, TypeError, ValueError):
                continue
        return None

    @property
    def domain(self) -> str:
        """The recipient's domain, in lower case."""
        return self.recipient.rpartition("@")[2].lower()

    @property
    def label(self) -> str:
        """
        A short way to name this message in logs and descriptions: its C{id}
        when the sender gave one, else the recipient.
        """
        return labelOf(self.json, f"to {self.recipient}")

    @classmethod
    def fromJSON(
        cls, data: bytes | str, settings: ParseSettings | None = None, *, now: float | None = None
    ) -> Message:
        """
        Parse and check one outbox message.

        @param settings: what parsing takes from the service's configuration.
        @param now: the time for the Date of a generated message.
        @raise InvalidMessage: naming what is wrong; the caller publishes it
            as a C{process}/C{invalid} result.
        """
        settings = settings or ParseSettings()
        return cls.fromObject(decodeJSON(data, settings.limits), settings, now=now)

    @classmethod
    def fromObject(
        cls, obj: dict[str, Any], settings: ParseSettings | None = None, *, now: float | None = None
    ) -> Message:
        """
        Check one outbox message that is already a parsed JSON object.  A
        C{mime} object is built into the message text here (see
        L{buildMimeProperty}) unless the caller did it already.

        @raise InvalidMessage: naming what is wrong.
        """
        settings = settings or ParseSettings()
        if "recipient" not in obj:
            raise InvalidMessage("property 'recipient' is missing; every message needs one")
        recipient = checkAddress("recipient", _expect(obj, "recipient", (str,), "a string"))

        envelope = ""
        if obj.get("envelope") not in (None, ""):
            envelope = checkAddress("envelope", _expect(obj, "envelope", (str,), "a string"))

        storeKey = _storeKey(obj)
        if "mime" not in obj and storeKey is None:
            raise InvalidMessage(
                "property 'mime' is missing; it holds the message to send (or 'key', its key in "
                "the message store)"
            )
        buildMimeProperty(obj, settings, now)
        mime = "" if storeKey is not None else obj["mime"]
        if not isinstance(mime, str):
            raise InvalidMessage(f"property 'mime' must be a string, not {type(mime).__name__}")

        message = cls(
            json=obj,
            envelope=envelope,
            recipient=recipient,
            mime=mime.encode("utf-8", "surrogateescape"),
            storeKey=storeKey,
        )
        if "keepmime" in obj:
            message.keepmime = _expect(obj, "keepmime", (bool,), "true or false")
        if obj.get("force") is not None:
            message.force = _expect(obj, "force", (bool,), "true or false")
        if "ips" in obj:
            ips = _expect(obj, "ips", (list,), "a list of IP address strings")
            if not all(isinstance(ip, str) for ip in ips):
                raise InvalidMessage("property 'ips' must be a list of IP address strings")
            message.ips = [checkIP("ips", ip) for ip in ips]
        elif obj.get("pool") is not None:
            # as MailerQ: 'ips', more precise, wins over 'pool'
            message.ips = list(_poolAddresses(obj["pool"], settings.pools))
        else:
            message.ips = list(settings.defaultIps)
        if obj.get("smarthost") is not None:
            message.smarthost = Smarthost.fromJSON(obj["smarthost"])
        if obj.get("security") is not None:
            security = _expect(obj, "security", (str,), "a string")
            if security not in TLS_POLICIES:
                raise InvalidMessage(
                    f"property 'security' is {excerpt(security)}; use one of "
                    f"{', '.join(TLS_POLICIES)}"
                )
            message.security = security
        if obj.get("dsn") is not None:
            message.dsn = DSN.fromJSON(obj["dsn"])
        if obj.get("priority") is not None:
            message.priority = _expect(obj, "priority", (int,), "an integer 0-255")
            if not 0 <= message.priority <= 255:
                raise InvalidMessage("property 'priority' must be an integer 0-255")
        if "tags" in obj:
            tags = _expect(obj, "tags", (list,), "a list of strings")
            if not all(isinstance(tag, str) for tag in tags):
                raise InvalidMessage("property 'tags' must be a list of strings")
            message.tags = tags
        if obj.get("retries") is not None:
            retries = _expect(obj, "retries", (list,), "a list of seconds")
            if not retries or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in retries
            ):
                raise InvalidMessage(
                    "property 'retries' must be a non-empty list of whole seconds >= 0"
                )
            message.retries = retries
        if obj.get("maxattempts") is not None:
            message.maxattempts = _expect(obj, "maxattempts", (int,), "a whole number")
            if message.maxattempts < 1:
                raise InvalidMessage("property 'maxattempts' must be at least 1")
        if obj.get("maxdelivertime") is not None:
            _readMaxDeliverTime(message, obj["maxdelivertime"])
        if obj.get("nextattempt") is not None:
            message.nextattempt = _readNextAttempt(obj["nextattempt"])
        if "queues" in obj:
            _readQueues(obj["queues"], settings.reservedQueues, settings.outbox)
        if "results" in obj and not (
            isinstance(obj["results"], list) and all(isinstance(entry, dict) for entry in obj["results"])
        ):
            raise InvalidMessage("property 'results' must be a list of result entries (objects)")
        if obj.get("headers") is not None:
            checkHeaderEdits(obj["headers"])
            message.headerEdits = obj["headers"]
        if obj.get("dkim") is not None:
            message.dkim = parseDKIM(obj["dkim"], settings.dkimKeys, authservId=settings.hostname)
        if settings.dkimMatching and settings.dkimKeys:
            message.dkimMatching = settings.dkimKeys
        if obj.get("data") is not None:
            message.data = _expect(obj, "data", (dict,), "an object whose keys are the template's variables")
        if obj.get("inlinecss") is not None:
            message.inlinecss = _expect(obj, "inlinecss", (bool,), "true or false")
        return message

    def queueFor(self, kind: str, default: str) -> str | None:
        """
        The queue to publish a result of C{kind} (C{"results"}, C{"success"},
        C{"failure"}, C{"retry"}), or a report (C{"dsn"}), to: the message's own C{queues} entry when
        it has one (C{null} or C{""} switch it off), else C{default}.

        @return: a queue name, or C{None} when this result is not published.
        """
        # parsing refused a reserved or malformed name already
        return queueFor(self.json, kind, default, frozenset())

    def resultJSON(self) -> bytes:
        """
        The object to publish as a result: the outbox object with C{mime}
        left out unless C{keepmime} is set, and every result entry so far.
        """
        published = withoutSecrets(self.json)
        if not self.keepmime:
            published.pop("mime", None)
        return encodeJSON(published)

    def outboxJSON(self) -> bytes:
        """
        The object to put back on the outbox for another attempt: everything,
        C{mime} and earlier results included.
        """
        return encodeJSON(self.json)

    def record(self, entry: ResultEntry) -> None:
        """
        Append a result entry to the message's C{results}.
        """
        self.json.setdefault("results", [])
        if not isinstance(self.json["results"], list):
            self.json["results"] = []
        self.json["results"].append(entry.toJSON())


#: the characters of an id or recipient that name a message in logs
LABEL_LENGTH = 100


def labelOf(obj: object, default: str) -> str:
    """
    How logs name the outbox object C{obj}: its C{id} when the sender gave
    one, else its recipient, else C{default} (also when C{obj} is not an
    object at all).  Control characters come out escaped, so that text from
    the sender cannot start a line of its own in the log, and a label is
    cut after L{LABEL_LENGTH} characters.
    """
    if not isinstance(obj, Mapping):
        return default
    ident = obj.get("id")
    recipient = obj.get("recipient")
    if ident is not None:
        label = str(ident)
    elif isinstance(recipient, str):
        label = f"to {recipient}"
    else:
        return default
    if len(label) > LABEL_LENGTH:
        label = label[:LABEL_LENGTH] + "..."
    # escaped as descriptions quote values, without the quotes
    return label if label.isprintable() else excerpt(label, len(label))[1:-1]


def labelsShown(labels: Sequence[str], shown: int = 3) -> str:
    """
    The labels of several messages for the text of one log event: the
    first C{shown} and the last (the event's fields carry them all).
    """
    if len(labels) <= shown + 1:
        return ", ".join(labels)
    return ", ".join(labels[:shown]) + f", ... {labels[-1]}"


def _refuseConstant(name: str) -> None:
    # Python's json module takes NaN and Infinity, which JSON (RFC 8259)
    # has not: echoed into a result, they would break strict consumers
    raise ValueError(f"{name} is not a JSON number (RFC 8259); give digits or null")


def _finiteFloat(text: str) -> float:
    # 1e999 reads as infinity, which would be written back as Infinity
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text[:40]} is too big for a number of 64 bits (RFC 8259 section 6)")
    return number


#: a JSON string, or the white space and comma after a value that only
#: white space separates from the end of its object or array
_STRING_OR_TRAILING_COMMA = re.compile(r'("(?:[^"\\]|\\.)*")|(?<=[^\s,\[{])(\s*),(?=\s*[}\]])')


def _keepStringsDropComma(match: re.Match[str]) -> str:
    string, space = match.groups()
    return string if string is not None else space


def loadJSON(data: bytes | str) -> Any:
    """
    Parse JSON (RFC 8259), with one leniency: a comma after the last member
    of an object or array is allowed, since MailerQ's own documentation
    prints jobs that way.  C{NaN}, C{Infinity} and C{-Infinity} are refused
    like any other text that is not JSON.

    @raise ValueError: when C{data} is not JSON (L{UnicodeDecodeError} when
        bytes are not UTF-8); the error is the strict parser's.
    """
    try:
        return json.loads(data, parse_constant=_refuseConstant, parse_float=_finiteFloat)
    except ValueError as strictError:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        lenient = _STRING_OR_TRAILING_COMMA.sub(_keepStringsDropComma, text)
        if lenient == text:
            raise
        try:
            return json.loads(lenient, parse_constant=_refuseConstant, parse_float=_finiteFloat)
        except ValueError:
            raise strictError from None


def decodeJSON(data: bytes | str, limits: JobLimits | None = None) -> dict[str, Any]:
    """
    The JSON object of one outbox message, within C{limits}.

    @raise InvalidMessage: when C{data} is not UTF-8, not JSON, not an
        object, or past one of C{limits} (L{checkLimits}).
    """
    limits = limits or JobLimits()
    checkSize(len(data), limits)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = loadJSON(text)
    except UnicodeDecodeError as e:
        raise InvalidMessage(f"the message is not UTF-8 text: {e}") from None
    except ValueError as e:
        raise InvalidMessage(f"the message is not valid JSON: {excerpt(str(e), 200)}") from None
    except RecursionError:
        raise tooDeep(limits) from None
    if not isinstance(obj, dict):
        raise InvalidMessage(
            f"the message must be a JSON object, not a JSON {type(obj).__name__}"
        )
    checkLimits(obj, limits)
    return obj


def readJob(data: bytes, limits: JobLimits | None = None) -> dict[str, Any] | None:
    """
    The JSON object of an outbox message that may be invalid, to name it
    and route its result: C{None} when it is not an object within
    C{limits}.  Never raises.
    """
    try:
        return decodeJSON(data, limits)
    except InvalidMessage:
        return None


def buildMimeProperty(
    obj: dict[str, Any], settings: ParseSettings, now: float | None = None
) -> None:
    """
    Replace a C{mime} object in the outbox object C{obj} by the message text
    built from it, so that every later attempt sends the same message (same
    Date and Message-ID) without building it again.  Nothing happens when
    C{mime} is not an object.  Thread-safe: it touches only C{obj}.

    @raise InvalidMessage: naming the field of C{mime} that is wrong.
    """
    mime = obj.get("mime")
    if isinstance(mime, dict):
        built = buildMime(mime, now=time.time() if now is None else now, hostname=settings.hostname)
        obj["mime"] = built.decode("ascii")


def withoutSecrets(obj: dict[str, Any]) -> dict[str, Any]:
    """
    A shallow copy of the outbox object C{obj} fit to publish or log: no
    smarthost password, no DKIM private keys.
    """
    published = dict(obj)
    if isinstance(published.get("smarthost"), dict):
        published["smarthost"] = {
            k: v for k, v in published["smarthost"].items() if k != "password"
        }
    if "dkim" in published:
        published["dkim"] = withoutKeys(published["dkim"])
    return published


def queueFor(obj: Any, kind: str, default: str, reserved: frozenset[str]) -> str | None:
    """
    The result queue of C{kind} for the outbox object C{obj}, which need not
    be a valid message: its C{queues} entry when that is C{null} or a name
    that parsing would take (not one of C{reserved}, no control character,
    at most 255 bytes), else C{default}.

    @return: a queue name, or C{None} when the result is switched off.
    """
    queues = obj.get("queues") if isinstance(obj, dict) else None
    if isinstance(queues, dict) and kind in queues:
        name = queues[kind]
        if name is None or name == "":
            return None
        if isinstance(name, str) and _queueNameProblem(kind, name, reserved) is None:
            return name
    return default or None


def _storeKey(obj: dict[str, Any]) -> str | None:
    """
    The key of a job's message in the external message store: its C{key}
    when it has no C{mime}.  When it has both, C{mime} is sent, and the
    store is not read (MailerQ: the message in the job needs no store).

    @raise InvalidMessage: for a C{key} that is not a non-empty printable
        string.
    """
    key = obj.get("key")
    if key is None:
        return None
    if not (isinstance(key, str) and key and key.isprintable()):
        raise InvalidMessage(
            f"property 'key' is {excerpt(key)}; give the key of the message in the message store, "
            f"a non-empty string without control characters"
        )
    return key if obj.get("mime") is None else None


def _poolAddresses(name: Any, pools: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    if not isinstance(name, str):
        raise InvalidMessage(f"property 'pool' must be the name of a pool (a string), not {excerpt(name)}")
    if name not in pools:
        known = ", ".join(sorted(pools)[:10]) or "none is configured"
        raise InvalidMessage(
            f"property 'pool' names {excerpt(name)}, which is no [[pools]] table of mqtwist's "
            f"configuration ({known}); give a configured pool, or 'ips'"
        )
    return pools[name]


def _readMaxDeliverTime(message: Message, value: Any) -> None:
    if isinstance(value, bool):
        raise InvalidMessage("property 'maxdelivertime' must be a time or seconds, not a boolean")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise InvalidMessage("property 'maxdelivertime' in seconds must be positive")
        message.maxdeliverseconds = float(value)
        return
    if isinstance(value, str):
        if value.isascii() and value.isdigit():
            # seconds as digits, refused alike when 0
            _readMaxDeliverTime(message, int(value))
            return
        try:
            message.maxdelivertime = parseTime(value)
            return
        except ValueError:
            pass
    raise InvalidMessage(
        f"property 'maxdelivertime' is {excerpt(value)}; give seconds or a "
        f"UTC time 'YYYY-MM-DD HH:MM:SS'"
    )


def _readNextAttempt(value: Any) -> float:
    text = value.get("time") if isinstance(value, dict) else None
    if isinstance(text, str):
        try:
            return parseTime(text)
        except ValueError:
            pass
    raise InvalidMessage(
        f"property 'nextattempt' is {excerpt(value)}; give "
        f'{{"time": "YYYY-MM-DD HH:MM:SS"}} in UTC'
    )


def _readQueues(value: Any, reserved: frozenset[str], outbox: str) -> None:
    if not isinstance(value, dict):
        raise InvalidMessage(
            "property 'queues' must be an object {results, success, failure, retry, dsn}"
        )
    for kind, name in value.items():
        if kind not in QUEUE_KINDS:
            # the sender's own key, as in MailerQ: kept, and copied to results
            continue
        if name is not None and not isinstance(name, str):
            raise InvalidMessage(f"property 'queues.{kind}' must be a queue name or null")
        if name:
            problem = _queueNameProblem(kind, name, reserved - {outbox} if kind == "dsn" else reserved)
            if problem is not None:
                raise problem


def _queueNameProblem(kind: str, name: str, reserved: frozenset[str]) -> InvalidMessage | None:
    """
    Why C{name} cannot be the C{kind} result queue of a job, or C{None}.
    """
    try:
        checkHeaderValue(f"queues.{kind}", name)
    except InvalidMessage as e:
        return e
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_QUEUE_NAME:
        return InvalidMessage(
            f"property 'queues.{kind}' is {size} bytes long; AMQP queue names are at most "
            f"{MAX_QUEUE_NAME} bytes"
        )
    if name in reserved and kind == "dsn":
        return InvalidMessage(
            f"property 'queues.dsn' names {excerpt(name)}, a delay queue or the dead-letter "
            f"queue of mqtwist's: reports published there would not be delivered; give the "
            f"outbox, or a queue for reports"
        )
    if name in reserved:
        return InvalidMessage(
            f"property 'queues.{kind}' names {excerpt(name)}, a queue of mqtwist's own (the "
            f"outbox, a delay queue, the dead-letter or the held queue): results published there "
            f"would come back as jobs; give a queue for results"
        )
    return None


@dataclass
class ResultEntry:
    """
    What one attempt (or one decision about a message) came to: one entry of
    the C{results} list of C{docs/messages.rst}.

    @ivar final: C{True} when the message is done (delivered, or failed for
        good); C{False} when it is to be tried again.
    """

    state: str
    result: str
    time: float
    final: bool
    code: int | None = None
    status: str | None = None
    description: str | None = None
    plugin: str | None = None
    #: connection facts (C{mta}, C{from}, C{to}, C{messages}, C{sent}, ...)
    connection: dict[str, Any] = field(default_factory=dict)
    #: the bounce category of a failure (L{mqtwist.delivery.categories})
    category: str | None = None

    @property
    def accepted(self) -> bool:
        """
        Whether the message was delivered.
        """
        return self.result == "accepted"

    @classmethod
    def fromFailure(
        cls,
        failure: AttemptFailed,
        time: float,
        connection: dict[str, Any] | None = None,
        category: str | None = None,
    ) -> ResultEntry:
        """
        The entry for an attempt that ended with C{failure}.

        @param category: its bounce category; when not given, the one the
            shipped rules give it (for entries made without a
            configuration's rules at hand, such as an invalid job's).
        """
        if category is None:
            category = shippedCategories().ofFailure(failure)
        return cls(
            state=failure.state,
            result=failure.result,
            time=time,
            final=failure.permanent,
            code=failure.code,
            status=failure.status,
            description=failure.description,
            plugin=failure.plugin,
            category=category,
            connection=connection or {},
        )

    def toJSON(self) -> dict[str, Any]:
        """
        The entry as it appears in result JSON (keys with no value left out).
        """
        entry: dict[str, Any] = {
            "time": formatTime(self.time),
            "state": self.state,
            "result": self.result,
        }
        for key in ("code", "status", "description", "plugin", "category"):
            value = getattr(self, key)
            if value is not None:
                entry[key] = value
        entry.update(self.connection)
        return entry


def invalidResultJSON(
    data: bytes, failure: AttemptFailed, now: float, limits: JobLimits | None = None
) -> bytes:
    """
    The result object for outbox data that is not a usable message: one
    final C{process} entry made from C{failure} (C{invalid}, or C{error}
    for a job that could not be handled), as L{rawResultJSON} makes it.
    Never raises.
    """
    return rawResultJSON(data, ResultEntry.fromFailure(failure, now).toJSON(), limits)


def rawResultJSON(data: bytes, entry: dict[str, Any], limits: JobLimits | None = None) -> bytes:
    """
    A result made straight from an outbox message's body and one result
    entry, for a job that has no L{Message} to build it (it is invalid, or
    handling it failed).  When the data is a JSON object within C{limits},
    its properties are kept as for any result (no C{mime}, no secrets), so
    the sender's ids travel back, and C{entry} follows its earlier results;
    otherwise the result holds the text as it arrived under C{input}, cut
    after C{limits.maxString} characters (its whole size in C{inputsize}
    then).  Never raises.
    """
    limits = limits or JobLimits()
    obj: dict[str, Any] | None = readJob(data, limits)
    if obj is not None:
        obj = withoutSecrets(obj)
        obj.pop("mime", None)
        earlier = obj.get("results")
        obj["results"] = (earlier if isinstance(earlier, list) else []) + [entry]
    else:
        # a character takes at most 4 bytes of UTF-8
        text = data[: limits.maxString * 4].decode("utf-8", "replace")
        obj = {**identityOf(data, limits), "input": text[: limits.maxString], "results": [entry]}
        if len(data) > limits.maxString * 4 or len(text) > limits.maxString:
            obj["inputsize"] = len(data)
    return encodeJSON(obj)


def identityOf(data: bytes, limits: JobLimits) -> dict[str, Any]:
    """
    C{{"id": ...}} of a job that is past its limits but still JSON, when
    its C{id} is a string or number within C{limits.maxString}, for its
    result and the log to name it; C{{}} when none can be read.  Never
    raises.
    """
    if len(data) > limits.maxBytes:
        return {}
    try:
        obj = loadJSON(data)
    except (ValueError, RecursionError):
        return {}
    ident = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(ident, (int, float)) and not isinstance(ident, bool):
        return {"id": ident}
    if isinstance(ident, str) and len(ident) <= limits.maxString:
        return {"id": ident}
    return {}
