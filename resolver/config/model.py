"""The typed, frozen configuration: what every part of the resolver reads after start-up, never a raw dict.

Only the dataclasses and their defaults live here; ``resolver.config.loader`` reads and checks a file into them.
(Compiled: ``Endpoint`` is read per upstream question.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resolver.config.policy import PolicyConfig
from resolver.core.access import AccessSpec, RateSpec
from resolver.core.cache import CacheLimits
from resolver.core.policy import IPNetwork, SinkholeSpec


def _bundled_blocklists() -> Path:
    # Installed from a wheel the lists sit inside the package; in a source checkout they sit beside it.
    inside = Path(__file__).resolve().parent.parent / "blocklists"
    return inside if inside.is_dir() else Path(__file__).resolve().parent.parent.parent / "blocklists"


BUNDLED_BLOCKLISTS = _bundled_blocklists()
DEFAULT_SOURCE = "<built-in default>"
CLIENT_MODES = ("full", "hashed", "none")  # how the query log writes a client: as is, keyed hash, not at all


@dataclass(frozen=True, slots=True)
class QueryLogConfig:
    path: Path | None = None  # None: off
    only_blocked: bool = False
    client: str = "hashed"
    salt: str = ""  # secret for hashed clients; empty: a random one per start (hashes do not survive restarts)
    previous_salt: str = ""  # during a salt rotation: lines also carry the pseudonym under the salt being retired
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    queue: int = 10_000
    flush_seconds: float = 0.5


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    transport: str = "udp"  # udp (with TCP on truncation) | tcp | tls (DNS over TLS)
    tls_name: str = ""  # the name the upstream's certificate must carry (tls); default: the address

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        address = f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"
        if self.transport == "udp":
            return address
        return f"{self.transport}://{address}" + (f"#{self.tls_name}" if self.tls_name else "")


@dataclass(frozen=True, slots=True)
class TcpConfig:
    idle_timeout: float = 10.0  # the wait for each whole query
    max_connections: int = 1024
    max_per_client: int = 32
    # One host picks a new IPv6 address from its /64 per connection; a /24 or /56 is one site, so one site cannot
    # take the table: an eighth of the default.
    max_per_network: int = 128
    write_timeout: float = 10.0  # a client that stops reading its answers is closed after this long
    # Bounds how long a client that keeps its connection busy (a question now and then, under idle_timeout) holds a
    # slot. No real client notices: phones ask a few questions and go idle, a forwarder reconnects.
    max_lifetime: float = 600.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = None  # PEM certificate chain, the server's first
    key: Path | None = None  # PEM private key
    server_name: str = ""  # the name phones ask for; ``<id>.<server_name>`` carries a client id


@dataclass(frozen=True, slots=True)
class EncryptedConfig:
    dot: tuple[Endpoint, ...] = ()  # DNS over TLS listeners (RFC 7858)
    doh: tuple[Endpoint, ...] = ()  # DNS over HTTPS listeners (RFC 8484)
    tls: TlsConfig = field(default_factory=TlsConfig)
    proxy_trusted: tuple[IPNetwork, ...] = ()  # peers whose PROXY v2 header is believed (TCP, DoT, DoH)
    ddr_advertise: bool = False  # answer _dns.resolver.arpa SVCB with our own DoT/DoH (RFC 9462)

    @property
    def listening(self) -> bool:
        return bool(self.dot or self.doh)


@dataclass(frozen=True, slots=True)
class Config:
    source: str = DEFAULT_SOURCE
    listen: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 5353),)
    upstreams: tuple[Endpoint, ...] = ()  # empty: the nameservers of /etc/resolv.conf, read at start
    upstream_strategy: str = "strict"
    upstream_ca: str | None = None  # extra CA bundle for DoT upstreams
    upstream_timeout: float = 1.5
    query_timeout: float = 4.0
    metrics: Endpoint | None = None
    sinkhole: SinkholeSpec = field(default_factory=SinkholeSpec)
    cache: CacheLimits = field(default_factory=CacheLimits)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    query_log: QueryLogConfig = field(default_factory=QueryLogConfig)
    access: AccessSpec = field(default_factory=AccessSpec)
    rate_limit: RateSpec = field(default_factory=RateSpec)
    encrypted: EncryptedConfig = field(default_factory=EncryptedConfig)  # dot, doh, tls, proxy_protocol, ddr
