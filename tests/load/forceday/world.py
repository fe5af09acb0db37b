"""The force and its day: phones, what they ask, how often, and the config and zone the run serves them with.

The numbers here are assumptions, stated where they are made; tests/load/RESULTS.md ("Force day") gives the
reasoning and the sources behind them.
"""

from __future__ import annotations

import bisect
import datetime as dt
import ipaddress
import itertools
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
TRANCO = REPO.parent / "shared" / "data" / "top-domains-10k.txt"
EXAMPLE_CONFIG = REPO / "deploy" / "example-force.yaml"
BLOCKLISTS = REPO / "blocklists"

# The VPN pools of deploy/example-force.yaml (10.0.0.0/8) are moved onto loopback (127.0.0.0/8) octet for octet:
# 10.20.8.0/24 becomes 127.20.8.0/24, so the same groups and exemptions apply to the simulated phones.
VPN, LOOPBACK = ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.0/8")
PHONE_POOL = ipaddress.ip_network("127.20.0.0/16")
# How many of the force's phones sit in each team pool (after the move to loopback); the rest are "default".
TEAMS = {"comms": 60, "roads-policing": 250, "pilot": 2000}

QTYPE = {"A": 1, "AAAA": 28, "HTTPS": 65}
IOS_TYPES = ("A", "AAAA", "HTTPS")  # iOS asks for HTTPS records next to the addresses of every host it connects to
ANDROID_TYPES = ("A", "AAAA")
# The answers the upstream gives every name it has; the sinkhole answers 0.0.0.0 / :: instead.
UPSTREAM_V4, UPSTREAM_V6 = "192.0.2.1", "2001:db8::1"
BYPASS_PROBES = ("mask.icloud.com", "use-application-dns.net")  # the OS and browser probes the policy answers

# Relative query volume per hour of the day (00:00 first): a police force works around the clock, but most
# phones are in use on the day shifts; the evening peak is the late shift's start overlapping the day shift.
HOURLY = (0.45, 0.35, 0.30, 0.28, 0.28, 0.38, 0.70, 1.30, 1.70, 1.50, 1.40, 1.40,
          1.50, 1.40, 1.40, 1.50, 1.65, 1.95, 1.60, 1.30, 1.10, 0.90, 0.70, 0.55)


@dataclass(frozen=True)
class Mix:
    """What a lookup is for. The shares are of lookups (each lookup is 2 or 3 queries)."""

    platform_share: float = 0.06  # blocked-platform host names beyond those the Tranco draw already gives
    junk_share: float = 0.03  # names that do not exist (typos, stale links, app telemetry for dead hosts)
    probe_share: float = 0.005  # Private Relay and Firefox canary probes
    zipf_s: float = 1.0
    ios_share: float = 0.5
    tcp_share: float = 0.02  # phones that ask over TCP only
    lookups_per_session: float = 5.0  # a phone wakes or opens an app and looks up a handful of hosts
    session_gap: float = 0.15  # mean seconds between those lookups


@dataclass(frozen=True)
class Day:
    """How much the force asks and how the day is replayed."""

    phones: int = 30000
    queries_per_phone_day: float = 3000.0
    seconds_per_hour: float = 8.0  # wall-clock seconds each simulated hour is replayed for, at that hour's rate
    burst_factor: float = 4.0
    burst_seconds: float = 16.0
    hourly: tuple[float, ...] = HOURLY

    def mean_qps(self) -> float:
        return self.phones * self.queries_per_phone_day / 86400

    def hour_qps(self) -> list[float]:
        mean = sum(self.hourly) / len(self.hourly)
        return [self.mean_qps() * h / mean for h in self.hourly]

    def busy_hour(self) -> int:
        rates = self.hour_qps()
        return rates.index(max(rates))

    def slots(self) -> list[Slot]:
        """The replay: each hour at its own rate, and right after the busy hour a burst at ``burst_factor`` times
        the busy hour's rate (shift change: every phone reconnects to the VPN and looks everything up again)."""
        out: list[Slot] = []
        start = 0.0
        rates = self.hour_qps()
        busy = self.busy_hour()
        for hour, qps in enumerate(rates):
            out.append(Slot(f"{hour:02d}:00", start, self.seconds_per_hour, qps))
            start += self.seconds_per_hour
            if hour == busy and self.burst_seconds > 0:
                out.append(Slot(f"{hour:02d}:30 burst", start, self.burst_seconds, qps * self.burst_factor))
                start += self.burst_seconds
        return out


