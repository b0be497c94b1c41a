"""
Cost per message of the message-content steps: building MIME from JSON,
header edits, DKIM signing (RSA-2048 and Ed25519), for 5 KB and 100 KB
bodies; and whether signing in two threads uses two cores (the signature
and the body hash release the GIL) or not (dkimpy's own pure-Python RSA).

    python3 bench/content.py [--seconds 1.0]

Prints a table and writes it, with the machine and the date, to
bench/results/content-<date>.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim  # noqa: E402
from components import cpuModel  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from mqtwist.content.dkimsign import DKIMKeys, parseDKIM, sign  # noqa: E402
from mqtwist.content.headeredits import applyHeaderEdits  # noqa: E402
from mqtwist.content.mime import buildMime  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EDITS = {
    "remove": ["X-Mailer"],
    "prepend": {"X-Campaign": "spring-2024"},
    "update": {"List-Unsubscribe": "<mailto:unsubscribe@example.com?subject=42>"},
}


def pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def newsletter(size: int) -> dict[str, object]:
    """
    A C{mime} object of about C{size} bytes of body: text and HTML halves,
    mostly ASCII with some accented words (so quoted-printable is used).
    """
    paragraph = (
        "Dear reader, this week's offers: Crème brûlée kits, Smørrebrød, "
        "and a long line that goes on and on past the 78 column limit of RFC 5322 "
        "so that the encoder must break it.\n"
    )
    text = paragraph * (size // 2 // len(paragraph) + 1)
    html = "<html><body>" + ("<p>" + paragraph + "</p>") * (size // 2 // (len(paragraph) + 7) + 1)
    return {
        "from": {"name": "Newsletter Team", "address": "news@example.com"},
        "to": {"name": "Zoë Reader", "address": "reader@example.org"},
        "subject": "Spring offers – 20% off",
        "headers": {"List-Unsubscribe": "<mailto:u@example.com>", "X-Mailer": "bench"},
        "text": text,
        "html": html + "</body></html>\n",
    }


def perMessage(function: Callable[[], object], seconds: float) -> float:
    """
    Microseconds per call of C{function}, over about C{seconds}.
    """
    function()
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            function()
        calls += 10
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls * 1e6


def throughput(function: Callable[[], object], threads: int, seconds: float) -> float:
    """
    Calls per second of C{function} in C{threads} threads at once.
    """
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(index: int) -> None:
        while time.perf_counter() < stop:
            function()
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def machine() -> str:
    return (
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpuModel()}; "
        f"Python {platform.python_version()}; dkimpy {getattr(dkim, '__version__', '?')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    seconds = parser.parse_args().seconds

    rsaKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    edKey = ed25519.Ed25519PrivateKey.generate()
    keys = DKIMKeys()
    rsaSpecs = parseDKIM({"domain": "example.com", "selector": "rsa", "key": pem(rsaKey)}, keys)
    edSpecs = parseDKIM({"domain": "example.com", "selector": "ed", "key": pem(edKey)}, keys)
    rsaPKCS1 = rsaKey.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )

    rows = []
    threadRows = []
    for label, size in (("5 KB", 5_000), ("100 KB", 100_000)):
        obj = newsletter(size)
        mime = buildMime(obj, now=time.time(), hostname="mx.example.com")
        now = time.time()

        def dkimpySign() -> bytes:
            return dkim.sign(mime, b"rsa", b"example.com", rsaPKCS1) + mime

        steps: list[tuple[str, Callable[[], object]]] = [
            ("buildMime", lambda: buildMime(obj, now=now, hostname="mx.example.com")),
            ("applyHeaderEdits", lambda: applyHeaderEdits(mime, EDITS)),
            ("parseDKIM (cached key)", lambda: parseDKIM(
                {"domain": "example.com", "selector": "rsa", "key": pem(rsaKey)}, keys)),
            ("sign rsa-sha256 2048", lambda: sign(mime, rsaSpecs, now=now)),
            ("sign ed25519-sha256", lambda: sign(mime, edSpecs, now=now)),
            ("dkimpy dkim.sign rsa 2048", dkimpySign),
        ]
        for name, step in steps:
            rows.append((label, len(mime), name, perMessage(step, seconds)))
        for name, step in (("sign rsa-sha256 2048", steps[3][1]), ("dkimpy dkim.sign rsa 2048", dkimpySign)):
            one = throughput(step, 1, seconds)
            two = throughput(step, 2, seconds)
            threadRows.append((label, name, one, two))

    now = datetime.now(UTC)
    out = [
        f"mqtwist content benchmark, {now:%Y-%m-%d %H:%M} UTC",
        machine(),
        "",
        f"{'body':<7} {'bytes':>7}  {'step':<28} {'µs/msg':>9} {'msg/s (1 core)':>15}",
    ]
    for label, size, name, micros in rows:
        out.append(f"{label:<7} {size:>7}  {name:<28} {micros:>9.1f} {1e6 / micros:>15.0f}")
    out += ["", "threads: does the step run on two cores at once?", ""]
    out.append(f"{'body':<7} {'step':<28} {'1 thread/s':>11} {'2 threads/s':>12} {'speed-up':>9}")
    for label, name, one, two in threadRows:
        out.append(f"{label:<7} {name:<28} {one:>11.0f} {two:>12.0f} {two / one:>9.2f}")
    text = "\n".join(out) + "\n"
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"content-{now:%Y-%m-%d}.txt"
    path.write_text(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
