"""What to do with a cache miss: send it upstream, let it wait on an identical question already there, or shed it.

Pure bookkeeping, no I/O: the pipeline admits misses here and the transport glue (``resolver.net.forwarder``)
does what the answer says. Keyed by the cache key, so identical questions (same name, type, class and DO bit)
share one upstream query and one answer; bounded, so a flood of unique names cannot queue without limit.

Fair, so one client's flood cannot take the table from everyone else: each client address, and each network
(its /24, or /56 for IPv6: what one site or one home is given, so spreading a flood over neighbouring addresses
does not multiply it), may have only so many questions waiting; and once the table is three quarters full, the
networks holding at least their average share are shed first, keeping the last quarter for the lighter ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Final

from resolver.core.wire import Query

START: Final = 0  # the first of its kind: the caller sends it upstream
JOINED: Final = 1  # an identical question is upstream already: its answer serves this one too
# Shed: answer now (stale or SERVFAIL) rather than queue without bound. The codes from SHED up are the reasons,
# in the order of ``resolver.core.stats.SHED_REASONS``.
SHED: Final = 2  # the table is full
SHED_CLIENT: Final = 3  # the client's address or network has its quota waiting already
SHED_HEAVY: Final = 4  # the table is nearly full and the client's network is among the heaviest
SHED_PENDING: Final = 5  # a transport's own bound (questions pending on one TCP connection)

# Distinct questions that may wait on upstreams at once.
MAX_INFLIGHT: Final = 10_000
# Clients waiting, those joined to an identical question included: each holds a reply callback.
MAX_WAITING: Final = 4 * MAX_INFLIGHT
# Questions one address may have waiting. A phone opening an app asks a few dozen names at once; a slow upstream
# keeps them waiting for seconds; this is several times that.
ADDRESS_QUOTA: Final = 200
# Questions one /24 (/56) may have waiting: a VPN pool puts a team's phones in one /24, so room for all of them,
# and still only a fifth of the table.
NETWORK_QUOTA: Final = MAX_INFLIGHT // 5
_MEMO_LIMIT: Final = 4096

Respond = Callable[[bytes], None]


class Prefetch:
    """A cached answer to send now, and a popular entry to refresh upstream in the background (the ticket's
    question is already admitted: the glue only sends it)."""

    __slots__ = ("answer", "query")

    def __init__(self, answer: bytes, query: Query) -> None:
        self.answer = answer
        self.query = query


class Inflight:
    """The questions waiting on upstreams, each with who waits for its answer (None: a background refresh), and
    how many each client address and network has waiting."""

    __slots__ = ("_networks", "by_address", "by_network", "clients", "limit", "max_waiting", "per_address",
                 "per_network", "refreshes", "waiting")

    def __init__(self, limit: int = MAX_INFLIGHT, per_address: int = ADDRESS_QUOTA,
                 per_network: int = NETWORK_QUOTA, max_waiting: int = MAX_WAITING) -> None:
        self.limit = limit
        self.per_address = per_address
        self.per_network = per_network
        self.max_waiting = max_waiting
        self.waiting: dict[bytes, list[tuple[Query, Respond | None]]] = {}
        self.clients = 0  # clients waiting (background refreshes are nobody's)
        self.refreshes = 0  # background refreshes in the table
        self.by_address: dict[str, int] = {}  # only addresses with something waiting: bounded by the table
        self.by_network: dict[str, int] = {}
        self._networks: dict[str, str] = {}  # IPv6 address -> its /56, memoised (parsing one is the costly part)

    def __len__(self) -> int:
        return len(self.waiting)

    def admit(self, query: Query, respond: Respond) -> int:
        """START, JOINED, or a shed code (SHED, SHED_CLIENT, SHED_HEAVY) for a cache miss whose answer goes to
        ``respond``."""
        client = query.client
        network = self.network_of(client)
        held = self.by_address.get(client, 0)
        network_held = self.by_network.get(network, 0)
        if held >= self.per_address or network_held >= self.per_network:
            return SHED_CLIENT
        if self.clients >= self.max_waiting:
            return SHED
        key = query.cache_key
        waiters = self.waiting.get(key)
        if waiters is not None:
            waiters.append((query, respond))
        else:
            size = len(self.waiting)
            if size >= self.limit:
                return SHED
            # Heaviest first: once clients' questions fill three quarters of the table, a network holding at least
            # the average share waits its turn.
            if network_held and (size - self.refreshes) * 4 >= self.limit * 3 \
                    and network_held * len(self.by_network) >= self.clients:
                return SHED_HEAVY
            self.waiting[key] = [(query, respond)]
        self.by_address[client] = held + 1
        self.by_network[network] = network_held + 1
        self.clients += 1
        return START if waiters is None else JOINED

    def admit_prefetch(self, query: Query) -> bool:
        """Whether to refresh ``query``'s entry now. Refreshes are optional work: they never join a question in
        flight (its answer refreshes the entry anyway) and never take the last half of the table, which is kept
        for the clients actually waiting."""
        key = query.cache_key
        if key in self.waiting or len(self.waiting) >= self.limit // 2:
            return False
        self.waiting[key] = [(query, None)]
        self.refreshes += 1
        return True

    def settle(self, query: Query) -> list[tuple[Query, Respond | None]]:
        """Everyone waiting on ``query``'s answer, taken out of the table."""
        waiters = self.waiting.pop(query.cache_key, [])
        for waiting, respond in waiters:
            if respond is not None:
                self._release(waiting.client)
            else:
                self.refreshes -= 1
        return waiters

    def _release(self, client: str) -> None:
        self.clients -= 1
        for table, key in ((self.by_address, client), (self.by_network, self.network_of(client))):
            left = table.get(key, 0) - 1
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)

    def network_of(self, client: str) -> str:
        """The /24 of an IPv4 address, the /56 of an IPv6 one (as text, only ever used as a key)."""
        if ":" not in client:
            return client.rpartition(".")[0]
        network = self._networks.get(client)
        if network is None:
            try:
                network = ipaddress.IPv6Address(client).packed[:7].hex()
            except ValueError:  # not an address (a test's made-up client): its own network
                network = client
            if len(self._networks) >= _MEMO_LIMIT:
                self._networks.clear()
            self._networks[client] = network
        return network
