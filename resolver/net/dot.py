"""DNS over TLS (RFC 7858): inside the TLS connection, DNS messages framed as over TCP (RFC 7766), many per
connection, pipelined and answered in whatever order their answers are ready.

A session moves bytes: each whole message goes to ``Pipeline.on_query`` with the connection's client and client
id (from the TLS server name) and the answer, now or when the upstream replies, goes back framed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resolver.core.pipeline import Pipeline
from resolver.core.stats import DOT
from resolver.net.framing import frame
from resolver.net.listeners import Forwarder, settle

if TYPE_CHECKING:
    from resolver.net.tlsconn import TlsConnection


class DotSession:
    def __init__(self, conn: TlsConnection, pipeline: Pipeline, forwarder: Forwarder) -> None:
        self.conn = conn
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.buffer = b""
        self.pending = 0
        self.gone = False

    def received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            size = buffer[pos] << 8 | buffer[pos + 1]
            if end - pos - 2 < size:
                break
            self.conn.touch()
            self._query(buffer[pos + 2:pos + 2 + size])
            pos += 2 + size
        self.buffer = buffer[pos:]

    def _query(self, data: bytes) -> None:
        conn = self.conn
        result = self.pipeline.on_query(data, DOT, conn.client, conn.client_id)
        if result is None:
            return
        answer = settle(result, self.pipeline, self.forwarder, self.pending)
        if type(answer) is bytes:
            conn.send(frame(answer))
        else:
            self.pending += 1
            self.forwarder.forward(answer, self._respond)  # type: ignore[arg-type]

    def _respond(self, reply: bytes) -> None:
        self.pending -= 1
        if not self.gone:
            self.conn.send(frame(reply))

    def busy(self) -> bool:
        return self.pending > 0

    def closed(self) -> None:
        self.gone = True
