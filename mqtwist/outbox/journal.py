"""
A bounded record of recent deliveries, so that a message the broker hands
out again after it lost the acknowledgement is not sent a second time.

RabbitMQ does not sync acknowledgements to disk before it applies them:
killed with C{kill -9}, a node comes back with messages that mqtwist had
delivered, published the results of and acknowledged, and hands them out
again with C{redelivered} set.  The journal keeps, for each recently
accepted delivery, the digest of the outbox message's body and the result
entry of the delivery.  A redelivered message carries exactly the same body
bytes, so its digest finds the entry, and the caller publishes the original
result instead of sending the mail again.  A message that comes back from a
delay queue carries other bytes (its C{results}, C{nextattempt}), so it never
matches an earlier attempt.  The journal is meant to be consulted for
redelivered messages only: most messages never cost a lookup.

Bounds: two generations, each of at most C{capacity} records.  When the
current one is full it becomes the previous one and the old previous one is
dropped, so there are at most C{2 * capacity} records on disk and in memory,
and a delivery is remembered for at least C{capacity} more deliveries.

How many that must be: measured with C{bench/lostacks.py} (RabbitMQ 3.10.8,
a classic queue of 40,000 persistent messages, a consumer acknowledging
without pause), a node killed with C{kill -9} lost every acknowledgement it
had received, up to 18,000, and came back with the messages of all of
them; at 20,000 it had written them down at about 18,300 and lost 1,700.
When the acknowledgements stop for 2 seconds they are all written.  After
such a crash every message of the queue comes back with C{redelivered} set,
never acknowledged or not.  So C{capacity} must cover about 20,000
deliveries of one outbox plus the prefetch, whatever their rate; a smaller
one only catches the newest of the duplicates.

Storage: with a C{path}, records are appended to the file C{PATH} (the
previous generation is C{PATH.1}), one line each: the digest in hex, a
space and the entry as compact JSON (ASCII only).  Each record is one
C{os.write} on a file opened with C{O_APPEND}, without C{fsync}: the line is
in the kernel's page cache when C{record} returns, so it survives a
C{kill -9} of mqtwist (and of the broker); a crash of the machine or of its
kernel can lose the records of the last 30 seconds or so (until the kernel
writes dirty pages back: C{vm.dirty_expire_centisecs}), whose messages are
then delivered again as before.  With C{path=None} the journal lives in
memory only: it still covers a crash of the broker, not a crash of mqtwist.

One journal per process: C{PATH.lock} is held with C{flock} while the
journal is open, so that two processes never append to the same file.
With several processes on one outbox, a redelivered message may reach any
of them, and only the one that delivered it finds it in its journal: with
N processes the journals catch about 1/N of the duplicates after a crash of
the broker, and after a crash of one process only those of its messages
that the others did not take before it was restarted.

Errors: a file that cannot be opened makes L{DeliveryJournal.open} raise
L{DeliveryJournalError}.  A write that fails later (disk full, I/O error) is
logged once and the journal goes on in memory only, until mqtwist is
restarted: a delivery never waits for, or fails because of, its journal.

Costs, measured with C{bench/journalcost.py} on an Intel Xeon VM with SHA-NI
and AVX-512 (Python 3.11, ext4), per call:

  - L{DeliveryJournal.keyOf} (BLAKE2b, 16-byte digest): 1.2 us for a body
    of 1 KB, 9.7 us for 10 KB, 95 us for 100 KB, about what C{json.loads}
    of the same body takes;
  - L{DeliveryJournal.record} of an accepted entry of 320 bytes of JSON:
    4.4 us with a file, 3.6 us in memory only (the JSON encoding);
  - L{DeliveryJournal.lookup}: 3.1 us when found (it decodes the entry),
    0.07 us when not;
  - memory: 454 bytes per record (key, entry as JSON bytes, dict slot), so
    about 0.9 KB per unit of C{capacity} when both generations are full;
  - disk: 354 bytes per record; L{DeliveryJournal.open} reads about 210,000
    records a second (each entry is decoded once, to skip broken lines).
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from typing import Any

from twisted.logger import Logger

#: what to do about a journal file that cannot be used, in every message that says so
_REMEDY = (
    "give a path in a writable directory with --delivery-journal PATH, or "
    "--delivery-journal '' to keep the journal in memory only (it then covers "
    "a crash of the broker, not of mqtwist)"
)


#: entries as compact JSON, ASCII only: any string can be written (lone
#: surrogates escaped), and a line holds no newline but its last byte
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))

#: longer lines are no records (an entry is a few hundred bytes)
_LONGEST_LINE = 65536


class DeliveryJournalError(Exception):
    """
    The journal's file cannot be used; the message names the path, the
    cause and what to do.
    """


class DeliveryJournal:
    """
    The digests of recently delivered outbox messages, each with the result
    entry of its delivery.  Not thread-safe: used on the reactor thread.

    @ivar path: the journal's file, or C{None} for a journal in memory only.
    @ivar capacity: records per generation.
    """

    log = Logger()

    def __init__(self, path: str | None, capacity: int) -> None:
        """
        @param path: the file to append records to (created with its
            directory when missing), or C{None} to keep them in memory only
            (not C{""}, which names no file).
        @param capacity: records per generation, at least 1: at most twice
            as many are kept.
        """
        if capacity < 1:
            raise ValueError(f"the delivery journal's capacity must be at least 1, not {capacity}")
        if path == "":
            raise ValueError("the delivery journal's path is empty: give None for a journal in memory only")
        self.path = path
        self.capacity = capacity
        # entries are kept as their JSON bytes: 360 bytes where the dict
        # took 2,100, and a lookup returns what a reload would
        self._current: dict[bytes, bytes] = {}
        self._previous: dict[bytes, bytes] = {}
        #: records in the current generation, repeated keys included (as in the file)
        self._written = 0
        self._fd: int | None = None
        self._lockFd: int | None = None

    @staticmethod
    def keyOf(body: bytes) -> bytes:
        """
        @return: the key of the outbox message with body C{body}: its
            16-byte BLAKE2b digest.
        """
        return hashlib.blake2b(body, digest_size=16).digest()

    @property
    def persistent(self) -> bool:
        """Whether records go to the file (C{False} in memory only, or after a write failed)."""
        return self._fd is not None

    def __len__(self) -> int:
        """The number of different keys remembered, both generations."""
        return len(self._current.keys() | self._previous.keys())

    # -- open and close -------------------------------------------------------

    def open(self) -> None:
        """
        Load the records of an earlier run and open the file for appending
        (nothing to do in memory only).  A torn last line (mqtwist killed in
        the middle of a write) is cut off; lines that cannot be read are
        skipped; both are counted and logged once.

        @raise DeliveryJournalError: the file or its directory cannot be
            created, read or written, is not a regular file, or another
            process has it open.
        """
        if self.path is None:
            return
        path = self.path
        try:
            _makeDirectory(os.path.dirname(os.path.abspath(path)))
            self._lock(path + ".lock")
            previous, previousSkipped, previousTorn = self._load(path + ".1", truncate=False)
            current, currentSkipped, currentTorn = self._load(path, truncate=True)
            self._fd = self._openForAppend(path)
        except OSError as e:
            self.close()
            # a file object's error names its descriptor, not its file
            cause = f"{e.filename}: {e.strerror}" if isinstance(e.filename, str) else e.strerror or str(e)
            raise DeliveryJournalError(
                f"cannot open the delivery journal {path} ({cause}); {_REMEDY}"
            ) from e
        except DeliveryJournalError:
            self.close()
            raise
        # a smaller capacity than the last run's: the newest records are kept
        self._previous = dict(collections.deque(previous, maxlen=self.capacity))
        self._current = dict(collections.deque(current, maxlen=self.capacity))
        # a full current generation is rotated by the next record
        self._written = min(len(current), self.capacity)
        skipped = previousSkipped + currentSkipped
        torn = previousTorn + currentTorn
        if skipped or torn:
            self.log.warn(
                "delivery journal {path}: skipped {skipped} unreadable line(s) and {torn} "
                "torn last line(s) (left by a crash in the middle of a write); a "
                "delivery they recorded is sent again if the broker hands it out again",
                path=path,
                skipped=skipped,
                torn=torn,
            )
        self.log.info(
            "delivery journal {path}: {count} recent deliveries loaded",
            path=path,
            count=len(self),
        )

    def close(self) -> None:
        """
        Close the file and release it for another process; what is in
        memory stays there, and later records are kept in memory only.
        Closing twice is harmless.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        # closing the lock file releases the flock
        lockFd, self._lockFd = self._lockFd, None
        if lockFd is not None:
            os.close(lockFd)

    def _lock(self, lockPath: str) -> None:
        fd = os.open(lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DeliveryJournalError(
                f"the delivery journal {self.path} is in use by another process (it holds "
                f"{lockPath}): give each mqtwist process a journal of its own with "
                f"--delivery-journal PATH, or stop the other process"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._lockFd = fd

    def _load(self, path: str, *, truncate: bool) -> tuple[list[tuple[bytes, bytes]], int, int]:
        """
        Read the records of one generation.

        @param truncate: cut a torn last line off the file, so that the
            next record starts a line of its own.
        @return: the records read, in order, how many lines were skipped as
            unreadable, and how many torn lines were found (0 or 1).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], 0, 0
        try:
            _requireRegular(fd, path)
        except DeliveryJournalError:
            os.close(fd)
            raise
        records: list[tuple[bytes, bytes]] = []
        skipped = torn = 0
        complete = 0  # bytes up to the end of the last whole line
        with open(fd, "rb") as f:
            for line, size, whole in _lines(f):
                if not whole:
                    torn = 1
                    break
                complete += size
                record = None if line is None else _parse(line)
                if record is None:
                    skipped += 1
                else:
                    records.append(record)
        if torn and truncate:
            os.truncate(path, complete)
        return records, skipped, torn

    def _openForAppend(self, path: str) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _requireRegular(fd, path)
        except DeliveryJournalError:
            os.close(fd)
            raise
        return fd

    # -- records ----------------------------------------------------------------

    def record(self, key: bytes, entry: dict[str, Any]) -> None:
        """
        Remember that the message with key C{key} (L{keyOf}) was delivered,
        with the result entry C{entry}; in the file too when there is one.
        Never raises: a failed write is logged and the journal goes on in
        memory only.

        @param entry: a JSON-able result entry; strings may hold any code
            point, lone surrogates included (they are written escaped).
        """
        try:
            value = _ENCODER.encode(entry).encode("ascii")
        except (TypeError, ValueError) as e:
            # a bug of the caller; the delivery itself went well
            self.log.error(
                "cannot record a delivery in the delivery journal: its result entry is not "
                "JSON ({error}); it will be sent again if the broker hands it out again",
                error=e,
                entry=repr(entry)[:200],
            )
            return
        if self._written >= self.capacity:
            self._rotate()
        self._current[key] = value
        self._written += 1
        if self._fd is not None:
            line = key.hex().encode("ascii") + b" " + value + b"\n"
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    # the rest would go after a torn line: stop writing here
                    raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes of a record written")
            except OSError as e:
                self._fileFailed(e, "write to")

    def lookup(self, key: bytes) -> dict[str, Any] | None:
        """
        @return: the result entry recorded for C{key} (a new dict on every
            call), or C{None} when none is remembered.
        """
        value = self._current.get(key)
        if value is None:
            value = self._previous.get(key)
        return None if value is None else json.loads(value)

    def _rotate(self) -> None:
        self._previous, self._current = self._current, {}
        self._written = 0
        if self._fd is None or self.path is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        try:
            # replaces the old previous generation in one step
            os.replace(self.path, self.path + ".1")
            self._fd = self._openForAppend(self.path)
        except (OSError, DeliveryJournalError) as e:
            self._fileFailed(e, "start a new generation of")

    def _fileFailed(self, error: Exception, doing: str) -> None:
        self.log.error(
            "cannot {doing} the delivery journal {path}: {error}; from now on it keeps "
            "deliveries in memory only, where they do not survive a restart of mqtwist: "
            "make room or repair the file system, then restart mqtwist",
            doing=doing,
            path=self.path,
            error=(error.strerror or str(error)) if isinstance(error, OSError) else str(error),
        )
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass  # the file is given up either way


def _lines(f: Any) -> Iterator[tuple[bytes | None, int, bool]]:
    """
    The lines of file C{f}: each as the line (C{None} when it is longer
    than any record), its size, and whether it ends with a newline (only
    the last one may not).
    """
    while True:
        line = f.readline(_LONGEST_LINE)
        if not line:
            return
        if line.endswith(b"\n") or len(line) < _LONGEST_LINE:
            yield line, len(line), line.endswith(b"\n")
            continue
        # skipped piece by piece: a file of garbage without newlines is
        # never read into memory at once
        size = len(line)
        while True:
            piece = f.readline(_LONGEST_LINE)
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        yield None, size, piece.endswith(b"\n")


def _parse(line: bytes) -> tuple[bytes, bytes] | None:
    """One record from a whole line, or C{None} when the line cannot be read."""
    digest, space, value = line[:-1].partition(b" ")
    if not space or not digest or not value.startswith(b"{"):
        return None
    try:
        key = bytes.fromhex(digest.decode("ascii"))
        entry = json.loads(value)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return None
    if not isinstance(entry, dict):
        return None
    return key, value


def _requireRegular(fd: int, path: str) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise DeliveryJournalError(
            f"cannot use {path} as the delivery journal: it is not a regular file "
            f"({stat.filemode(mode)}); {_REMEDY}"
        )



def _makeDirectory(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:
        # makedirs says "File exists" of a file where a directory should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory) from None
