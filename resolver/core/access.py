"""Who may ask, and how fast: the client access list and the per-client token bucket.

Both run before the packet is parsed, so a flood from outside costs one dict lookup per packet. Results are
memoised per source address; the tables are bounded, so a spoofed-source flood cannot grow them without limit.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from resolver.core.policy import IPNetwork

# Loopback, RFC 1918, CGNAT (VPN pools often use it), link-local, and the IPv6 equivalents: the default is
# "not an open resolver", whatever address it listens on.
DEFAULT_ALLOWED: Final = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                   "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10")
_MEMO_LIMIT: Final = 65536


@dataclass(frozen=True, slots=True)
class AccessSpec:
    allow: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_ALLOWED)
    action: str = "refuse"  # refuse (REFUSED answer) | drop (no answer)


@dataclass(frozen=True, slots=True)
class RateSpec:
    qps: float = 0.0  # per client; 0 turns the limiter off
    burst: float = 0.0
    action: str = "drop"  # drop | truncate (a TC answer: a real client retries over TCP, a spoofer gets little)
    max_clients: int = 100_000


class AccessList:
    def __init__(self, spec: AccessSpec) -> None:
        self.spec = spec
        self.everyone = any(n.prefixlen == 0 for n in spec.allow)
        self._memo: dict[str, bool] = {}

    def allows(self, client: str) -> bool:
        if self.everyone:
            return True
        verdict = self._memo.get(client)
        if verdict is None:
            try:
                address = ipaddress.ip_address(client.split("%", 1)[0])
            except ValueError:
                verdict = False
            else:
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                verdict = any(address.version == n.version and address in n for n in self.spec.allow)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[client] = verdict
        return verdict


class RateLimiter:
    """A token bucket per client address: ``qps`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, spec: RateSpec) -> None:
        self.spec = spec
        self.rate = spec.qps
        self.burst = max(spec.burst, spec.qps)
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill]

    def allow(self, client: str, now: float) -> bool:
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.spec.max_clients:
                self._evict(now)
            self._buckets[client] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _evict(self, now: float) -> None:
        """Forget clients whose bucket has refilled (they lose nothing); if none has, forget them all."""
        full = [c for c, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.rate >= self.burst]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) >= self.spec.max_clients:
            self._buckets.clear()
