"""net/sockets.py: which IPv6 sockets hear IPv6 only, the claim a supervisor makes before its workers join an
address, and the warning for a server reachable from other hosts with the default access list.

The decisions are pure functions, tested as tables; ``claim`` and the socket options are tested on real sockets
bound to loopback (127.0.0.1 and ::1), against holders made the way a running resolver makes its own.
"""

from __future__ import annotations

import _socket
import ipaddress
import socket
from collections.abc import Iterator

import pytest

from resolver.config.model import Endpoint
from resolver.core.access import AccessSpec
from resolver.errors import ListenError
from resolver.net.sockets import access_warning, beyond_loopback, bind_tcp, bind_udp, claim, v6_only
from tests.support.resolverproc import free_port, ipv6_loopback_available


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


@pytest.mark.parametrize(("listen", "only_v6"), [
    (["0.0.0.0:53", "[::]:53"], ["[::]:53"]),  # deploy/docker.yaml: both wildcards on one port
    (["[::]:53"], []),  # alone, [::] stays dual-stack and hears IPv4 phones too
    (["0.0.0.0:5353", "[::]:53"], []),  # different ports: no collision
    (["127.0.0.1:5353", "[::1]:5353"], ["[::1]:5353"]),  # harmless: ::1 never receives IPv4
    (["127.0.0.1:0", "[::]:0"], []),  # port 0 is a different free port for each socket
    (["0.0.0.0:53", "[::ffff:192.0.2.1]:53"], []),  # IPv4-mapped: IPv4 in disguise, cannot be IPv6-only
    (["0.0.0.0:53", "[::]:53", "[2001:db8::53]:53"], ["[::]:53", "[2001:db8::53]:53"]),
])
def test_which_ipv6_sockets_hear_ipv6_only(listen: list[str], only_v6: list[str]) -> None:
    endpoints = [ep(x) for x in listen]
    assert [str(e) for e in endpoints if v6_only(e, endpoints)] == [str(ep(x)) for x in only_v6]


# (The option cannot be read back on loopback: Linux makes any socket bound to a specific IPv6 address, ::1
# included, IPv6-only. tests/integration/test_wildcard_listen.py runs [::] in a private network namespace.)
needs_v6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")


def _holder(endpoint: Endpoint, kind: int) -> socket.socket:
    """What a running resolver's worker holds: SO_REUSEPORT, and listening for TCP."""
    sock = socket.socket(socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((endpoint.host, endpoint.port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


HOSTS = ["127.0.0.1", pytest.param("::1", marks=needs_v6)]


@pytest.fixture
def closing() -> Iterator[list[_socket.socket]]:
    opened: list[_socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_claim_refuses_an_address_a_running_resolver_holds(host: str, kind: int,
                                                           closing: list[_socket.socket]) -> None:
    endpoint = Endpoint(host, free_port(host))
    closing.append(_holder(endpoint, kind))
    with pytest.raises(ListenError) as info:
        claim((endpoint,))
    what = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    assert str(info.value) == f"cannot listen on {endpoint} ({what}): Address already in use"


@pytest.mark.parametrize("host", HOSTS)
def test_claim_lets_its_own_workers_join_and_keeps_a_second_supervisor_out(
        host: str, closing: list[_socket.socket]) -> None:
    endpoint = Endpoint(host, free_port(host))
    held = claim((endpoint,))
    closing.extend(held)
    # Our workers bind with SO_REUSEPORT, as app.py does with --workers.
    for _ in range(2):
        closing.append(bind_udp(endpoint, True, [endpoint]))
        tcp = bind_tcp(endpoint, True, [endpoint])
        tcp.listen()
        closing.append(tcp)
    with pytest.raises(ListenError, match="Address already in use"):
        claim((endpoint,))
    with pytest.raises(ListenError, match="Address already in use"):
        bind_udp(endpoint, False)  # a single-process resolver: a plain bind


def test_claim_holds_until_closed_and_refuses_nothing_it_did_not_hold() -> None:
    endpoint = Endpoint("127.0.0.1", free_port())
    held = claim((endpoint,))
    with pytest.raises(ListenError):
        claim((endpoint,))  # no worker has joined yet: the hold alone keeps the address
    for sock in held:
        sock.close()
    for sock in claim((endpoint,)):
        sock.close()


def test_a_failed_claim_lets_go_of_what_it_held(closing: list[_socket.socket]) -> None:
    free, taken = Endpoint("127.0.0.1", free_port()), Endpoint("127.0.0.1", free_port())
    closing.append(_holder(taken, socket.SOCK_DGRAM))
    with pytest.raises(ListenError):
        claim((free, taken))
    for sock in claim((free,)):
        sock.close()


DEFAULT = AccessSpec()
VPN = AccessSpec(tuple(ipaddress.ip_network(n) for n in ("10.20.0.0/16", "fd00:20::/48")))


@pytest.mark.parametrize(("listen", "access", "named"), [
    (["127.0.0.1:5353"], DEFAULT, None),  # the built-in default: this host only
    (["127.0.0.1:5353", "[::1]:5353", "127.0.0.53:53"], DEFAULT, None),
    (["0.0.0.0:53", "[::]:53"], DEFAULT, "0.0.0.0:53 [::]:53"),
    (["127.0.0.1:53", "10.20.0.1:53"], DEFAULT, "10.20.0.1:53"),
    (["[::]:53"], DEFAULT, "[::]:53"),
    (["0.0.0.0:53", "[::]:53"], VPN, None),  # deploy/docker.yaml: its own list
])
def test_warn_when_reachable_from_other_hosts_with_the_default_access_list(
        listen: list[str], access: AccessSpec, named: str | None) -> None:
    warning = access_warning([ep(x) for x in listen], access)
    if named is None:
        assert warning is None
    else:
        assert warning == (f"listening on {named} with the default access list, which answers every private, "
                           "CGNAT and link-local address: set access.allow to your VPN pools (README, \"Who may "
                           "ask\")")
        assert [str(e) for e in beyond_loopback([ep(x) for x in listen])] == named.split()
