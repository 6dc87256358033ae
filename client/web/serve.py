"""Run the web app under uvicorn, saying where once it listens."""
from __future__ import annotations

import sys

import uvicorn

from client.api import SearchClient
from client.web.app import create_app


class _Server(uvicorn.Server):
    """uvicorn's server, printing `web on http://HOST:PORT` once bound (the port may be 0)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.url: str | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:  # the port was taken: uvicorn said why
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        print(f"web on {self.url}", flush=True)


def make_server(client: SearchClient, host: str, port: int) -> _Server:
    config = uvicorn.Config(create_app(client), host=host, port=port, log_level="warning",
                            access_log=False)
    return _Server(config)


def serve(client: SearchClient, host: str = "127.0.0.1", port: int = 8080) -> int:
    """Serve until interrupted; 2 when the address cannot be bound (as `python -m server`),
    uvicorn's own line above ours saying why."""
    server = make_server(client, host, port)
    try:
        server.run()
    except SystemExit:  # uvicorn exits (status 3) when it cannot bind
        if server.url is not None:
            raise
    if server.url is None:
        print(f"error: cannot listen on {host}:{port} (is another program on that port? "
              "--port PORT, or 0 for a free one)", file=sys.stderr)
        return 2
    return 0
