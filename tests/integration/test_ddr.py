"""DDR (RFC 9462): with ``ddr.advertise`` the resolver names its own DoT and DoH endpoints for
``_dns.resolver.arpa`` SVCB, as dnspython and kdig read them; without it, the NODATA defence stays."""

from __future__ import annotations

from pathlib import Path

import dns.rdatatype
import dns.rdtypes.svcbbase
import pytest

from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, make_certs, run, tool
from tests.support.resolverproc import ResolverFactory, free_port

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")


def test_the_advertisement_names_this_resolver(resolver_factory: ResolverFactory, auth: AuthServer,
                                                tmp_path: Path) -> None:
    _, cert, key = make_certs(tmp_path)
    dot, doh = free_port(udp=False), free_port(udp=False)
    proc = resolver_factory({"upstreams": [auth.address], "dot": [f"127.0.0.1:{dot}"], "doh": [f"127.0.0.1:{doh}"],
                             "tls": {"cert": str(cert), "key": str(key), "server_name": SERVER_NAME},
                             "ddr": {"advertise": True}})
    reply = proc.query("_dns.resolver.arpa", "SVCB")
    records = sorted(reply.find_rrset(reply.answer, "_dns.resolver.arpa.", "IN", "SVCB"), key=lambda r: r.priority)
    assert [(r.priority, r.target.to_text()) for r in records] == [(1, f"{SERVER_NAME}."), (2, f"{SERVER_NAME}.")]
    keys = dns.rdtypes.svcbbase.ParamKey
    assert records[0].params[keys.ALPN].ids == (b"dot",) and records[0].params[keys.PORT].port == dot
    assert records[1].params[keys.ALPN].ids == (b"h2",) and records[1].params[keys.PORT].port == doh
    assert records[1].params[keys.DOHPATH].value == b"/dns-query{?dns}"
    assert not proc.query("_dns.resolver.arpa", "A").answer  # other types: NODATA, as the defence answers
    assert not proc.query("resolver.arpa", "SVCB").answer
    if tool("kdig"):
        out = run("kdig", "@127.0.0.1", "-p", str(proc.port), "_dns.resolver.arpa", "SVCB").stdout.decode()
        assert f'1 {SERVER_NAME}. alpn=dot port={dot}' in out, out
        assert any(f'2 {SERVER_NAME}. alpn=h2 port={doh} {path}' in out  # (kdig 3.2 knows no "dohpath" name)
                   for path in ("dohpath=/dns-query{?dns}", 'key7="/dns-query{?dns}"')), out


def test_without_advertise_the_nodata_defence_stays(resolver_factory: ResolverFactory, auth: AuthServer,
                                                    tmp_path: Path) -> None:
    _, cert, key = make_certs(tmp_path)
    proc = resolver_factory({"upstreams": [auth.address], "dot": [f"127.0.0.1:{free_port(udp=False)}"],
                             "tls": {"cert": str(cert), "key": str(key), "server_name": SERVER_NAME}})
    reply = proc.query("_dns.resolver.arpa", "SVCB")
    assert not reply.answer and reply.rcode() == 0
    assert auth.count("_dns.resolver.arpa") == 0
    assert dns.rdatatype.SVCB == 64
