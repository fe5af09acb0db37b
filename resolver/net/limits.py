"""What bounds the TCP side: the table of connection slots, and the file descriptors the whole process may open.

A slot is taken at accept and given back when the socket is closed, so the table counts file descriptors, not
handler tasks. The caps nest: per address (a phone, or a NAT in front of many), per network (one host on IPv6 has a
/64 and can pick a new address for every connection; a /24 or a /56 is what one site or one customer holds), and in
total. A client over any cap is closed at once; its neighbours in other networks still get in.

The file-descriptor budget is checked before anything is bound: every accepted connection costs a descriptor, and so
does every upstream socket, the metrics listener and each of its connections (capped too). Run out, and it is the
upstream sockets and the metrics listener that fail first (every cache miss gets SERVFAIL and nobody can see why),
so start-up refuses a configuration whose connection cap could leave them short.
"""

from __future__ import annotations

import ipaddress
import os
import resource
from typing import Final

from resolver.config.loader import system_nameservers
from resolver.config.model import Config
from resolver.core.access import AccessList
from resolver.core.stats import REJECT_REASONS
from resolver.errors import ConfigError

# Per upstream: its UDP sockets in rotation (a fresh port at least every second, one per few dozen questions, each
# kept until its last question is answered or times out) and one TCP or TLS connection (truncated replies, tcp://,
# tls://). Past it, a question fails over to the next upstream rather than taking a client's slot.
FDS_PER_UPSTREAM: Final = 65
# Per listen address: its UDP and its TCP socket.
FDS_PER_LISTEN: Final = 2
# With metrics on: the connections served at once (``ops/metrics.py`` closes the rest as it accepts them;
# Prometheus, a few dashboards and probes need far fewer) ...
METRICS_CONNECTIONS: Final = 64
# ... and, in a connection flood, those accepted but not yet closed: asyncio accepts up to one listen backlog (its
# default of 100) each turn of the loop, and a refused connection's descriptor is released a few turns later.
METRICS_ACCEPTING: Final = 4 * 100
FDS_METRICS: Final = METRICS_CONNECTIONS + METRICS_ACCEPTING
# Everything else a process holds: standard streams, the event loop's epoll and wake-up pipe, signal handling, the
# metrics listener (its connections are FDS_METRICS), the query log, config and list files read by a reload, list
# downloads, the pipe to the supervisor. Generous, because running short here is what made the resolver
# unobservable.
FDS_RESERVE: Final = 128
# With more than half the slots taken, a connection may sit idle this long at most, not ``idle_timeout``
# (RFC 7766 section 6.2.3: close idle connections under pressure). Otherwise clients that each stay under the
# per-client and per-network caps, from enough networks, hold every slot by sending nothing, and a phone falling
# back to TCP after a truncated answer is refused. Long enough for a first question over a slow mobile link.
PRESSED_IDLE: Final = 2.0
IPV4_NETWORK: Final = 24
IPV6_NETWORK: Final = 56


