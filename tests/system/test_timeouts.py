"""Request timeouts: a stalled upload gets 408, a request not answered in time gets 504, both as JSON."""

import asyncio
import json
import socket
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from api import errors
from api.middleware.timeouts import TimeoutMiddleware
from tests.conftest import start_serve


def test_stalled_upload_gets_408_from_the_real_server(tmp_path):
    base, proc = start_serve(
        {
            "SEESKU_DATA_DIR": str(tmp_path),
            "SEESKU_LOAD_SAMPLES": "false",
            "SEESKU_BODY_IDLE_TIMEOUT_S": "1",
            "SEESKU_ONNX_THREADS": "2",
        }
    )
    port = int(base.rsplit(":", 1)[1])
    try:
        # Announce 100 KB, send 1 KB, then stall: the server answers instead of waiting for ever.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"\xff\xd8" + b"\0" * 1000
            )
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            waited = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:300]
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert 0.9 <= waited < 8
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200  # still serving
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def small_app(request_timeout_s: float) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.add_middleware(TimeoutMiddleware, body_idle_timeout_s=5, request_timeout_s=request_timeout_s)

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(3)
        return {"done": True}

    @app.get("/fast")
    async def fast():
        return {"done": True}

    @app.get("/stream")
    async def stream():
        async def chunks():
            for i in range(5):  # 0.5 s in all, longer than the timeout, but started at once
                yield f"{i}\n".encode()
                await asyncio.sleep(0.1)

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


def test_request_not_answered_in_time_gets_504():
    with TestClient(small_app(request_timeout_s=0.3)) as client:
        started = time.monotonic()
        resp = client.get("/slow")
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
        assert time.monotonic() - started < 2.5
        assert client.get("/fast").json() == {"done": True}
        streamed = client.get("/stream")  # a response that has started is left to finish
        assert streamed.status_code == 200 and streamed.text == "0\n1\n2\n3\n4\n"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_timeouts_must_be_positive(value, tmp_path):
    from pydantic import ValidationError

    from api.settings import Settings

    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, request_timeout_s=value)
