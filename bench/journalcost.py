"""
What the delivery journal (mqtwist/outbox/journal.py) costs: microseconds per
keyOf by body size, per record (file and memory) and per lookup, bytes of
memory per record, and how fast open() reads a journal back.

    python3 bench/journalcost.py [--records 100000] [--directory DIR]

The file is written in DIR (default: a temporary directory under
bench/results' file system, the checkout's: the journal's file system
matters for the cost of a record).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components import cpuModel  # noqa: E402

from mqtwist.outbox.journal import DeliveryJournal  # noqa: E402

#: an accepted entry as a delivery over a plain connection records it (about 250 bytes of JSON)
ENTRY: dict[str, Any] = {
    "time": "2026-11-24 10:00:00",
    "state": "message",
    "result": "accepted",
    "code": 250,
    "status": "2.0.0",
    "description": "Ok: queued as 4XyZ1234abc",
    "from": "192.0.2.10",
    "to": "198.51.100.25",
    "messages": 3,
    "sent": {"connection": 15234, "data": 5123},
    "dsn": False,
    "mta": "mx1.example.net ESMTP Postfix (Debian/GNU)",
    "host": "mx1.example.net",
}


def perCall(function: Callable[[], object], calls: int) -> float:
    """Microseconds per call, the best of 5 runs of C{calls} calls."""
    return min(timeit.repeat(function, number=calls, repeat=5)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records per measurement (default: %(default)s)")
    parser.add_argument("--directory", default=os.path.dirname(os.path.abspath(__file__)),
                        help="where the temporary journal file goes (default: %(default)s)")
    o = parser.parse_args()
    n = o.records
    print(f"CPU: {cpuModel()}; Python {sys.version.split()[0]}; {n} records")

    for size in (1_000, 10_000, 100_000):
        body = os.urandom(size)
        print(f"keyOf, {size // 1000} KB body: {perCall(lambda: DeliveryJournal.keyOf(body), 2000):.2f} us")

    keys = [DeliveryJournal.keyOf(str(i).encode()) for i in range(n)]
    with tempfile.TemporaryDirectory(dir=o.directory) as directory:
        path = os.path.join(directory, "deliveries.journal")
        for label, where in (("in memory", None), ("to a file", path)):
            journal = DeliveryJournal(where, n)
            journal.open()
            it = iter(keys)
            started = time.perf_counter()
            for _ in range(n):
                journal.record(next(it), ENTRY)
            elapsed = time.perf_counter() - started
            print(f"record, {label}: {elapsed / n * 1e6:.2f} us")
            journal.close()
        print(f"file: {os.path.getsize(path) / n:.0f} bytes per record")

        journal = DeliveryJournal(path, n)
        started = time.perf_counter()
        journal.open()
        elapsed = time.perf_counter() - started
        print(f"open: {n} records in {elapsed:.3f} s = {n / elapsed:,.0f} records/s")
        found, missing = keys[n // 2], b"\0" * 16
        print(f"lookup, found: {perCall(lambda: journal.lookup(found), 20000):.2f} us")
        print(f"lookup, not found: {perCall(lambda: journal.lookup(missing), 20000):.3f} us")
        journal.close()

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    journal = DeliveryJournal(None, n)
    # keys made here, so that they are counted: each record brings its own
    for i in range(n):
        journal.record(DeliveryJournal.keyOf(str(i).encode()), ENTRY)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"memory: {(after - before) / n:.0f} bytes per record")


if __name__ == "__main__":
    main()
