"""One gRPC channel to one server or to several replicas of it, balanced by gRPC itself.

`--server` takes HOST[:PORT], a comma-separated list of them (replicas), or a gRPC target
such as dns:///search.internal:50051 (a name with one record per replica, as a headless
Kubernetes Service gives). Calls are spread with gRPC's `round_robin` policy over the
replicas that answer their health check as SERVING (a replica shutting down says
NOT_SERVING first), and the idempotent unary calls are retried on UNAVAILABLE by the
channel's retry policy, on another replica where there is one.
"""
from __future__ import annotations

import ipaddress
import json
import socket

DEFAULT_PORT = 50051
SERVICE = "trademark.v1.TrademarkSearch"
# Unary and read-only: safe to send again. Not Reload (an admin call, said once) and not
# SearchStream (a stream cannot be replayed by the channel: `client batch` resends what
# a broken stream left unanswered itself).
RETRIED_METHODS = ("Search", "GetIndexInfo", "GetThumbnails")
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    # Health-checked balancing: the standard grpc.health.v1 service, which the server
    # answers without a token.
    "healthCheckConfig": {"serviceName": SERVICE},
    "methodConfig": [{
        "name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}


class AddressError(ValueError):
    """A --server value that names no server."""


def _host_port(text: str) -> tuple[str, int]:
    """"host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if not text:
        raise AddressError("an empty address in --server")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") > 1:
        host, port = text, ""  # a bare IPv6 address
    else:
        host, _, port = text.partition(":")
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise AddressError(f"{text!r}: the port must be a number") from None
    if not 0 < number < 65536:
        raise AddressError(f"{text!r}: the port must be 1-65535")
    return host, number


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def target(server: str) -> str:
    """A gRPC target from --server: HOST alone means HOST:50051 (not gRPC's 443); several
    addresses become one target of all of them (ipv4:A:P,B:P), host names resolved now."""
    if "://" in server or server.startswith(("ipv4:", "ipv6:", "unix:")):
        return server  # dns:///name:port, unix:///path, ...: gRPC's own syntax
    addresses = [_host_port(a) for a in server.split(",")]
    if len(addresses) == 1:
        return _join(*addresses[0])
    resolved = [(_resolve(host), port) for host, port in addresses]
    families = {type(ipaddress.ip_address(ip)) for ip, _ in resolved}
    if len(families) > 1:
        raise AddressError(f"--server {server}: IPv4 and IPv6 addresses cannot be balanced in "
                           "one list; give addresses of one family, or a dns:/// name")
    scheme = "ipv6" if families == {ipaddress.IPv6Address} else "ipv4"
    return f"{scheme}:" + ",".join(_join(ip, port) for ip, port in resolved)


def _resolve(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as e:
        raise AddressError(f"cannot resolve {host!r}: {e}") from None


def authority(server: str) -> str | None:
    """What the channel says it connects to (and, over TLS, the name the certificates are
    checked against) when `target` resolved a list: its first host as written."""
    if "://" in server or "," not in server:
        return None
    return _join(*_host_port(server.split(",")[0]))


def options(server: str) -> list[tuple[str, object]]:
    """Channel options for balancing and retries over the replicas in `server`."""
    opts: list[tuple[str, object]] = [("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                                      ("grpc.enable_retries", 1)]
    name = authority(server)
    if name is not None:
        opts.append(("grpc.default_authority", name))
    return opts
