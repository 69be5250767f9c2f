"""`serve` against hostile clients (issue 11, findings 4 and 7): deep JSON, no or a wrong API key,
a rebound Host name, cross-site "simple" POSTs, exposed binds, CORS, and connections held open
without asking anything. All against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_serve import running
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.cli import app
from shadow_edge.errors import RemoteError, ServeError
from shadow_edge.runtimes.server import make_server
from shadow_edge.runtimes.server_guard import exposure, host_name

KEY = "sk-test-0123456789"
BODY = {"prompt": [1, 2], "max_tokens": 2}


@pytest.fixture(scope="module")
def model(tiny_exports) -> Any:
    return shadow_edge.load(tiny_exports["llama"].bundle, mode="detached")


def call(url: str, method: str = "POST", path: str = "/v1/completions", body: bytes | None = None, **headers: str):
    """(status, parsed JSON or None, headers) with exactly the headers given (underscores: dashes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    names = {k.replace("_", "-"): v for k, v in headers.items()}
    conn.putrequest(method, path, skip_host="Host" in names, skip_accept_encoding=True)
    for name, value in names.items():
        conn.putheader(name, value)
    data = json.dumps(BODY).encode() if body is None and method == "POST" else body
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, (json.loads(raw) if raw.startswith(b"{") else None), dict(response.getheaders())


JSON = {"Content_Type": "application/json"}


def assert_openai_error(payload: Any, code: str | None = None) -> None:
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert code is None or payload["error"]["code"] == code


# -- finding 4: deep JSON -------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_without_a_traceback(model, capsys):
    with running(model) as url:  # uvicorn's log goes to the stderr captured here
        for depth in (17, 5000, 200_000):
            deep = b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
            status, payload, _ = call(url, body=deep, **JSON)
            assert status == 400 and f"nests {depth + 1} levels deep" in payload["error"]["message"]
        status, _, _ = call(url, body=b'{"prompt": [1, 2], "max_tokens": 1' + b"0" * 5000 + b"}", **JSON)
        assert status == 400
        assert call(url, **JSON)[0] == 200  # a normal request still works
    log = capsys.readouterr().err
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


# -- finding 7: access control --------------------------------------------------------------------------


def test_an_api_key_is_required_as_a_bearer_token(model):
    with running(model, api_key=KEY) as url:
        status, payload, headers = call(url, **JSON)
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert_openai_error(payload, "missing_api_key")
        for wrong in (KEY[:-1], KEY + "x", "", "Basic " + KEY):
            status, payload, _ = call(
                url, Authorization=f"Bearer {wrong}" if not wrong.startswith("Basic") else wrong, **JSON
            )
            assert status == 401 and payload["error"]["code"] in ("invalid_api_key", "missing_api_key"), wrong
        assert call(url, "GET", "/health", Authorization=f"Bearer {KEY}")[0] == 200
        status, payload, _ = call(url, Authorization=f"Bearer {KEY}", **JSON)
        assert status == 200 and len(payload["choices"][0]["token_ids"]) == 2
        assert call(url, "GET", "/v1/models")[0] == 401


def test_a_cascade_escalates_to_a_protected_remote_with_its_key(tiny_text_export):
    attached = shadow_edge.load(tiny_text_export.bundle)
    want = attached.generate("the cat", max_new_tokens=4, temperature=0).token_ids
    with running(attached, api_key=KEY) as url:
        for key, ok in ((KEY, True), (None, False), ("wrong", False)):
            cascade = shadow_edge.load_cascade(
                tiny_text_export.bundle, remote=url, remote_api_key=key, confidence_threshold=1.5
            )
            if ok:
                assert cascade.generate("the cat", max_new_tokens=4, temperature=0).token_ids == want
            else:
                with pytest.raises(RemoteError, match="answered 401"):
                    cascade.generate("the cat", max_new_tokens=4, temperature=0)


def test_the_api_key_comes_from_the_environment_for_the_command(tmp_path, monkeypatch):
    command = ["serve", str(tmp_path / "nope"), "--host", "0.0.0.0"]
    monkeypatch.setenv("SHADOW_EDGE_API_KEY", KEY)  # accepted: the command goes on to the (missing) bundle
    assert "bundle folder not found" in CliRunner().invoke(app, command).stderr
    assert "the API key is empty" in CliRunner().invoke(app, [*command, "--api-key", " "]).stderr


def test_a_loopback_server_answers_only_to_loopback_host_names(model):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends its own Host."""
    with running(model) as url:
        port = urlsplit(url).port
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
            status, payload, _ = call(url, "GET", "/health", Host=host)
            assert status == 421 and "does not answer to the host" in payload["error"]["message"], host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert call(url, "GET", "/health", Host=host)[0] == 200, host
    with running(model, allowed_hosts=["robot.local"]) as url:
        assert call(url, "GET", "/health", Host="robot.local:80")[0] == 200
        assert call(url, "GET", "/health", Host="localhost")[0] == 421


def test_posts_must_be_json(model):
    """A cross-site form or text/plain POST needs no preflight: the server refuses its type."""
    with running(model) as url:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, payload, _ = call(url, Content_Type=kind)
            assert status == 415 and "must be application/json" in payload["error"]["message"], kind
        assert call(url)[0] == 415  # no Content-Type at all
        assert call(url, Content_Type="application/json; charset=utf-8")[0] == 200


def test_a_network_bind_without_a_key_is_refused_unless_allowed_with_a_warning(model, capsys):
    assert exposure("127.0.0.1", None, False) == "" and exposure("::1", None, False) == ""
    for host in ("0.0.0.0", "::", "192.168.1.20", "robot.local"):
        with pytest.raises(ServeError, match="exposes the server to the network without an API key"):
            make_server(model, host=host, port=0)
    make_server(model, host="0.0.0.0", port=0, allow_no_auth=True)  # warned in uvicorn's log, on stderr
    make_server(model, host="0.0.0.0", port=0, api_key=KEY)
    warned = capsys.readouterr().err
    assert "without an API key: anyone who can reach" in warned and "over plain HTTP" in warned
    result = CliRunner().invoke(app, ["serve", "/nonexistent", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "--allow-no-auth" in result.stderr


def test_cors_is_off_by_default_and_answers_preflights_of_the_given_origin_only(model):
    preflight = {"Origin": "http://app.example", "Access_Control_Request_Method": "POST"}
    preflight["Access_Control_Request_Headers"] = "authorization, content-type"
    with running(model) as url:
        status, _, headers = call(url, "OPTIONS", **preflight)
        assert status == 405 and "access-control-allow-origin" not in headers
        status, _, headers = call(url, Origin="http://app.example", **JSON)
        assert status == 200 and "access-control-allow-origin" not in headers
    with running(model, cors_origins=["http://app.example"]) as url:
        status, _, headers = call(url, "OPTIONS", **preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
        status, _, headers = call(url, "OPTIONS", **(preflight | {"Origin": "http://evil.example"}))
        assert status == 400 and "access-control-allow-origin" not in headers
        status, _, headers = call(url, Origin="http://app.example", **JSON)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closes the connection before the deadline (after any answer it sends)."""
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_half_open_connections_are_closed(model):
    """200 clients that connect and send nothing, or half a request head, or half a body."""
    with running(model, head_timeout=1.0, request_timeout=1.0, max_connections=400) as url:
        port = urlsplit(url).port
        socks = []
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 3 == 1:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            elif i % 3 == 2:
                head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                sock.sendall(head + b"Content-Length: 100\r\n\r\n{")
            socks.append(sock)
        deadline = time.monotonic() + 8
        still_open = [s for s in socks if not closed_by_server(s, deadline)]
        for sock in socks:
            sock.close()
        assert not still_open, f"{len(still_open)} of 200 half-open connections are still open"
        assert call(url, **JSON)[0] == 200


def test_connections_beyond_the_cap_get_a_503(model):
    with running(model, max_connections=3, head_timeout=30.0) as url:
        port = urlsplit(url).port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.2)
            assert call(url, **JSON)[0] == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        assert call(url, **JSON)[0] == 200


def test_host_names_are_read_from_host_headers():
    assert [host_name(h) for h in ("a.b:80", "a.b", "[::1]:8000", "[::1]", "")] == ["a.b", "a.b", "::1", "::1", ""]