def network_of(client: str) -> str:
    """The network ``client`` (a canonical address) is counted in: its /24 for IPv4, its /56 for IPv6."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client  # no usable address (a socket without a peer): counted on its own
    prefix = IPV4_NETWORK if address.version == 4 else IPV6_NETWORK
    return str(ipaddress.ip_network((address, prefix), strict=False))


class ConnectionTable:
    """Connection slots: at most ``total``, ``per_client`` per address and ``per_network`` per network."""

    __slots__ = ("by_client", "by_network", "open", "per_client", "per_network", "total")

    def __init__(self, total: int, per_client: int, per_network: int) -> None:
        self.total = total
        self.per_client = per_client
        self.per_network = per_network
        self.open = 0
        self.by_client: dict[str, int] = {}
        self.by_network: dict[str, int] = {}

    def idle_timeout(self, normal: float) -> float:
        """How long a connection may now wait for its next question: ``normal``, or PRESSED_IDLE past half."""
        return min(normal, PRESSED_IDLE) if self.open * 2 > self.total else normal

    def admit(self, client: str) -> str | None:
        """Take a slot for ``client`` and return None, or take nothing and name the cap reached (a
        ``REJECT_REASONS`` entry)."""
        network = network_of(client)
        if self.open >= self.total:
            return "total"
        if self.by_client.get(client, 0) >= self.per_client:
            return "client"
        if self.by_network.get(network, 0) >= self.per_network:
            return "network"
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self.by_network[network] = self.by_network.get(network, 0) + 1
        return None

    def release(self, client: str) -> None:
        """Give back a slot ``admit`` gave; the tables keep only clients and networks that hold one."""
        self.open -= 1
        for table, key in ((self.by_client, client), (self.by_network, network_of(client))):
            left = table[key] - 1
            if left:
                table[key] = left
            else:
                del table[key]


class Gate:
    """Who may hold a stream connection (plain TCP, DoT, DoH: one table for all, so the file-descriptor budget
    holds whichever transport the connections use): a client outside the access list, or over a cap, is refused.

    Asked once per connection, with the client it serves: the peer, or the phone a trusted balancer's PROXY v2
    header names, so the caps and the access list count phones, not the balancer."""

    __slots__ = ("access", "rejected", "table")

    def __init__(self, table: ConnectionTable, access: AccessList | None = None) -> None:
        self.table = table
        self.access = access
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)  # why connections were refused: an ops team needs to know

    def admit(self, client: str) -> bool:
        """Take a slot for ``client`` (then ``release`` it at close), or refuse and count why."""
        reason = "access" if self.access is not None and not self.access.allows(client) else self.table.admit(client)
        if reason is not None:
            self.rejected[reason] += 1
            return False
        return True

    def release(self, client: str) -> None:
        self.table.release(client)


def fd_budget(config: Config, upstreams: int) -> int:
    """File descriptors one serving process may need: every connection slot (TCP, DoT and DoH share them), the
    listen sockets, the upstream sockets, the metrics connections (with metrics on) and the reserve (README,
    "File descriptors")."""
    encrypted = len(config.encrypted.dot) + len(config.encrypted.doh)  # one TCP socket each
    return (config.tcp.max_connections + FDS_PER_LISTEN * len(config.listen) + encrypted
            + FDS_PER_UPSTREAM * upstreams + metrics_fds(config) + FDS_RESERVE)


def metrics_fds(config: Config) -> int:
    """The metrics connections' share of the budget: none with metrics off."""
    return FDS_METRICS if config.metrics is not None else 0


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (an unprivileged process may) and return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep the soft one
            pass
    return soft


def ensure_fds(config: Config) -> None:
    """Raise the limit, and refuse to serve (``ConfigError``) when even the raised limit is below the budget.

    Called before anything is bound, in the process that serves and in a supervisor (whose workers inherit the
    raised limit), so a configuration that does not fit stops once with one line instead of in every worker."""
    upstreams = len(config.upstreams or system_nameservers())
    need = fd_budget(config, upstreams)
    have = raise_fd_limit()
    if have == resource.RLIM_INFINITY or have >= need:
        return
    fits = have - need + config.tcp.max_connections
    lower = f"lower tcp.max_connections to {fits} or " if fits > 0 else ""
    metrics = f"{metrics_fds(config)} for metrics + " if config.metrics is not None else ""
    listening = FDS_PER_LISTEN * len(config.listen) + len(config.encrypted.dot) + len(config.encrypted.doh)
    raise ConfigError(
        f"{config.source}: tcp.max_connections",
        f"the open-file limit is {have}, below the {need} file descriptors this configuration needs "
        f"({config.tcp.max_connections} TCP connections + {listening} listen sockets + "
        f"{FDS_PER_UPSTREAM * upstreams} for {upstreams} upstream(s) + {metrics}{FDS_RESERVE} reserved); {lower}"
        "raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=)")


def open_fds() -> int:
    """File descriptors this process holds now (-1 where the system does not list them)."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(listing)) - 1  # less the one the listing itself opened
        except OSError:
            continue
    return -1
