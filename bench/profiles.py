"""
Where the time goes: a py-spy profile (C{--format raw}: one line per stack,
C{frame;frame;...;frame COUNT}) summed up by function and by group.
"""

from __future__ import annotations

import collections
import re
from typing import Any

#: (group, pattern of the frame's file) -- the first match wins
GROUPS = [
    ("txamqp frame encode/decode", re.compile(r"/txamqp/|mqtwist/amqp/(protocol|spec)\.py")),
    ("AMQP client (mqtwist.amqp)", re.compile(r"mqtwist/amqp/")),
    ("JSON", re.compile(r"/json/")),
    ("SMTP body encoding", re.compile(r"mqtwist/smtp/body\.py")),
    ("SMTP protocol and pool", re.compile(r"mqtwist/smtp/")),
    ("Deferred machinery", re.compile(r"twisted/internet/defer\.py|twisted/python/failure\.py")),
    ("logging", re.compile(r"twisted/logger/|/logging/")),
    ("reactor and TCP I/O", re.compile(r"twisted/internet/|twisted/python/log\.py|selectors\.py|socket\.py")),
    ("mqtwist message, outbox, results", re.compile(r"mqtwist/")),
]

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parseFrame(frame: str) -> tuple[str, str]:
    """@return: (function, file) of one py-spy frame C{function (file:line)}."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match["function"], match["file"]


def groupOf(file: str) -> str:
    for name, pattern in GROUPS:
        if pattern.search(file):
            return name
    return "other (stdlib, interpreter)"


def shortFile(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return file


def summarise(path: str, seconds: float, rate: float = 100.0, top: int = 25) -> dict[str, Any]:
    """
    @param path: the raw profile.
    @param seconds: how long py-spy sampled, at C{rate} samples a second.
    @return: samples in all, the busy share, own-time samples by group and
        the C{top} functions by own time, and inclusive time by group and
        by function (a stack counts once per group or function it passes
        through).
    """
    own: collections.Counter[str] = collections.Counter()
    ownGroups: collections.Counter[str] = collections.Counter()
    inclusiveGroups: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [parseFrame(frame) for frame in stack.split(";")]
            frames = [fr for fr in frames if fr[1]]  # process/thread labels have no file
            if not frames:
                continue
            total += n
            function, file = frames[-1]
            own[f"{function} ({shortFile(file)})"] += n
            ownGroups[groupOf(file)] += n
            for group in {groupOf(file) for _, file in frames}:
                inclusiveGroups[group] += n
            for name in {f"{function} ({shortFile(file)})" for function, file in frames}:
                inclusive[name] += n

    def share(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    return {
        "samples": total,
        "busyPercent": round(100.0 * total / (seconds * rate), 1) if seconds else None,
        "ownByGroup": [(group, share(n)) for group, n in ownGroups.most_common()],
        "inclusiveByGroup": [(group, share(n)) for group, n in inclusiveGroups.most_common()],
        "topOwn": [(function, share(n)) for function, n in own.most_common(top)],
        "topInclusive": [(function, share(n)) for function, n in inclusive.most_common(top * 2)],
    }
