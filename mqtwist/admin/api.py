"""
The admin HTTP API: JSON in and out, every call authenticated with a
bearer token, and the dashboard's files.

    GET    /api/status           the service: consuming or draining, counts
    GET    /api/destinations     destinations (?limit=N, 200) and servers, with their state
    GET    /api/history          counts per interval, for the dashboard chart
    GET    /api/pauses           the pauses in force
    POST   /api/pauses           pause: {destination|domain|mta|tag, seconds?, reason?, by?}
    DELETE /api/pauses           resume: the same selector fields
    GET    /api/cancels          the cancels in force
    POST   /api/cancels          cancel: {domain|tag, seconds?, reason?, by?}
    DELETE /api/cancels          lift a cancel: the same selector fields
    POST   /api/drain            stop consuming, finish what is in flight: {member?, by?}
    POST   /api/undrain          consume again: {member?, by?}

In a cluster (C{--cluster shared}) pauses, resumes, cancels and lifted
cancels made here are made by every process; so are drains and undrains,
unless the request names one C{member} (as C{/api/status} lists them).

The dashboard's files (C{/}, C{/dashboard.js}, ...) hold no data and need
no token; the page asks for it and sends it with each API call.  A request
without the right token gets 401 and changes nothing; the token is compared
in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from mqtwist.admin.controls import (
    CANCEL_KEYS,
    PAUSE_KEYS,
    Control,
    ControlError,
    Controls,
    NotTold,
    Selector,
    readDuration,
    readText,
)
from mqtwist.validation import excerpt

#: the largest request body read, bytes
MAX_BODY = 64 * 1024


class AdminBackend(Protocol):
    """
    What the API reads and steers: the service.
    """

    controls: Controls

    def status(self) -> dict[str, Any]:
        """The service's state and counts, as JSON."""

    def destinations(self, limit: int = 200) -> dict[str, Any]:
        """The destinations (at most C{limit}) and servers with their state, as JSON."""

    def history(self) -> dict[str, Any]:
        """Counts per interval of the last minutes, as JSON."""

    def drain(self, member: str | None = None, by: str = "an operator") -> Deferred[None]:
        """Stop consuming (C{member}, or every one); fires when what was in flight here is done."""

    def undrain(self, member: str | None = None, by: str = "an operator") -> None:
        """Consume again (C{member}, or every one)."""


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def adminRoot(backend: AdminBackend, token: str) -> Resource:
    """
    The root resource of the admin endpoint: the dashboard's files, with
    the API under C{/api/}.

    @param token: the bearer token every API call must carry.
    @raise ValueError: when C{token} is empty.
    """
    root = File(str(resources.files("mqtwist.admin") / "dashboard"))
    root.putChild(b"api", AdminAPI(backend, token))
    return root


