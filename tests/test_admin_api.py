"""
The admin HTTP API over real HTTP: the token, the answers to bad requests,
pauses and cancels, drain, and the dashboard's files.  The service behind
it is a stand-in here; tests/test_admin_end_to_end.py runs the real one.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from helpers_http import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from mqtwist.admin.api import adminRoot
from mqtwist.admin.controls import Controls
from mqtwist.listening import HTTPService

TOKEN = "s3cret-token-of-the-test"


class Backend:
    """What the API reads and steers, without a service."""

    def __init__(self) -> None:
        self.controls = Controls(reactor)
        self.state = "consuming"
        self.limits: list[int] = []

    def status(self) -> dict[str, Any]:
        return {"state": self.state}

    def destinations(self, limit: int = 200) -> dict[str, Any]:
        self.limits.append(limit)
        return {"destinations": [], "omitted": 0, "servers": []}

    def history(self) -> dict[str, Any]:
        return {"interval": 5, "samples": []}

    def drain(self, member: str | None = None, by: str = "") -> Deferred[None]:
        self.state = "drained" if member is None else f"drained {member}"
        return succeed(None)

    def undrain(self, member: str | None = None, by: str = "") -> None:
        self.state = "consuming" if member is None else f"consuming {member}"


@pytest.fixture
def logged():
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def api():
    backend = Backend()
    failures: list[Any] = []
    service = HTTPService("admin", "tcp:0", adminRoot(backend, TOKEN), reactor, failures.append)
    service.startService()
    port = service._listening.result  # type: ignore[union-attr]
    yield backend, HTTPClient(port.getHost().port, TOKEN)
    pytest_twisted.blockon(service.stopService() or succeed(None))
    assert failures == []


@pytest.mark.parametrize("token", [None, "Zz9-guess", TOKEN + "x", ""])
@pytest_twisted.ensureDeferred
async def test_without_the_right_token_nothing_changes(api, logged, token) -> None:
    backend, client = api
    code, answer, headers = await client.call("POST", "/api/pauses", {"domain": "example.com"}, token=token)
    assert code == 401
    assert answer == {"error": "give the admin token: Authorization: Bearer <token>"}
    assert headers.getRawHeaders("www-authenticate") == ['Bearer realm="mqtwist"']
    assert backend.controls.pauses() == []
    code, _, _ = await client.call("POST", "/api/drain", token=token)
    assert code == 401 and backend.state == "consuming"
    text = "\n".join(formatEvent(event) for event in logged)
    assert "admin API: POST /api/pauses from 127.0.0.1 refused" in text
    # neither the right token nor a wrong one is logged
    assert TOKEN not in text and "Zz9-guess" not in text


@pytest.mark.parametrize(
    "method, path, raw, code, error",
    [
        ("GET", "/api/nothing", None, 404, "no such API call: /api/nothing"),
        ("PUT", "/api/pauses", None, 405, "/api/pauses takes DELETE, GET, POST"),
        ("POST", "/api/pauses", b"{not json", 400, "the request body is not JSON"),
        ("POST", "/api/pauses", b"[1, 2]", 400, "the request body must be a JSON object"),
        ("POST", "/api/pauses", b'{"domain": 7}', 400, "'domain' must be a non-empty string, not 7"),
        ("POST", "/api/pauses", b'{"domain": "a.b", "seconds": -5}', 400, "'seconds' must be a positive number"),
        ("POST", "/api/cancels", b'{"mta": "192.0.2.1"}', 400, "give at least one of domain, tag"),
        ("DELETE", "/api/pauses", b'{"domain": "never.paused"}', 404, "no pause of exactly domain=never.paused"),
        ("POST", "/api/pauses", b"x" * 70_000, 413, "the request body is larger than 65536 bytes"),
        ("POST", "/api/pauses", b'{"tag": "t", "seconds": 3e11}', 400, "'seconds' must be a positive number of at most"),
        ("GET", "/api/destinations?limit=0", None, 400, "'limit' must be a whole number from 1 to 10000, not '0'"),
        ("GET", "/api/destinations?limit=x", None, 400, "'limit' must be a whole number from 1 to 10000"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_are_answered_clearly(api, method, path, raw, code, error) -> None:
    backend, client = api
    got, answer, _ = await client.call(method, path, raw=raw)
    assert got == code
    assert answer["error"].startswith(error)
    assert backend.controls.pauses() == [] and backend.controls.cancels() == []


@pytest_twisted.ensureDeferred
async def test_pause_list_and_resume(api, logged) -> None:
    backend, client = api
    code, pause, _ = await client.call(
        "POST", "/api/pauses", {"domain": "Example.com", "tag": "spring", "seconds": 600, "reason": "complaints", "by": "kim"}
    )
    assert code == 200
    assert {k: pause[k] for k in ("domain", "tag", "reason", "by")} == {
        "domain": "example.com", "tag": "spring", "reason": "complaints", "by": "kim",
    }
    assert pause["until"] is not None
    code, listed, _ = await client.call("GET", "/api/pauses")
    assert listed == [pause]
    assert backend.controls.pauseFor(destination="x", domain="example.com", mtas=(), tags=("spring",)) is not None
    text = "\n".join(formatEvent(event) for event in logged)
    assert "admin API: pause domain=example.com tag=spring until" in text and "asked by kim: complaints" in text
    code, resumed, _ = await client.call("DELETE", "/api/pauses", {"domain": "example.com", "tag": "spring"})
    assert code == 200 and resumed == pause
    assert (await client.call("GET", "/api/pauses"))[1] == []


@pytest_twisted.ensureDeferred
async def test_cancel_until_lifted(api) -> None:
    backend, client = api
    code, cancel, _ = await client.call("POST", "/api/cancels", {"tag": "bad-list"})
    assert code == 200
    assert cancel["until"] is None and cancel["reason"] == "cancelled by an operator"
    # who asked, when the request does not say: the client's address
    assert cancel["by"] == "127.0.0.1"
    assert backend.controls.cancelFor(domain="example.com", tags=("bad-list",)) is not None
    code, _, _ = await client.call("DELETE", "/api/cancels", {"tag": "bad-list"})
    assert code == 200 and backend.controls.cancels() == []


@pytest_twisted.ensureDeferred
async def test_drain_and_undrain(api) -> None:
    backend, client = api
    code, status, _ = await client.call("POST", "/api/drain")
    assert (code, status) == (200, {"state": "drained"})
    code, status, _ = await client.call("POST", "/api/undrain")
    assert (code, status) == (200, {"state": "consuming"})
    # one member of a cluster
    code, status, _ = await client.call("POST", "/api/drain", {"member": "host:42"})
    assert (code, status) == (200, {"state": "drained host:42"})
    code, status, _ = await client.call("POST", "/api/undrain", {"member": "host:42"})
    assert (code, status) == (200, {"state": "consuming host:42"})
    code, answer, _ = await client.call("POST", "/api/drain", {"member": 42})
    assert code == 400 and "'member' must be a member's name" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_the_dashboard_files_need_no_token_and_hold_no_data(api) -> None:
    _, client = api
    code, page, headers = await client.call("GET", "/", token=None)
    assert code == 200 and b"<title>mqtwist</title>" in page
    assert headers.getRawHeaders("content-type")[0].startswith("text/html")
    code, script, _ = await client.call("GET", "/dashboard.js", token=None)
    assert code == 200 and b"Authorization" in script
    code, _, _ = await client.call("GET", "/../setup.cfg", token=None)
    assert code == 404


@pytest.mark.parametrize(
    "setting, endpoint, interface",
    [
        ("8025", "tcp:8025:interface=127.0.0.1", "127.0.0.1"),
        ("tcp:8025", "tcp:8025:interface=127.0.0.1", "127.0.0.1"),
        ("tcp6:8025", "tcp6:8025:interface=\\:\\:1", "::1"),
        ("tcp:8025:interface=0.0.0.0", "tcp:8025:interface=0.0.0.0", "0.0.0.0"),
    ],
)
def test_an_endpoint_listens_on_loopback_unless_told_otherwise(setting: str, endpoint: str, interface: str) -> None:
    from twisted.internet.endpoints import serverFromString

    from mqtwist.listening import endpointText

    assert endpointText(setting) == endpoint
    assert serverFromString(reactor, endpoint)._interface == interface


def test_the_token_file(tmp_path) -> None:
    from mqtwist.admin.token import readTokenFile

    path = tmp_path / "token"
    path.write_text("  s3cret \nsecond line\n")
    assert readTokenFile(str(path)) == "s3cret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="has an empty first line: put the token there"):
        readTokenFile(str(path))
    with pytest.raises(ValueError, match="cannot read the admin token from .*absent"):
        readTokenFile(str(tmp_path / "absent"))


@pytest_twisted.ensureDeferred
async def test_the_destinations_listed_are_bounded(api) -> None:
    backend, client = api
    await client.call("GET", "/api/destinations")
    await client.call("GET", "/api/destinations?limit=7")
    assert backend.limits == [200, 7]
