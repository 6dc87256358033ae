"""TLS and mutual TLS credentials from PEM files, for the server and the client."""
from __future__ import annotations

from pathlib import Path

import grpc


class TLSError(ValueError):
    """A certificate or key file that cannot be used."""


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSError(f"cannot read {what} {path}: {e}") from e


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None
                       ) -> grpc.ServerCredentials:
    """TLS with `cert`/`key`; with `client_ca`, callers must present a cert it signed (mTLS)."""
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    ca = _read(client_ca, "client CA")
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


def channel_credentials(ca: Path | None = None, cert: Path | None = None,
                        key: Path | None = None) -> grpc.ChannelCredentials:
    """Trust `ca` (default: the system roots); present `cert`/`key` for mutual TLS."""
    if (cert is None) != (key is None):
        raise TLSError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(_read(ca, "CA"), _read(key, "TLS key"),
                                        _read(cert, "TLS certificate"))