class AdminAPI(Resource):
    """
    C{/api/...}: JSON calls, each with the bearer token.
    """

    log = Logger()
    isLeaf = True

    def __init__(self, backend: AdminBackend, token: str) -> None:
        super().__init__()
        if not token:
            raise ValueError("the admin API needs a token")
        self.backend = backend
        self._token = token.encode("utf-8")
        self._routes: dict[tuple[bytes, str], Callable[[Request, dict[str, Any]], Any]] = {
            (b"GET", "status"): lambda request, body: backend.status(),
            (b"GET", "destinations"): lambda request, body: backend.destinations(_limit(request)),
            (b"GET", "history"): lambda request, body: backend.history(),
            (b"GET", "pauses"): lambda request, body: [c.toJSON() for c in backend.controls.pauses()],
            (b"POST", "pauses"): self._pause,
            (b"DELETE", "pauses"): self._resume,
            (b"GET", "cancels"): lambda request, body: [c.toJSON() for c in backend.controls.cancels()],
            (b"POST", "cancels"): self._cancel,
            (b"DELETE", "cancels"): self._uncancel,
            (b"POST", "drain"): self._drain,
            (b"POST", "undrain"): self._undrain,
        }

    def render(self, request: Request) -> bytes | int:
        try:
            self._authenticate(request)
            handler = self._route(request, b"/".join(request.postpath or []).decode("utf-8", "replace"))
            body = self._body(request)
            result = handler(request, body)
        except _Refused as refused:
            return self._answer(request, refused.code, {"error": refused.message})
        except NotTold as e:
            return self._answer(request, 503, {"error": str(e)})
        except ControlError as e:
            return self._answer(request, 400, {"error": str(e)})
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda value: self._finish(request, 200, value),
                lambda failure: self._failed(request, failure),
            )
            return NOT_DONE_YET
        return self._answer(request, 200, result)

    # -- requests ------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        given = request.getHeader("authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), self._token):
            self.log.warn(
                "admin API: {method} {path} from {client} refused: {why}",
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("utf-8", "replace"),
                client=_client(request),
                why="no bearer token" if not token else "wrong token",
            )
            request.setHeader("www-authenticate", 'Bearer realm="mqtwist"')
            raise _Refused(401, "give the admin token: Authorization: Bearer <token>")

    def _route(self, request: Request, name: str) -> Callable[[Request, dict[str, Any]], Any]:
        handler = self._routes.get((request.method, name))
        if handler is not None:
            return handler
        methods = sorted(method.decode() for method, route in self._routes if route == name)
        if methods:
            raise _Refused(405, f"/api/{name} takes {', '.join(methods)}")
        raise _Refused(404, f"no such API call: /api/{name}; see the README, section Admin API")

    def _body(self, request: Request) -> dict[str, Any]:
        if request.method == b"GET":
            return {}
        assert request.content is not None
        data = request.content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise _Refused(413, f"the request body is larger than {MAX_BODY} bytes")
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except ValueError as e:
            raise _Refused(400, f"the request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise _Refused(400, "the request body must be a JSON object")
        return body

    # -- actions ---------------------------------------------------------------------

    def _pause(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        selector = Selector.fromJSON(body, PAUSE_KEYS)
        control = self.backend.controls.pause(
            selector, readDuration(body), readText(body, "reason", "paused by an operator"), _by(request, body)
        )
        self._logAction(request, "pause", control)
        return control.toJSON()

    def _resume(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        selector = Selector.fromJSON(body, PAUSE_KEYS)
        control = self.backend.controls.resume(selector)
        if control is None:
            raise _Refused(404, f"no pause of exactly {selector}; GET /api/pauses lists them")
        self._logAction(request, "resume", control)
        return control.toJSON()

    def _cancel(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        selector = Selector.fromJSON(body, CANCEL_KEYS)
        control = self.backend.controls.cancel(
            selector, readDuration(body), readText(body, "reason", "cancelled by an operator"), _by(request, body)
        )
        self._logAction(request, "cancel", control)
        return control.toJSON()

    def _uncancel(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        selector = Selector.fromJSON(body, CANCEL_KEYS)
        control = self.backend.controls.uncancel(selector)
        if control is None:
            raise _Refused(404, f"no cancel of exactly {selector}; GET /api/cancels lists them")
        self._logAction(request, "lift the cancel", control)
        return control.toJSON()

    def _drain(self, request: Request, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        member = _member(body)
        draining = self.backend.drain(member, _by(request, body))
        self.log.warn("admin API: drain {member}, asked by {by}", member=member or "all", by=_by(request, body))
        return draining.addCallback(lambda _: self.backend.status())

    def _undrain(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        member = _member(body)
        self.backend.undrain(member, _by(request, body))
        self.log.warn("admin API: undrain {member}, asked by {by}", member=member or "all", by=_by(request, body))
        return self.backend.status()

    def _logAction(self, request: Request, action: str, control: Control) -> None:
        self.log.warn(
            "admin API: {action} {selector} until {until}, asked by {by}: {reason}",
            action=action,
            selector=str(control.selector),
            until=control.toJSON()["until"] or "lifted",
            by=control.by,
            reason=control.reason,
        )

    # -- answers ---------------------------------------------------------------------

    def _answer(self, request: Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader("content-type", "application/json")
        request.setHeader("cache-control", "no-store")
        return json.dumps(value, indent=1).encode("utf-8") + b"\n"

    def _finish(self, request: Request, code: int, value: Any) -> None:
        if not request.finished and not request._disconnected:
            request.write(self._answer(request, code, value))
            request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        self.log.failure("admin API: {path} failed", failure, path=request.path.decode("utf-8", "replace"))
        self._finish(request, 500, {"error": f"the action failed: {failure.getErrorMessage()}"})


#: the most destinations one GET /api/destinations lists
MAX_LISTED = 10_000


def _limit(request: Request) -> int:
    """The C{limit} of the request's query (default 200, 1 to L{MAX_LISTED})."""
    values = (request.args or {}).get(b"limit")
    if not values:
        return 200
    text = values[0].decode("ascii", "replace")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LISTED:
        raise ControlError(f"'limit' must be a whole number from 1 to {MAX_LISTED}, not {excerpt(text)}")
    return int(text)


def _client(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


def _member(body: dict[str, Any]) -> str | None:
    """The C{member} a drain or undrain is for (C{None}: every one)."""
    member = body.get("member")
    if member is not None and (not isinstance(member, str) or not member):
        raise ControlError(f"'member' must be a member's name, as /api/status lists them, not {excerpt(member)}")
    return member


def _by(request: Request, body: dict[str, Any]) -> str:
    """Who asked: the C{by} of the request, else its client address."""
    return readText(body, "by", _client(request))
