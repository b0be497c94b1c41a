"""
An outbox delivery for tests of the outbox processor without a broker: it
records how it was settled.
"""

from __future__ import annotations


class FakeDelivery:
    def __init__(self, body: bytes, *, redelivered: bool = False) -> None:
        self.body = body
        self.current = True
        self.redelivered = redelivered
        self.priority: int | None = None
        self.settled: str | None = None

    def ack(self) -> None:
        self.settled = "ack"

    def release(self) -> None:
        self.settled = "release"

    def reject(self) -> None:
        self.settled = "reject"
