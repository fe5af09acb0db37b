"""The one table (three, in fact: throughput, ratios, blocklist sizes) as Markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadgen import size_label
from measure import Run

WORKLOAD_NAMES = {
    "W1": "W1 blocked",
    "W2": "W2 cached",
    "W3": "W3 uncached",
    "W4": "W4 mix",
}
PEERS = ("dnsmasq", "unbound", "dnslib", "ceiling")


@dataclass
class Cell:
    """Everything measured for one server at one blocklist size."""

    server: str
    size: int
    load_s: float = math.nan
    rss_ready_kib: int = 0
    rss_after_kib: int = 0
    hwm_kib: int = 0
    reload_method: str = ""
    reload_s: float = math.nan
    reload_peak_kib: int = 0
    reload_probes: list[float | None] = field(default_factory=list)  # latency of each probe during the reload
    saturated: dict[str, Run] = field(default_factory=dict)
    fixed: dict[str, Run] = field(default_factory=dict)
    error: str = ""

    @property
    def reload_probe_text(self) -> str:
        """``max 12 ms, 0/40 unanswered``: whether the server kept answering while it reloaded."""
        if not self.reload_probes:
            return "–"
        answered = [p for p in self.reload_probes if p is not None]
        lost = len(self.reload_probes) - len(answered)
        worst = f"max {1000 * max(answered):,.0f} ms" if answered else "none answered"
        return f"{worst}, {lost}/{len(self.reload_probes)} unanswered"


def _f(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f}" if kib else "–"


def _ratio(a: float, b: float) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}"


def render(cells: list[Cell], *, main_size: int, rate: int, seconds: float, fixed_seconds: float,
           outstanding: int, facts: list[tuple[str, str]], notes: list[str], repeat: int = 1) -> str:
    out: list[str] = []
    add = out.append
    main = [c for c in cells if c.size == main_size]
    workloads = [w for w in WORKLOAD_NAMES if any(w in c.saturated for c in main)]

    add(f"### Throughput and latency, blocklist {size_label(main_size)}")
    add("")
    best = f" (the best of {repeat} runs by qps)" if repeat > 1 else ""
    add(f"Saturation: {seconds:g} s per run{best}, {outstanding} queries outstanding. Fixed load: `-Q {rate}` for "
        f"{fixed_seconds:g} s, latency percentiles from dnsperf's per-query lines. CPU µs/query: the server's "
        "utime+stime over the saturation run ÷ answered queries. Server CPU %: that time ÷ run time (100 = one core "
        "saturated; unbound's two threads share the one core). Other on its CPU %: user+system time on the server's "
        "core that was not the server's (other tenants of this machine): noise, which lowers qps but hardly CPU/query.")
    add("")
    add("| workload | server | qps | lost % | avg ms | max ms | CPU µs/query | server CPU % | other on its CPU % | "
        f"NOERROR % | p50 ms @{rate // 1000}k | p99 ms @{rate // 1000}k | lost % @{rate // 1000}k |")
    add("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for w in workloads:
        for c in main:
            s = c.saturated.get(w)
            if s is None:
                continue
            f = c.fixed.get(w)
            add(f"| {WORKLOAD_NAMES[w]} | {c.server} | {_f(s.qps, 0)} | {_f(s.lost_pct, 2)} | {_f(s.avg_ms, 3)} | "
                f"{_f(s.max_ms, 1)} | {_f(s.cpu_us_per_query, 1)} | {_f(s.server_cpu_pct, 0)} | "
                f"{_f(s.other_cpu_pct, 0)} | {_f(s.noerror_pct, 1)} | "
                f"{_f(f.percentile_ms(50), 3) if f else '–'} | {_f(f.percentile_ms(99), 3) if f else '–'} | "
                f"{_f(f.lost_pct, 2) if f else '–'} |")
    add("")

    ours = next((c for c in main if c.server == "resolver"), None)
    peers = [p for p in PEERS if any(c.server == p for c in main)]
    if ours is not None and peers:
        add("### Ratios (resolver ÷ peer): qps (higher is better for us) · CPU µs/query (lower is better for us)")
        add("")
        add("| workload | " + " | ".join(f"resolver/{p} qps | resolver/{p} CPU" for p in peers) + " |")
        add("|---|" + "--:|--:|" * len(peers))
        for w in workloads:
            mine = ours.saturated.get(w)
            row = [WORKLOAD_NAMES[w]]
            for p in peers:
                theirs = next((c.saturated.get(w) for c in main if c.server == p), None)
                if mine is None or theirs is None:
                    row += ["–", "–"]
                else:
                    row += [_ratio(mine.qps, theirs.qps), _ratio(mine.cpu_us_per_query, theirs.cpu_us_per_query)]
            add("| " + " | ".join(row) + " |")
        add("")

    sized = [c for c in cells if c.server != "ceiling"]
    if sized:
        add("### Blocklist size: memory, load and reload (W1 at every size)")
        add("")
        add("Load: process start → first sinkhole answer. RSS ready: right after that; after run: after the "
            "workloads; HWM: peak over the life of the process. Reload: signal → reload done (log line), RSS "
            "sampled every 50 ms and VmHWM reset before (clear_refs). Probes: a blocked name asked every 50 ms "
            "during the reload; unanswered = no reply within 1 s.")
        add("")
        add("| size | server | load s | RSS ready MiB | RSS after run MiB | HWM MiB | reload | reload s | "
            "peak RSS reload MiB | probes during reload | W1 qps | W1 CPU µs/query |")
        add("|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|")
        for c in sorted(sized, key=lambda c: c.size):
            w1 = c.saturated.get("W1")
            add(f"| {size_label(c.size)} | {c.server} | {_f(c.load_s, 2)} | {_mib(c.rss_ready_kib)} | "
                f"{_mib(c.rss_after_kib)} | {_mib(c.hwm_kib)} | {c.reload_method} | {_f(c.reload_s, 2)} | "
                f"{_mib(c.reload_peak_kib)} | {c.reload_probe_text} | {_f(w1.qps, 0) if w1 else '–'} | "
                f"{_f(w1.cpu_us_per_query, 1) if w1 else '–'} |")
        add("")

    failed = [c for c in cells if c.error]
    if failed or notes:
        add("### Notes")
        add("")
        for note in notes:
            add(f"- {note}")
        for c in failed:
            add(f"- {c.server} at {size_label(c.size)} failed: {c.error}")
        add("")

    add("### Machine")
    add("")
    add("| | |")
    add("|---|---|")
    for key, value in facts:
        add(f"| {key} | {value} |")
    add("")
    return "\n".join(out)
