"""
DKIM signing (RFC 6376) of outgoing messages: C{rsa-sha256} and
C{ed25519-sha256} (RFC 8463), one or several signatures per message.

The C{dkim} property of an outbox message is one object or a list of them:

  - C{domain} (required): the signing domain, C{d=};
  - C{selector}: the selector, C{s=};
  - C{key}: the private key, PEM (PKCS#1 or PKCS#8, RSA or Ed25519); the
    algorithm follows from the key;
  - C{headers}: header fields to sign I{in addition to} the usual set
    (those of L{DEFAULT_HEADERS} that the message has, and C{From} once
    more: From over-signed), a list of names; every field of such a name
    that the message has is signed, and a name given more often than the
    message has that field signs the absent ones too (over-signing: a
    field added later breaks the signature).  Names of the usual set add
    nothing;
  - C{canonicalization}: C{header/body}, each C{simple} or C{relaxed};
    default C{relaxed/simple};
  - C{expire}: when the signature expires (C{x=}): seconds after signing,
    or a UTC time C{YYYY-MM-DD HH:MM:SS};
  - C{report}: C{true} asks verifiers for failure reports (C{r=y}, RFC
    6651); default C{false};
  - C{protocols}: C{["dkim"]} (the default), C{["dkim", "arc"]} or
    C{["arc"]}: with C{arc}, the key also seals an ARC set (RFC 8617;
    RSA keys only, as RFC 8617 allows), see L{sign}.

Other keys in a C{dkim} object are kept (they go to results with the
rest of the object) and have no effect.

C{selector} and C{key} may be left out when the service's configuration
has a key for the domain (L{DKIMKeys}), so that senders need not put
private keys in every message; the configured key may carry
C{protocols}, which the message's C{protocols} overrides.  Private keys
are never part of a description, a log event or a published result
(L{withoutKeys}).

Canonicalization and header selection are dkimpy's; the signature itself
is made with C{cryptography} (OpenSSL), not with dkimpy's pure-Python RSA:
that is 20 times faster (0.25 ms against 5 ms for RSA-2048 here) and
releases the GIL, so that L{signInThread} uses both cores.  Parsed keys are
kept in a bounded cache (L{KeyCache}), so a PEM is parsed once.

ARC sets (L{_seal}) are made the same way: dkimpy's canonicalization, the
signatures with C{cryptography}; dkimpy's own C{arc_sign} (pure-Python
RSA) takes 16 ms a set here, against well under 1 ms.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from functools import cache
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import MessageFormatError, hash_headers, rfc822_parse
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

from mqtwist.content.headeredits import splitHeaderBlock
from mqtwist.errors import InvalidMessage
from mqtwist.smtp.body import normaliseLineEnds
from mqtwist.timeformat import parseTime
from mqtwist.validation import excerpt

__all__ = [
    "DEFAULT_HEADERS",
    "DKIMKeys",
    "DKIMSpec",
    "KeyCache",
    "parseDKIM",
    "sign",
    "signInThread",
    "withoutKeys",
]

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: header fields signed by default, those the message has (RFC 6376
#: section 5.4.1's list, less the rarely used resent-* fields, plus the
#: one-click unsubscribe fields of RFC 8058, which must be signed)
DEFAULT_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
    "list-owner", "list-archive",
)
#: fields signed once more than the message has them (over-signed) by default
OVERSIGNED = ("from",)
DEFAULT_CANONICALIZATION = "relaxed/simple"
#: parsed keys kept by default
DEFAULT_KEY_CACHE = 1000
#: minimum RSA key size (RFC 8301 section 3.2: verifiers refuse smaller)
MIN_RSA_BITS = 1024

_DKIM_KEYS = (
    "domain", "selector", "key", "headers", "canonicalization", "expire", "report", "protocols"
)
#: the values of C{protocols}
PROTOCOLS = ("dkim", "arc")
_DOMAIN_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_DEFAULT_SET = {name.encode("ascii") for name in DEFAULT_HEADERS}
_DEFAULT_NAMES = frozenset(DEFAULT_HEADERS)
_FORBIDDEN_TO_SIGN = {"dkim-signature", "return-path", "received", "bcc", "resent-bcc"}


class KeyCache:
    """
    Parsed private keys by the SHA-256 of their PEM, the least recently used
    dropped past C{size}.  Keys sent in every message (rather than
    configured) are parsed once, not once per message.
    """

    def __init__(self, size: int = DEFAULT_KEY_CACHE) -> None:
        self.size = size
        self._keys: OrderedDict[bytes, PrivateKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, pem: str, what: str) -> PrivateKey:
        """
        The key that C{pem} holds.

        @param what: what the key is, for descriptions (C{"dkim[0].key"}).
        @raise InvalidMessage: naming C{what} (never quoting the key) when it
            is not an unencrypted RSA (at least 1024 bits) or Ed25519 key.
        """
        data = pem.encode("utf-8", "replace")
        digest = hashlib.sha256(data).digest()
        key = self._keys.get(digest)
        if key is not None:
            self._keys.move_to_end(digest)
            return key
        key = _parseKey(data, what)
        self._keys[digest] = key
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return key


def _parseKey(data: bytes, what: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidMessage(f"{what} is encrypted; give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidMessage(
            f"{what} is not a usable private key: give an unencrypted RSA or "
            f"Ed25519 key in PEM (-----BEGIN PRIVATE KEY----- ...)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidMessage(
                f"{what} is an RSA key of {key.key_size} bits; DKIM verifiers "
                f"refuse keys under {MIN_RSA_BITS} bits (RFC 8301): use 2048"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise InvalidMessage(
        f"{what} is a {type(key).__name__.removeprefix('_')} key; DKIM signs "
        f"with RSA or Ed25519 keys only"
    )


def _algorithm(key: PrivateKey) -> str:
    return "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"


@dataclass(frozen=True)
class DKIMSpec:
    """
    One signature to add to a message, checked and with its key parsed.

    @ivar headers: field names to sign besides the default set (the
        fields of L{DEFAULT_HEADERS} present in the message, From
        over-signed), lower case, none of the default set; C{None} for none.
    @ivar expireAfter: seconds from signing to expiry (C{x=}), or C{None}.
    @ivar expireAt: POSIX time of expiry (C{x=}), or C{None}.
    @ivar report: whether the signature asks for failure reports (C{r=y},
        RFC 6651).
    @ivar dkim: whether the key makes a C{DKIM-Signature}.
    @ivar arc: whether the key seals an ARC set (RFC 8617).
    @ivar authservId: the C{authserv-id} of its ARC-Authentication-Results
        (the EHLO name), or C{None} for this host's fully qualified name.
    """

    domain: str
    selector: str
    key: PrivateKey = field(repr=False)
    headers: tuple[str, ...] | None = None
    canonicalization: str = DEFAULT_CANONICALIZATION
    expireAfter: float | None = None
    expireAt: float | None = None
    report: bool = False
    dkim: bool = True
    arc: bool = False
    authservId: str | None = None

    @property
    def algorithm(self) -> str:
        """
        C{"rsa-sha256"} or C{"ed25519-sha256"}, from the key.
        """
        return _algorithm(self.key)


@dataclass(frozen=True)
class _ConfiguredKey:
    selector: str
    key: PrivateKey = field(repr=False)
    #: C{(dkim, arc)}
    protocols: tuple[bool, bool] = (True, False)


class DKIMKeys:
    """
    The signing keys of the service's configuration by domain, and the cache
    of keys that come in messages.
    """

    def __init__(
        self,
        domains: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        cacheSize: int = DEFAULT_KEY_CACHE,
    ) -> None:
        """
        @param domains: signing domain -> C{{"selector": ..., "key": PEM}} or
            C{{"selector": ..., "keyfile": path}}, each with optional
            C{"protocols"} (as in messages; default C{["dkim"]}).  Key
            files are read here, once, when the service is set up.
        @param cacheSize: how many keys sent in messages stay parsed.
        @raise ValueError: when an entry is unusable; the text names the
            domain and the cause, never the key.
        """
        self.cache = KeyCache(cacheSize)
        self._domains: dict[str, _ConfiguredKey] = {}
        for domain, entry in (domains or {}).items():
            what = f"DKIM key for {domain!r} in the configuration"
            try:
                name = _checkDomain(what, domain)
                self._domains[name] = self._loadEntry(what, entry)
            except InvalidMessage as e:
                raise ValueError(e.description) from None

    @staticmethod
    def _loadEntry(what: str, entry: Mapping[str, Any]) -> _ConfiguredKey:
        if not isinstance(entry, Mapping):
            raise InvalidMessage(f"{what} must be a table with selector and key or keyfile")
        selector = _checkSelector(f"{what}: selector", entry.get("selector"))
        protocols = (True, False)
        if entry.get("protocols") is not None:
            protocols = _checkProtocols(f"{what}: protocols", entry["protocols"])
        if ("key" in entry) == ("keyfile" in entry):
            raise InvalidMessage(f"{what} needs either key (PEM) or keyfile (a path), not both")
        if "keyfile" in entry:
            path = entry["keyfile"]
            try:
                with open(path, "rb") as f:
                    pem = f.read().decode("ascii", "replace")
            except OSError as e:
                raise InvalidMessage(f"{what}: cannot read keyfile {path!r}: {e.strerror}") from None
        else:
            pem = entry["key"]
            if not isinstance(pem, str):
                raise InvalidMessage(f"{what}: key must be a PEM string")
        key = _parseKey(pem.encode("utf-8", "replace"), what)
        if protocols[1]:
            _checkARCKey(what, key)
        return _ConfiguredKey(selector, key, protocols)

    def configured(self, domain: str) -> _ConfiguredKey | None:
        """
        The configured selector and key of C{domain}, if there is one.
        """
        return self._domains.get(domain.lower())

    def __contains__(self, domain: object) -> bool:
        return isinstance(domain, str) and domain.lower() in self._domains

    def __bool__(self) -> bool:
        """Whether any key is configured."""
        return bool(self._domains)

    def matching(self, fromDomain: str, *, authservId: str | None = None) -> list[DKIMSpec]:
        """
        The signatures of the configured keys that match a message whose
        From address is at C{fromDomain}: the key of that domain and those
        of its parent domains (each aligned with it, RFC 7489 relaxed
        alignment), the most specific first; as MailerQ signs with every
        matching key of its database.
        """
        labels = fromDomain.lower().rstrip(".").split(".")
        domains = [".".join(labels[i:]) for i in range(len(labels) - 1)]
        return [
            _parseOne(f"the configured key of {domain}", {"domain": domain}, self, authservId)
            for domain in domains
            if domain in self._domains
        ]


def _checkDomain(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{what} must be a domain name (a non-empty string)")
    # the IDNA codec takes seconds over a megabyte: no domain is that long
    # (1,000 characters cover any 253-character name in any script)
    if len(value) > 1000:
        raise InvalidMessage(f"{what} {excerpt(value)} is not a valid domain name")
    try:
        ascii = value.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        ascii = ""
    labels = ascii.split(".")
    if len(ascii) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(x) for x in labels):
        raise InvalidMessage(f"{what} {excerpt(value)} is not a valid domain name")
    return ascii.lower()


def _checkSelector(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _SELECTOR.fullmatch(value) or len(value) > 253:
        raise InvalidMessage(
            f"{what} must be a DKIM selector (letters, digits, '-', '_', dots), "
            f"not {excerpt(value)}"
        )
    return value


def _checkHeaders(what: str, value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InvalidMessage(f"{what} must be a list of header names")
    names = []
    for name in value:
        if not _FIELD_NAME.fullmatch(name):
            raise InvalidMessage(f"{what}: {excerpt(name)} is not a header field name")
        if name.lower() in _FORBIDDEN_TO_SIGN:
            raise InvalidMessage(
                f"{what}: {name} must not be signed: it is changed or added "
                f"on the way, which would break the signature (RFC 6376 5.4)"
            )
        # the default set is signed anyway
        if name.lower() not in _DEFAULT_NAMES:
            names.append(name.lower())
    return tuple(names) or None


def _checkReport(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidMessage(f"{what} must be true or false, not {excerpt(value)}")
    return value


def _checkProtocols(what: str, value: Any) -> tuple[bool, bool]:
    """
    C{(dkim, arc)}: which of the protocols C{value} names.
    """
    usage = f'{what} must be a list of "dkim" and/or "arc" (e.g. ["dkim", "arc"])'
    # a tuple comes from the configuration (DKIMKeyRule), never from JSON
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidMessage(f"{usage}, not {excerpt(value)}")
    for x in value:
        if not isinstance(x, str) or x.lower() not in PROTOCOLS:
            raise InvalidMessage(f"{usage}; it has {excerpt(x)}")
    names = {x.lower() for x in value}
    return "dkim" in names, "arc" in names


def _checkARCKey(what: str, key: PrivateKey) -> None:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidMessage(
            f"{what} is an Ed25519 key; ARC seals with RSA keys only (RFC 8617 "
            f"section 4.1.3): give an RSA key, or leave arc out of protocols"
        )


def _checkExpire(what: str, value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value), None
    if isinstance(value, str):
        if value.isdigit() and int(value) > 0:
            return float(value), None
        try:
            return None, parseTime(value)
        except ValueError:
            pass
    raise InvalidMessage(
        f"{what} must be seconds after signing (a positive number) or a UTC "
        f"time 'YYYY-MM-DD HH:MM:SS'"
    )


def _parseOne(what: str, value: Any, keys: DKIMKeys, authservId: str | None) -> DKIMSpec:
    if not isinstance(value, dict):
        raise InvalidMessage(
            f"property {what!r} must be an object {{domain, selector, key, "
            f"headers?, canonicalization?, expire?, report?, protocols?}}"
        )
    # keys of no meaning here are kept for the results, as MailerQ does
    domain = _checkDomain(f"property '{what}.domain'", value.get("domain"))
    configured = keys.configured(domain)
    if "key" in value:
        if not isinstance(value["key"], str):
            raise InvalidMessage(f"property '{what}.key' must be a private key in PEM")
        key = keys.cache.load(value["key"], f"property '{what}.key'")
        if "selector" not in value:
            raise InvalidMessage(f"property '{what}' has a key but no selector")
        selector = _checkSelector(f"property '{what}.selector'", value["selector"])
    elif configured is not None:
        key = configured.key
        selector = configured.selector
        if "selector" in value:
            selector = _checkSelector(f"property '{what}.selector'", value["selector"])
    else:
        raise InvalidMessage(
            f"property {what!r}: no key for domain {excerpt(domain)}: give 'key' (and "
            f"'selector') in the message or configure a key for the domain"
        )
    spec: dict[str, Any] = {}
    protocols = configured.protocols if configured is not None and "key" not in value else None
    if value.get("protocols") is not None:
        protocols = _checkProtocols(f"property '{what}.protocols'", value["protocols"])
    if protocols is not None:
        spec["dkim"], spec["arc"] = protocols
        if spec["arc"]:
            _checkARCKey(f"the key of property {what!r}", key)
            spec["authservId"] = authservId
    if value.get("report") is not None:
        spec["report"] = _checkReport(f"property '{what}.report'", value["report"])
    if value.get("headers") is not None:
        spec["headers"] = _checkHeaders(f"property '{what}.headers'", value["headers"])
    if value.get("canonicalization") is not None:
        c = value["canonicalization"]
        try:
            if not isinstance(c, str):
                raise InvalidCanonicalizationPolicyError(c)
            policy = CanonicalizationPolicy.from_c_value(c.encode("ascii"))
        except (InvalidCanonicalizationPolicyError, UnicodeError):
            raise InvalidMessage(
                f"property '{what}.canonicalization' is {excerpt(c)}; use "
                f"header/body, each simple or relaxed (e.g. relaxed/simple)"
            ) from None
        spec["canonicalization"] = policy.to_c_value().decode("ascii")
    if value.get("expire") is not None:
        spec["expireAfter"], spec["expireAt"] = _checkExpire(
            f"property '{what}.expire'", value["expire"]
        )
    return DKIMSpec(domain, selector, key, **spec)


def parseDKIM(value: Any, keys: DKIMKeys, *, authservId: str | None = None) -> list[DKIMSpec]:
    """
    Check the C{dkim} property of an outbox message and parse its keys
    (through C{keys}' cache).

    @param value: the property: one object or a list of them.
    @param keys: the configured keys, and the cache for keys in messages.
    @param authservId: the name mqtwist gives in EHLO, which ARC sets name
        as the C{authserv-id} of their results; default this host's fully
        qualified name.
    @return: one L{DKIMSpec} per signature, in the order given.
    @raise InvalidMessage: naming the property (C{dkim}, C{dkim[1].key},
        ...) and the cause; never quoting a key.
    """
    if isinstance(value, list):
        if not value:
            raise InvalidMessage("property 'dkim' is an empty list; leave it out instead")
        return [_parseOne(f"dkim[{i}]", item, keys, authservId) for i, item in enumerate(value)]
    return [_parseOne("dkim", value, keys, authservId)]


def withoutKeys(value: Any) -> Any:
    """
    The C{dkim} property as it may be published in results: each object
    without its C{key}.  Anything else is returned as it is.
    """
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "key"}
    if isinstance(value, list):
        return [withoutKeys(item) for item in value]
    return value


def _signDigest(key: PrivateKey, digest: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463: Ed25519 (pure) over the SHA-256 hash of the header data
        return key.sign(digest)
    return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def _bodyHash(canonicalization: bytes, body: bytes, cache: dict[bytes, bytes]) -> bytes:
    bodyAlgorithm = canonicalization.split(b"/")[1]
    if bodyAlgorithm not in cache:
        if bodyAlgorithm == b"simple":
            # RFC 6376 3.4.3 with C-speed bytes methods: the body is all CRLF
            canonical = body.rstrip(b"\r\n") + b"\r\n" if body.strip(b"\r\n") else b"\r\n"
        else:
            policy = CanonicalizationPolicy.from_c_value(canonicalization)
            canonical = policy.canonicalize_body(body)
        cache[bodyAlgorithm] = base64.b64encode(hashlib.sha256(canonical).digest())
    return cache[bodyAlgorithm]


def _fold(tags: list[tuple[bytes, bytes]], name: bytes = b"DKIM-Signature") -> bytes:
    """
    The tag list as a folded field value: lines of at most 78 characters,
    broken between tags and between the names of C{h=} only, where folding
    white space is allowed (RFC 6376 section 3.2), never inside a value.
    """
    words = []
    for tag, value in tags:
        if tag == b"h":
            first, *rest = value.split(b":")
            names = [b"h=" + first] + [b":" + name for name in rest]
            names[-1] += b";"
            words += names
        else:
            words.append(tag + b"=" + value + (b";" if tag != b"b" else b""))
    lines = [b""]
    width = len(name) + 1
    for word in words:
        glue = b"" if word.startswith(b":") else b" "
        if width + len(glue) + len(word) > 78 and lines[-1]:
            lines.append(b"")
            width, glue = 1, b" "
        lines[-1] += glue + word
        width += len(glue) + len(word)
    return b"\r\n".join(lines)[1:]


def _signedFields(spec: DKIMSpec, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """
    The names of C{h=}: every field of the default set the message has, in
    message order, then the extra ones of C{spec.headers} (each as often as
    the message has it, or as often as it was given if that is more), then
    the over-signed ones once more.
    """
    include = [name.lower() for name, _ in headers if name.lower() in _DEFAULT_SET]
    if spec.headers is not None:
        given: dict[bytes, int] = {}
        for n in spec.headers:
            name = n.encode("ascii")
            given[name] = given.get(name, 0) + 1
        for name, times in given.items():
            present = sum(1 for field, _ in headers if field.lower() == name)
            include += [name] * max(times, present)
    include += [n.encode("ascii") for n in OVERSIGNED]
    return include


def _signature(
    spec: DKIMSpec,
    headers: list[tuple[bytes, bytes]],
    bodyHash: bytes,
    now: float,
) -> bytes:
    canonicalization = spec.canonicalization.encode("ascii")
    include = _signedFields(spec, headers)
    signed = int(now)
    tags = [
        (b"v", b"1"),
        (b"a", spec.algorithm.encode("ascii")),
        (b"c", canonicalization),
        (b"d", spec.domain.encode("ascii")),
        (b"s", spec.selector.encode("ascii")),
        (b"t", str(signed).encode("ascii")),
    ]
    expire = spec.expireAt if spec.expireAt is not None else (
        signed + spec.expireAfter if spec.expireAfter is not None else None
    )
    if expire is not None:
        tags.append((b"x", str(max(int(expire), signed + 1)).encode("ascii")))
    if spec.report:
        tags.append((b"r", b"y"))
    tags += [(b"h", b":".join(include)), (b"bh", bodyHash), (b"b", b"")]
    # fold everything up to b=, then hash with b= empty (RFC 6376 3.7); the
    # value is appended after folding, so the hashed part is what is sent
    unsigned = _fold(tags)
    policy = CanonicalizationPolicy.from_c_value(canonicalization)
    hasher = hashlib.sha256()
    hash_headers(
        hasher,
        policy,
        policy.canonicalize_headers(headers),
        include,
        (b"DKIM-Signature", b" " + unsigned),
        None,
    )
    value = base64.b64encode(_signDigest(spec.key, hasher.digest()))
    folded = b"\r\n\t".join(value[i : i + 72] for i in range(0, len(value), 72))
    header = b"DKIM-Signature: " + unsigned + b"\r\n\t" + folded + b"\r\n"
    return header


def sign(
    mime: bytes,
    specs: Sequence[DKIMSpec],
    *,
    now: float,
    authservId: str | None = None,
    matching: DKIMKeys | None = None,
) -> bytes:
    """
    Sign C{mime} once per spec that asks for DKIM, then seal an ARC set
    per spec that asks for ARC (see L{_seal}).

    @param matching: configured keys that sign too when they match the
        domain of the message's From address (L{DKIMKeys.matching}), but
        for a domain that C{specs} sign for already.  A message that
        neither C{specs} nor a matching key signs comes back unsigned.

    @param mime: the message as it will be sent (line endings are made CRLF
        first, as on the wire).
    @param now: POSIX time of signing (C{t=}, and C{x=} for a relative
        expiry).
    @param authservId: the C{authserv-id} of the ARC-Authentication-Results
        fields: the name mqtwist gives in EHLO; default the specs' own
        (L{parseDKIM}'s), else this host's fully qualified name (the
        default EHLO name).
    @return: the message with CRLF line endings and, at the top, the ARC
        sets (the last instance first), then one C{DKIM-Signature} field
        per DKIM spec, the first spec's first.
    @raise InvalidMessage: when the message has no From field or a header
        line that is not a field, or (with ARC) already has ARC fields.
    """
    mime = normaliseLineEnds(mime)
    fields, _, rest = splitHeaderBlock(mime)
    head = b"".join(fields)
    try:
        headers, _ = rfc822_parse(head + b"\r\n")
    except MessageFormatError:
        raise InvalidMessage(
            "the message cannot be signed: its header block has a line that is "
            "neither a field nor a continuation"
        ) from None
    if matching is not None:
        signing = {spec.domain for spec in specs}
        found = _fromDomain(headers)
        specs = list(specs) + [
            spec
            for spec in (matching.matching(found, authservId=authservId) if found else [])
            if spec.domain not in signing
        ]
        if not specs:
            return mime
    if not any(name.lower() == b"from" for name, _ in headers):
        raise InvalidMessage("the message cannot be DKIM-signed: it has no From field")
    body = rest[2:]
    bodyHashes: dict[bytes, bytes] = {}
    signatures = [
        _signature(
            spec, headers, _bodyHash(spec.canonicalization.encode("ascii"), body, bodyHashes), now
        )
        for spec in specs
        if spec.dkim
    ]
    signed = b"".join(signatures) + mime
    sealers = [spec for spec in specs if spec.arc]
    if sealers:
        server = authservId or sealers[0].authservId or _hostname()
        signed = _seal(signed, headers, _bodyHash(_ARC_CANONICALIZATION, body, bodyHashes),
                       sealers, now, server)
    return signed


def _fromDomain(headers: list[tuple[bytes, bytes]]) -> str | None:
    """
    The domain of the (first) address of the message's first From field,
    or C{None} when it has none that can be read.
    """
    for name, value in headers:
        if name.lower() == b"from":
            addresses = getaddresses([value.decode("utf-8", "replace")])
            address = addresses[0][1] if addresses else ""
            domain = address.rpartition("@")[2]
            return domain or None
    return None


@cache
def _hostname() -> str:
    return socket.getfqdn()


_ARC_FIELDS = {b"arc-seal", b"arc-message-signature", b"arc-authentication-results"}


def _seal(
    signed: bytes,
    headers: list[tuple[bytes, bytes]],
    bodyHash: bytes,
    sealers: Sequence[DKIMSpec],
    now: float,
    authservId: str,
) -> bytes:
    """
    Add one ARC set (RFC 8617) per spec of C{sealers} to C{signed},
    instances 1, 2, ... in order: ARC-Seal on top, then
    ARC-Message-Signature, then ARC-Authentication-Results.

    The ARC-Authentication-Results record what the sealing host found when
    the message reached it.  As the originating MTA, mqtwist has verified
    nothing: instance 1 says C{<authservId>; arc=none} (no chain came
    before it, as C{cv=none} says), the following ones C{arc=pass} (the
    chain is the one just made, C{cv=pass}).  Authentication-Results fields
    of the message are not copied, so that a sender cannot put results in
    mqtwist's name.

    Made as dkimpy's C{arc_sign} makes them (C{relaxed/relaxed}, the
    seal over the sets in order, itself last with C{b=} empty), with
    dkimpy's canonicalization, but signed with C{cryptography} like the
    DKIM signatures: dkimpy's pure-Python RSA takes 8 ms a signature.
    """
    if any(name.lower() in _ARC_FIELDS for name, _ in headers):
        raise InvalidMessage(
            "the message cannot be ARC-sealed: it already has ARC fields, and "
            "mqtwist does not verify chains it did not make"
        )
    try:
        server = authservId.encode("idna")
    except UnicodeError:
        server = authservId.encode("ascii", "replace")
    relaxed = CanonicalizationPolicy.from_c_value(_ARC_CANONICALIZATION)
    timestamp = str(int(now)).encode("ascii")
    # the chain so far, (name, value) in order: AAR, AMS, AS of instance 1, ...
    chain: list[tuple[bytes, bytes]] = []
    sets: list[bytes] = []
    for instance, spec in enumerate(sealers, 1):
        i = str(instance).encode("ascii")
        common = [(b"a", b"rsa-sha256"), (b"d", spec.domain.encode("ascii")),
                  (b"s", spec.selector.encode("ascii")), (b"t", timestamp)]
        results = b" i=" + i + b"; " + server + (b"; arc=none" if instance == 1 else b"; arc=pass")
        # ARC-Message-Signature: as a DKIM signature, relaxed/relaxed
        include = [n for n in _signedFields(spec, headers) if n not in _NOT_SIGNED_BY_ARC]
        tags = [(b"i", i), common[0], (b"c", _ARC_CANONICALIZATION), *common[1:],
                (b"h", b":".join(include)), (b"bh", bodyHash), (b"b", b"")]
        unsigned = _fold(tags, b"ARC-Message-Signature")
        hasher = hashlib.sha256()
        hash_headers(
            hasher,
            relaxed,
            relaxed.canonicalize_headers(headers),
            include,
            (b"ARC-Message-Signature", b" " + unsigned),
            None,
        )
        message = b" " + unsigned + _signatureValue(spec.key, hasher.digest())
        # ARC-Seal: over every set so far, in order, then itself with b= empty
        unsigned = _fold([(b"i", i), (b"cv", b"none" if instance == 1 else b"pass"), *common,
                          (b"b", b"")], b"ARC-Seal")
        chain += [(b"ARC-Authentication-Results", results), (b"ARC-Message-Signature", message)]
        hasher = hashlib.sha256()
        for name, value in relaxed.canonicalize_headers(chain):
            hasher.update(name + b":" + value)
        ((name, value),) = relaxed.canonicalize_headers([(b"ARC-Seal", b" " + unsigned)])
        hasher.update(name + b":" + value.rstrip())
        seal = b" " + unsigned + _signatureValue(spec.key, hasher.digest())
        chain.append((b"ARC-Seal", seal))
        sets.insert(0, b"ARC-Seal:" + seal + b"\r\nARC-Message-Signature:" + message
                    + b"\r\nARC-Authentication-Results:" + results + b"\r\n")
    return b"".join(sets) + signed


def _signatureValue(key: PrivateKey, digest: bytes) -> bytes:
    """
    The signature of C{digest} in base64, folded onto lines of its own.
    """
    value = base64.b64encode(_signDigest(key, digest))
    return b"\r\n\t" + b"\r\n\t".join(value[i : i + 72] for i in range(0, len(value), 72))


_ARC_CANONICALIZATION = b"relaxed/relaxed"
#: fields that RFC 6376 5.4 says not to sign and that dkimpy's ARC signer
#: refuses; the DKIM signer leaves them to the sender
_NOT_SIGNED_BY_ARC = {b"comments", b"keywords"}


def signInThread(
    reactor: IReactorThreads,
    mime: bytes,
    specs: Sequence[DKIMSpec],
    *,
    now: float,
    authservId: str | None = None,
    matching: DKIMKeys | None = None,
) -> Deferred[bytes]:
    """
    L{sign} in the reactor's thread pool.  The expensive parts (SHA-256 of
    the body, the RSA or Ed25519 operation) release the GIL, so signing runs
    on another core while the reactor goes on.

    @param reactor: an L{IReactorThreads} provider.
    @return: a Deferred that fires with the signed message, or fails with
        L{InvalidMessage} as L{sign} raises it.
    """
    return deferToThreadPool(
        reactor, reactor.getThreadPool(), sign, mime, specs, now=now, authservId=authservId, matching=matching
    )
