"""
The messages the mqtwist processes of one outbox send one another on their
control exchange (a fanout exchange of their broker; each process listens
on a queue of its own bound to it), and what each does with them.

Every message is a JSON object with C{"v": 1}, its C{"type"} and the
sending C{"member"}:

  - C{hello}, when a process has connected: the others answer with a
    heartbeat at once, so that a new process knows them within a round trip;
  - C{heartbeat}, every C{--cluster-heartbeat} seconds: a member not heard
    from for C{--cluster-member-timeout} seconds is taken for gone;
  - C{bye}, when a process stops;
  - C{backoff}: a reply paused a destination, marked it down or reduced its
    connections (L{SharedBackoff});
  - C{admin}: an operator paused, resumed, cancelled, lifted a cancel,
    drained or undrained (the action as the admin API took it);
  - C{usage}: the messages that accounts of the SMTP submission server
    submitted here, gathered over L{USAGE_DELAY} seconds, so that their
    rates hold for all the processes;
  - C{state}: the operators' pauses and cancels and the backoffs in
    force, for a member that said hello (from the first of the others in
    name order), so that a process started later, restarted, or back from a
    lost connection, holds them too.

A process starts consuming the outbox only once it knows the others, so
that it takes its share of each limit, not the whole of it: at once when
no other process consumes the outbox when it first connects, else once it
has heard from as many members as there are consumers, or after
C{--cluster-settle} seconds.
Processes that start at the same moment may each find the others not
consuming yet: they take the whole limits for the few milliseconds until
their hellos cross.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mqtwist.cluster.members import Members
from mqtwist.metrics import Metrics
from mqtwist.validation import excerpt

#: the version of the messages; others are ignored
VERSION = 1

#: the backoff actions shared, as L{mqtwist.delivery.policy} names them
SHARED_ACTIONS = frozenset({"pause", "down", "reduce"})

#: the longest text of a shared reason, and of a destination's name
MAX_TEXT = 1000

#: the types of control messages
_KINDS = frozenset({"hello", "heartbeat", "bye", "backoff", "admin", "usage", "state"})

#: the longest backoff told, in seconds (a year): a longer one is ill-formed
MAX_SECONDS = 366 * 24 * 3600.0

#: seconds the submitted messages are counted before they are told: one
#: message for all of them, not one per submitted message
USAGE_DELAY = 0.1


class Publisher(Protocol):
    """What a L{ClusterControl} sends with: the broker client."""

    def publishControl(self, body: bytes) -> bool:
        """Send C{body} to every member; whether it went out."""


@dataclass(frozen=True)
class SharedBackoff:
    """
    What a reply made of a destination in one process, for the others.

    @ivar seconds: how long from now it lasts (not a time: the members'
        clocks may differ).
    @ivar connections: for C{reduce}, the connections the destination is
        reduced to, for all the members together.
    """

    member: str
    destination: str
    action: str
    seconds: float
    reason: str
    category: str | None = None
    connections: int | None = None

    @classmethod
    def fromJSON(cls, event: Mapping[str, Any]) -> SharedBackoff:
        """
        @raise ValueError: naming what is wrong with C{event}.
        """
        destination, action, seconds = event.get("destination"), event.get("action"), event.get("seconds")
        reason, category, connections = event.get("reason"), event.get("category"), event.get("connections")
        if not isinstance(destination, str) or not 0 < len(destination) <= MAX_TEXT:
            raise ValueError(f"'destination' is not a name: {excerpt(destination)}")
        if action not in SHARED_ACTIONS:
            raise ValueError(f"'action' is not one of {sorted(SHARED_ACTIONS)}: {excerpt(action)}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"'seconds' is not a positive number of at most {MAX_SECONDS:g}: {excerpt(seconds)}")
        if not isinstance(reason, str):
            raise ValueError(f"'reason' is not a string: {excerpt(reason)}")
        if category is not None and not isinstance(category, str):
            raise ValueError(f"'category' is not a string: {excerpt(category)}")
        if action == "reduce" and not (
            isinstance(connections, int) and not isinstance(connections, bool) and connections >= 1
        ):
            raise ValueError(f"'connections' of a reduce is not a positive whole number: {excerpt(connections)}")
        return cls(
            str(event["member"]),
            destination,
            action,
            float(seconds),
            reason[:MAX_TEXT],
            category,
            connections if action == "reduce" else None,
        )

    def toJSON(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "destination": self.destination,
            "action": self.action,
            "seconds": self.seconds,
            "reason": self.reason,
            "category": self.category,
        }
        if self.connections is not None:
            shown["connections"] = self.connections
        return shown


class ClusterControl:
    """
    This process's side of the control exchange: it announces itself,
    keeps the live L{Members}, and hands what the others say to the
    callbacks below.  It is the broker client's control listener.

    @param me: this process's member name (unique among them: the host
        name and the process id).
    @param heartbeat: seconds between two heartbeats.
    @param timeout: seconds of silence after which a member is gone.
    @param settle: the longest wait after the first connection before
        L{onMembers} is first called (and the process delivers), for the
        other members to answer the hello.
    @ivar onMembers: called with the live members (this one included, in
        name order) once settled, and whenever they change after that.
    @ivar onBackoff: called with each L{SharedBackoff} another member sent.
    @ivar onAdmin: called with the member and the C{admin} message of an
        operator's action another member took.
    @ivar onUsage: called with the kind and name of an account of the
        submission server and the messages it submitted to another member.
    @ivar inForce: gives the operators' actions in force here (pauses and
        cancels, as C{admin} messages say them), for a member that says
        hello; they reach it through its L{onAdmin}.
    @ivar backoffsInForce: gives the backoffs in force here, for a member
        that says hello; they reach it through its L{onBackoff}.
    """

    log = Logger()

    def __init__(
        self,
        me: str,
        reactor: Any,
        *,
        heartbeat: float,
        timeout: float,
        settle: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watchCluster(lambda: len(self.members.live))
        self.members = Members(me, timeout)
        self.heartbeat = heartbeat
        self.settle = settle
        self.publisher: Publisher | None = None
        self.onMembers: Callable[[tuple[str, ...]], None] | None = None
        self.onBackoff: Callable[[SharedBackoff], None] | None = None
        self.onAdmin: Callable[[str, dict[str, Any]], None] | None = None
        self.onUsage: Callable[[str, str, int], None] | None = None
        self.inForce: Callable[[], list[dict[str, Any]]] | None = None
        self.backoffsInForce: Callable[[], list[SharedBackoff]] | None = None
        self._usage: dict[tuple[str, str], int] = {}
        self._usageTimer: IDelayedCall | None = None
        self.settled = False
        #: this run of this process: another with the same member name
        #: (a configuration mistake) is told apart by it
        self.instance = secrets.token_hex(8)
        self._namesakes: set[str] = set()
        self._settleTimer: IDelayedCall | None = None
        #: the members to hear from before settling (the outbox's other consumers)
        self._awaited = 0
        self._settling: list[Deferred[None]] = []
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = reactor

    @property
    def me(self) -> str:
        return self.members.me

    # -- the broker client's listener -------------------------------------------

    def controlReady(self, consumers: int) -> Deferred[None]:
        """
        @return: a Deferred that fires once settled: at once when it is,
            or when C{consumers} is 0.
        """
        # the silence while this process was cut off says nothing of the others
        self.members.forgive(self.reactor.seconds())
        self._send("hello")
        if not self._beat.running:
            self._beat.start(self.heartbeat, now=False)
        if self.settled:
            return succeed(None)
        self._awaited = consumers
        settling: Deferred[None] = Deferred()
        self._settling.append(settling)
        if len(self.members.live) > consumers:
            self._settled()
        elif self._settleTimer is None:
            self._settleTimer = self.reactor.callLater(self.settle, self._settled)
        return settling

    def controlLost(self) -> None:
        if self._beat.running:
            self._beat.stop()

    def controlReceived(self, body: bytes) -> None:
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if (
            not isinstance(event, dict)
            or event.get("v") != VERSION
            or not isinstance(event.get("member"), str)
            or not isinstance(event.get("type"), str)
        ):
            self.log.warn(
                "cluster: ignored a control message that is not one of mqtwist {version}'s: {body}",
                version=VERSION,
                body=excerpt(body.decode("utf-8", "replace")),
            )
            return
        member, kind = event["member"], event["type"]
        if member != self.me:
            # (bounded: only the known types are counted by their name)
            self.metrics.clusterMessage("received", kind if kind in _KINDS else "other")
        if member == self.me:
            instance = event.get("instance")
            if isinstance(instance, str) and instance != self.instance and instance not in self._namesakes:
                self._namesakes.add(instance)
                self.log.error(
                    "cluster: another process is named {member} too: neither counts the other, so each "
                    "takes the share of one; give each process its own --cluster-member (or leave it "
                    "empty: the host name and the process id)",
                    member=member,
                )
            return
        if kind == "bye":
            if self.members.left(member):
                self._changed(f"{member} left")
            return
        if self.members.heard(member, self.reactor.seconds()):
            self._changed(f"{member} joined")
            if not self.settled and len(self.members.live) > self._awaited and self._settleTimer is not None:
                self._settled()
        if kind == "hello":
            # the newcomer learns of this member now, not a heartbeat later
            self._send("heartbeat")
            self._welcome(member)
        elif kind == "backoff":
            try:
                backoff = SharedBackoff.fromJSON(event)
            except ValueError as e:
                self.log.warn("cluster: ignored a backoff from {member}: {error}", member=member, error=e)
                return
            if self.onBackoff is not None:
                self.onBackoff(backoff)
        elif kind == "admin":
            if self.onAdmin is not None:
                self.onAdmin(member, event)
        elif kind == "usage":
            self._usageReceived(member, event.get("accounts"))
        elif kind == "state" and event.get("target") == self.me:
            self._stateReceived(member, event)

    def _stateReceived(self, member: str, event: dict[str, Any]) -> None:
        actions, backoffs = event.get("actions", []), event.get("backoffs", [])
        for name, items in (("actions", actions), ("backoffs", backoffs)):
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                self.log.warn(
                    "cluster: ignored the state told by {member}: '{name}' is not a list of objects: {items}",
                    member=member,
                    name=name,
                    items=excerpt(items),
                )
                return
        if self.onAdmin is not None:
            for action in actions:
                self.onAdmin(member, action)
        for told in backoffs:
            try:
                backoff = SharedBackoff.fromJSON(dict(told, member=member))
            except ValueError as e:
                self.log.warn(
                    "cluster: ignored a backoff in the state told by {member}: {error}", member=member, error=e
                )
                continue
            if self.onBackoff is not None:
                self.onBackoff(backoff)

    def _welcome(self, member: str) -> None:
        """
        Tell C{member}, which said hello, the operators' actions in force,
        when this member is the first of the others in name order (one
        answer, not one from each).
        """
        others = [name for name in self.members.live if name != member]
        if not others or others[0] != self.me:
            return
        actions = self.inForce() if self.inForce is not None else []
        backoffs = [b.toJSON() for b in self.backoffsInForce()] if self.backoffsInForce is not None else []
        if actions or backoffs:
            self._send("state", target=member, actions=actions, backoffs=backoffs)

    def _usageReceived(self, member: str, accounts: object) -> None:
        if not isinstance(accounts, list) or not all(
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
            and isinstance(entry[2], int)
            and not isinstance(entry[2], bool)
            and entry[2] > 0
            for entry in accounts
        ):
            self.log.warn(
                "cluster: ignored the usage of {member}: 'accounts' is not a list of [kind, name, count]: "
                "{accounts}",
                member=member,
                accounts=excerpt(accounts),
            )
            return
        if self.onUsage is not None:
            for kind, name, count in accounts:
                self.onUsage(kind, name, count)

    # -- sending -----------------------------------------------------------------

    def announceBackoff(self, backoff: SharedBackoff) -> None:
        """Tell the others what a reply made of a destination here."""
        self._send("backoff", **backoff.toJSON())

    def announceAdmin(self, action: Mapping[str, Any]) -> bool:
        """
        Tell the others of an operator's action taken here (L{onAdmin} of
        theirs).

        @return: whether it went out (not while the broker is away).
        """
        return self._send("admin", **action)

    def announceUsage(self, kind: str, name: str, count: int) -> None:
        """
        Tell the others, within L{USAGE_DELAY} seconds, that the account
        C{kind} C{name} of the submission server submitted C{count} more
        messages here.
        """
        key = (kind, name)
        self._usage[key] = self._usage.get(key, 0) + count
        if self._usageTimer is None:
            self._usageTimer = self.reactor.callLater(USAGE_DELAY, self._sendUsage)

    def _sendUsage(self) -> None:
        self._usageTimer = None
        usage, self._usage = self._usage, {}
        if usage:
            self._send("usage", accounts=[[kind, name, count] for (kind, name), count in usage.items()])

    def stop(self) -> None:
        """Say goodbye (so that the others take the shares at once) and stop the heartbeats."""
        if self._usageTimer is not None and self._usageTimer.active():
            self._usageTimer.cancel()
        self._sendUsage()
        if self._settleTimer is not None and self._settleTimer.active():
            self._settleTimer.cancel()
        self._settleTimer = None
        waiters, self._settling = self._settling, []
        for waiter in waiters:
            waiter.cancel()
        if self._beat.running:
            self._beat.stop()
        self._send("bye")

    def _send(self, kind: str, **fields: Any) -> bool:
        if self.publisher is None:
            return False
        body = json.dumps(
            {"v": VERSION, "type": kind, "member": self.me, "instance": self.instance, **fields}
        ).encode("utf-8")
        sent = self.publisher.publishControl(body)
        if sent:
            self.metrics.clusterMessage("sent", kind)
        return sent

    # -- members -------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self._send("heartbeat")
        gone = self.members.expire(self.reactor.seconds())
        if gone:
            self._changed(
                f"{', '.join(gone)} not heard from for {self.members.timeout:g} s (crashed, or cut off "
                f"from the broker)"
            )

    def _settled(self) -> None:
        if self._settleTimer is not None and self._settleTimer.active():
            self._settleTimer.cancel()
        self._settleTimer = None
        self.settled = True
        self.log.info(
            "cluster: {count} member(s): {members}; this one is {me}",
            count=len(self.members.live),
            members=", ".join(self.members.live),
            me=self.me,
        )
        if self.onMembers is not None:
            self.onMembers(self.members.live)
        waiters, self._settling = self._settling, []
        for waiter in waiters:
            waiter.callback(None)

    def _changed(self, why: str) -> None:
        if not self.settled:
            return
        self.log.info(
            "cluster: {why}; {count} member(s) now: {members}",
            why=why,
            count=len(self.members.live),
            members=", ".join(self.members.live),
        )
        if self.onMembers is not None:
            self.onMembers(self.members.live)
