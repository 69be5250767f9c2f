"""Who may talk to `shadow-edge serve`, and for how long: the server's access control.

    exposure(host, api_key, allow_no_auth)   refuse a network bind without a key; the warning to print
    HostCheck       the Host header must name the server (loopback binds: DNS rebinding), else 421
    BearerAuth      `Authorization: Bearer KEY` (OpenAI's scheme), compared in constant time, else 401
    CORS            off unless an origin is given (Starlette's CORSMiddleware for that origin only)
    head_timeout_protocol()   uvicorn's h11 protocol closing connections that send no request head

A browser page can reach a loopback server: a DNS name it controls that resolves to 127.0.0.1
(rebinding) sends requests with that name in Host, hence the Host allow-list; a cross-site
"simple" POST (text/plain, no preflight) is refused by the server's Content-Type check; reading
answers from another origin needs CORS, which is off by default.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Collection, Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ServeError

API_KEY_VARIABLE = "SHADOW_EDGE_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# no request head this long after a connection opens or its last answer: closed (a client
# holding connections open without asking anything would otherwise keep them forever)
HEAD_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5.0  # idle between requests on one connection
REQUEST_TIMEOUT = 30.0  # to send a whole body, once the head arrived
MAX_CONNECTIONS = 64  # beyond this uvicorn answers 503


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind, self.headers = status, param, code, kind, headers

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)


def is_loopback(host: str) -> bool:
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def exposure(host: str, api_key: str | None, allow_no_auth: bool) -> str:
    """The warning to print for a bind address ("" on loopback); a network bind without a key is
    refused unless allow_no_auth says so."""
    if api_key is not None and not api_key.strip():
        raise ServeError("the API key is empty", hint=f"pass --api-key KEY (or set {API_KEY_VARIABLE})")
    if is_loopback(host):
        return ""
    if api_key is None and not allow_no_auth:
        raise ServeError(
            f"--host {host} exposes the server to the network without an API key",
            hint=f"pass --api-key KEY (or set {API_KEY_VARIABLE}), or --allow-no-auth to serve anyone who can reach it",
        )
    if api_key is None:
        return f"serving on {host} without an API key: anyone who can reach this address can use the model"
    return f"serving on {host} over plain HTTP: the API key travels unencrypted (put a TLS proxy in front)"


def default_hosts(host: str) -> tuple[str, ...] | None:
    """The Host names a loopback bind answers to; None (any) elsewhere, where the key protects it."""
    return LOOPBACK_NAMES if is_loopback(host) else None


def host_name(header: str) -> str:
    """The name in a Host header: 'a.b:8000' -> 'a.b', '[::1]:8000' -> '::1'."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if ":" in header else header


class HostCheck:
    """Answers 421 to a request whose Host header is not an allowed name (any port)."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = {name.lower().strip("[]") for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("host", "")
            if host_name(given).lower() not in self.allowed:
                error = ApiError(
                    421, f"this server does not answer to the host {given[:100]!r}", code="host_not_allowed"
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BearerAuth:
    """Every request must carry `Authorization: Bearer KEY`; CORS preflights (which never carry
    credentials) are left to the CORS layer in front of this one."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                error = ApiError(
                    401, "no API key given: send the header Authorization: Bearer KEY", code="missing_api_key"
                )
            elif not hmac.compare_digest(given.strip().encode(), self.key):  # constant time
                error = ApiError(401, "the API key is not valid", code="invalid_api_key")
            else:
                error = None
            if error is not None:
                error.headers = {"WWW-Authenticate": "Bearer"}
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def middleware(
    api_key: str | None, allowed_hosts: Iterable[str] | None, cors_origins: Iterable[str] = ()
) -> list[Middleware]:
    """The guard layers, outermost first: Host, then CORS (preflights answered for the given
    origins only), then the key."""
    layers = [Middleware(HostCheck, allowed=tuple(allowed_hosts))] if allowed_hosts is not None else []
    origins = list(cors_origins)
    if origins:
        allow = dict(allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"], max_age=600)
        layers.append(Middleware(CORSMiddleware, allow_origins=origins, **allow))
    if api_key is not None:
        layers.append(Middleware(BearerAuth, api_key=api_key))
    return layers


def head_timeout_protocol(timeout: float = HEAD_TIMEOUT) -> type[H11Protocol]:
    """uvicorn's h11 protocol that closes a connection sending no complete request head within
    `timeout` seconds of opening or of its last answer (uvicorn's own keep-alive timer starts only
    after a first answer, and any byte received cancels it, so a silent or trickling client would
    hold its connection forever)."""

    class HeadTimeoutProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def _watch(self) -> None:
            self.loop.call_later(timeout, self._close_if_no_request, self.cycle)

        def _close_if_no_request(self, cycle: Any) -> None:
            # the same cycle as when the timer was armed: no new request head has arrived since
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol
