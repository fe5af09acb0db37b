"""DNS over HTTPS (RFC 8484) through clients nobody here wrote: dnspython's dns.query.https over HTTP/2, kdig
+https, curl --doh-url, and plain curl for the HTTP codes. ``/dns-query/comms-01`` is the phone ``comms-01``: its
TikTok exemption applies there and not on ``/dns-query``.

curl --doh-url connects to the address it resolved, so it is only ever given names that resolve to loopback.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.net.doh import NGHTTP2
from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, exemption_config, make_certs, run, tool
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, free_port
from tests.support.zone import TIKTOK_V4, WWW, WWW_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")
needs_curl = pytest.mark.skipif(tool("curl") is None, reason="curl is not installed")
LOOP = "loop.example.test"  # resolves to 127.0.0.1: what curl --doh-url may connect to


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


# HTTP/2 is nghttp2's where the extension is built (as CI builds it) and the pure-Python h2 elsewhere: every test
# here runs against both. The server's log line says which one it speaks.
@pytest.fixture(scope="module", params=["nghttp2", "h2"])
def server(request: pytest.FixtureRequest, module_resolver_factory: ResolverFactory, module_auth: AuthServer,
           certs: tuple[Path, Path, Path]) -> tuple[ResolverProcess, int]:
    module_auth.add(LOOP, "A", "127.0.0.1")
    module_auth.add("short.example.test", "CNAME", f"{WWW}.", ttl=30)
    port = free_port(udp=False)
    config = exemption_config(module_auth.address, {
        "doh": [f"127.0.0.1:{port}"], "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}})
    if request.param == "nghttp2" and not NGHTTP2:
        pytest.skip("built without libnghttp2's headers: DoH's HTTP/2 is h2's only")
    proc = module_resolver_factory.shared(config, metrics=True, env={"RESOLVER_HTTP2": request.param})
    assert proc.wait_stderr(f"doh 127.0.0.1:{port} (HTTP/2 by {request.param} ")
    return proc, port


def url(port: int, path: str = "/dns-query") -> str:
    return f"https://{SERVER_NAME}:{port}{path}"


def https(port: int, name: str, ca: Path, path: str = "/dns-query", post: bool = True) -> dns.message.Message:
    return dns.query.https(dns.message.make_query(name, "A"), url(port, path), timeout=10, post=post,
                           bootstrap_address="127.0.0.1", verify=client_context(ca),
                           http_version=dns.query.HTTPVersion.H2)


def curl(port: int, ca: Path, *args: str, data: bytes | None = None) -> str:
    done = run("curl", "-sS", "--cacert", str(ca), "--resolve", f"{SERVER_NAME}:{port}:127.0.0.1", *args, data=data)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode(errors="replace")


def b64(message: bytes) -> str:
    return base64.urlsafe_b64encode(message).decode().rstrip("=")


def test_dnspython_over_http2_the_path_client_id_lifts_the_exemption(server: tuple[ResolverProcess, int],
                                                                      certs: tuple[Path, Path, Path]) -> None:
    proc, port = server
    for post in (True, False):  # POST application/dns-message, GET ?dns=
        assert addresses(https(port, "www.tiktok.com", certs[0], "/dns-query/comms-01", post), "A") == [TIKTOK_V4]
        assert addresses(https(port, "www.tiktok.com", certs[0], "/dns-query", post), "A") == ["0.0.0.0"]
        assert addresses(https(port, "www.tiktok.com", certs[0], "/dns-query/comms-02", post), "A") == ["0.0.0.0"]
    assert addresses(https(port, WWW, certs[0]), "A") == [WWW_V4]
    assert addresses(proc.query("www.tiktok.com"), "A") == ["0.0.0.0"]
    assert 'resolver_queries_total{outcome="forwarded",qtype="A",transport="doh"}' in proc.metrics_text()


def test_concurrent_streams_on_one_http2_connection(server: tuple[ResolverProcess, int],
                                                    certs: tuple[Path, Path, Path]) -> None:
    """dnspython's asynchronous client over one shared HTTP/2 connection: the questions are in flight together."""
    import dns.asyncquery
    import httpx2

    _, port = server

    async def ask() -> list[dns.message.Message]:
        async with httpx2.AsyncClient(http2=True, verify=client_context(certs[0])) as session:
            async def one(name: str) -> dns.message.Message:
                # (by address: a client of our own resolves no name, and the certificate covers 127.0.0.1)
                return await dns.asyncquery.https(dns.message.make_query(name, "A"),
                                                  f"https://127.0.0.1:{port}/dns-query", timeout=10, client=session)
            return list(await asyncio.gather(*(one(n) for n in ("www.tiktok.com", WWW, "short.example.test") * 10)))

    answers = asyncio.run(ask())
    assert [addresses(a, "A") for a in answers[:3]] == [["0.0.0.0"], [WWW_V4], [WWW_V4]]
    assert all(a.rcode() == dns.rcode.NOERROR for a in answers) and len(answers) == 30


