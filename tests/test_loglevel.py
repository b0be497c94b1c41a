"""
Tests for L{mqtwist.loglevel}: events below the level never reach the
observers the service filters.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.logger import Logger, LogLevel, LogPublisher

from mqtwist.loglevel import LogLevelService, debugEvents, parseLogLevel


def emitAll(log: Logger) -> None:
    log.debug("d {x}", x=1)
    log.info("i {x}", x=2)
    log.warn("w {x}", x=3)
    log.error("e {x}", x=4)
    log.critical("c {x}", x=5)


def test_parseLogLevel() -> None:
    assert parseLogLevel("Info ") is LogLevel.info
    assert parseLogLevel("critical") is LogLevel.critical
    with pytest.raises(ValueError, match="'loud' is not a log level; use one of debug, info"):
        parseLogLevel("loud")


def test_dropsLowerLevelsUntilStopped() -> None:
    """
    While the service runs, the observers the publisher had get only events
    at or above the level; afterwards they get everything again.
    """
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    log = Logger(namespace="test", observer=publisher)
    service = LogLevelService(LogLevel.warn, publisher)

    service.startService()
    emitAll(log)
    assert [event["log_format"] for event in seen] == ["w {x}", "e {x}", "c {x}"]

    service.stopService()
    seen.clear()
    emitAll(log)
    assert [event["log_level"] for event in seen] == list(LogLevel.iterconstants())
    assert publisher._observers == [seen.append]


def test_debugKeepsEverything() -> None:
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    service = LogLevelService(LogLevel.debug, publisher)
    service.startService()
    try:
        emitAll(Logger(namespace="test", observer=publisher))
    finally:
        service.stopService()
    assert len(seen) == 5


def test_eventsWithoutLevelPass() -> None:
    """
    Events that carry no level (e.g. written straight to the publisher)
    are not dropped.
    """
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    service = LogLevelService(LogLevel.critical, publisher)
    service.startService()
    try:
        publisher({"log_format": "bare"})
    finally:
        service.stopService()
    assert seen == [{"log_format": "bare"}]


def test_observersAddedLaterGetEverything() -> None:
    publisher = LogPublisher()
    filtered: list[dict[str, Any]] = []
    publisher.addObserver(filtered.append)
    service = LogLevelService(LogLevel.error, publisher)
    service.startService()
    late: list[dict[str, Any]] = []
    publisher.addObserver(late.append)
    try:
        emitAll(Logger(namespace="test", observer=publisher))
    finally:
        service.stopService()
    assert len(filtered) == 2
    assert len(late) == 5


def test_untilExitKeepsFilteringAfterTheStop() -> None:
    """
    With C{untilExit}, the level still holds after the service stops (the
    services stopped beside it log while they wind down), and starting it
    again does not filter twice.
    """
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    log = Logger(namespace="test", observer=publisher)
    service = LogLevelService(LogLevel.warn, publisher, untilExit=True)
    try:
        service.startService()
        service.stopService()
        emitAll(log)
        service.startService()
        emitAll(log)
    finally:
        # the process-wide switch stays off for good by design: not here
        debugEvents.wanted = True
    assert [event["log_format"] for event in seen] == ["w {x}", "e {x}", "c {x}"] * 2
    assert len(publisher._observers) == 1


def test_debugSwitch() -> None:
    """
    Hot code may skip building debug events exactly while a service with a
    higher level runs.
    """
    assert debugEvents.wanted
    service = LogLevelService(LogLevel.info, LogPublisher())
    service.startService()
    try:
        assert not debugEvents.wanted
    finally:
        service.stopService()
    assert debugEvents.wanted
    service = LogLevelService(LogLevel.debug, LogPublisher())
    service.startService()
    try:
        assert debugEvents.wanted
    finally:
        service.stopService()


@pytest_twisted.ensureDeferred
async def test_twistedPortChatterIsDroppedAboveDebug() -> None:
    """
    Twisted's lines about a port opening and closing (here a real UDP port,
    as each DNS query opens) are dropped at level info; at debug they stay,
    and other legacy lines pass at any level.
    """
    from twisted.internet import reactor
    from twisted.names.dns import DNSDatagramProtocol
    from twisted.python import log as legacyLog

    for level, expectChatter in ((LogLevel.info, False), (LogLevel.debug, True)):
        seen: list[dict[str, Any]] = []
        service = LogLevelService(level)
        # the global publisher, where Twisted's legacy lines go
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(seen.append)
        service.startService()
        try:
            port = reactor.listenUDP(0, DNSDatagramProtocol(None), interface="127.0.0.1")
            number = port.getHost().port
            await port.stopListening()
            legacyLog.msg("a legacy line of some application")
        finally:
            service.stopService()
            globalLogPublisher.removeObserver(seen.append)
        texts = [event.get("log_text") for event in seen]
        chatter = [f"DNSDatagramProtocol starting on {number}", f"(UDP Port {number} Closed)"]
        assert all((line in texts) is expectChatter for line in chatter), texts
        assert not expectChatter or any(str(t).startswith("Starting protocol <") for t in texts)
        assert "a legacy line of some application" in texts
