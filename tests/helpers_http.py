"""
A small HTTP client for the tests of mqtwist's HTTP endpoints (the admin
API, /metrics): JSON in and out, with or without the bearer token.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers


class HTTPClient:
    """Calls one endpoint, C{http://127.0.0.1:PORT}."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.agent = Agent(reactor)

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None | bool = True,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Headers]:
        """
        One request; C{token=True} sends this client's token, C{None} none.

        @return: the status code, the answer (decoded when it is JSON) and
            the response headers.
        """
        headers = Headers({"content-type": ["application/json"]})
        sent = self.token if token is True else token
        if sent is not None:
            headers.addRawHeader("authorization", f"Bearer {sent}")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        producer = FileBodyProducer(BytesIO(data)) if data is not None else None
        response = await self.agent.request(method.encode(), (self.base + path).encode(), headers, producer)
        content = await readBody(response)
        kind = (response.headers.getRawHeaders("content-type") or [""])[0]
        value = json.loads(content) if kind == "application/json" else content
        return response.code, value, response.headers
