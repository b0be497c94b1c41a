"""
What loading a key job's message from Redis costs: loads per second and
this process's CPU per load, through mqtwist's own path
(L{mqtwist.messagestore.loader.StoredMessages.load} over
L{mqtwist.messagestore.redisstore.RedisStore}) on the real reactor,
against a private redis-server on a free port of 127.0.0.1 (Debian's
redis-server, no persistence).

    python3 bench/messagestore.py                  # 5 KB and 100 KB, 1 and 4 threads
    python3 bench/messagestore.py --count 5000 --sizes 5000 --threads 4 --write

--write puts the table in bench/results/messagestore-DATE.txt too.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time

import redis
from twisted.internet import defer, reactor, task

from mqtwist.content.message import Message
from mqtwist.messagestore.interfaces import StoreSettings
from mqtwist.messagestore.loader import StoredMessages
from mqtwist.messagestore.redisstore import RedisStore


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def startRedis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = freePort()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(port: int, count: int, size: int, threads: int, inFlight: int) -> tuple[float, float]:
    client = redis.Redis(port=port)
    body = (b"X" * 76 + b"\r\n") * (size // 78 + 1)
    for n in range(count):
        client.set(f"m/{n}", body[:size])
    settings = StoreSettings(timeout=20, maxBytes=64 * 1024 * 1024, threads=threads)
    store = RedisStore(f"redis://127.0.0.1:{port}/0", settings, reactor)
    loader = StoredMessages(
        store, name="bench", timeout=20, maxBytes=settings.maxBytes, deleteEnded=False, reactor=reactor
    )
    messages = [
        Message(json={}, envelope="", recipient="r@example.com", mime=b"", storeKey=f"m/{n}") for n in range(count)
    ]
    limit = defer.DeferredSemaphore(inFlight)
    # one round first: threads and connections up
    await defer.gatherResults([limit.run(loader.load, m) for m in messages[: threads * 2]])
    started, cpuStarted = time.perf_counter(), cpu()
    loaded = await defer.gatherResults([limit.run(loader.load, m) for m in messages])
    elapsed, cpuUsed = time.perf_counter() - started, cpu() - cpuStarted
    assert all(len(data) == size for data in loaded)
    await store.close()
    client.flushdb()
    return count / elapsed, cpuUsed / count * 1e6


async def main(options: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="mqtwist-bench-redis-")
    process, port = startRedis(directory)
    rows = [f"{'size':>8} {'threads':>8} {'loads/s':>10} {'CPU us/load':>12}"]
    try:
        for size in options.sizes:
            for threads in options.threads:
                rate, cpuPerLoad = await measure(port, options.count, size, threads, options.in_flight)
                rows.append(f"{size:>8} {threads:>8} {rate:>10,.0f} {cpuPerLoad:>12,.0f}")
                print(rows[-1], flush=True)
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)
    if options.write:
        name = time.strftime("bench/results/messagestore-%Y-%m-%d-%H%M.txt", time.gmtime())
        header = (
            f"bench/messagestore.py: {options.count} loads per row, {options.in_flight} in flight, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; CPU is this "
            f"process's (reactor and store threads), not redis-server's\n"
        )
        with open(name, "w") as out:
            out.write(header + "\n".join(rows) + "\n")
        print("written", name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[5000, 100_000])
    parser.add_argument("--threads", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4])
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    task.react(lambda _: defer.ensureDeferred(main(options)))
