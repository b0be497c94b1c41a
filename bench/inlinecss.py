"""
CSS inlining (a job's C{inlinecss}): css_inline against premailer on the
same 100 KB HTML newsletter, and what mqtwist's whole content step
(personalization with C{data}, then inlining) costs on it.

    python3 bench/inlinecss.py [--seconds 2.0] [--size 100000]
    python3 bench/inlinecss.py --write-job /tmp/personalized-100k.json

Both libraries are configured as mqtwist needs them: no stylesheet is
fetched.  Prints a table and writes it, with the machine (lscpu, nproc) and
the date, to bench/results/inlinecss-<date>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import css_inline  # noqa: E402
import premailer  # noqa: E402

from mqtwist.content.personalize import personalize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: the personalization data of the measured jobs
DATA = {"name": "john", "id": 42}

STYLE = """\
body { margin: 0; padding: 0; background: #f4f4f4; font-family: Arial, sans-serif; }
table.main { width: 600px; background: #ffffff; border-collapse: collapse; }
td.cell { padding: 12px 24px; color: #333333; font-size: 15px; line-height: 22px; }
td.cell p { margin: 0 0 12px 0; }
h1 { font-size: 24px; color: #111111; margin: 0 0 16px 0; }
a { color: #0066cc; text-decoration: underline; }
a.button { display: inline-block; background: #0066cc; color: #ffffff; padding: 10px 18px; }
.footer td { font-size: 12px; color: #888888; }
@media only screen and (max-width: 600px) { table.main { width: 100% !important; } }
"""

ROW = """\
<tr><td class="cell"><h1>Article {n} for {{$name}}</h1>
<p>Dear {{$name|ucfirst}}, this is paragraph {n} of the newsletter, with a
<a href="https://example.com/article/{n}?u={{$id}}">link to the article</a> and some text
that makes the message as long as newsletters are.</p>
<p><a class="button" href="https://example.com/buy/{n}">Buy now</a></p></td></tr>
"""


def document(size: int) -> str:
    head = f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>{STYLE}</style></head><body>"
    head += '<table class="main">'
    rows = []
    length = len(head)
    n = 0
    while length < size:
        row = ROW.format(n=n)
        rows.append(row)
        length += len(row)
        n += 1
    tail = '<tr class="footer"><td>Unsubscribe</td></tr></table></body></html>'
    return head + "".join(rows) + tail


def message(html: str) -> bytes:
    return (
        "From: News <news@example.com>\r\nTo: {$name} <{$recipient}>\r\nSubject: News for {$name}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n" + html.replace("\n", "\r\n")
    ).encode("utf-8")


def timed(function: Callable[[], object], seconds: float) -> float:
    """Microseconds per call, the best of three runs of about C{seconds}/3."""
    function()
    best = float("inf")
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            function()
            calls += 1
        best = min(best, elapsed / calls * 1e6)
    return best


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = "(lscpu not available)\n"
    keep = ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Core(s) per", "CPU MHz", "L2", "L3")
    lines = [line for line in lscpu.splitlines() if line.startswith(keep)]
    return f"nproc {os.cpu_count()}; Python {platform.python_version()}\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--size", type=int, default=100_000, help="characters of the HTML document")
    parser.add_argument(
        "--write-job", metavar="FILE",
        help="write an outbox job with this HTML as its mime, 'data' and 'inlinecss': true "
        "(for bench/run.py --job-template FILE) and stop",
    )
    args = parser.parse_args()
    if args.write_job:
        job = {"mime": message(document(args.size)).decode("utf-8"), "data": DATA, "inlinecss": True}
        Path(args.write_job).write_text(json.dumps(job))
        return

    html = document(args.size)
    inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_link_tags=True, keep_at_rules=True)
    # premailer fetches <link> stylesheets unless told not to
    transformer = premailer.Premailer(
        html, allow_network=False, allow_loading_external_files=False, disable_validation=True,
        cssutils_logging_level="CRITICAL",
    )
    mime = message(html)
    data = DATA
    steps: list[tuple[str, Callable[[], object]]] = [
        ("css_inline inline", lambda: inliner.inline(html)),
        ("premailer transform", transformer.transform),
        ("mqtwist personalize (data)", lambda: personalize(mime, data, recipient="john@example.com")),
        (
            "mqtwist personalize (data + inlinecss)",
            lambda: personalize(mime, data, inlinecss=True, recipient="john@example.com"),
        ),
    ]
    now = datetime.now(UTC)
    lines = [
        f"mqtwist inlinecss benchmark, {now:%Y-%m-%d %H:%M} UTC",
        machine(),
        f"css_inline {version('css-inline')}, premailer {version('premailer')}",
        f"HTML document: {len(html.encode())} bytes, {html.count('<tr>')} table rows, one <style> block",
        "",
        f"{'step':42} {'µs/msg':>10} {'msg/s (1 core)':>15}",
    ]
    print("\n".join(lines), flush=True)
    for name, function in steps:
        micros = timed(function, args.seconds)
        line = f"{name:42} {micros:10.1f} {1e6 / micros:15.0f}"
        print(line, flush=True)
        lines.append(line)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"inlinecss-{now:%Y-%m-%d-%H%M}.txt"
    path.write_text("\n".join(lines) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
