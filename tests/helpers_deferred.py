"""
What a Deferred ended with, for tests that cancel some of those they wait
for.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred


async def outcome(deferred: Deferred[Any]) -> Any:
    """What C{deferred} fires with, or the class of what it fails with."""
    try:
        return await deferred
    except Exception as e:
        return type(e)
