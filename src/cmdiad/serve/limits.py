"""A pure-ASGI guard that bounds request bodies before any framework code buffers them."""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]


def _reply(status: int, message: str):
    body = json.dumps({"error": message, "status": status}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return [{"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body}]


class BodyLimit:
    """Reject bodies over ``max_bytes`` with 413: early from ``Content-Length``, else while streaming.

    Args:
        app: The wrapped ASGI app.
        max_bytes: Largest accepted request body.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body larger than the limit of {self.max_bytes / 2**20:.1f} MiB"

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._declared(scope) > self.max_bytes:
            await self._refuse(send)
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive, send) -> None:
        """Count streamed body bytes; past the limit answer 413 and tell the app the client left."""
        seen, started, refused = 0, False, False

        async def counting_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes and not started:
                    await self._refuse(send)
                    refused = True
                    return {"type": "http.disconnect"}
            return msg

        async def tracking_send(msg):
            nonlocal started
            if refused:
                return  # the 413 is already out; drop whatever the app answers to the disconnect
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    @staticmethod
    def _declared(scope: Scope) -> int:
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        return int(length) if length.isdigit() else 0

    async def _refuse(self, send) -> None:
        for msg in _reply(413, self._message()):
            await send(msg)
