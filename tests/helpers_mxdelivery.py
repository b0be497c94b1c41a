"""
Helpers of the tests that deliver through the service to mail exchangers
found in the loopback DNS (L{fixtures_dns}): jobs for a recipient with an
id of their own, and the results read back until every id was seen.
"""

from __future__ import annotations

import json
from typing import Any

from helpers_endtoend import decoded


def job(recipient: str, ident: str, **extra: Any) -> bytes:
    return json.dumps({"id": ident, "recipient": recipient, "envelope": "s@example.org",
                       "mime": f"Subject: {ident}\r\n\r\nx\r\n", **extra}).encode()


async def collectIds(amqp: Any, queue: str, wanted: set[str], until: Any = lambda results: True) -> list[dict]:
    """
    Results from C{queue} until every id of C{wanted} was seen and
    C{until(results)} holds.
    """
    results: list[dict] = []
    while not (wanted <= {r["id"] for r in results} and until(results)):
        results += decoded(await amqp.collect(queue, 1, timeout=30))
    return results
