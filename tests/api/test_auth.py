"""API keys, scopes, rate limits, security headers and CORS on a server that requires keys."""

import sqlite3

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.auth import KeyStore, is_loopback
from api.cli import app as cli
from tests.conftest import make_settings
from tests.images import SAMPLE_PHOTO


@pytest.fixture
def secured(tmp_path):
    settings = make_settings(
        tmp_path,
        load_samples=False,
        require_keys=True,
        rate_limit_per_s=2,
        rate_limit_burst=5,
        cors_origins=["https://shop.example"],
    )
    store = KeyStore(settings.database())
    keys = {
        name: store.create(name, scopes)[1]
        for name, scopes in [("kiosk", ["search"]), ("merch", ["catalog:write"]), ("ops", ["admin"])]
    }
    store.close()
    with TestClient(create_app(settings)) as client:
        yield client, keys


def auth(token):
    return {"Authorization": f"Bearer {token}"}


PRODUCT = {"product_id": "p1", "name": "P", "fine_category": "F", "coarse_category": "C"}


def test_keys_and_scopes(secured):
    client, keys = secured
    assert client.get("/v1/products").status_code == 401
    assert client.get("/v1/products").json()["error"]["code"] == "missing_api_key"
    assert client.get("/v1/products", headers=auth("sk_nope_nope")).json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/products", headers=auth(keys["kiosk"])).status_code == 200
    assert client.get("/v1/products", headers={"X-API-Key": keys["kiosk"]}).status_code == 200
    resp = client.post("/v1/products", json=PRODUCT, headers=auth(keys["kiosk"]))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "insufficient_scope"
    assert client.post("/v1/products", json=PRODUCT, headers=auth(keys["merch"])).status_code == 201
    assert (
        client.post(
            "/v1/search",
            content=SAMPLE_PHOTO.read_bytes(),
            headers={**auth(keys["merch"]), "Content-Type": "image/jpeg"},
        ).status_code
        == 403
    )
    for path in ("/v1/tagging/jobs/j/review", "/v1/tagging/jobs/j/decisions", "/v1/tagging/jobs/j/apply"):
        call = client.get if path.endswith("review") else client.post
        assert call(path, headers=auth(keys["kiosk"])).status_code == 403, path  # reviews change the catalogue
    assert client.get("/metrics", headers=auth(keys["kiosk"])).status_code == 403
    assert client.get("/metrics", headers=auth(keys["ops"])).status_code == 200  # admin holds every scope
    assert client.get("/healthz").status_code == 200  # liveness stays open


def test_revoked_key_is_refused_at_once(secured, tmp_path):
    client, keys = secured
    key_id = keys["kiosk"].split("_")[1]
    assert client.get("/v1/categories", headers=auth(keys["kiosk"])).status_code == 200
    store = KeyStore(make_settings(tmp_path).database())  # another process's view of the same database
    assert store.revoke(key_id)
    store.close()
    assert client.get("/v1/categories", headers=auth(keys["kiosk"])).status_code == 401


def test_keys_are_hashed_at_rest(secured, tmp_path):
    _, keys = secured
    dump = "\n".join(str(r) for r in sqlite3.connect(tmp_path / "catalog.sqlite3").execute("SELECT * FROM api_keys"))
    for token in keys.values():
        assert token.split("_", 2)[2] not in dump


def test_rate_limit_answers_429_with_retry_after(secured):
    client, keys = secured
    codes = [client.get("/v1/categories", headers=auth(keys["kiosk"])).status_code for _ in range(12)]
    assert codes[:5] == [200] * 5 and 429 in codes
    limited = client.get("/v1/categories", headers=auth(keys["kiosk"]))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert client.get("/v1/categories", headers=auth(keys["ops"])).status_code == 200  # buckets are per key


def test_security_headers_and_cors(secured):
    client, keys = secured
    page = client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    api = client.get("/v1/categories", headers={**auth(keys["kiosk"]), "Origin": "https://shop.example"})
    assert api.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.get("/v1/categories", headers={**auth(keys["ops"]), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_loopback_demo_needs_no_key(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with TestClient(create_app(make_settings(tmp_path, load_samples=False, host="127.0.0.1"))) as client:
        assert client.get("/v1/products").status_code == 200
    with TestClient(create_app(make_settings(tmp_path / "open", load_samples=False, host="0.0.0.0"))) as client:
        assert client.get("/v1/products").status_code == 401


def test_keys_cli(tmp_path):
    env = {"SEESKU_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--name", "web shop", "--scope", "search"], env=env)
    assert created.exit_code == 0 and created.stdout.strip().startswith("sk_")
    listed = runner.invoke(cli, ["keys", "list"], env=env)
    key_id = created.stdout.strip().split("_")[1]
    assert key_id in listed.stdout and "active" in listed.stdout and created.stdout.strip() not in listed.stdout
    assert runner.invoke(cli, ["keys", "revoke", key_id], env=env).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["keys", "list"], env=env).stdout
    assert runner.invoke(cli, ["keys", "create", "--name", "x", "--scope", "root"], env=env).exit_code == 2


def test_access_log_is_json_with_request_id_and_no_secret(secured, caplog):
    import json
    import logging

    from api.middleware.logs import JsonFormatter

    client, keys = secured
    with caplog.at_level(logging.INFO, logger="seesku.access"):
        resp = client.get(
            f"/v1/categories?api_key={keys['kiosk']}", headers={**auth(keys["kiosk"]), "X-Request-ID": "req-123"}
        )
        other = client.get("/healthz")
    assert resp.headers["x-request-id"] == "req-123" and len(other.headers["x-request-id"]) == 32
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "seesku.access"]
    entries = [json.loads(line) for line in lines]
    first = next(e for e in entries if e["request_id"] == "req-123")
    assert (
        first["path"] == "/v1/categories" and first["status"] == 200 and first["key_id"] == keys["kiosk"].split("_")[1]
    )
    secret = keys["kiosk"].split("_", 2)[2]
    assert all(secret not in line for line in lines)


def test_redaction_of_keys_in_any_log_message():
    import logging

    from api.middleware.logs import JsonFormatter

    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "bad key %s", ("sk_abc123_SuperSecret-Value_9",), None
    )
    line = JsonFormatter().format(record)
    assert "SuperSecret" not in line and "sk_abc123_***" in line


def test_serve_host_flag_turns_keys_on(tmp_path):
    """`seesku serve --host 0.0.0.0` must require keys even when SEESKU_HOST says loopback."""
    import subprocess

    import httpx

    from tests.conftest import start_serve

    base, proc = start_serve(
        {"SEESKU_DATA_DIR": str(tmp_path), "SEESKU_LOAD_SAMPLES": "false", "SEESKU_HOST": "127.0.0.1"},
        "--host",
        "0.0.0.0",
        stdout=subprocess.PIPE,
    )
    try:
        assert httpx.get(f"{base}/v1/products").status_code == 401
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    first = next(line for line in output.splitlines() if line.startswith("{"))
    assert json_line(first)["level"] in ("info", "warning")


def json_line(line: str) -> dict:
    import json

    return json.loads(line)
