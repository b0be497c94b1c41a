"""
What the subcommands that steer the service share: finding its admin API
and its token as the service does, and calling it with answers or errors
that say what went wrong.

The API's address is C{--admin-url}, else the endpoint the service listens
on (C{--admin}, C{MQTWIST_ADMIN}, C{admin} in the config file) made a URL:
C{8025} and C{tcp:8025} are C{http://127.0.0.1:8025}, an C{ssl:} endpoint
is C{https://}.  The token is the first line of C{--admin-token-file},
else C{MQTWIST_ADMIN_TOKEN}, else the first line of the file that
C{MQTWIST_ADMIN_TOKEN_FILE} or the config file's C{admin-token-file}
names; never an option's value, which C{ps} would show.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
from collections.abc import Mapping
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.client import Agent, FileBodyProducer, ResponseFailed, readBody
from twisted.web.http_headers import Headers

from mqtwist.admin.token import readTokenFile
from mqtwist.cli.common import CommandError, Settings
from mqtwist.config.sources import ADMIN_TOKEN_VARIABLE
from mqtwist.listening import LOOPBACK, endpointText
from mqtwist.validation import excerpt

#: the endpoint kinds whose address a URL can be made of, and the scheme
SCHEMES = {"tcp": "http", "tcp6": "http", "ssl": "https"}


def addAdminArguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the options that find the admin API to the parser of a subcommand.
    """
    group = parser.add_argument_group("admin API (as for the service)")
    group.add_argument(
        "--admin", metavar="ENDPOINT",
        help="the service's --admin endpoint: a port or a Twisted endpoint string, called on "
        "127.0.0.1 unless it names an interface (default: MQTWIST_ADMIN, the config file's admin)",
    )
    group.add_argument(
        "--admin-url", metavar="URL",
        help="the admin API's URL, http[s]://host:port, e.g. for another host or behind a proxy "
        "(instead of --admin)",
    )
    group.add_argument(
        "--admin-token-file", metavar="FILE",
        help=f"file whose first line is the admin token (default: {ADMIN_TOKEN_VARIABLE}, else the "
        f"file MQTWIST_ADMIN_TOKEN_FILE or the config file's admin-token-file names)",
    )


def adminURL(endpoint: str) -> str:
    """
    The URL that reaches an admin endpoint the service listens on.

    @param endpoint: the C{admin} setting: a port, or a Twisted endpoint
        string.
    @return: C{http://host:port} (C{https://} for C{ssl:}); an endpoint on
        every interface is called on the loopback one.
    @raise CommandError: for a kind of endpoint that has no URL (C{unix:}),
        or one without a fixed port.
    """
    kind, *fields = [re.sub(r"\\(.)", r"\1", field) for field in re.split(r"(?<!\\):", endpointText(endpoint))]
    scheme = SCHEMES.get(kind.lower())
    positional = [field for field in fields if "=" not in field]
    options = dict(field.split("=", 1) for field in fields if "=" in field)
    port = options.get("port") or (positional[0] if positional else "")
    if scheme is None or not port.isdigit() or int(port) == 0:
        raise CommandError(
            f"cannot tell the admin API's URL from the endpoint {endpoint!r}: it is not a tcp or ssl "
            f"endpoint with a port; give the URL with --admin-url"
        )
    # an endpoint on every interface (or the default one) is called on loopback
    loopback = "::1" if kind.lower() == "tcp6" else LOOPBACK
    host = options.get("interface", "")
    host = loopback if host in ("", "0.0.0.0", "::") else host
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def addByArgument(parser: argparse.ArgumentParser, shown: str) -> None:
    """
    Add C{--by}, who asks for an action, to C{parser}.

    @param shown: where the service shows it, for the help.
    """
    parser.add_argument(
        "--by", metavar="WHO", default=userName(),
        help=f"who asks, {shown} (default: your user name, %(default)s)",
    )


def userName() -> str | None:
    """
    The name of the user running the command, the default C{by} of the
    actions; C{None} when the system cannot tell (the service then names
    the client's address).
    """
    try:
        return getpass.getuser()
    except Exception:
        # getpass raises what its last resort (the password database) does
        return None


