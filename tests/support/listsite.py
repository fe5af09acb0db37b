"""A list server on loopback, over plain http or over https with a certificate from a throwaway CA
(``tests.support.tlsproxy.make_ca``). A client trusts that CA through ``SSL_CERT_FILE``, which OpenSSL's default
verify paths read: urllib in the test process and in a resolver child process alike, with nothing patched.

Paths it serves: any path gives ``body``; ``/redirect`` answers 302 to ``redirect_to``.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path
from typing import Any

from tests.support.tlsproxy import make_ca


class _Handler(http.server.BaseHTTPRequestHandler):
    site: ListSite

    def do_GET(self) -> None:
        site = self.site
        site.requests.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", site.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(site.body)))
        self.end_headers()
        self.wfile.write(site.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ListSite:
    """``with ListSite(body, tls_dir=d) as site: site.url("/list.txt")``; ``site.ca`` is the CA to trust."""

    def __init__(self, body: bytes, tls_dir: Path | None = None) -> None:
        self.body = body
        self.redirect_to = ""
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"site": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.ca: Path | None = None
        self.scheme = "http"
        if tls_dir is not None:
            self.ca, cert, key = make_ca(tls_dir, "lists.test")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/list.txt") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ListSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
