"""``resolver profile apple``: the .mobileconfig read back with plistlib, and the DoH URL it names used as a
phone would (dnspython over HTTP/2), so the profile's client id is the one the policy's exemption selects."""

from __future__ import annotations

import plistlib
import re
import uuid
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, exemption_config, make_certs, tool
from tests.support.resolverproc import ResolverFactory, addresses, free_port, run_cli
from tests.support.zone import TIKTOK_V4


def profile(*args: str) -> dict[str, Any]:
    done = run_cli("profile", "apple", *args)
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = plistlib.loads(done.stdout.encode())
    return loaded


def check_shape(loaded: dict[str, Any]) -> dict[str, Any]:
    assert loaded["PayloadType"] == "Configuration" and loaded["PayloadVersion"] == 1
    (payload,) = loaded["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.dnsSettings.managed"
    for item in (loaded, payload):
        assert str(uuid.UUID(item["PayloadUUID"])).upper() == item["PayloadUUID"]
        assert re.fullmatch(r"[A-Za-z0-9.-]+", item["PayloadIdentifier"])
    assert loaded["PayloadUUID"] != payload["PayloadUUID"]
    settings: dict[str, Any] = payload["DNSSettings"]
    return settings


def test_doh_and_dot_profiles() -> None:
    doh = profile("--doh-url", "https://dns.force.example/dns-query", "--client-id", "comms-01", "--name", "Force DNS")
    assert check_shape(doh) == {"DNSProtocol": "HTTPS", "ServerURL": "https://dns.force.example/dns-query/comms-01"}
    assert doh["PayloadDisplayName"] == "Force DNS"
    again = profile("--doh-url", "https://dns.force.example/dns-query", "--client-id", "comms-01")
    assert again["PayloadIdentifier"] == doh["PayloadIdentifier"] and again["PayloadUUID"] == doh["PayloadUUID"]
    other = profile("--doh-url", "https://dns.force.example/dns-query", "--client-id", "comms-02")
    assert other["PayloadIdentifier"] != doh["PayloadIdentifier"] and other["PayloadUUID"] != doh["PayloadUUID"]
    assert check_shape(profile("--dot-name", SERVER_NAME, "--client-id", "comms-01")) == {
        "DNSProtocol": "TLS", "ServerName": f"comms-01.{SERVER_NAME}"}
    assert check_shape(profile("--dot-name", SERVER_NAME)) == {"DNSProtocol": "TLS", "ServerName": SERVER_NAME}


def test_bulk_from_csv(tmp_path: Path) -> None:
    table = tmp_path / "devices.csv"
    table.write_text("id,name\ncomms-01,Comms phone 1\n\n# spares\nroads-7,\n")
    done = run_cli("profile", "apple", "--dot-name", SERVER_NAME, "--csv", str(table), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["comms-01.mobileconfig", "roads-7.mobileconfig"]
    comms = plistlib.loads((tmp_path / "out" / "comms-01.mobileconfig").read_bytes())
    assert check_shape(comms)["ServerName"] == f"comms-01.{SERVER_NAME}" and comms["PayloadDisplayName"] == \
        "Comms phone 1"
    table.write_text("id\ncomms 01\n")
    done = run_cli("profile", "apple", "--dot-name", SERVER_NAME, "--csv", str(table), "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith(f"error: {table}:2: 'comms 01' is not a client id"), \
        done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--doh-url", "http://dns.force.example/dns-query"], "error: --doh-url: "),
    (["--doh-url", "https://dns.force.example/dns-query", "--client-id", "a/b"], "error: --client-id: "),
    (["--dot-name", "not a host"], "error: --dot-name: "),
])
def test_mistakes_are_one_error_line(args: list[str], message: str) -> None:
    done = run_cli("profile", "apple", *args)
    assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")
def test_the_profile_url_reaches_the_phone_s_exemption(resolver_factory: ResolverFactory, auth: AuthServer,
                                                       tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    port = free_port(udp=False)
    resolver_factory(exemption_config(auth.address, {
        "doh": [f"127.0.0.1:{port}"], "tls": {"cert": str(cert), "key": str(key), "server_name": SERVER_NAME}}))
    for client_id, expected in (("comms-01", TIKTOK_V4), ("comms-02", "0.0.0.0")):
        url = check_shape(profile("--doh-url", f"https://{SERVER_NAME}:{port}/dns-query",
                                  "--client-id", client_id))["ServerURL"]
        reply = dns.query.https(dns.message.make_query("www.tiktok.com", "A"), url, timeout=10,
                                bootstrap_address="127.0.0.1", verify=client_context(ca),
                                http_version=dns.query.HTTPVersion.H2)
        assert addresses(reply, "A") == [expected], client_id
