"""A request id on every request: the client's `X-Request-ID` when it is sane, else a new one.

Echoed in the response's `X-Request-ID` header and put in the log lines about the request
(client errors at INFO, server errors by errors.py), so a client's report can be matched to
the server's log. A client-sent id is kept only if it is short and plain (letters, digits and
`-_.:`), so nothing a client sends can forge log lines.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
log = logging.getLogger(__name__)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == HEADER.lower().encode():
            text = value.decode("latin-1").strip()
            if _SANE.fullmatch(text):
                return text
    return uuid.uuid4().hex


class RequestId:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER.lower().encode(), request_id.encode())]
                status = message["status"]
                if 400 <= status < 500:
                    log.info("request %s: %s %s answered %d", request_id, scope["method"], scope["path"], status)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
