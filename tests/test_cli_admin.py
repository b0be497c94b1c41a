"""
C{mqtwist status}, C{pause}, C{resume}, C{cancel}, C{uncancel}, C{drain}
and C{undrain} as their user runs them: the console script of the
virtualenv, as a subprocess, against the admin API of a service running in
the test process with real traffic (a real RabbitMQ outbox, the loopback
DNS and SMTP sinks of L{fixtures_dns}).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys

import pytest
import pytest_twisted
from fixtures_dns import mxConfig, mxDomain
from helpers_endtoend import brokerURL, publishAll, running
from helpers_http import HTTPClient
from helpers_mxdelivery import collectIds, job
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from mqtwist.cli.adminclient import adminURL
from mqtwist.cli.common import CommandError
from mqtwist.service import MailerService

#: the console script that setup.cfg declares, installed in the virtualenv
MQTWIST = os.path.join(os.path.dirname(sys.executable), "mqtwist")

TOKEN = "cli-admin-token-7f3a"


async def mqtwist(*arguments: str, token: str | None = TOKEN, **environ: str) -> tuple[str, str, int]:
    """
    Run the C{mqtwist} command with the admin token C{token} in the
    environment (and C{environ}); fires with its standard output, standard
    error and exit status.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("MQTWIST_")}
    if token is not None:
        env["MQTWIST_ADMIN_TOKEN"] = token
    env.update(environ)
    out, err, code = await getProcessOutputAndValue(MQTWIST, arguments, env=env, reactor=reactor)
    return out.decode(), err.decode(), code


def rows(out: str, header: str) -> list[list[str]]:
    """
    The rows of the table under the header line that starts with
    C{header} in what C{mqtwist status} printed: the cells split at two or
    more spaces.
    """
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith(header))
    table = []
    for line in lines[start + 1 :]:
        if not line:
            break
        table.append(re.split(r"  +", line))
    return table


def adminService(rabbitmq, dnsServer, mailHosts, queues) -> MailerService:
    config = mxConfig(brokerURL(rabbitmq), queues, dnsServer, mailHosts, admin="tcp:0")
    return MailerService(config, plugins=[], adminToken=TOKEN)


def portOf(service: MailerService) -> int:
    return service.httpServices["admin"].port.getHost().port


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("8025", "http://127.0.0.1:8025"),
        ("tcp:8025", "http://127.0.0.1:8025"),
        ("tcp:8025:interface=0.0.0.0", "http://127.0.0.1:8025"),
        ("tcp:port=8025:interface=192.0.2.7", "http://192.0.2.7:8025"),
        ("tcp6:8025", "http://[::1]:8025"),
        (r"tcp6:8025:interface=\:\:", "http://[::1]:8025"),
        ("ssl:8443:privateKey=key.pem:certKey=cert.pem", "https://127.0.0.1:8443"),
    ],
)
def test_the_url_of_an_endpoint(endpoint: str, url: str) -> None:
    assert adminURL(endpoint) == url


@pytest.mark.parametrize("endpoint", ["unix:/run/mqtwist.sock", "tcp:0", "tcp:interface=127.0.0.1"])
def test_an_endpoint_without_a_url_asks_for_admin_url(endpoint: str) -> None:
    with pytest.raises(CommandError, match="give the URL with --admin-url"):
        adminURL(endpoint)


