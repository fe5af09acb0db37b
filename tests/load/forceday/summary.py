"""The text of a force-day run: what was replayed, what was measured per hour, the plots, and the sizing for a
30,000-phone force derived from the measurements."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from tests.load.forceday import report
from tests.load.forceday.sample import Sample
from tests.load.forceday.sim import Result
from tests.load.forceday.world import Day, Mix

HEADROOM = 0.5  # plan each worker to be at most half busy at the burst


@dataclass
class Facts:
    command: str
    described: str
    build: str
    began: float
    hand_checks_after: list[str]
    alive: bool
    workers: int
    server_cpus: str
    client_cpus: str
    rss_mib: float = math.nan


def summarise(facts: Facts, day: Day, mix: Mix, result: Result, samples: list[Sample], prefix: str) -> str:
    cpus = [f"cpu{c}" for c in facts.client_cpus.split(",")]
    slots = day.slots()
    rows = report.slot_rows(result, samples, slots, cpus)
    whole = report.row("whole day", result.buckets, samples, 0.0, slots[-1].end + 3, cpus)
    busy = rows[[s.label for s in slots].index(f"{day.busy_hour():02d}:00")]
    burst = next((r for r in rows if "burst" in r.label), busy)
    lines = [f"Command: `flock /tmp/loadbench.lock {facts.command}` (took {(time.time() - facts.began) / 60:.0f} min;"
             f" resolver {facts.described}, {facts.build} build, `--workers {facts.workers}` on CPU "
             f"{facts.server_cpus}; the phones and nsd on CPU {facts.client_cpus})", ""]
    lines += verdict_lines(facts, whole, result)
    lines += day_lines(day, mix, whole, result)
    lines += ["", "### Per hour of the day", "",
              "Offered qps: queries the phones sent per second of the hour's replay. Latency from the phone's send to "
              "its receipt of the answer (the simulator's own delays included). Lost: no answer within 3 s. CPU: the "
              "resolver's utime+stime over the hour's replay (100 = one core); CPU µs/query: that ÷ answered. Cache "
              "hit %: hits ÷ (hits + misses) from the resolver's /metrics. TC→TCP: UDP answers truncated by the "
              "rate limit and asked again over TCP. Late lookups: sent more than 50 ms after their time (the "
              "simulator fell behind).", ""]
    lines += report.slot_table(rows)
    lines += ["", "### Plots", ""]
    for name, what in (("qps", "queries per second"), ("latency", "latency"), ("cpu", "CPU"),
                       ("cache", "cache hit ratio, blocked share, wrong verdicts")):
        lines.append(f"- {what}: [{name}.png]({prefix}{name}.png)")
    lines += ["", f"![queries per second]({prefix}qps.png)", f"![latency]({prefix}latency.png)",
              f"![CPU]({prefix}cpu.png)", f"![cache]({prefix}cache.png)", ""]
    lines += sizing_lines(day, busy, burst, whole, facts)
    lines += ["", f"Machine: {os.cpu_count()} × {cpu_model()}, kernel {platform.release()}, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(facts.began))}.", ""]
    return "\n".join(lines)


def verdict_lines(facts: Facts, whole: report.Row, result: Result) -> list[str]:
    lines = [f"**Wrong verdicts: {whole.wrong} of {whole.answered:,} answers.** Each answer's verdict (sinkhole or "
             "not) was compared with the one the policy build gives that phone's address for that name; the "
             "hand-written checks (TikTok for comms, WhatsApp for roads policing, ...) agreed with the policy build "
             "and with the server's answers before the run"
             + (" and after it." if not facts.hand_checks_after else
                f", but not after it: {'; '.join(facts.hand_checks_after)}.")]
    if result.wrong_examples:
        lines += ["", "Wrong answers (first 20):", ""] + [f"- {w}" for w in result.wrong_examples]
    if not facts.alive:
        lines += ["", "**The resolver was not running at the end of the run.**"]
    return lines


def day_lines(day: Day, mix: Mix, whole: report.Row, result: Result) -> list[str]:
    qtypes: dict[str, int] = {}
    for b in result.buckets:
        for k, v in b.qtypes.items():
            qtypes[k] = qtypes.get(k, 0) + v
    sent = max(whole.sent, 1)
    hours = len(day.hourly)
    return [
        "", "### The day replayed", "",
        "| | |", "|---|---|",
        f"| phones | {day.phones:,}, each on its own address in 127.20.0.0/16 |",
        f"| queries per phone per day | {day.queries_per_phone_day:,.0f} |",
        f"| force-wide, real rate | {day.mean_qps():,.0f} qps on average; busy hour "
        f"({day.busy_hour():02d}:00) {max(day.hour_qps()):,.0f}; burst {day.burst_factor:g}× that, "
        f"{max(day.hour_qps()) * day.burst_factor:,.0f} |",
        f"| replay | each of the {hours} hours for {day.seconds_per_hour:g} s at its real rate, the burst for "
        f"{day.burst_seconds:g} s after the busy hour: {day.slots()[-1].end:.0f} s in all (a "
        f"{86400 / (hours * day.seconds_per_hour):.0f}× compression of the day's length, none of its rates) |",
        f"| sent | {whole.sent:,} queries in {result.lookups:,} lookups ({result.sessions:,} sessions) |",
        "| query types | " + ", ".join(f"{k} {v / sent * 100:.1f}%" for k, v in sorted(qtypes.items())) + " |",
        f"| over TCP | {whole.tcp:,} queries ({whole.tcp / sent * 100:.1f}%) |",
        f"| answers blocked | {whole.blocked:,} ({whole.blocked / max(whole.answered, 1) * 100:.1f}%) |",
        f"| mix (of lookups) | Tranco top 10k Zipf(s={mix.zipf_s:g}), name or www.name; plus "
        f"{mix.platform_share * 100:g}% blocked-platform hosts, {mix.junk_share * 100:g}% non-existent names, "
        f"{mix.probe_share * 100:g}% Private Relay / Firefox canary probes; {mix.ios_share * 100:g}% iOS "
        f"(A+AAAA+HTTPS), the rest Android (A+AAAA); {mix.tcp_share * 100:g}% of phones on TCP |",
        "",
        f"Whole day: {whole.answered:,} answered, {whole.lost:,} lost "
        f"({whole.lost / sent * 100:.3f}%), {whole.errors:,} errors (SERVFAIL/REFUSED); latency p50 "
        f"{whole.p50:.3f} ms, p99 {whole.p99:.2f} ms, p99.9 {whole.p999:.1f} ms; resolver CPU "
        f"{whole.cpu_total:.1f} s ({report.fmt(whole.us_per_query, 0)} µs per answered query; per process: "
        + ", ".join(f"pid {pid} {cpu:.1f} s" for pid, cpu in sorted(whole.cpu.items()))
        + f"); cache hit ratio {whole.hit_ratio * 100:.1f}%; {whole.truncated:,} answers truncated by the rate "
        f"limit; {whole.late:,} lookups sent late. The simulator used {whole.simulator:.1f} s of CPU "
        f"({whole.simulator / sent * 1e6:.0f} µs per query sent, so about "
        f"{sent / max(whole.simulator, 1e-9):,.0f} queries a second on a core of its own).",
    ]


def sizing_lines(day: Day, busy: report.Row, burst: report.Row, whole: report.Row, facts: Facts) -> list[str]:
    burst_cores = burst.cpu_total / burst.seconds
    busy_cores = busy.cpu_total / busy.seconds
    workers = max(1, math.ceil(burst_cores / HEADROOM))
    return [
        "### Sizing for 30,000 phones (from this run)", "",
        f"- **Busy hour** ({busy.label}, {busy.sent / busy.seconds:,.0f} qps offered): the resolver used "
        f"{busy_cores * 100:.0f}% of one core ({report.fmt(busy.us_per_query, 0)} µs per answered query), "
        f"p99 {busy.p99:.2f} ms, lost {busy.lost}.",
        f"- **Burst** ({burst.sent / burst.seconds:,.0f} qps offered): {burst_cores * 100:.0f}% of one core "
        f"({report.fmt(burst.us_per_query, 0)} µs per answered query, against "
        f"{report.fmt(busy.us_per_query, 0)} in the busy hour: a query costs less CPU the more come at once), "
        f"p99 {burst.p99:.2f} ms, p99.9 {burst.p999:.1f} ms, lost {burst.lost}.",
        f"- **Workers**: at most {HEADROOM * 100:.0f}% busy at the burst, so that a slower host, a pure-Python "
        f"install or a slow upstream still leaves latency flat: {burst_cores:.2f} cores ÷ {HEADROOM:g} → "
        f"**{workers} worker{'s' if workers > 1 else ''}** {'carry' if workers > 1 else 'carries'} the whole "
        "force's burst on one replica.",
        f"- **Replicas**: N+1, so that one replica may be down at the burst: **2 replicas of {workers} "
        f"worker{'s' if workers > 1 else ''}** (a core per worker) behind the phones' two DNS "
        "addresses; each alone carries the burst, and the busy hour uses "
        f"{busy_cores / workers * 100:.0f}% of one replica.",
    ]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"
