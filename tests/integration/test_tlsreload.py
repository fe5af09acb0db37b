"""Certificates: rotated on disk, picked up without a restart; broken at start, one ``error:`` line and exit 2."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, make_certs, tool
from tests.support.resolverproc import ResolverFactory, free_port, run_cli, write_config

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")


def organisation(port: int, ca: Path) -> str:
    """The O= of the certificate the DoT listener shows now (each test certificate's tag)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(ca, ["dot"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        cert = conn.getpeercert()
    assert cert is not None
    return next(value for rdn in cert["subject"] for key, value in rdn if key == "organizationName")


def replace_file(source: Path, target: Path) -> None:
    """As a certificate manager does: write beside, then rename over."""
    shutil.copyfile(source, target.with_suffix(".new"))
    os.replace(target.with_suffix(".new"), target)


def test_a_rotated_certificate_serves_new_connections_and_a_broken_one_is_refused(
        resolver_factory: ResolverFactory, auth: AuthServer, tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path / "pki", tag="first")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copyfile(cert, live_cert)
    shutil.copyfile(key, live_key)
    port = free_port(udp=False)
    proc = resolver_factory({"upstreams": [auth.address], "dot": [f"127.0.0.1:{port}"],
                             "tls": {"cert": str(live_cert), "key": str(live_key), "server_name": SERVER_NAME}})
    assert organisation(port, ca) == "first"

    _, second_cert, second_key = make_certs(tmp_path / "pki", tag="second", ca=(ca, tmp_path / "pki" / "ca.key"))
    replace_file(second_key, live_key)
    replace_file(second_cert, live_cert)
    assert proc.wait_stderr("tls certificate reloaded", timeout=15)
    assert organisation(port, ca) == "second"

    refused = "tls certificate not reloaded, the old one keeps serving"
    before = len(proc.stderr_lines(refused))  # (the new key may have been seen before its certificate)
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    replace_file(tmp_path / "garbage.pem", live_cert)
    assert proc.wait_stderr_count(refused, before + 1, timeout=15)
    assert organisation(port, ca) == "second"  # still served
    assert proc.alive()


@pytest.mark.parametrize("broken", ["garbage", "wrong key"])
def test_a_bad_certificate_at_start_is_one_error_line(tmp_path: Path, auth: AuthServer, broken: str) -> None:
    _, cert, key = make_certs(tmp_path / "pki")
    _, _, other_key = make_certs(tmp_path / "other")
    if broken == "garbage":
        cert = tmp_path / "garbage.pem"
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    else:
        key = other_key
    config = write_config(tmp_path / "resolver.yaml", {"upstreams": [auth.address], "listen": ["127.0.0.1:0"],
                                                       "dot": ["127.0.0.1:0"], "tls": {"cert": str(cert),
                                                                                       "key": str(key)}})
    for command in (["serve", "--workers", "1"], ["check"]):
        done = run_cli(command[0], "-c", str(config), *command[1:])
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: {cert}: cannot use this certificate with {key}"), \
            done.stderr
