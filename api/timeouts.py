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
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class TimeoutMiddleware:
    def __init__(self, app: ASGIApp, body_idle_timeout_s: float, request_timeout_s: float):
        self.app = app
        self.body_idle_timeout_s = body_idle_timeout_s
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"last_byte": time.monotonic(), "body_done": False, "started": False}

        async def timed_receive() -> Message:
            if state["body_done"]:  # waiting for a disconnect: no limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_idle_timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"no request body received for {self.body_idle_timeout_s:g} s") from None
            if message["type"] == "http.request":
                state["last_byte"] = time.monotonic()
                state["body_done"] = not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, timed_receive, tracked_send))
        while True:
            remaining = state["last_byte"] + self.request_timeout_s - time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.0))
            if done:
                task.result()  # re-raise what the app raised
                return
            if state["started"]:  # streaming: let it finish
                await task
                return
            if time.monotonic() >= state["last_byte"] + self.request_timeout_s:
                break  # (a body chunk that arrived meanwhile moved the deadline: go round again)
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - the cancelled request's own ending is of no interest now
            pass
        if not state["started"]:
            response = error_response(504, "timeout", f"no answer within {self.request_timeout_s:g} s; retry later")
            await response(scope, receive, send)