@pytest_twisted.ensureDeferred
async def test_status_pause_resume_cancel_drain_undrain(rabbitmq, amqp, dnsServer, mailHosts, queues):
    fast = await mailHosts.sink("127.0.0.2", hostname="mx.fast.test")
    held = await mailHosts.sink("127.0.0.3", hostname="mx.held.test")
    mxDomain(dnsServer, "fast.test", "127.0.0.2")
    mxDomain(dnsServer, "held.test", "127.0.0.3")
    service = adminService(rabbitmq, dnsServer, mailHosts, queues)
    async with running(service):
        admin = ("--admin", f"tcp:{portOf(service)}")
        api = HTTPClient(portOf(service), TOKEN)

        out, err, code = await mqtwist("pause", *admin, "--domain", "held.test", "--reason", "complaints", "--by", "ops")
        assert (code, err) == (0, ""), out + err
        assert out == "paused domain=held.test (until lifted, by ops: complaints)\n"
        _, pauses, _ = await api.call("GET", "/api/pauses")
        assert [(p["domain"], p["by"], p["reason"], p["until"]) for p in pauses] == [("held.test", "ops", "complaints", None)]

        await publishAll(
            amqp, queues["outbox"],
            [job(f"h{n}@held.test", f"held-{n}") for n in range(4)] + [job(f"f{n}@fast.test", f"fast-{n}") for n in range(5)],
        )
        await collectIds(amqp, queues["success"], {f"fast-{n}" for n in range(5)})
        assert held.messages == [] and len(fast.messages) == 5

        # the outbox depth is read every few seconds: the one shown is the
        # one before or after
        before = service.status()
        out, err, code = await mqtwist("status", *admin)
        after = service.status()
        assert (code, err) == (0, ""), out + err
        lines = out.splitlines()
        assert lines[0] == f"mqtwist {before['version']} at http://127.0.0.1:{portOf(service)}: consuming"
        outbox, ready, inFlight, consumed = re.fullmatch(r"outbox '(.*)': (.*), (\d+) in flight, (\d+) consumed", lines[1]).groups()
        assert (outbox, inFlight, consumed) == (queues["outbox"], "0", "9") and after["consumed"] == 9
        assert ready in {"not read yet", f"{before['outboxDepth']} ready", f"{after['outboxDepth']} ready"}
        assert lines[2] == "totals: 5 delivered, 4 held"
        assert after["totals"] == {"delivered": 5, "held": 4}
        assert await amqp.count(f"{queues['outbox']}.held") == 4
        # held.test's destination is never asked: its messages are held before
        ((destination, *figures, lastReply),) = rows(out, "DESTINATION")
        assert destination == "mx mx.fast.test"
        assert figures == ["0", "0", "0", "open"]
        assert lastReply == service.engine.lastReplies["mx mx.fast.test"]
        assert rows(out, "SELECTOR") == [["domain=held.test", "when lifted", pauses[0]["since"], "ops", "complaints"]]
        assert "no cancels" in lines

        out, err, code = await mqtwist("status", *admin, "--json")
        assert code == 0, out + err
        shown = json.loads(out)
        assert set(shown) == {"status", "destinations", "pauses", "cancels"}
        assert shown["status"]["totals"]["delivered"] == 5 == service.status()["totals"]["delivered"]
        assert shown["pauses"] == pauses and shown["cancels"] == []

        out, err, code = await mqtwist("resume", *admin, "--domain", "held.test")
        assert (code, err) == (0, ""), out + err
        assert out.startswith("resumed domain=held.test (in force since ") and out.endswith(", by ops: complaints)\n")
        resumed = await collectIds(amqp, queues["success"], {f"held-{n}" for n in range(4)})
        assert all("paused by ops (domain=held.test): complaints" in r["results"][0]["description"] for r in resumed)
        assert len(held.messages) == 4
        out, err, code = await mqtwist("resume", *admin, "--domain", "held.test")
        assert (out, code) == ("", 1)
        assert err == (
            f"mqtwist resume: error: the admin API at http://127.0.0.1:{portOf(service)} refused /api/pauses: "
            f"no pause of exactly domain=held.test; GET /api/pauses lists them\n"
        )

        out, err, code = await mqtwist("cancel", *admin, "--tag", "unwanted", "--seconds", "600", "--reason", "wrong list")
        assert (code, err) == (0, ""), out + err
        assert out.startswith("cancelled tag=unwanted (until 20") and out.endswith(": wrong list)\n")
        await publishAll(
            amqp, queues["outbox"],
            [job(f"c{n}@fast.test", f"cancelled-{n}", tags=["unwanted"]) for n in range(3)] + [job("ok@fast.test", "kept")],
        )
        failed = await collectIds(amqp, queues["failure"], {f"cancelled-{n}" for n in range(3)})
        for result in failed:
            (entry,) = result["results"]
            assert (entry["state"], entry["result"]) == ("process", "cancelled")
            assert entry["description"].endswith("(tag=unwanted): wrong list")
        await collectIds(amqp, queues["success"], {"kept"})
        assert len(fast.messages) == 6
        out, err, code = await mqtwist("uncancel", *admin, "--tag", "unwanted")
        assert (code, err) == (0, ""), out + err
        assert out.startswith("lifted the cancel of tag=unwanted (in force since ")
        assert service.controls.cancels() == []

        out, err, code = await mqtwist("drain", *admin)
        assert (code, err) == (0, ""), out + err
        assert out.splitlines()[0].endswith(": drained")
        assert service.status()["state"] == "drained"
        await publishAll(amqp, queues["outbox"], [job("later@fast.test", "after-drain")])
        assert await amqp.count(queues["outbox"]) == 1
        out, err, code = await mqtwist("status", *admin)
        assert out.splitlines()[0].endswith(": drained")
        me = service.cluster.me
        assert f"cluster: 1 member(s): {me}; this one is {me}\n" in out

        # this process by its member name; another name is refused
        out, err, code = await mqtwist("undrain", *admin, "--member", "nobody:1")
        assert code == 1 and "no live member 'nobody:1'" in err
        out, err, code = await mqtwist("undrain", *admin, "--member", me)
        assert (code, err) == (0, ""), out + err
        assert out.splitlines()[0].endswith(": consuming")
        out, err, code = await mqtwist("drain", *admin, "--member", me)
        assert out.splitlines()[0].endswith(": drained")
        out, err, code = await mqtwist("undrain", *admin)
        assert (code, err) == (0, ""), out + err
        assert out.splitlines()[0].endswith(": consuming")
        await collectIds(amqp, queues["success"], {"after-drain"})
        assert len(fast.messages) == 7


