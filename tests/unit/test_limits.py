"""TCP connection slots (per address, per network, total) and the file-descriptor budget, without sockets."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from resolver.config.model import Config, Endpoint, TcpConfig
from resolver.core.access import AccessList, AccessSpec
from resolver.errors import ConfigError
from resolver.net import limits
from resolver.net.limits import PRESSED_IDLE, ConnectionTable, Gate, fd_budget, network_of


@pytest.mark.parametrize(("client", "network"), [
    ("10.20.8.15", "10.20.8.0/24"),
    ("10.20.8.250", "10.20.8.0/24"),
    ("2001:db8:1:ab00::1", "2001:db8:1:ab00::/56"),
    ("2001:db8:1:abff:ffff::9", "2001:db8:1:ab00::/56"),  # another /64 of the same /56: one host or site
    ("", ""),  # no peer address: counted on its own
])
def test_network_of(client: str, network: str) -> None:
    assert network_of(client) == network


def test_each_cap_turns_away_only_what_is_over_it_and_names_it() -> None:
    table = ConnectionTable(total=5, per_client=2, per_network=3)
    assert table.admit("10.0.0.1") is None and table.admit("10.0.0.1") is None
    assert table.admit("10.0.0.1") == "client", "a third from one address"
    assert table.admit("10.0.0.2") is None
    assert table.admit("10.0.0.3") == "network", "a fourth from one /24"
    assert table.admit("10.0.1.1") is None and table.admit("10.0.2.1") is None
    assert table.admit("10.0.3.1") == "total", "a sixth in all"
    assert table.open == 5
    table.release("10.0.0.1")
    assert table.admit("10.0.0.3") is None, "a slot given back is free again, in its network and in the total"
    assert table.open == 5


def test_released_clients_and_networks_leave_no_entry_behind() -> None:
    table = ConnectionTable(total=100, per_client=10, per_network=10)
    for n in range(50):
        assert table.admit(f"2001:db8:0:{n:x}00::1") is None
    for n in range(50):
        table.release(f"2001:db8:0:{n:x}00::1")
    assert table.open == 0 and not table.by_client and not table.by_network


def test_the_gate_checks_the_access_list_first_and_counts_each_reason() -> None:
    pools = AccessList(AccessSpec((ipaddress.ip_network("10.20.0.0/16"),)))
    gate = Gate(ConnectionTable(total=10, per_client=1, per_network=10), pools)
    assert gate.admit("10.20.8.15")
    assert not gate.admit("10.20.8.15"), "a second from one address"
    assert not gate.admit("192.0.2.7"), "outside the access list"
    gate.release("10.20.8.15")
    assert not gate.admit("192.0.2.7"), "a free slot does not let an outsider in"
    assert gate.rejected == {"access": 2, "client": 1, "network": 0, "total": 0}
    assert gate.table.open == 0


def _config(max_connections: int, listen: int = 1) -> Config:
    return replace(Config(), tcp=TcpConfig(max_connections=max_connections),
                   listen=tuple(Endpoint("127.0.0.1", 5300 + i) for i in range(listen)))


def test_the_budget_covers_connections_listeners_upstreams_and_the_reserve() -> None:
    assert fd_budget(_config(1000, listen=2), upstreams=3) == 1000 + 2 * 2 + 3 * limits.FDS_PER_UPSTREAM \
        + limits.FDS_RESERVE


def test_a_limit_below_the_budget_is_refused_with_what_would_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(_config(5000), upstreams=(Endpoint("127.0.0.1", 53),))
    monkeypatch.setattr(limits, "raise_fd_limit", lambda: 1024)
    with pytest.raises(ConfigError) as caught:
        limits.ensure_fds(config)
    message = str(caught.value)
    fits = 1024 - limits.FDS_PER_LISTEN - limits.FDS_PER_UPSTREAM - limits.FDS_RESERVE
    assert "tcp.max_connections" in message and "1024" in message and f"to {fits} " in message
    limits.ensure_fds(replace(config, tcp=TcpConfig(max_connections=fits)))  # exactly the budget: serves


def test_a_limit_too_low_for_anything_only_says_raise_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "raise_fd_limit", lambda: 100)
    with pytest.raises(ConfigError, match="raise the hard limit") as caught:
        limits.ensure_fds(replace(_config(10), upstreams=(Endpoint("127.0.0.1", 53),)))
    assert "lower tcp.max_connections" not in str(caught.value)


def test_open_fds_counts_this_process() -> None:
    before = limits.open_fds()
    with open(__file__) as handle:
        assert limits.open_fds() == before + 1
        handle.read(1)


def test_with_metrics_on_the_budget_covers_its_capped_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from resolver.ops.metrics import MAX_CONNECTIONS

    config = replace(_config(1000), metrics=Endpoint("127.0.0.1", 9153))
    assert limits.FDS_METRICS >= MAX_CONNECTIONS
    assert fd_budget(config, upstreams=1) == fd_budget(_config(1000), upstreams=1) + limits.FDS_METRICS
    monkeypatch.setattr(limits, "raise_fd_limit", lambda: fd_budget(config, upstreams=1) - 1)
    with pytest.raises(ConfigError, match=f"{limits.FDS_METRICS} for metrics") as caught:
        limits.ensure_fds(replace(config, upstreams=(Endpoint("127.0.0.1", 53),)))
    assert "to 999 " in str(caught.value)


def test_past_half_the_slots_the_idle_wait_is_cut_short() -> None:
    table = ConnectionTable(total=4, per_client=4, per_network=4)
    waits = []
    for n in range(4):
        waits.append(table.idle_timeout(10.0))
        assert table.admit(f"127.0.0.{n}") is None
    waits.append(table.idle_timeout(10.0))
    assert waits == [10.0, 10.0, 10.0, PRESSED_IDLE, PRESSED_IDLE]
    assert table.idle_timeout(1.0) == 1.0  # never longer than configured
    table.release("127.0.0.3")
    table.release("127.0.0.2")
    assert table.idle_timeout(10.0) == 10.0
