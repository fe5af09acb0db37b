"""Listening on every address, as deploy/docker.yaml does (``0.0.0.0:53`` and ``[::]:53``), and the warning for a
server reachable from other hosts that still answers every private address.

Tests listen on loopback only, so these run the real server inside a private network namespace
(tests/support/netns.py), where the wildcard addresses reach nothing but that namespace's own loopback. They are
skipped where the kernel allows no unprivileged namespaces. The decisions themselves (which IPv6 sockets are
IPv6-only, when to warn) are tested as pure functions in tests/unit/test_sockets.py.
"""

from __future__ import annotations

import json

import pytest

from tests.support.netns import netns_available, run_in_netns
from tests.support.resolverproc import ResolverFactory, ipv6_loopback_available

pytestmark = pytest.mark.skipif(not (ipv6_loopback_available() and netns_available()),
                                reason="needs IPv6 and an unprivileged network namespace (unshare -rn)")

DEAD_UPSTREAM = "127.0.0.1:9"  # the namespace's own loopback: nothing listens there, and blocked names never ask
BLOCKED = "www.tiktok.com"
EVERY_WAY = ["127.0.0.1 udp", "127.0.0.1 tcp", "::1 udp", "::1 tcp"]


def _warnings(stderr: str) -> list[str]:
    """Warnings about how it listens; the upstream health warning is left out (the namespace has no upstream)."""
    return [line for line in stderr.splitlines() if line.startswith("{") and json.loads(line)["level"] == "warning"
            and json.loads(line)["logger"] != "resolver.net.upstream"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_docker_config_serves_ipv4_and_ipv6_with_any_worker_count(workers: str) -> None:
    """deploy/docker.yaml as shipped: a phone asking over IPv4 or IPv6, UDP or TCP, gets the sinkhole answer.
    (A dual-stack ``[::]:53`` also claims IPv4's port 53, so with one worker the second bind failed and the
    container exited.)"""
    report = run_in_netns(BLOCKED, ["-c", "deploy/docker.yaml", "--upstream", DEAD_UPSTREAM, "--workers", workers])
    assert report["ready"], report["stderr"]
    assert report["answers"] == {way: "NOERROR 0.0.0.0" for way in EVERY_WAY}, report["stderr"]
    assert report["exit"] == 0, report["stderr"]
    assert _warnings(report["stderr"]) == [], "the shipped access list is not the default one"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_listening_beyond_loopback_with_the_default_access_list_is_one_warning(workers: str) -> None:
    report = run_in_netns(BLOCKED, ["--listen", "0.0.0.0:53", "--listen", "[::]:53", "--upstream", DEAD_UPSTREAM,
                                    "--workers", workers])
    assert report["ready"], report["stderr"]
    warnings = _warnings(report["stderr"])
    assert len(warnings) == 1, report["stderr"]
    message = json.loads(warnings[0])["msg"]
    assert "0.0.0.0:53 [::]:53" in message and "default access list" in message and "access.allow" in message
    assert report["answers"] == {way: "NOERROR 0.0.0.0" for way in EVERY_WAY}, report["stderr"]


def test_no_warning_on_loopback(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory()
    assert _warnings(server.stderr_text()) == [], server.stderr_text()
