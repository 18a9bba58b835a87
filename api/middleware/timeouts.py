"""Request timeouts, as ASGI middleware: a client that stalls its upload, or a request the service cannot
answer in time, gets a JSON error instead of holding a connection and a worker for ever.

- body idle timeout: each chunk of the request body must arrive within `body_idle_timeout_s` of the last
  (408 `request_timeout`). A slow but steady upload of a 2 GB tagging zip is fine; a stalled one is not.
- request timeout: the response must start within `request_timeout_s` of the last body byte (504
  `timeout`). A response already streaming is left to finish. Work running in a thread cannot be
  interrupted, so for a write a 504 means "outcome unknown": retrying is safe (creates answer 409, photo
  adds skip photos the product already has).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class TimeoutMiddleware:
    """Both limits as asyncio.timeout scopes around the request's own task: no extra task per request."""

    def __init__(self, app: ASGIApp, body_idle_timeout_s: float, request_timeout_s: float):
        self.app = app
        self.body_idle_timeout_s = body_idle_timeout_s
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        state = {"body_done": False, "started": False}

        async def timed_receive() -> Message:
            if state["body_done"]:  # waiting for a disconnect: no limit
                return await receive()
            try:
                async with asyncio.timeout(self.body_idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"no request body received for {self.body_idle_timeout_s:g} s") from None
            if message["type"] == "http.request":
                state["body_done"] = not message.get("more_body", False)
                if not state["started"]:  # the answer is due request_timeout_s after the last body byte
                    deadline.reschedule(loop.time() + self.request_timeout_s)
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                deadline.reschedule(None)  # streaming: let it finish
            await send(message)

        try:
            async with asyncio.timeout(self.request_timeout_s) as deadline:
                await self.app(scope, timed_receive, tracked_send)
        except TimeoutError:
            if not deadline.expired() or state["started"]:
                raise  # the app's own TimeoutError, not our deadline
            response = error_response(504, "timeout", f"no answer within {self.request_timeout_s:g} s; retry later")
            await response(scope, receive, send)
