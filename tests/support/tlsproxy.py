"""A DNS-over-TLS front for the test upstream: terminates TLS on loopback and relays each framed query to an
AuthServer over TCP. Certificates come from a throwaway CA made with the openssl command line."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

from tests.support.authserver import recv_exact


def make_ca(directory: Path, name: str = "dns.test") -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for ``name`` and 127.0.0.1."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=resolver test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={name}")
    (directory / "san.cnf").write_text(f"subjectAltName=DNS:{name},IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


class TlsProxy:
    def __init__(self, cert: Path, key: Path, backend: tuple[str, int], idle: float = 5.0) -> None:
        self.backend = backend
        self.idle = idle  # a connection quiet this long is closed, as real DoT servers do
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.handshakes = 0
        self.idle_closed = 0  # connections this proxy closed because the client went quiet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        raw.settimeout(self.idle)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self.handshakes += 1
                while True:
                    try:
                        head = recv_exact(conn, 2)
                    except TimeoutError:
                        break  # idle: counted once the socket is closed, so a test can wait for the close
                    if head is None:
                        return
                    query = recv_exact(conn, int.from_bytes(head, "big"))
                    if query is None:
                        return
                    with socket.create_connection(self.backend, timeout=5) as back:
                        back.sendall(head + query)
                        size = recv_exact(back, 2)
                        reply = recv_exact(back, int.from_bytes(size, "big")) if size else None
                    if reply is None:
                        return
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
            self.idle_closed += 1
        except (OSError, ssl.SSLError):
            return