@dataclass(frozen=True)
class Slot:
    label: str
    start: float  # seconds from the start of the replay
    seconds: float
    qps: float  # offered queries per second

    @property
    def end(self) -> float:
        return self.start + self.seconds


@dataclass(frozen=True)
class Phone:
    address: str
    team: str  # the group the address falls in under the example policy ("default" for the rest)
    ios: bool
    tcp: bool


@dataclass
class Names:
    """The names the phones ask about, with the weights they are drawn with."""

    tranco: list[str]
    tranco_cum: list[float]
    platform_hosts: list[str]  # blocked-platform names, weighted by their platform's Tranco rank
    platform_cum: list[float]
    platform_of: dict[str, str] = field(default_factory=dict)

    def every_name(self) -> list[str]:
        """Every name that exists upstream (junk and probes aside)."""
        out = []
        for domain in self.tranco:
            out += [domain, "www." + domain]
        return sorted(set(out) | set(self.platform_hosts))


def zipf_cum(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))


def load_names(top: int = 10000, zipf_s: float = 1.0, tranco: Path = TRANCO,
               blocklists: Path = BLOCKLISTS) -> Names:
    """The Tranco list's first ``top`` names, Zipf-weighted by rank, and the domains of the social and messaging
    platforms (those the example policy blocks), each platform weighted by its best Tranco rank in the full list."""
    ranked = [line.strip().lower() for line in tranco.read_text().splitlines() if line.strip()]
    rank_of = {d: i + 1 for i, d in enumerate(ranked)}
    hosts: list[str] = []
    weights: list[float] = []
    platform_of: dict[str, str] = {}
    for path in sorted(blocklists.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data.get("category") not in ("social", "messaging"):
            continue
        domains = [str(d).lower() for d in data.get("domains") or [] if "*" not in str(d)]
        if not domains:
            continue
        best = min(rank_of.get(d, len(ranked) * 10) for d in domains)
        for d in domains:
            for host in (d, "www." + d):
                hosts.append(host)
                weights.append((1.0 / best ** zipf_s) / (2 * len(domains)))
                platform_of[host] = path.stem
    return Names(ranked[:top], zipf_cum(min(top, len(ranked)), zipf_s), hosts,
                 list(itertools.accumulate(weights)), platform_of)


def make_phones(n: int, mix: Mix, seed: int = 18) -> list[Phone]:
    """``n`` phones on distinct addresses in 127.20.0.0/16: the team pools of the example policy (moved to
    loopback) get ``TEAMS`` phones each (scaled down for a small force), every other phone a default address."""
    rnd = random.Random(seed)
    scale = min(1.0, n / 30000)
    team_nets = {"comms": "127.20.8.0/24", "roads-policing": "127.20.12.0/24", "pilot": "127.20.64.0/20"}
    taken = [ipaddress.ip_network(net) for net in team_nets.values()]
    phones: list[Phone] = []

    def add(address: str, team: str) -> None:
        phones.append(Phone(address, team, rnd.random() < mix.ios_share, rnd.random() < mix.tcp_share))

    for team, count in TEAMS.items():
        hosts = ipaddress.ip_network(team_nets[team]).hosts()
        for _ in range(max(1, round(count * scale))):
            add(str(next(hosts)), team)
    third = [o for o in range(16, 256) if not any(ipaddress.ip_address(f"127.20.{o}.1") in t for t in taken)]
    addresses = (f"127.20.{o}.{h}" for o in third for h in range(1, 255))
    while len(phones) < n:
        add(next(addresses), "default")
    return phones[:n]


class Draw:
    """Random choices for the simulator, seeded: the same seed replays the same day."""

    def __init__(self, names: Names, phones: list[Phone], mix: Mix, seed: int = 18) -> None:
        self.rnd = random.Random(seed)
        self.names = names
        self.phones = phones
        self.mix = mix
        # Heavy and light users: a phone's share of the sessions is log-normal (a few phones ask far more).
        self.phone_cum = list(itertools.accumulate(self.rnd.lognormvariate(0, 1) for _ in phones))

    def phone(self) -> Phone:
        r = self.rnd.random() * self.phone_cum[-1]
        return self.phones[bisect.bisect_left(self.phone_cum, r)]

    def name(self, phone: Phone) -> str:
        r = self.rnd.random()
        mix = self.mix
        if r < mix.probe_share:
            return BYPASS_PROBES[0] if phone.ios else BYPASS_PROBES[1]
        r -= mix.probe_share
        if r < mix.junk_share:
            return "".join(self.rnd.choices(string.ascii_lowercase, k=9)) + ".com"
        r -= mix.junk_share
        names = self.names
        if r < mix.platform_share:
            at = bisect.bisect_left(names.platform_cum, self.rnd.random() * names.platform_cum[-1])
            return names.platform_hosts[at]
        at = bisect.bisect_left(names.tranco_cum, self.rnd.random() * names.tranco_cum[-1])
        domain = names.tranco[at]
        return domain if self.rnd.random() < 0.5 else "www." + domain

    def session_size(self) -> int:
        p = 1.0 / self.mix.lookups_per_session
        k = 1
        while self.rnd.random() > p:
            k += 1
        return k


def to_loopback(network: str) -> str:
    """A 10.x network of the example config as the same network in 127.x; anything else as it was."""
    net = ipaddress.ip_network(network, strict=False)
    if net.version == 4 and net.subnet_of(VPN):  # type: ignore[arg-type]
        moved = int(net.network_address) - int(VPN.network_address) + int(LOOPBACK.network_address)
        return f"{ipaddress.IPv4Address(moved)}/{net.prefixlen}"
    return network


def force_config(upstream: str, listen: str | None = None, metrics: str | None = None, now: float | None = None,
                 source: Path = EXAMPLE_CONFIG) -> dict[str, Any]:
    """deploy/example-force.yaml with its VPN networks moved onto loopback, listening and forwarding on loopback,
    and every exemption's window moved to start a day ago (its length kept), so it is active whenever the run is;
    everything else (policy, rate limit, cache, sinkhole, timeouts) as the file says. ``listen`` and ``metrics``
    None: left to the command line (the file's own are dropped)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config.pop("listen", None)
    config.pop("metrics", None)
    if listen:
        config["listen"] = [listen]
    if metrics:
        config["metrics"] = metrics
    config["upstreams"] = [upstream]
    config["access"]["allow"] = [to_loopback(n) for n in config["access"]["allow"]]
    policy = config["policy"]
    for group in policy["groups"].values():
        if "networks" in group:
            group["networks"] = [to_loopback(n) for n in group["networks"]]
    start = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now(dt.UTC).timestamp(), dt.UTC)
    start = start.replace(microsecond=0) - dt.timedelta(days=1)
    for exemption in policy.get("exemptions", []):
        if "networks" in exemption:
            exemption["networks"] = [to_loopback(n) for n in exemption["networks"]]
        length = _instant(exemption["expires"]) - _instant(exemption["starts"])
        exemption["starts"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        exemption["expires"] = (start + length).strftime("%Y-%m-%dT%H:%M:%SZ")
    return config


def _instant(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


# TTLs of the upstream's answers: most popular names have short TTLs (CDNs and load balancers), a minority an
# hour or more. Drawn once per domain, so a name keeps its TTL through the run.
TTLS = ((30, 0.30), (60, 0.25), (300, 0.25), (3600, 0.20))
HTTPS_SHARE = 0.25  # domains that publish an HTTPS record; the rest answer it with NODATA


def zone_text(names: Names, seed: int = 18) -> str:
    """The upstream's root zone (nsd): every name the phones may ask, with A, AAAA and for some an HTTPS record.
    Junk names are absent, so they get NXDOMAIN."""
    rnd = random.Random(seed)
    lines = ["$TTL 300", ". IN SOA ns.upstream.test. hostmaster.upstream.test. 1 3600 600 86400 60",
             ". IN NS ns.upstream.test."]
    ttl_of: dict[str, tuple[int, bool]] = {}
    for name in names.every_name():
        domain = name.removeprefix("www.")
        if domain not in ttl_of:
            ttl = rnd.choices([t for t, _ in TTLS], [w for _, w in TTLS])[0]
            ttl_of[domain] = (ttl, rnd.random() < HTTPS_SHARE)
        ttl, https = ttl_of[domain]
        lines += [f"{name}. {ttl} IN A {UPSTREAM_V4}", f"{name}. {ttl} IN AAAA {UPSTREAM_V6}"]
        if https:
            lines.append(f'{name}. {ttl} IN HTTPS 1 . alpn="h2,h3"')
    return "\n".join(lines) + "\n"