@pytest_twisted.ensureDeferred
async def test_the_config_file_and_the_token_file_as_the_service_reads_them(
    rabbitmq, dnsServer, mailHosts, queues, tmp_path
):
    service = adminService(rabbitmq, dnsServer, mailHosts, queues)
    tokenFile = tmp_path / "admin-token"
    tokenFile.write_text(TOKEN + "\n")
    config = tmp_path / "mqtwist.toml"
    async with running(service):
        config.write_text(f'admin = "{portOf(service)}"\nadmin-token-file = "{tokenFile}"\n')
        out, err, code = await mqtwist("status", "--config", str(config), token=None)
        assert (code, err) == (0, ""), out + err
        assert out.splitlines()[0].endswith(f" at http://127.0.0.1:{portOf(service)}: consuming")
        # the same through the variables, and --admin-url
        out, err, code = await mqtwist(
            "status", "--admin-url", f"http://127.0.0.1:{portOf(service)}/", token=None,
            MQTWIST_ADMIN_TOKEN_FILE=str(tokenFile),
        )
        assert code == 0, out + err


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_is_refused_and_never_printed(rabbitmq, dnsServer, mailHosts, queues, tmp_path):
    service = adminService(rabbitmq, dnsServer, mailHosts, queues)
    wrong = "not-the-token-3c9d"
    tokenFile = tmp_path / "token"
    tokenFile.write_text(wrong + "\n")
    async with running(service):
        admin = ("--admin", str(portOf(service)))
        out, err, code = await mqtwist("pause", *admin, "--domain", "held.test", token=wrong)
        assert (out, code) == ("", 1)
        assert err == (
            "mqtwist pause: error: the admin API refused the token: give the admin token: Authorization: "
            "Bearer <token>; the token is the one of MQTWIST_ADMIN_TOKEN: check that it is the service's\n"
        )
        out, err, code = await mqtwist("status", *admin, "--admin-token-file", str(tokenFile))
        assert (out, code) == ("", 1)
        assert f"the token is the one of --admin-token-file {tokenFile}:" in err
        assert wrong not in err and TOKEN not in err
        assert service.controls.pauses() == []


@pytest_twisted.ensureDeferred
async def test_a_bad_selector_gets_the_api_message(rabbitmq, dnsServer, mailHosts, queues):
    service = adminService(rabbitmq, dnsServer, mailHosts, queues)
    async with running(service):
        admin = ("--admin", str(portOf(service)))
        out, err, code = await mqtwist("pause", *admin, "--mta", "not-an-ip")
        assert (out, code) == ("", 1)
        prefix = f"mqtwist pause: error: the admin API at http://127.0.0.1:{portOf(service)} refused /api/pauses: "
        assert err == prefix + "mta holds 'not-an-ip', which is no IPv4 or IPv6 address\n"
        out, err, code = await mqtwist("cancel", *admin, "--domain", "example.com", "--seconds", "-5")
        assert (out, code) == ("", 1)
        assert err.startswith(prefix.replace("pause:", "cancel:").replace("pauses", "cancels") + "'seconds' must be")
        out, err, code = await mqtwist("pause", *admin)
        assert (out, code) == ("", 1)
        assert err == "mqtwist pause: error: say what to pause: give one or more of --destination, --domain, --mta, --tag\n"
        assert service.controls.pauses() == [] and service.controls.cancels() == []


@pytest_twisted.ensureDeferred
async def test_an_unreachable_admin_api_is_named():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    out, err, code = await mqtwist("status", "--admin", str(port))
    assert (out, code) == ("", 1)
    assert err == (
        f"mqtwist status: error: cannot reach the admin API at http://127.0.0.1:{port}: connection refused: "
        f"check that mqtwist runs there with --admin, and the port\n"
    )


@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_never_answers_is_given_up_after_timeout():
    # the kernel accepts the connections of a listening socket: the request
    # is sent, and nothing ever answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out, err, code = await mqtwist("status", "--admin-url", url, "--timeout", "0.5")
        assert (out, code) == ("", 1)
        assert err == (
            f"mqtwist status: error: cannot reach the admin API at {url}: no answer within 0.5 s: check "
            f"that mqtwist runs there with --admin, or give --timeout more seconds\n"
        )
        # a drain may take its time: --wait-timeout, not --timeout, bounds it
        out, err, code = await mqtwist("drain", "--admin-url", url, "--timeout", "0.5", "--wait-timeout", "1")
        assert (out, code) == ("", 3)
        assert err.startswith("mqtwist drain: still draining after 1 s: the service goes on")


@pytest_twisted.ensureDeferred
async def test_no_admin_api_or_no_token_configured():
    out, err, code = await mqtwist("drain")
    assert (out, code) == ("", 1)
    assert err.startswith("mqtwist drain: error: no admin API is configured: give the service's --admin endpoint")
    out, err, code = await mqtwist("undrain", "--admin", "8025", token=None)
    assert (out, code) == ("", 1)
    assert err.startswith("mqtwist undrain: error: no admin token: put the service's in a file named by --admin-token-file")
