"""
Which mqtwist processes of one outbox are alive, as their heartbeats tell,
and this process's share of a limit that holds for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence


def shareOf(limit: int, members: Sequence[str], me: str) -> int:
    """
    The part of C{limit} that C{me} takes among C{members}: the limit
    divided as evenly as whole numbers allow, the remainder going one each
    to the first members in name order, so that the parts add up to
    C{limit} exactly; but at least 1 (a process with no part of a
    destination could never send to it), so that with fewer than there
    are members the parts add up to the number of members.

    @param limit: a limit of simultaneous things (connections); 0 or less
        is returned as it is.
    @param members: the live members, C{me} among them.
    """
    if limit <= 0:
        return limit
    ordered = sorted(members)
    count = len(ordered)
    part = limit // count + (1 if ordered.index(me) < limit % count else 0)
    return max(1, part)


def rateShareOf(perMinute: float, members: Sequence[str]) -> float:
    """
    The part of a rate (C{perMinute}) that one of C{members} takes: an
    equal part, not rounded, so that the parts add up to the rate; 0 (no
    limit) stays 0.
    """
    return perMinute / len(members) if perMinute > 0 else perMinute


class Members:
    """
    The live members: this process, and every other that was heard from
    within C{timeout} seconds and has not said goodbye.

    @param me: this process's member name.
    @param timeout: seconds of silence after which a member is taken for
        gone (crashed, or cut off from the broker).
    """

    def __init__(self, me: str, timeout: float) -> None:
        self.me = me
        self.timeout = timeout
        self._lastHeard: dict[str, float] = {}

    def heard(self, member: str, now: float) -> bool:
        """
        C{member} said it is alive at C{now}.

        @return: whether it is new (not live before).
        """
        if member == self.me:
            return False
        new = member not in self._lastHeard
        self._lastHeard[member] = now
        return new

    def left(self, member: str) -> bool:
        """
        C{member} said goodbye.

        @return: whether it was live.
        """
        return self._lastHeard.pop(member, None) is not None

    def expire(self, now: float) -> list[str]:
        """
        Forget the members not heard from for C{timeout} seconds.

        @return: their names.
        """
        gone = sorted(member for member, heard in self._lastHeard.items() if now - heard >= self.timeout)
        for member in gone:
            del self._lastHeard[member]
        return gone

    def forgive(self, now: float) -> None:
        """
        Count every member as heard at C{now}: after this process could
        hear nothing (its broker connection was lost), the others' silence
        said nothing about them.
        """
        for member in self._lastHeard:
            self._lastHeard[member] = now

    @property
    def live(self) -> tuple[str, ...]:
        """The live members, this one included, in name order."""
        return tuple(sorted([self.me, *self._lastHeard]))
