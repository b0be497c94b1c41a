"""
Queue names for tests that run a L{mqtwist.service.MailerService} against
the session's RabbitMQ node (L{fixtures_rabbitmq}).

Fixtures:

  - C{queues}: the names of the outbox and result queues (C{outbox},
    C{results}, C{success}, C{failure}, C{retry}) of this test only, so that
    tests never see each other's results; pass them on as
    C{Config(**queues)} (see L{helpers_endtoend.makeConfig}).
"""

from __future__ import annotations

import re
import uuid

import pytest

KINDS = ("outbox", "results", "success", "failure", "retry")


@pytest.fixture
def queues(request: pytest.FixtureRequest) -> dict[str, str]:
    """
    Queue names of this test only, so tests never see each other's results.
    """
    base = re.sub(r"\W+", "-", request.node.name)[:40] + "-" + uuid.uuid4().hex[:6]
    return {kind: f"{base}.{kind}" for kind in KINDS}
