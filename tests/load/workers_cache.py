#!/usr/bin/env python3
"""Workers against one: do N workers keep one cache? Hit ratio and upstream queries per 1,000 client queries.

    flock /tmp/loadbench.lock python3 tests/load/workers_cache.py [--revs HEAD,main] [--workers 1,2] [--seconds 10]

For each revision (exported with ``git archive`` and compiled, as bench.py's ``--resolver-rev``) and worker
count: the resolver with the 100k list, nsd as its upstream, W4's warm-up (its 5,000 popular names, once),
then W4 (5% blocked, 80% those popular names, 15% unique names) for ``--seconds`` at saturation, dnsperf's
many source ports spreading the queries. The resolver's own /metrics, scraped before and after the W4 run
(exact: a scrape waits for every worker's count), give the client queries, the upstream queries and the cache
hit ratio of that run; dnsperf and /proc give qps and CPU µs per answered query. Everything on 127.0.0.1;
server and client share both CPUs (the scale-out setting of RESULTS.md), every run is bounded by dnsperf -l.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import OUT, build_tree, export_revision, say
from loadgen import ANSWER_V4, ZONE, Data
from measure import dnsperf
from procs import Proc, drive, free_port, wait_answer
from servers import DEFAULT_RESOLVER_CONFIG, HOST, start_upstream

CPUS = os.environ.get("LOAD_SERVER_CPUS", "0,1")
SIZE = 100_000
UNIQUE_PER_SECOND = 60_000


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r"^(resolver_(?:queries_total|upstream_requests_total|cache_hits_total|"
                         r"cache_misses_total))(?:\{[^}]*\})? (\S+)$", line)
        if found:
            sums[found[1]] = sums.get(found[1], 0.0) + float(found[2])
    return sums


def measure(source: Path, workers: int, data: Data, auth_port: int, seconds: float, tag: str) -> dict[str, float]:
    port, metrics = free_port(), free_port()
    config = OUT / "conf" / "workers-cache.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(DEFAULT_RESOLVER_CONFIG)
    argv = [sys.executable, "-m", "resolver", "serve", "-c", str(config), "--listen", f"{HOST}:{port}",
            "--upstream", f"{HOST}:{auth_port}", "--blocklist", str(data.blocklist(SIZE)),
            "--workers", str(workers), "--metrics", f"{HOST}:{metrics}"]
    env = dict(os.environ, PYTHONPATH=str(source), PYTHONUNBUFFERED="1")
    logs = OUT / "logs"
    proc = Proc("resolver", argv, CPUS, logs / f"workers-cache-{tag}-{workers}.log", cwd=source, env=env)
    try:
        wait_answer(proc, port, f"sanity.{ZONE}", ANSWER_V4, timeout=300)
        dnsperf(proc, port, data.w4_warmup(), logs / f"workers-cache-{tag}-{workers}-warm.log", seconds=120,
                outstanding=20, once=True)
        before = scrape(metrics)
        lines = int(UNIQUE_PER_SECOND * seconds)
        run = dnsperf(proc, port, data.w4(SIZE, f"wc{tag}{workers}", lines),
                      logs / f"workers-cache-{tag}-{workers}-sat.log", seconds=seconds, outstanding=500, once=True)
        after = scrape(metrics)
    finally:
        proc.stop()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    queries = delta["resolver_queries_total"]
    lookups = delta["resolver_cache_hits_total"] + delta["resolver_cache_misses_total"]
    return {"qps": run.qps, "cpu_us": run.cpu_us_per_query, "answered": run.completed, "counted": queries,
            "upstream_per_1000": 1000 * delta["resolver_upstream_requests_total"] / queries,
            "hit_ratio": delta["resolver_cache_hits_total"] / lookups if lookups else float("nan"),
            "server_cpu_pct": run.server_cpu_pct}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", default="HEAD", help="git revisions to measure, comma separated")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pure", action="store_true", help="the interpreted build")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)

    def body() -> int:
        data = Data(OUT)
        auth_port = free_port()
        upstream = start_upstream(OUT, data, auth_port)
        wait_answer(upstream, auth_port, f"sanity.{ZONE}", ANSWER_V4, timeout=30)
        rows = []
        for rev in args.revs.split(","):
            source, described = export_revision(rev, args.pure)
            build_tree(source, args.pure)
            for workers in (int(w) for w in args.workers.split(",")):
                got = measure(source, workers, data, auth_port, args.seconds, described.split()[1])
                say(f"{described} workers={workers}: {got}")
                rows.append((described, workers, got))
        print("\n| resolver | workers | W4 qps | CPU µs/query | server CPU % | cache hit ratio | "
              "upstream queries per 1,000 client queries | answered (dnsperf) | counted (/metrics) |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for described, workers, got in rows:
            print(f"| {described} | {workers} | {got['qps']:,.0f} | {got['cpu_us']:.1f} | "
                  f"{got['server_cpu_pct']:.0f} | {got['hit_ratio']:.4f} | {got['upstream_per_1000']:.1f} | "
                  f"{got['answered']:,.0f} | "
                  f"{got['counted']:,.0f} |")
        print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.seconds:g} s W4 runs, "
              f"{'pure' if args.pure else 'compiled'} build, CPUs {CPUS} shared by server, dnsperf and nsd")
        return 0

    return drive(body, OUT / "pids", CPUS)


if __name__ == "__main__":
    sys.exit(main())
