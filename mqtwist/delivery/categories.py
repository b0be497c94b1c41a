"""
Bounce categories: what kind of failure a failed attempt was
(C{bad-recipient}, C{mailbox-full}, C{spam-block}, ...), for the
C{category} of its result entry, its log line and the C{[[backoff]]} rules
that name one.

A category comes from a table of L{CategoryRule}s, the first that matches
winning: the C{[[categories]]} tables of the configuration, then the
shipped rules (C{categories.toml} beside this module) or the file of
C{--category-rules} in their place.  A failure no rule matches is
C{other}.  Categories say what happened and drive nothing else.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from mqtwist.config.rules import CategoryRule, categoryNameProblem
from mqtwist.config.settings import Config
from mqtwist.errors import AttemptFailed

#: the category of a failure that no rule matches
OTHER = "other"

#: the categories of the shipped rules, and what each means
CATEGORIES: Mapping[str, str] = {
    "bad-recipient": "the mailbox does not exist, or is disabled",
    "bad-domain": "the recipient's domain does not exist or takes no mail",
    "mailbox-full": "the mailbox is over its quota",
    "spam-block": "a block list, the sender's reputation or a spam filter",
    "policy": "the receiver's rules: DMARC, SPF, DKIM, reverse DNS, relaying, the sender",
    "rate-limited": "too much mail or too many connections at once, for now",
    "greylisted": "greylisting: the first attempt is refused for a while",
    "tls": "STARTTLS missing or failed, or a certificate the TLS policy does not trust",
    "auth": "the login to a smarthost",
    "dns": "a DNS lookup failed, for now",
    "timeout": "no reply in time",
    "connection": "no connection, or a connection lost",
    "content-rejected": "the message itself: its size, a virus, an attachment, its format",
    "invalid": "mqtwist cannot use the job (process/invalid), or an address in it",
    OTHER: "anything else",
}

#: the TOML key of the tables in a rules file, as in the configuration
_TABLES = "categories"


def readRules(path: str) -> list[CategoryRule]:
    """
    Read a file of C{[[categories]]} tables (the form of C{categories.toml}
    and of C{--category-rules}).

    @raise ValueError: naming the file, and the table and key at fault.
    """
    try:
        with open(path, "rb") as f:
            return _rulesOf(tomllib.load(f), path)
    except OSError as e:
        raise ValueError(
            f"cannot read {path}: {e.strerror}; give a readable TOML file of [[categories]] tables"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None


@cache
def shippedRules() -> tuple[CategoryRule, ...]:
    """
    The rules of C{categories.toml}, read once.
    """
    text = files(__package__).joinpath("categories.toml").read_text(encoding="utf-8")
    return tuple(_rulesOf(tomllib.loads(text), "the shipped categories.toml"))


def _rulesOf(document: Mapping[str, Any], path: str) -> list[CategoryRule]:
    unknown = sorted(set(document) - {_TABLES})
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; a rules file has only [[{_TABLES}]] tables")
    tables = document.get(_TABLES, [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ValueError(f"{path}: {_TABLES!r} must be an array of tables, [[{_TABLES}]]")
    return [CategoryRule.fromTable(table, f"[[{_TABLES}]] number {n} in {path}") for n, table in enumerate(tables, 1)]


@dataclass(frozen=True)
class _Compiled:
    """A L{CategoryRule} ready to match: its patterns compiled."""

    category: str
    code: re.Pattern[str] | None
    status: re.Pattern[str] | None
    text: re.Pattern[str] | None
    #: C{text} is matched against the text in lower case: a pattern without
    #: capitals means the same so, and Python's C{re} searches twice as fast
    #: without C{re.IGNORECASE}
    lowered: bool
    states: frozenset[str]
    results: frozenset[str]
    reply: bool | None

    @classmethod
    def of(cls, rule: CategoryRule) -> _Compiled:
        def compiled(pattern: str | None, flags: int = 0) -> re.Pattern[str] | None:
            return None if pattern is None else re.compile(pattern, flags)

        lowered = rule.text is not None and rule.text == rule.text.lower()
        return cls(
            rule.category,
            compiled(rule.code),
            compiled(rule.status),
            compiled(rule.text, 0 if lowered else re.IGNORECASE),
            lowered,
            frozenset(rule.states),
            frozenset(rule.results),
            rule.reply,
        )


class Categories:
    """
    A table of category rules, first match wins.

    @param rules: the rules, in the order they are tried.
    """

    def __init__(self, rules: Iterable[CategoryRule]) -> None:
        self.rules = tuple(rules)
        self._compiled = tuple(_Compiled.of(rule) for rule in self.rules)

    @classmethod
    def fromConfig(cls, config: Config) -> Categories:
        """
        The table of C{config}: its C{[[categories]]} tables, then the
        rules of C{--category-rules} or the shipped ones.

        @raise ValueError: when the file of C{--category-rules} cannot be
            read or has a bad rule.
        """
        defaults = readRules(config.categoryRules) if config.categoryRules else shippedRules()
        return cls([*config.categories, *defaults])

    def categorize(self, state: str, result: str, code: int | None, status: str | None, text: str) -> str:
        """
        The category of a failed attempt: the first rule's that matches,
        or L{OTHER}.  A pure function of its arguments and the rules.

        @param state: the step where it ended (C{"rcptto"}, ...).
        @param result: how it ended there (C{"error"}, C{"timeout"}, ...).
        @param code: the SMTP reply code, C{None} without a reply.
        @param status: the enhanced status code, when the reply had one.
        @param text: the reply's text, or mqtwist's own description.
        """
        codeText = "" if code is None else str(code)
        statusText = status or ""
        lowerText: str | None = None
        for rule in self._compiled:
            if rule.reply is not None and rule.reply != (code is not None):
                continue
            if rule.states and state not in rule.states:
                continue
            if rule.results and result not in rule.results:
                continue
            if rule.code is not None and not rule.code.search(codeText):
                continue
            if rule.status is not None and not rule.status.search(statusText):
                continue
            if rule.text is not None:
                if rule.lowered:
                    if lowerText is None:
                        lowerText = text.lower()
                    if not rule.text.search(lowerText):
                        continue
                elif not rule.text.search(text):
                    continue
            return rule.category
        return OTHER

    def ofFailure(self, failure: AttemptFailed) -> str:
        """
        The category of C{failure}, as L{categorize} says.
        """
        return self.categorize(failure.state, failure.result, failure.code, failure.status, failure.description)


@cache
def shipped() -> Categories:
    """
    A table of the shipped rules alone, made once: for the entries made
    where no configuration's table is at hand (an invalid job's).
    """
    return Categories(shippedRules())


def lastCategory(results: Sequence[object]) -> str:
    """
    The category of a job given up (expired): that of its latest result
    entry that has one -- what its attempts last met, or what paused its
    destination -- else L{OTHER}.

    @param results: the job's C{results}, as JSON (written by anyone).
    """
    for entry in reversed(results):
        if isinstance(entry, Mapping):
            category = entry.get("category")
            if categoryNameProblem(category) is None:
                return str(category)
    return OTHER
