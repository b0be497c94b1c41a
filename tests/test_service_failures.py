"""
L{MailerService.whenFailed}: what an application that embeds mqtwist learns
when the private RabbitMQ node fails, with a reactor that only records the
processes it is asked to start (see L{helpers_localnode.RecordingReactor}).
"""

from helpers_localnode import RecordingReactor, failStart, installed
from twisted.logger import LogLevel, capturedLogs, formatEvent

from mqtwist.config import Config
from mqtwist.localnode import RabbitMQEnded, RabbitMQStartFailed
from mqtwist.service import MailerService


def serviceEvents(events, level: LogLevel) -> list[str]:
    return [
        formatEvent(event)
        for event in events
        if event["log_level"] == level and event.get("log_namespace") == "mqtwist.service.MailerService"
    ]


def mailer(dataDir: str) -> tuple[MailerService, RecordingReactor]:
    """A service with a private node, on a reactor that records processes."""
    # the node's AMQP port is given; its Erlang distribution port is picked
    fake = RecordingReactor((40003,))
    config = Config(brokerDir=dataDir, brokerPort=40001, brokerNice=0, ehloName="mta.example")
    return MailerService(config, reactor=fake, plugins=[]), fake


@installed
def test_node_that_did_not_start_fails_the_service_once(dataDir):
    """
    The node does not start: C{whenFailed} errbacks with its error, asked
    before the start or after, and one critical event says what to do.
    """
    service, fake = mailer(dataDir)
    failed = service.whenFailed()
    with capturedLogs() as events:
        service.startService()
        failStart(fake)
    assert failed.called
    failure = failed.result
    failed.addErrback(lambda _: None)
    assert failure.check(RabbitMQStartFailed)
    (critical,) = serviceEvents(events, LogLevel.critical)
    assert critical.startswith(f"mqtwist cannot deliver without its broker: {failure.value}\nWhat to do: ")
    assert "--broker-port" in critical and "--amqp" in critical
    later = service.whenFailed()
    assert later.result is failure
    later.addErrback(lambda _: None)
    service.stopService()


@installed
def test_node_that_ends_fails_the_service(dataDir):
    """
    The running node ends on its own: C{whenFailed} errbacks with
    L{RabbitMQEnded}.
    """
    service, fake = mailer(dataDir)
    service.startService()
    server, ctl = fake.spawned
    ctl.end()
    failed = service.whenFailed()
    with capturedLogs() as events:
        server.end(0, b"Killed\n")
    failure = failed.result
    failed.addErrback(lambda _: None)
    assert failure.check(RabbitMQEnded)
    (critical,) = serviceEvents(events, LogLevel.critical)
    assert critical.startswith(f"mqtwist cannot deliver without its broker: {failure.value}\nWhat to do: ")
    service.stopService()


@installed
def test_stop_is_no_failure(dataDir):
    """
    A service stopped without a failure fires C{whenFailed} with C{None},
    and logs nothing critical.
    """
    service, fake = mailer(dataDir)
    failed = service.whenFailed()
    with capturedLogs() as events:
        service.startService()
        fake.spawned[1].end()
        stopped = service.stopService()
    assert stopped.called and failed.called
    assert failed.result is None
    assert serviceEvents(events, LogLevel.critical) == []
    assert service.whenFailed().result is None
