"""What the encrypted-DNS tests share: a throwaway CA whose server certificate covers ``<id>.<server_name>``, a
policy with a client-id exemption, and clients nobody here wrote (dnspython, kdig, curl, openssl s_client)."""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import dns.message
import dns.query

SERVER_NAME = "dns.force.example"


def make_certs(directory: Path, name: str = SERVER_NAME, tag: str = "server", days: int = 2,
               ca: tuple[Path, Path] | None = None) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): the server's covers ``name``, ``*.name`` and 127.0.0.1.
    ``ca`` (certificate, key) signs with an existing CA, for a rotation; ``tag`` names the files."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    directory.mkdir(parents=True, exist_ok=True)
    if ca is None:
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=resolver phones test CA")
        ca = (directory / "ca.pem", directory / "ca.key")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{tag}.key", "-out", f"{tag}.csr", "-subj",
        f"/CN={name}/O={tag}")
    (directory / f"{tag}.cnf").write_text(f"subjectAltName=DNS:{name},DNS:*.{name},IP:127.0.0.1\n")
    run("x509", "-req", "-in", f"{tag}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", f"{tag}.pem", "-days", str(days), "-extfile", f"{tag}.cnf")
    return ca[0], directory / f"{tag}.pem", directory / f"{tag}.key"


def client_context(ca: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def dot_query(port: int, name: str, ca: Path, sni: str = SERVER_NAME, rtype: str = "A",
              timeout: float = 5.0) -> dns.message.Message:
    """One question over DNS over TLS with dnspython, asking for the TLS server name ``sni``."""
    return dns.query.tls(dns.message.make_query(name, rtype), "127.0.0.1", port=port, timeout=timeout,
                         ssl_context=client_context(ca, ["dot"]), server_hostname=sni)


def exemption_config(upstream: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """deploy/example-force.yaml's shape: network groups, and a TikTok exemption for the phone ``comms-01``
    (and the comms network), active now."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    config: dict[str, Any] = {
        "upstreams": [upstream],
        "policy": {
            "groups": {
                "default": {"block": ["social", "messaging"]},
                "comms": {"networks": ["10.20.8.0/24"], "block": ["social", "messaging"]},
                "pilot": {"networks": ["10.20.64.0/20"], "block": ["messaging"], "monitor": ["social"]},
            },
            "exemptions": [{
                "platforms": ["tiktok"], "client_ids": ["comms-01"], "groups": ["comms"],
                "approved_by": "Head of Corporate Communications", "reason": "Official force TikTok account",
                "reference": "SEC-EX-TEST", "starts": (now - dt.timedelta(days=1)).strftime(iso),
                "expires": (now + dt.timedelta(days=30)).strftime(iso)}],
        },
    }
    config.update(extra or {})
    return config


def tool(name: str) -> str | None:
    return shutil.which(name)


def run(*args: str, timeout: float = 20.0, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=timeout, input=data)