@pytest.mark.skipif(tool("kdig") is None, reason="kdig (knot-dnsutils) is not installed")
def test_kdig_over_https(server: tuple[ResolverProcess, int], certs: tuple[Path, Path, Path]) -> None:
    _, port = server
    base = ["kdig", "@127.0.0.1", "-p", str(port), f"+tls-ca={certs[0]}", f"+tls-hostname={SERVER_NAME}"]
    exempted = run(*base, "+https=/dns-query/comms-01", "www.tiktok.com", "A").stdout.decode()
    assert TIKTOK_V4 in exempted and "HTTP session (HTTP/2" in exempted, exempted
    blocked = run(*base, "+https=/dns-query", "www.tiktok.com", "A").stdout.decode()
    assert "0.0.0.0" in blocked and TIKTOK_V4 not in blocked, blocked


@needs_curl
def test_curl_resolves_through_doh_over_http2(server: tuple[ResolverProcess, int],
                                              certs: tuple[Path, Path, Path]) -> None:
    proc, port = server
    out = curl(port, certs[0], "--doh-url", url(port), "-o", "/dev/null", "-w", "%{http_code} %{remote_ip}",
               f"http://{LOOP}:{proc.metrics_port}/healthz")
    assert out == "200 127.0.0.1", out  # curl asked us over DoH where LOOP is, and got there


@needs_curl
def test_cache_control_is_the_smallest_ttl_and_http11_keeps_the_connection(
        server: tuple[ResolverProcess, int], certs: tuple[Path, Path, Path]) -> None:
    _, port = server
    q = b64(dns.message.make_query("short.example.test", "A").to_wire())
    out = curl(port, certs[0], "--http1.1", "-D", "-", "-o", "/dev/null", f"{url(port)}?dns={q}",
               "-w", "connects=%{num_connects}\n", f"{url(port)}?dns={q}")
    heads = out.lower()
    assert heads.count("http/1.1 200") == 2, out
    assert "cache-control: max-age=30" in heads, out  # the CNAME's 30, not the address's 300
    assert heads.count("content-type: application/dns-message") == 2, out
    assert "connects=0" in out, out  # the second request reused the first's connection


def bad_requests(port: int) -> list[list[str]]:
    """(curl options for one request, separated by --next): each mistake the issue lists, then a good query."""
    good = dns.message.make_query(WWW, "A").to_wire()
    formerr = good[:12] + b"\x03www"  # a header that promises a question, then a question cut short
    return [
        [f"{url(port)}?dns=!!notbase64!!"],
        [f"{url(port)}?dns={b64(formerr)}"],
        [f"{url(port)}?other=1"],
        ["-X", "POST", "-H", "content-type: text/plain", "--data-binary", "not dns", url(port)],
        ["-X", "POST", "-H", "content-type: application/dns-message", "--data-binary", "@-", url(port)],
        [f"https://{SERVER_NAME}:{port}/"],
        [f"https://{SERVER_NAME}:{port}/dns-query/not%20an%20id"],
        ["-X", "PUT", url(port)],
        [f"{url(port)}?dns={b64(good)}"],
    ]


@needs_curl
@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_http_codes_for_bad_requests_and_the_server_keeps_answering(
        server: tuple[ResolverProcess, int], certs: tuple[Path, Path, Path], version: str) -> None:
    _, port = server
    args: list[str] = []
    for i, request in enumerate(bad_requests(port)):
        args += (["--next"] if i else []) + ["--cacert", str(certs[0]), "--resolve", f"{SERVER_NAME}:{port}:127.0.0.1",
                                            version, "-o", "/dev/null", "-w", "%{http_code}\n", *request]
    body = b"x" * 70_000  # the 413 request reads it from stdin
    out = run("curl", "-sS", *args, data=body).stdout.decode()
    assert out.split() == ["400", "400", "400", "415", "413", "404", "404", "405", "200"], out
