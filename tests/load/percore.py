#!/usr/bin/env python3
"""CPU per answered query, resolver builds against dnsmasq (and the Python floor, floor.py), W1 and W2, at
saturation and at fixed offered rates: issue 16's measurement, in one run.

    flock /tmp/loadbench.lock python3 tests/load/percore.py --rev before=main --rev after=HEAD \\
        --servers dnsmasq,floor-mmsg --rates 20000,5000 --raw tests/load/raw/issue16/NAME

Every server alone on CPU 1 (one worker), dnsperf and nsd on CPU 0, 100k-name list, ``--duration`` seconds per
run (10 as in the issue). CPU µs/query = the server's utime+stime over the run ÷ answered queries, at every rate:
at saturation a wake-up finds many datagrams waiting, at a moderate fixed rate few, so both are reported. The
dnsperf outputs (minus their per-query lines) and the table go to ``--raw``. It uses bench.py's data, servers and
build; each ``--rev`` is exported and compiled (``--pure``: interpreted) as bench.py does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import OUT, build_tree, export_revision, say
from loadgen import ANSWER_V4, ZONE, Data, parse_size, size_label
from measure import Run, dnsperf, machine_facts
from procs import Proc, drive, free_port, wait_answer
from servers import CLIENT_CPU, DEFAULT_RESOLVER_CONFIG, SERVER_CPU, SERVERS, Context, Server, start_upstream

HERE = Path(__file__).resolve().parent
FLOOR_MODES = ("protocol", "recvfrom", "recvmmsg", "mmsg")


class Floor(Server):
    """floor.py in one mode: a canned answer from a uvloop reader, no DNS work."""

    blocks = False

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"floor-{mode}"

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        argv = [sys.executable, str(HERE / "floor.py"), "--listen", f"127.0.0.1:{port}", "--mode", self.mode]
        env = dict(os.environ, PYTHONPATH=str(ctx.resolver_src))
        return Proc(self.name, argv, SERVER_CPU, self._log(ctx, size), env=env)


@dataclass
class Row:
    workload: str
    server: str
    runs: dict[str, Run] = field(default_factory=dict)  # "sat" or the rate -> the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", default=[], metavar="LABEL=REV",
                        help="a resolver revision to measure, e.g. before=main (repeatable; none: no resolver)")
    parser.add_argument("--servers", default="dnsmasq",
                        help="comma list of dnsmasq, ceiling, floor-" + ", floor-".join(FLOOR_MODES))
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--size", default="100k")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    parser.add_argument("--outstanding", type=int, default=500, help="dnsperf -q")
    parser.add_argument("--rates", default="20000", help="fixed offered rates (dnsperf -Q), comma list; '' for none")
    parser.add_argument("--pure", action="store_true", help="measure the revisions' interpreted build")
    parser.add_argument("--raw", type=Path, help="directory for the dnsperf outputs and the table")
    args = parser.parse_args(argv)
    args.revs = [tuple(r.split("=", 1)) if "=" in r else (r, r) for r in args.rev]
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in args.server_list:
        if name not in ("dnsmasq", "ceiling") and name.removeprefix("floor-") not in FLOOR_MODES:
            raise SystemExit(f"unknown server {name}")
    args.workload_list = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(exist_ok=True)
    return drive(lambda: run(args), OUT / "pids", CLIENT_CPU)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data = Data(OUT)
    size = parse_size(args.size)
    data.blocklist(size)
    data.dnsmasq_blocklist(size)
    auth_port = free_port()
    upstream = start_upstream(OUT, data, auth_port)
    wait_answer(upstream, auth_port, f"sanity.{ZONE}", ANSWER_V4, timeout=30)
    contexts: list[tuple[str, Context]] = []
    described = []
    for label, rev in args.revs:
        source, text = export_revision(rev, args.pure)
        build_tree(source, args.pure)
        contexts.append((label, Context(OUT, data, auth_port, source, DEFAULT_RESOLVER_CONFIG, 1)))
        described.append(f"{label} = {text}")
    plain = contexts[-1][1] if contexts else Context(OUT, data, auth_port, HERE.parents[1], DEFAULT_RESOLVER_CONFIG, 1)
    servers: list[tuple[str, Server, Context]] = [(f"resolver {label}", SERVERS["resolver"], ctx)
                                                  for label, ctx in contexts]
    for name in args.server_list:
        server = SERVERS[name] if name in SERVERS else Floor(name.removeprefix("floor-"))
        servers.append((name, server, plain))
    if args.raw:
        args.raw.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for workload in args.workload_list:
        for shown, server, ctx in servers:
            row = Row(workload, shown)
            measure(row, server, ctx, size, args)
            rows.append(row)
            if not upstream.alive():
                raise RuntimeError("the upstream (nsd) died")
    table = render(rows, args, described, plain, time.monotonic() - started)
    print()
    print(table)
    if args.raw:
        (args.raw / "table.md").write_text(table)
        say(f"table and dnsperf outputs in {args.raw}")
    return 0


def measure(row: Row, server: Server, ctx: Context, size: int, args: argparse.Namespace) -> None:
    port = free_port()
    probe = ctx.data.probe_blocked(size) if server.blocks else f"probe.{ZONE}"
    proc = server.start(ctx, size, port)
    tag = row.server.replace(" ", "-")
    try:
        wait_answer(proc, port, probe, "0.0.0.0" if server.blocks else ANSWER_V4, timeout=120)
        data = ctx.data
        files = {"W1": (data.w1(size, "s"), data.w1(size, "f")), "W2": (data.w2(), data.w2())}[row.workload]
        if row.workload == "W2":
            one(proc, port, row, tag, "warm", files[0], args, seconds=60, outstanding=20, once=True)
        row.runs["sat"] = one(proc, port, row, tag, "sat", files[0], args)
        for rate in args.rate_list:
            row.runs[str(rate)] = one(proc, port, row, tag, f"q{rate}", files[1], args, rate=rate, verbose=True)
    finally:
        proc.stop()


def one(proc: Proc, port: int, row: Row, tag: str, kind: str, datafile: Path, args: argparse.Namespace,
        **kwargs: object) -> Run:
    log = OUT / "logs" / f"percore-{tag}-{row.workload}-{kind}.log"
    log.parent.mkdir(exist_ok=True)
    options: dict[str, object] = {"seconds": args.duration, "outstanding": args.outstanding, **kwargs}
    result = dnsperf(proc, port, datafile, log, **options)  # type: ignore[arg-type]
    if args.raw and kind != "warm":
        kept = [line for line in log.read_text(errors="replace").splitlines(keepends=True)
                if not line.startswith("> ")]  # the per-query lines of -v: percentiles are in the table
        (args.raw / log.name.removeprefix("percore-").replace(".log", ".txt")).write_text("".join(kept))
    say(f"[{row.server}] {row.workload} {kind}: {result.qps:,.0f} qps, {result.cpu_us_per_query:.2f} CPU µs/query, "
        f"server CPU {result.server_cpu_pct:.0f}%, other {result.other_cpu_pct:.0f}%, lost {result.lost_pct:.2f}%")
    return result


def render(rows: list[Row], args: argparse.Namespace, described: list[str], ctx: Context, took: float) -> str:
    heads = ["workload", "server", "sat qps", "sat CPU µs/q", "sat server CPU %", "sat other %"]
    for rate in args.rate_list:
        heads += [f"@{rate} CPU µs/q", f"@{rate} server CPU %", f"@{rate} p50 ms", f"@{rate} p99 ms",
                  f"@{rate} lost %"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "--:|" * (len(heads) - 2)]
    for row in rows:
        sat = row.runs.get("sat")
        cells = [row.workload, row.server]
        cells += ([f"{sat.qps:,.0f}", f"{sat.cpu_us_per_query:.2f}", f"{sat.server_cpu_pct:.0f}",
                   f"{sat.other_cpu_pct:.0f}"] if sat else ["–"] * 4)
        for rate in args.rate_list:
            fixed = row.runs.get(str(rate))
            cells += ([f"{fixed.cpu_us_per_query:.2f}", f"{fixed.server_cpu_pct:.0f}", f"{fixed.percentile_ms(50):.3f}",
                       f"{fixed.percentile_ms(99):.3f}", f"{fixed.lost_pct:.2f}"] if fixed else ["–"] * 5)
        lines.append("| " + " | ".join(cells) + " |")
    command = "python3 tests/load/percore.py " + " ".join(sys.argv[1:])
    facts = dict(machine_facts(ctx.resolver_src))
    notes = [
        f"Command: `{command.strip()}` (took {took / 60:.1f} min)",
        "",
        f"Blocklist {size_label(parse_size(args.size))}; each server alone on CPU {SERVER_CPU} (one worker), dnsperf "
        f"and nsd on CPU {CLIENT_CPU}; {args.duration:g} s per dnsperf run; saturation at -q {args.outstanding}; "
        "fixed rates with -Q. CPU µs/q: the server's utime+stime over the run ÷ answered queries.",
        "",
        *[f"- resolver {d}" for d in described],
        f"- {facts['date']}, {facts['CPU']}, {facts['nproc']} CPUs, kernel {facts['kernel']}, Python "
        f"{facts['Python']}, uvloop {facts['uvloop']}, dnsperf {facts['dnsperf']}, {facts['dnsmasq']}",
        "",
    ]
    return "\n".join(notes + lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
