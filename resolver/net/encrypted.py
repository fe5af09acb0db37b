"""The encrypted listeners, put together: bind DoT and DoH, one certificate pair watched for rotation, the
plain TCP listener behind a PROXY v2 sniffer when balancers are trusted, and DDR's advertisement.

The composition root (``app.Server``) calls ``EncryptedListeners.start`` after its own listeners are bound and
``close`` at shutdown; every listener hands its queries to the same ``Pipeline.on_query`` as UDP and TCP do.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from resolver.config.model import Config, Endpoint
from resolver.core.ddr import Ddr
from resolver.core.pipeline import Pipeline
from resolver.net.doh import HTTP2, doh_session
from resolver.net.dot import DotSession
from resolver.net.limits import Gate
from resolver.net.listeners import Forwarder
from resolver.net.proxy import ProxyTcp, StreamListener
from resolver.net.sockets import bind_tcp
from resolver.net.tlsconf import TlsContexts
from resolver.net.tlsconn import Session, TlsConnection, TlsListener


def proxied_tcp(config: Config, listener: StreamListener) -> Callable[[], asyncio.Protocol] | None:
    """A protocol factory for the plain TCP listener that honours PROXY v2 from trusted peers; None when no peer
    is trusted (then the listener takes connections as before)."""
    trusted = config.encrypted.proxy_trusted
    if not trusted:
        return None
    return functools.partial(ProxyTcp, listener, trusted, config.tcp.idle_timeout)


class EncryptedListeners:
    def __init__(self, config: Config, pipeline: Pipeline, forwarder: Forwarder, gate: Gate) -> None:
        self.config = config
        self.pipeline = pipeline
        self.forwarder = forwarder
        e = config.encrypted
        self.contexts = TlsContexts(e.tls) if e.listening else None  # a bad pair is a ConfigError here
        self.gate = gate  # the TCP listener's: one connection table for every stream transport
        self.servers: list[asyncio.Server] = []
        self.bound: list[str] = []

    def _dot(self, conn: TlsConnection, alpn: str | None) -> Session:
        return DotSession(conn, self.pipeline, self.forwarder)

    def _doh(self, conn: TlsConnection, alpn: str | None) -> Session:
        return doh_session(conn, alpn, self.pipeline, self.forwarder)

    async def start(self, shared: bool) -> None:
        """Bind every DoT and DoH address (``shared``: with SO_REUSEPORT, for --workers)."""
        contexts = self.contexts
        if contexts is None:
            return
        e = self.config.encrypted
        loop = asyncio.get_running_loop()
        kinds = (("dot", e.dot, lambda: contexts.dot, self._dot), ("doh", e.doh, lambda: contexts.doh, self._doh))
        ports: dict[str, int] = {}
        for kind, endpoints, context, session in kinds:
            tcp = self.config.tcp
            listener = TlsListener(context, e.tls.server_name, session, self.gate, tcp.idle_timeout,
                                   tcp.max_lifetime, e.proxy_trusted)
            for endpoint in endpoints:
                sock = bind_tcp(endpoint, shared)
                port: int = sock.getsockname()[1]
                ports.setdefault(kind, port)
                self.servers.append(await loop.create_server(listener, sock=sock, backlog=1024))
                self.bound.append(f"{kind} {Endpoint(endpoint.host, port)}"
                                  + (f" (HTTP/2 by {HTTP2})" if kind == "doh" else ""))
        if e.ddr_advertise:  # (the ports as bound)
            self.pipeline.ddr = Ddr(e.tls.server_name, ports.get("dot"), ports.get("doh"))

    def close(self) -> None:
        for server in self.servers:
            server.close()
