"""The server's front door, before any route runs: the API key and the request body's size.

Pure ASGI (no FastAPI dependency per route), so a refusal costs no body parsing: 401 for a ``/v1/*`` route
without the key (``/health`` and ``/metrics`` stay open), 413 from Content-Length before reading, or counted
while reading a body sent in chunks.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers

from phase4_scheduler.protocol import ApiError


class RequestGate:
    """Pure ASGI, in front of the routes: the API key of ``/v1/*`` routes (401) and the body size (413:
    from Content-Length before reading, and counted while reading a body sent in chunks)."""

    def __init__(self, app, *, max_body_bytes: int, api_key: str | None):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.api_key = api_key.encode("utf-8") if api_key is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if self.api_key is not None and scope["path"].startswith("/v1/") and not self._authorized(headers):
            refusal = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await refusal.response()(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large().response()(scope, receive, send)
        seen = 0

        async def receive_within_limit():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise self._too_large()  # an HTTPException: FastAPI's body reading passes it to the handler
            return message

        await self.app(scope, receive_within_limit, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body exceeds the server's limit of {self.max_body_bytes} bytes: "
                        "send a shorter prompt", code="request_too_large")

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode("latin-1"), self.api_key)
