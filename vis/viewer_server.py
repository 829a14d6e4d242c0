"""The viewer's server, without torch: view.py starts it before the experiment loads, so the page
is up (saying it is loading) within a couple of seconds, and vis/viewer.py fills it in."""

from __future__ import annotations

import socket

import viser

from utils.errors import ConfigError


def check_port_free(host: str, port: int) -> None:
    """One sentence when (host, port) cannot be bound (viser would silently take the next)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({err.strerror}); choose another with --port."
            ) from None


def start_server(host: str = "127.0.0.1", port: int = 8080) -> viser.ViserServer:
    """A viser server on exactly (host, port) (0: any free port), or one sentence why not."""
    check_port_free(host, port)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    if port and server.get_port() != port:
        server.stop()
        raise ConfigError(f"port {port} on {host} is taken; choose another with --port.")
    return server


def page_url(host: str, port: int) -> str:
    host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    return f"http://{host}:{port}"
