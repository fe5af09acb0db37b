"""The encrypted listeners' config sections and flags, and the client id a TLS server name carries."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from resolver.config.loader import load_config, with_overrides
from resolver.config.model import Config, Endpoint
from resolver.errors import ConfigError
from resolver.net.tlsconf import client_id_of


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cert.pem").write_text("not really\n")
    (tmp_path / "key.pem").write_text("not really\n")
    path = tmp_path / "resolver.yaml"
    path.write_text(text)
    return path


def test_the_sections_read_into_the_model(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, (
        "dot: ['127.0.0.1:853', '[::1]']\ndoh: [127.0.0.1:8443]\n"
        "tls: {cert: cert.pem, key: key.pem, server_name: DNS.Force.Example.}\n"
        "proxy_protocol: {trusted: [10.0.0.0/24]}\nddr: {advertise: true}\n")))
    e = config.encrypted
    assert e.dot == (Endpoint("127.0.0.1", 853), Endpoint("::1", 853))
    assert e.doh == (Endpoint("127.0.0.1", 8443),)
    assert e.tls.cert == tmp_path / "cert.pem" and e.tls.key == tmp_path / "key.pem"
    assert e.tls.server_name == "dns.force.example"
    assert e.proxy_trusted == (ipaddress.ip_network("10.0.0.0/24"),)
    assert e.ddr_advertise is True
    assert Config().encrypted.listening is False


@pytest.mark.parametrize(("text", "where", "reason"), [
    ("dot: [127.0.0.1:853]\n", "tls", "dot and doh listeners need tls.cert and tls.key (or --tls-cert and "
                                      "--tls-key)"),
    ("tls: {cert: missing.pem}\n", "tls.cert", "'missing.pem': no such file"),
    ("tls: {server_name: 'not a name'}\n", "tls.server_name", "'not a name' is not a host name"),
    ("tls: {certificate: cert.pem}\n", "tls.certificate", "unknown key (known: cert, key, server_name)"),
    ("proxy_protocol: {trusted: [10.0.0.1/24]}\n", "proxy_protocol.trusted[0]",
     "'10.0.0.1/24' is not a network (CIDR): 10.0.0.1/24 has host bits set"),
    ("ddr: {advertise: yes please}\n", "ddr.advertise", "must be true or false, got 'yes please'"),
    ("ddr: {advertise: true}\n", "ddr.advertise", "needs a dot or doh listener and tls.server_name: DDR names the "
                                                  "encrypted resolver phones may upgrade to"),
])
def test_mistakes_name_their_key(tmp_path: Path, text: str, where: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.where, info.value.reason) == (f"{path}: {where}", reason)


def test_flags_win_over_the_file_and_need_a_certificate(tmp_path: Path) -> None:
    path = write(tmp_path, "dot: [127.0.0.1:853]\ntls: {cert: cert.pem, key: key.pem}\n")
    config = with_overrides(load_config(path), encrypted={"dot": ["127.0.0.1:8853"], "doh": ["127.0.0.1"],
                                                          "tls_cert": str(tmp_path / "key.pem")})
    assert config.encrypted.dot == (Endpoint("127.0.0.1", 8853),)
    assert config.encrypted.doh == (Endpoint("127.0.0.1", 443),)
    assert config.encrypted.tls.cert == tmp_path / "key.pem"
    with pytest.raises(ConfigError) as info:
        with_overrides(Config(), encrypted={"dot": ["127.0.0.1:853"]})
    assert info.value.reason.startswith("dot and doh listeners need tls.cert and tls.key")
    with pytest.raises(ConfigError) as info:
        with_overrides(Config(), encrypted={"tls_key": str(tmp_path / "nope.pem")})
    assert info.value.where == "--tls-key"


@pytest.mark.parametrize(("sni", "client_id"), [
    ("comms-01.dns.force.example", "comms-01"),
    ("COMMS-01.DNS.Force.Example.", "comms-01"),  # server names are case-insensitive
    ("dns.force.example", None),  # the bare name: no id
    ("a.b.dns.force.example", None),  # an id is one label
    ("comms-01.other.example", None),
    (None, None),
])
def test_the_server_name_carries_a_client_id(sni: str | None, client_id: str | None) -> None:
    assert client_id_of(sni, "dns.force.example") == client_id
    assert client_id_of(sni, "") is None  # no server_name configured: no ids
