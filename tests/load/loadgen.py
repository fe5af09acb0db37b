"""Generated data for the load benchmark: blocklists, the upstream's zone and the dnsperf query files.

Everything is deterministic (seeded) and written under ``tests/load/out/data``; a file that already exists with
the same name is reused, so a second run does not pay for generating a million-domain list again. Names follow
what each workload needs:

- W1 blocked: a random label under a listed domain (``x7k2q.ads.abcdefg.com``), so the subtree rule decides;
- W2 cached allowed: 1,000 names under ``bench.test`` repeated (dnsperf loops over the file) after a warm-up;
- W3 uncached allowed: unique names under ``bench.test`` (``-n 1``: dnsperf never loops, so none repeats);
- W4 mix: 5% as W1, 80% from the top-10k list with a Zipf skew mapped into the zone (``google.com.bench.test``)
  and warmed up, 15% unique names under the same mapped names.

The upstream zone is ``bench.test.`` with a wildcard A record, so every allowed name gets an answer.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from pathlib import Path

ZONE = "bench.test"
ANSWER_V4 = "192.0.2.1"
ZONE_TTL = 3600
SEED = 20240601
TOP_DOMAINS = Path("/work/shared/data/top-domains-10k.txt")
CACHED_POOL = 5_000  # W4's cached part: the 5,000 most popular names (under dnsmasq's 10,000-entry cache)
W2_NAMES = 1_000

_TLDS = ("com", "net", "org", "io", "info", "xyz", "biz", "co", "de", "ru", "top", "site", "online", "app", "me")
_PREFIXES = ("ads", "track", "cdn", "metrics", "px", "t", "stats", "api", "log", "pixel")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ALNUM = _LETTERS + "0123456789"


def parse_size(text: str) -> int:
    """``1k`` -> 1000, ``100k`` -> 100000, ``1M`` -> 1000000, ``5000`` -> 5000."""
    text = text.strip()
    scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


class Data:
    """Paths of the generated files; each method creates its file on first use."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._domains: dict[int, list[str]] = {}

    # ------------------------------------------------------------------------------------------- blocklists

    def domains(self, size: int) -> list[str]:
        """``size`` distinct registrable-looking domains, 30% of them with a service label in front."""
        if size not in self._domains:
            path = self.blocklist(size)
            self._domains[size] = path.read_text().split()
        return self._domains[size]

    def blocklist(self, size: int) -> Path:
        """Plain domain list, one per line: what our resolver and the naive server read."""
        path = self.dir / f"blocklist-{size_label(size)}.txt"
        if not path.exists():
            rng = random.Random(SEED + size)
            seen: set[str] = set()
            choices, randint, rand = rng.choices, rng.randint, rng.random
            while len(seen) < size:
                name = "".join(choices(_LETTERS, k=randint(5, 14))) + "." + _TLDS[randint(0, len(_TLDS) - 1)]
                if rand() < 0.3:
                    name = _PREFIXES[randint(0, len(_PREFIXES) - 1)] + "." + name
                seen.add(name)
            _write_lines(path, sorted(seen))
        return path

    def dnsmasq_blocklist(self, size: int) -> Path:
        """``address=/d/#``: dnsmasq answers 0.0.0.0 / :: for d and every name below it (as Pi-hole's lists do)."""
        path = self.dir / f"dnsmasq-{size_label(size)}.conf"
        if not path.exists():
            _write_lines(path, (f"address=/{d}/#" for d in self.domains(size)))
        return path

    def unbound_blocklist(self, size: int) -> Path:
        """``local-zone: "d." always_null``: 0.0.0.0 / :: for d and below, never forwarded."""
        path = self.dir / f"unbound-{size_label(size)}.conf"
        if not path.exists():
            _write_lines(path, (f'local-zone: "{d}." always_null' for d in self.domains(size)))
        return path

    def probe_blocked(self, size: int) -> str:
        """A name every server must sinkhole once its list is loaded: under the last domain of the list."""
        return "probe." + self.domains(size)[-1]

    # --------------------------------------------------------------------------------------------- the zone

    def zone(self) -> Path:
        path = self.dir / f"{ZONE}.zone"
        _write_lines(path, [
            f"$ORIGIN {ZONE}.",
            f"$TTL {ZONE_TTL}",
            f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 {ZONE_TTL}",
            f"@ IN NS ns.{ZONE}.",
            "ns IN A 127.0.0.1",
            f"* IN A {ANSWER_V4}",
        ])
        return path

    # ------------------------------------------------------------------------------------- dnsperf inputs

    def w1(self, size: int, tag: str, lines: int = 200_000) -> Path:
        path = self.dir / f"w1-{size_label(size)}-{tag}.txt"
        if not path.exists():
            rng = random.Random(f"w1-{size}-{tag}")
            domains = self.domains(size)
            _write_lines(path, (f"{_label(rng)}.{rng.choice(domains)} A" for _ in range(lines)))
        return path

    def w2(self) -> Path:
        path = self.dir / "w2.txt"
        if not path.exists():
            _write_lines(path, (f"c{i:04d}.{ZONE} A" for i in range(W2_NAMES)))
        return path

    def w3(self, tag: str, lines: int) -> Path:
        """Unique names; ``tag`` keeps the saturation and fixed-rate runs of one server process apart."""
        path = self.dir / f"w3-{tag}-{lines}.txt"
        if not path.exists():
            rng = random.Random(f"w3-{tag}")
            _write_lines(path, (f"{tag}{i}-{_label(rng)}.{ZONE} A" for i in range(lines)))
        return path

    def top_names(self) -> list[str]:
        names = [line.strip().lower().rstrip(".") for line in TOP_DOMAINS.read_text().splitlines()]
        return [n for n in names if n and not n.startswith("#")]

    def w4_warmup(self) -> Path:
        path = self.dir / "w4-warmup.txt"
        if not path.exists():
            _write_lines(path, (f"{n}.{ZONE} A" for n in self.top_names()[:CACHED_POOL]))
        return path

    def w4(self, size: int, tag: str, lines: int) -> Path:
        path = self.dir / f"w4-{size_label(size)}-{tag}-{lines}.txt"
        if not path.exists():
            rng = random.Random(f"w4-{size}-{tag}")
            top = self.top_names()
            cached = top[:CACHED_POOL]
            cum_cached = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(cached))))
            cum_top = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(top))))
            domains = self.domains(size)

            def line(i: int) -> str:
                roll = rng.random()
                if roll < 0.05:
                    return f"{_label(rng)}.{rng.choice(domains)} A"
                if roll < 0.85:
                    return f"{rng.choices(cached, cum_weights=cum_cached)[0]}.{ZONE} A"
                return f"{tag}{i}.{rng.choices(top, cum_weights=cum_top)[0]}.{ZONE} A"

            _write_lines(path, (line(i) for i in range(lines)))
        return path


def _label(rng: random.Random) -> str:
    return "".join(rng.choices(_ALNUM, k=rng.randint(4, 10)))


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
    tmp.replace(path)
