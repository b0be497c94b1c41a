"""
C{--log-format json} (L{mqtwist.logformat}): what one event becomes, that
the level filter drops events before they are formatted, the twistd
options it goes with, and C{twistd mqtwist} run as a user runs it, whose
whole output is JSON lines without a password or a DKIM key in them.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from typing import Any

import pytest
import pytest_twisted
from helpers_dkim import pem, rsaKey
from twistdprocess import brokerArguments, endTwistd, exitStatus, startTwistd
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python import usage

from mqtwist.logformat import eventAsJSON, jsonFileLogObserver, twistdObserver, useUnderTwistd
from mqtwist.loglevel import LogLevelService
from mqtwist.tap import Options


def emitted(emit: Any) -> list[dict[str, Any]]:
    """The JSON objects written for the events C{emit(log)} emits."""
    out = io.StringIO()
    publisher = LogPublisher(jsonFileLogObserver(out))
    emit(Logger(namespace="test.space", observer=publisher))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_an_event_is_one_line_with_its_named_fields() -> None:
    (record,) = emitted(lambda log: log.info(
        "delivered {message} to {recipient}: {code} {text}",
        message="job-1", recipient="a@example.com", code=250, text="ok\r\nqueued as X",
        nested={"a": [1, 2.5, None, True]}, service=object(), nan=float("nan"),
    ))
    assert record.pop("time").endswith("Z")
    assert record == {
        "level": "info",
        "namespace": "test.space",
        "text": "delivered job-1 to a@example.com: 250 ok\r\nqueued as X",
        # the object and the NaN, which JSON has not, are left out
        "fields": {
            "message": "job-1", "recipient": "a@example.com", "code": 250, "text": "ok\r\nqueued as X",
            "nested": {"a": [1, 2.5, None, True]},
        },
    }


def test_the_line_break_of_a_value_stays_in_its_line() -> None:
    line = eventAsJSON({"log_format": "{x}", "x": "a\nb\u2028c", "log_level": LogLevel.warn, "log_time": 0.0})
    assert "\n" not in line and "\u2028" not in line
    assert json.loads(line)["time"] == "1970-01-01T00:00:00.000Z"


def test_a_failure_is_its_traceback() -> None:
    def emit(log: Logger) -> None:
        try:
            {}["missing"]
        except KeyError:
            log.failure("handling {message} failed", message="job-2")

    (record,) = emitted(emit)
    assert record["level"] == "critical" and record["text"] == "handling job-2 failed"
    assert record["failure"].startswith("Traceback (most recent call last):")
    assert "builtins.KeyError: 'missing'" in record["failure"]
    assert record["fields"] == {"message": "job-2"}


def test_a_legacy_event_has_its_text_once() -> None:
    from twisted.python import log

    out = io.StringIO()
    observer = jsonFileLogObserver(out)
    publisher = LogPublisher(observer)
    legacy = log.LogPublisher(publisher, publisher)
    legacy.msg("Starting factory", system="tcp")
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (record["text"], record["system"], record["namespace"]) == ("Starting factory", "tcp", "log_legacy")
    assert "fields" not in record


def test_events_below_the_level_are_never_formatted() -> None:
    """
    The level filter of L{LogLevelService} comes before the JSON observer:
    a dropped event's fields are not even looked at.
    """

    class Counted:
        formatted = 0

        def __format__(self, spec: str) -> str:
            Counted.formatted += 1
            return "counted"

    out = io.StringIO()
    publisher = LogPublisher(jsonFileLogObserver(out))
    service = LogLevelService(LogLevel.info, publisher)
    service.startService()
    try:
        log = Logger(namespace="test", observer=publisher)
        log.debug("every SMTP command: {value}", value=Counted())
        assert Counted.formatted == 0 and out.getvalue() == ""
        log.info("a delivery: {value}", value=Counted())
        assert Counted.formatted == 1
        assert json.loads(out.getvalue())["text"] == "a delivery: counted"
    finally:
        service.stopService()


class TwistdOptions(usage.Options):
    """The options of twistd that C{--log-format json} looks at."""

    optFlags = [["nodaemon", "n", ""], ["syslog", None, ""]]
    optParameters = [["logfile", "l", None, ""], ["logger", None, None, ""]]
    subCommands = [["mqtwist", None, lambda: Options({}), ""]]


def parseTwistd(*arguments: str) -> TwistdOptions:
    options = TwistdOptions()
    options.parseOptions([*arguments, "mqtwist", "--amqp=amqp://guest:guest@localhost/", "--log-format", "json"])
    return options


def test_under_twistd_json_replaces_its_observer(tmp_path: Any) -> None:
    assert parseTwistd("-n")["logger"] == "mqtwist.logformat.twistdObserver"
    path = tmp_path / "mqtwist.log"
    parseTwistd("--logfile", str(path))
    observer = twistdObserver()
    observer({"log_format": "hello {who}", "who": "you", "log_level": LogLevel.info, "log_time": 1.5,
              "log_namespace": "n"})
    assert json.loads(path.read_text()) == {
        "time": "1970-01-01T00:00:01.500Z", "level": "info", "namespace": "n", "text": "hello you",
        "fields": {"who": "you"},
    }


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--syslog"], "--log-format: json is written to twistd's --logfile or standard output, not with twistd's --syslog"),
        (["--logger", "x"], "not with twistd's --logger"),
        (["--logfile", "-"], "--log-format: a daemon cannot log to standard output; give -n (--nodaemon) or a --logfile"),
    ],
)
def test_under_twistd_json_refuses_other_destinations(arguments: list[str], problem: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parseTwistd(*arguments)
    assert problem in str(exited.value)


def test_a_daemon_logs_to_a_file() -> None:
    with pytest.raises(ValueError, match="a daemon cannot log to standard output"):
        useUnderTwistd("-", nodaemon=False)


def test_a_bad_format_is_refused() -> None:
    with pytest.raises(usage.UsageError, match=r"--log-format: 'yaml' is not a log format; use one of text, json"):
        Options({}).parseOptions(["--log-format", "yaml"])


PASSWORD = "Sm4rt-h0st-s3cret"


@pytest_twisted.ensureDeferred
async def test_twistd_writes_json_lines_and_no_secret(rabbitmq, amqp, startSMTPServer) -> None:
    """
    C{twistd -n mqtwist --log-format json --log-level debug}, delivering
    through a smarthost that wants AUTH a job that carries a DKIM private
    key and a smarthost of its own with a password: every line it writes,
    twistd's own included, is a JSON object; the deliveries' lines have
    their fields; neither password nor key is anywhere.
    """
    smtp = await startSMTPServer(auth=f"mailer:{PASSWORD}", authCleartext=True)
    key = pem(rsaKey())
    keyBody = "".join(key.strip().splitlines()[1:-1])
    base = f"jsonlog-{uuid.uuid4().hex[:8]}"
    await amqp.declare(f"{base}.outbox")
    await amqp.declare(f"{base}.success")
    jobs = [
        {"id": "configured", "recipient": "a@example.com", "mime": "From: s@example.org\r\nSubject: a\r\n\r\na\r\n",
         "dkim": {"domain": "example.org", "selector": "s1", "key": key}},
        {"id": "own", "recipient": "b@example.com", "mime": "Subject: b\r\n\r\nb\r\n",
         "smarthost": {"hostname": "127.0.0.1", "port": smtp.port, "username": "mailer", "password": PASSWORD}},
    ]
    for job in jobs:
        await amqp.publish(f"{base}.outbox", json.dumps(job).encode())
    twistd = startTwistd(
        *brokerArguments(rabbitmq),
        "--smarthost", f"127.0.0.1:{smtp.port}", "--smarthost-username", "mailer",
        "--auth-cleartext-hosts", "127.0.0.1", "--plugins=",
        "--outbox", f"{base}.outbox", "--success", f"{base}.success",
        "--log-format", "json", "--log-level", "debug",
        env={"MQTWIST_SMARTHOST_PASSWORD": PASSWORD},
    )
    try:
        try:
            results = await amqp.collect(f"{base}.success", 2, timeout=60)
        except AssertionError as e:
            raise AssertionError(f"{e}; twistd wrote:\n{twistd.output.decode()[-6000:]}") from None
        twistd.transport.signalProcess("TERM")
        await exitStatus(twistd)
    finally:
        await endTwistd(twistd)
    assert len(results) == 2
    output = twistd.output.decode()
    records = [json.loads(line) for line in output.splitlines()]
    assert records[0]["text"].startswith("twistd ") and "starting up" in records[0]["text"]
    assert records[-1]["text"] == "Server Shut Down."
    delivered = [r["fields"] for r in records if r["text"].startswith("delivered ")]
    assert sorted(f["message"] for f in delivered) == ["configured", "own"]
    assert all(f["code"] == 250 and f["address"] == "127.0.0.1" for f in delivered)
    # the debug lines of the SMTP exchange were there, AUTH hidden
    assert any("AUTH PLAIN <hidden>" in r["text"] or "AUTH LOGIN" in r["text"] for r in records), output
    secrets = [PASSWORD, base64.b64encode(f"\0mailer\0{PASSWORD}".encode()).decode(),
               base64.b64encode(PASSWORD.encode()).decode(), keyBody[:40], keyBody[-40:]]
    assert not [secret for secret in secrets if secret in output]
