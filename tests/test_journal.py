"""
L{mqtwist.outbox.journal.DeliveryJournal}: the bounded record of recent deliveries
that keeps a message the broker hands out again from being sent twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mqtwist.outbox.journal import DeliveryJournal, DeliveryJournalError


def entry(n: int, **more: Any) -> dict[str, Any]:
    """An accepted result entry, as the outbox records it."""
    return {
        "time": f"2026-11-24 10:00:{n % 60:02d}",
        "state": "message",
        "result": "accepted",
        "code": 250,
        "status": "2.0.0",
        "description": f"OK queued as {n}",
        "from": "127.0.0.1",
        "to": "127.0.0.1",
        "messages": n,
        "sent": {"connection": 1200 + n, "data": 1000 + n},
        "mta": "mx.example.com",
        **more,
    }


def key(n: int) -> bytes:
    return DeliveryJournal.keyOf(f"outbox message {n}".encode())


def line(n: int, **more: Any) -> bytes:
    """The journal line of record C{n}, as it must be in the file."""
    return key(n).hex().encode() + b" " + json.dumps(entry(n, **more), separators=(",", ":")).encode() + b"\n"


def fileLines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def journalEvents(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "mqtwist.outbox.journal.DeliveryJournal"]


@pytest.fixture
def path(tmp_path: Any) -> str:
    return str(tmp_path / "state" / "deliveries.journal")


def opened(path: str | None, capacity: int = 100) -> DeliveryJournal:
    journal = DeliveryJournal(path, capacity)
    journal.open()
    return journal


def test_keyOf_is_a_16_byte_blake2b_digest_of_the_body() -> None:
    body = b'{"id":"a","recipient":"a@example.com","mime":"x"}'
    assert DeliveryJournal.keyOf(body) == hashlib.blake2b(body, digest_size=16).digest()
    assert len(DeliveryJournal.keyOf(body)) == 16
    # a message back from a delay queue carries other bytes
    assert DeliveryJournal.keyOf(body + b" ") != DeliveryJournal.keyOf(body)


def test_in_memory_record_and_lookup() -> None:
    journal = opened(None)
    assert journal.lookup(key(1)) is None
    journal.record(key(1), entry(1))
    journal.record(key(2), entry(2))
    assert journal.lookup(key(1)) == entry(1)
    assert journal.lookup(key(2)) == entry(2)
    assert journal.lookup(key(3)) is None
    assert len(journal) == 2
    assert not journal.persistent
    # every lookup gives a dict of its own: a caller's change stays its own
    found = journal.lookup(key(1))
    assert found is not None
    found["result"] = "changed"
    assert journal.lookup(key(1)) == entry(1)
    journal.close()


def test_records_are_appended_as_lines_and_read_back_after_reopening(path: str) -> None:
    journal = opened(path)
    assert journal.persistent
    journal.record(key(1), entry(1))
    journal.record(key(2), entry(2))
    # in the file at once, without close: a kill -9 of mqtwist loses nothing
    assert fileLines(path) == [line(1), line(2)]
    journal.close()

    with capturedLogs() as events:
        again = opened(path)
    assert again.lookup(key(1)) == entry(1)
    assert again.lookup(key(2)) == entry(2)
    assert again.lookup(key(3)) is None
    assert len(again) == 2
    (loaded,) = journalEvents(events)
    assert loaded["log_level"] == LogLevel.info
    assert loaded["count"] == 2
    again.record(key(3), entry(3))
    assert fileLines(path) == [line(1), line(2), line(3)]
    again.close()


def test_any_code_point_is_written_as_ascii_and_read_back(path: str) -> None:
    odd = entry(1, description="caf\u00e9 \ud800 \x00 \u2028 end")
    journal = opened(path)
    journal.record(key(1), odd)
    journal.close()
    with open(path, "rb") as f:
        raw = f.read()
    assert raw.isascii()
    assert raw.count(b"\n") == 1
    assert b"\\ud800" in raw
    assert opened(path).lookup(key(1)) == odd


def test_rotation_at_capacity_keeps_two_generations(path: str) -> None:
    journal = opened(path, capacity=3)
    for n in range(3):
        journal.record(key(n), entry(n))
    assert fileLines(path) == [line(0), line(1), line(2)]
    assert not os.path.exists(path + ".1")

    journal.record(key(3), entry(3))
    assert fileLines(path + ".1") == [line(0), line(1), line(2)]
    assert fileLines(path) == [line(3)]
    assert [journal.lookup(key(n)) for n in range(4)] == [entry(n) for n in range(4)]

    for n in range(4, 7):
        journal.record(key(n), entry(n))
    # the second rotation dropped records 0-2
    assert fileLines(path + ".1") == [line(3), line(4), line(5)]
    assert fileLines(path) == [line(6)]
    assert [journal.lookup(key(n)) for n in range(3)] == [None, None, None]
    assert [journal.lookup(key(n)) for n in range(3, 7)] == [entry(n) for n in range(3, 7)]
    assert len(journal) == 4
    journal.close()

    again = opened(path, capacity=3)
    assert [again.lookup(key(n)) for n in range(7)] == [None] * 3 + [entry(n) for n in range(3, 7)]
    # the reopened journal goes on counting the current file's records
    again.record(key(7), entry(7))
    again.record(key(8), entry(8))
    assert fileLines(path) == [line(6), line(7), line(8)]
    again.record(key(9), entry(9))
    assert fileLines(path + ".1") == [line(6), line(7), line(8)]
    assert fileLines(path) == [line(9)]
    assert again.lookup(key(5)) is None
    again.close()


def test_a_repeated_key_counts_as_a_record_of_its_own(path: str) -> None:
    journal = opened(path, capacity=2)
    journal.record(key(1), entry(1))
    journal.record(key(1), entry(2))
    assert journal.lookup(key(1)) == entry(2)
    journal.record(key(3), entry(3))
    # the file held 2 lines: it rotated, although it had one key
    assert fileLines(path + ".1") == [line(1), key(1).hex().encode() + line(2)[32:]]
    assert fileLines(path) == [line(3)]
    journal.close()


def test_a_smaller_capacity_keeps_the_newest_records(path: str) -> None:
    journal = opened(path, capacity=10)
    for n in range(10):
        journal.record(key(n), entry(n))
    journal.close()
    smaller = opened(path, capacity=3)
    assert [smaller.lookup(key(n)) for n in range(10)] == [None] * 7 + [entry(n) for n in range(7, 10)]
    # the current file was full: the next record starts a new one
    smaller.record(key(10), entry(10))
    assert fileLines(path) == [line(10)]
    assert len(fileLines(path + ".1")) == 10
    assert len(smaller) == 4
    smaller.close()


def test_a_torn_last_line_is_cut_off_and_logged_once(path: str) -> None:
    journal = opened(path)
    journal.record(key(1), entry(1))
    journal.record(key(2), entry(2))
    journal.close()
    # mqtwist killed in the middle of a write
    with open(path, "ab") as f:
        f.write(line(3)[:40])

    with capturedLogs() as events:
        again = opened(path)
    warnings = [e for e in journalEvents(events) if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert (warnings[0]["skipped"], warnings[0]["torn"]) == (0, 1)
    assert path in formatEvent(warnings[0])
    assert again.lookup(key(3)) is None
    assert fileLines(path) == [line(1), line(2)]
    # the next record starts a line of its own
    again.record(key(4), entry(4))
    assert fileLines(path) == [line(1), line(2), line(4)]
    again.close()

    with capturedLogs() as events:
        third = opened(path)
    assert [e["log_level"] for e in journalEvents(events)] == [LogLevel.info]
    assert [third.lookup(key(n)) for n in (1, 2, 4)] == [entry(1), entry(2), entry(4)]
    third.close()


def test_unreadable_lines_are_skipped_counted_and_logged_once(path: str) -> None:
    os.makedirs(os.path.dirname(path))
    garbage = [
        b"not-hex {}\n",
        b"\x00\x00\x00\x00\n",  # zeros left by a crash of the machine
        key(9).hex().encode() + b" [1]\n",  # not an object
        key(9).hex().encode() + b" {\"cut\n",  # not JSON
        key(9).hex().encode() + b"\n",  # no entry
        b" {\"a\": 1}\n",  # no key
        b"\xff\xfe {}\n",
    ]
    with open(path, "wb") as f:
        f.write(line(1) + b"".join(garbage[:4]) + line(2) + b"".join(garbage[4:]))
    with open(path + ".1", "wb") as f:
        f.write(b"x" * 70000 + b"\n" + line(0))

    with capturedLogs() as events:
        journal = opened(path)
    (warning,) = [e for e in journalEvents(events) if e["log_level"] == LogLevel.warn]
    # 7 here, and in the previous file a line longer than any record
    assert (warning["skipped"], warning["torn"]) == (8, 0)
    assert [journal.lookup(key(n)) for n in range(3)] == [entry(0), entry(1), entry(2)]
    assert journal.lookup(key(9)) is None
    assert len(journal) == 3
    journal.close()


def test_a_failed_write_is_logged_once_and_the_journal_goes_on_in_memory(path: str) -> None:
    journal = opened(path)
    journal.record(key(1), entry(1))
    # the disk fills up: every write now fails with ENOSPC
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        assert journal._fd is not None
        os.dup2(full, journal._fd)
    finally:
        os.close(full)
    with capturedLogs() as events:
        journal.record(key(2), entry(2))
        journal.record(key(3), entry(3))
    (error,) = journalEvents(events)
    assert error["log_level"] == LogLevel.error
    text = formatEvent(error)
    assert path in text and "No space left on device" in text and "memory" in text, text
    assert not journal.persistent
    assert [journal.lookup(key(n)) for n in (1, 2, 3)] == [entry(1), entry(2), entry(3)]
    journal.close()
    assert fileLines(path) == [line(1)]
    assert opened(path).lookup(key(2)) is None


def test_a_partly_written_record_ends_the_file_and_is_cut_off_at_the_next_open(path: str) -> None:
    journal = opened(path)
    journal.record(key(1), entry(1))
    # a file size limit lets 40 bytes of the next record through
    limit = os.path.getsize(path) + 40
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previousHandler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with capturedLogs() as events:
            journal.record(key(2), entry(2))
            journal.record(key(3), entry(3))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previousHandler)
    (error,) = journalEvents(events)
    assert "only 40 of" in formatEvent(error)
    assert not journal.persistent
    # nothing was appended after the torn line
    assert fileLines(path) == [line(1), line(2)[:40]]
    assert journal.lookup(key(3)) == entry(3)
    journal.close()
    again = opened(path)
    assert fileLines(path) == [line(1)]
    again.close()


def test_a_failed_rotation_is_logged_and_the_journal_goes_on_in_memory(path: str) -> None:
    journal = opened(path, capacity=2)
    journal.record(key(1), entry(1))
    journal.record(key(2), entry(2))
    # the previous generation cannot be replaced
    os.mkdir(path + ".1")
    with capturedLogs() as events:
        journal.record(key(3), entry(3))
        journal.record(key(4), entry(4))
        journal.record(key(5), entry(5))
    (error,) = journalEvents(events)
    assert error["log_level"] == LogLevel.error
    assert "start a new generation of" in formatEvent(error)
    assert not journal.persistent
    # still bounded in memory: the second rotation dropped 1 and 2
    assert [journal.lookup(key(n)) for n in range(1, 6)] == [None, None, entry(3), entry(4), entry(5)]
    assert fileLines(path) == [line(1), line(2)]
    journal.close()


def test_an_entry_that_is_not_json_is_logged_and_not_recorded(path: str) -> None:
    journal = opened(path)
    with capturedLogs() as events:
        journal.record(key(1), {"time": object()})
    (error,) = journalEvents(events)
    assert error["log_level"] == LogLevel.error
    assert journal.lookup(key(1)) is None
    assert journal.persistent
    assert fileLines(path) == []
    journal.close()


@pytest.mark.parametrize(
    "where, cause",
    [
        ("under a file", "Not a directory"),
        ("a directory", "not a regular file"),
        ("a device", "not a regular file"),
    ],
)
def test_an_unusable_path_is_refused_with_what_to_do(tmp_path: Any, where: str, cause: str) -> None:
    if where == "under a file":
        (tmp_path / "file").write_text("")
        path = str(tmp_path / "file" / "journal")
    elif where == "a directory":
        path = str(tmp_path)
    else:
        path = "/dev/full"
    journal = DeliveryJournal(path, 10)
    with pytest.raises(DeliveryJournalError) as raised:
        journal.open()
    message = str(raised.value)
    assert path in message and cause in message, message
    assert "--delivery-journal PATH" in message and "--delivery-journal ''" in message, message
    assert not journal.persistent


def test_a_journal_is_used_by_one_process_at_a_time(path: str) -> None:
    first = opened(path)
    second = DeliveryJournal(path, 10)
    with pytest.raises(DeliveryJournalError) as raised:
        second.open()
    assert "in use by another process" in str(raised.value)
    assert "--delivery-journal PATH" in str(raised.value)
    first.record(key(1), entry(1))
    first.close()
    second.open()
    assert second.lookup(key(1)) == entry(1)
    second.close()
    second.close()  # twice is harmless


def test_records_after_close_stay_in_memory(path: str) -> None:
    journal = opened(path)
    journal.close()
    journal.record(key(1), entry(1))
    assert journal.lookup(key(1)) == entry(1)
    assert fileLines(path) == []


def test_capacity_must_be_at_least_one_and_a_path_not_empty() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DeliveryJournal(None, 0)
    with pytest.raises(ValueError, match="give None"):
        DeliveryJournal("", 10)
