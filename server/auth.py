"""Bearer-token access control for every RPC except the health checks.

The token comes from a file or an environment variable, never from the command
line (argv is visible to every user of the machine in `ps`). Callers send it as
`authorization: Bearer <token>` metadata; anything else gets UNAUTHENTICATED.
"""
from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

TOKEN_ENV = "TRADEMARK_TOKEN"
ADMIN_TOKEN_ENV = "TRADEMARK_ADMIN_TOKEN"
# Load balancers and orchestrators probe health without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_METHODS = ("/trademark.v1.TrademarkSearch/Reload",)


class TokenError(ValueError):
    """The configured token cannot be used."""


def read_token(token_file: Path | None, env: str = TOKEN_ENV) -> str | None:
    """The token from `token_file` if given, else from the environment, else None."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise TokenError(f"cannot read token file {token_file}: {e}") from e
        if not token:
            raise TokenError(f"token file {token_file} is empty")
        return token
    return os.environ.get(env, "").strip() or None


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
          message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that refuses the call."""
    def abort(_request, context):
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Search RPCs need `token` (when set); admin RPCs need `admin_token`, and are refused
    outright when no admin token is configured."""

    def __init__(self, token: str | None, admin_token: str | None = None):
        self._expected = f"Bearer {token}".encode() if token else None
        self._admin = f"Bearer {admin_token}".encode() if admin_token else None

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        sent = str(dict(handler_call_details.invocation_metadata or ()).get(
            "authorization", "")).encode()
        if method in ADMIN_METHODS:
            if self._admin is None:
                return _deny(handler, grpc.StatusCode.PERMISSION_DENIED,
                             "admin RPCs are off: start the server with --admin-token-file")
            expected = self._admin
        elif self._expected is None:
            return handler
        else:
            expected = self._expected
        if hmac.compare_digest(sent, expected):
            return handler
        log.info("refused %s: bad or missing token", method)
        return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                     "missing or wrong token: send metadata 'authorization: Bearer <token>'")