class AdminClient:
    """
    Calls the admin API at one URL with one token.

    @ivar url: the API's base URL, for messages.
    """

    def __init__(self, reactor: Any, url: str, token: str, tokenSource: str, timeout: float) -> None:
        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        self._token = token
        self._tokenSource = tokenSource
        self._agent = Agent(reactor, connectTimeout=timeout)

    async def call(
        self, method: str, name: str, body: Mapping[str, Any] | None = None, *, wait: float | None = None
    ) -> Any:
        """
        Call C{/api/NAME}.

        @param body: the JSON object to send, if any.
        @param wait: seconds to wait for the answer of an action that
            takes its time (a drain), which then raises L{TimeoutError};
            C{None}: C{--timeout} seconds, after which the API counts as
            unreachable.
        @return: (a coroutine returning) the decoded answer.
        @raise CommandError: the API could not be reached, refused the
            token or the request, or did not answer in time.
        @raise TimeoutError: C{wait} seconds passed without an answer.
        """
        headers = Headers({"authorization": [f"Bearer {self._token}"], "accept": ["application/json"]})
        producer = None
        if body is not None:
            headers.setRawHeaders("content-type", ["application/json"])
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
        limit = self.timeout if wait is None else wait
        # one timer for the answer and its body; addTimeout would not do:
        # the agent wraps the cancel in ResponseNeverReceived
        waiting: Deferred[Any] = self._agent.request(
            method.encode("ascii"), f"{self.url}/api/{name}".encode(), headers, producer
        )
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            waiting.cancel()

        timer = self.reactor.callLater(limit, expire)
        try:
            response = await waiting
            waiting = readBody(response)
            content = await waiting
        except Exception as e:
            if not expired:
                raise CommandError(f"cannot reach the admin API at {self.url}: {_cause(e, self.timeout)}") from None
            if wait is not None:
                raise TimeoutError(limit) from None
            raise CommandError(
                f"cannot reach the admin API at {self.url}: no answer within {limit:g} s: check that "
                f"mqtwist runs there with --admin, or give --timeout more seconds"
            ) from None
        finally:
            if timer.active():
                timer.cancel()
        return self._answer(name, response.code, content)

    def _answer(self, name: str, code: int, content: bytes) -> Any:
        try:
            value = json.loads(content)
        except ValueError:
            value = None
        if code == 200 and value is not None:
            return value
        message = value.get("error") if isinstance(value, dict) else None
        if not isinstance(message, str):
            message = f"HTTP {code}, not JSON: {excerpt(content.decode('utf-8', 'replace'))}"
        elif not message.isprintable():
            # the answer of whatever listens there moves no cursor
            message = excerpt(message, limit=len(message))
        if code == 401:
            raise CommandError(
                f"the admin API refused the token: {message}; the token is the one of {self._tokenSource}: "
                f"check that it is the service's"
            )
        raise CommandError(f"the admin API at {self.url} refused /api/{name}: {message}")


def _cause(e: Exception, timeout: float) -> str:
    """What went wrong, and what to do, for a request that failed."""
    if isinstance(e, ResponseFailed) and e.reasons:
        e = e.reasons[0].value
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused: check that mqtwist runs there with --admin, and the port"
    if isinstance(e, error.DNSLookupError):
        return "the host name does not resolve: check the host in --admin-url"
    if isinstance(e, error.TimeoutError):
        return (
            f"no connection within {timeout:g} s: check the host and that no firewall drops the "
            f"connection, or give --timeout more seconds"
        )
    if isinstance(e, (error.ConnectionLost, error.ConnectionDone, CancelledError)):
        return "the connection was closed without an answer: is it the admin endpoint, and is it https?"
    return f"{e.__class__.__name__}: {e}"


def adminClient(reactor: Any, arguments: argparse.Namespace, settings: Settings,
                environ: Mapping[str, str] = os.environ) -> AdminClient:
    """
    The client of the admin API that the options, the environment and the
    config file name.

    @raise CommandError: no admin API or no token is configured, the token
        file cannot be read, or C{--admin-url} is no http(s) URL.
    """
    if arguments.admin_url:
        url = arguments.admin_url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise CommandError(
                f"--admin-url {excerpt(url)} is not an http:// or https:// URL with a host (and without "
                f"a user name or password: the token comes from --admin-token-file or {ADMIN_TOKEN_VARIABLE})"
            )
    elif settings.admin:
        url = adminURL(settings.admin)
    else:
        raise CommandError(
            "no admin API is configured: give the service's --admin endpoint (or MQTWIST_ADMIN, or admin "
            "in the config file), or --admin-url"
        )
    if arguments.admin_token_file:
        token, source = _readToken(arguments.admin_token_file), f"--admin-token-file {arguments.admin_token_file}"
    elif environ.get(ADMIN_TOKEN_VARIABLE, "").strip():
        token, source = environ[ADMIN_TOKEN_VARIABLE].strip(), ADMIN_TOKEN_VARIABLE
    elif settings.adminTokenFile:
        token, source = _readToken(settings.adminTokenFile), f"the admin token file {settings.adminTokenFile}"
    else:
        raise CommandError(
            f"no admin token: put the service's in a file named by --admin-token-file (or "
            f"MQTWIST_ADMIN_TOKEN_FILE, or admin-token-file in the config file), or in {ADMIN_TOKEN_VARIABLE}"
        )
    if not token.isprintable():
        raise CommandError(f"the admin token of {source} has control characters: give the token alone")
    return AdminClient(reactor, url, token, source, settings.timeout)


def _readToken(path: str) -> str:
    """
    The first line of the token file C{path}.

    @raise CommandError: it cannot be read, or its first line is empty.
    """
    try:
        return readTokenFile(path)
    except ValueError as e:
        raise CommandError(str(e)) from None
