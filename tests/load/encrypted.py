#!/usr/bin/env python3
"""Encrypted DNS load (issue 17): DNS over TLS and DNS over HTTPS, our resolver against unbound's own DoT/DoH
listeners and dnsdist as a DoT/DoH front end. Not in the default kit run::

    bash tests/load/run.sh --encrypted [--servers resolver,unbound,dnsdist] [--transports dot,doh] [--duration 10]

What is measured, per server and transport, on the W2 names (1,000 cached names under bench.test, warmed up
first over the same transport):

- **reused**: dnsperf ``-m dot|doh -c 8``: 8 connections held for the whole run, queries pipelined on them (DoH:
  HTTP/2 streams, ``GET ?dns=`` as dnsperf sends by default, ``--doh-method POST`` for the other);
- **serial**: the same 8 connections with one query in flight on each (``-q 8``): how a phone asks. dnsdist's
  DoH (h2o) can only be measured this way: it puts several answers in one TLS record, and dnsperf 2.10's DoH
  then counts only one of them (the rest time out), so with more in flight its rows are empty;
- **handshake**: ``-O num-queries-per-conn=1 -c 32``: every query on a new TCP connection with a full TLS
  handshake (dnsperf offers no session resumption), so the rate is handshakes per second and the CPU per query
  is one handshake plus one query. dnsperf (one core, also doing the client's half of every handshake) is
  the limit of that rate, not the servers: read the CPU column.

CPU µs/query is the server's utime+stime (/proc, every thread) over the run ÷ answered queries. Every server gets
the same certificate (ECDSA P-256, self-signed for 127.0.0.1 per run, under out/tls). dnsdist is a front end
rather than a resolver: it answers W2 from its own packet cache and sends misses to the same nsd upstream, so its
rows are the cost of terminating TLS/HTTP/2 and answering from a cache, which is what the others do on W2 too.

Layout as the rest of the kit: the server on CPU 1, dnsperf and nsd on CPU 0, loopback only, every process
stopped on the way out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import OUT, build_tree, export_revision, say
from loadgen import ANSWER_V4, ZONE, Data
from measure import Run, dnsperf, machine_facts
from procs import HOST, Proc, drive, free_port, wait_answer
from servers import CLIENT_CPU, DEFAULT_RESOLVER_CONFIG, SERVER_CPU, start_upstream

HERE = Path(__file__).resolve().parent
ALL_SERVERS = ("resolver", "unbound", "dnsdist")
ALL_TRANSPORTS = ("dot", "doh")
MODES = ("reused", "serial", "handshake")
LOST_LIMIT = 10.0  # percent: past it a row measures dnsperf's trouble with the server, not the server


@dataclass
class Ports:
    plain: int = field(default_factory=free_port)
    dot: int = field(default_factory=free_port)
    doh: int = field(default_factory=free_port)

    def of(self, transport: str) -> int:
        return self.dot if transport == "dot" else self.doh


@dataclass
class Setup:
    data: Data
    auth_port: int
    cert: Path
    key: Path
    resolver_src: Path
    resolver_config: str


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, made afresh for each run."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _conf(name: str, text: str) -> Path:
    (OUT / "conf").mkdir(exist_ok=True)
    path = OUT / "conf" / name
    path.write_text(text)
    return path


def _log(name: str) -> Path:
    (OUT / "logs").mkdir(exist_ok=True)
    return OUT / "logs" / f"enc-{name}.log"


def start_resolver(setup: Setup, ports: Ports) -> Proc:
    config = _conf("enc-resolver.yaml", setup.resolver_config)
    argv = [sys.executable, "-m", "resolver", "serve", "-c", str(config), "--listen", f"{HOST}:{ports.plain}",
            "--dot", f"{HOST}:{ports.dot}", "--doh", f"{HOST}:{ports.doh}", "--tls-cert", str(setup.cert),
            "--tls-key", str(setup.key), "--upstream", f"{HOST}:{setup.auth_port}", "--workers", "1",
            "--blocklist", str(setup.data.blocklist(1_000))]
    env = dict(os.environ, PYTHONPATH=str(setup.resolver_src), PYTHONUNBUFFERED="1")
    return Proc("resolver", argv, SERVER_CPU, _log("resolver"), cwd=setup.resolver_src, env=env)


def start_unbound(setup: Setup, ports: Ports) -> Proc:
    """unbound as in servers.Unbound (two threads on the one core), with its own DoT and DoH (nghttp2) ports."""
    config = _conf("enc-unbound.conf", "\n".join([
        "server:",
        f"  interface: {HOST}@{ports.plain}",
        f"  interface: {HOST}@{ports.dot}",
        f"  interface: {HOST}@{ports.doh}",
        f"  tls-port: {ports.dot}",
        f"  https-port: {ports.doh}",
        f'  tls-service-key: "{setup.key}"',
        f'  tls-service-pem: "{setup.cert}"',
        '  http-endpoint: "/dns-query"',
        "  incoming-num-tcp: 256",  # the default (10 per thread) refuses the handshake run's connection churn
        "  do-ip6: no",
        "  num-threads: 2",
        "  so-reuseport: yes",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{OUT / "conf"}"',
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 1",
        "  do-daemonize: no",
        '  module-config: "iterator"',
        "  do-not-query-localhost: no",
        f"  access-control: {HOST}/32 allow",
        '  local-zone: "test." nodefault',
        "forward-zone:",
        '  name: "."',
        f"  forward-addr: {HOST}@{setup.auth_port}",
        "remote-control:",
        "  control-enable: no",
        "",
    ]))
    return Proc("unbound", ["unbound", "-d", "-c", str(config)], SERVER_CPU, _log("unbound"))


def start_dnsdist(setup: Setup, ports: Ports) -> Proc:
    """dnsdist terminating DoT and DoH, a packet cache in front, nsd behind (no security polling: offline box)."""
    config = _conf("enc-dnsdist.conf", "\n".join([
        f'setLocal("{HOST}:{ports.plain}")',
        'setACL({"127.0.0.0/8"})',
        'setSecurityPollSuffix("")',
        f'newServer({{address="{HOST}:{setup.auth_port}", name="nsd", checkName="sanity.{ZONE}."}})',
        "getPool(''):setCache(newPacketCache(100000, {}))",
        f'addTLSLocal("{HOST}:{ports.dot}", "{setup.cert}", "{setup.key}")',
        f'addDOHLocal("{HOST}:{ports.doh}", "{setup.cert}", "{setup.key}", "/dns-query")',
        "",
    ]))
    return Proc("dnsdist", ["dnsdist", "--supervised", "--disable-syslog", "-C", str(config)], SERVER_CPU,
                _log("dnsdist"))


def start_py_spy(proc: Proc, stem: str, seconds: float) -> Proc | None:
    """Sample the server's Python stacks for the run (``--py-spy``: collapsed stacks, for flame graphs and
    ``pyspy_top.py``); py-spy samples from CPU 0, pausing the process for each sample (native frames need it):
    time in C libraries (nghttp2, OpenSSL) shows as theirs, and mypyc's compiled functions by their C names."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        say("--py-spy: py-spy is not installed (pip install py-spy)")
        return None
    out = OUT / f"pyspy-{stem}.txt"
    argv = [binary, "record", "--native", "-r", "250", "-d", f"{max(1, int(seconds) - 1)}",
            "-f", "raw", "-o", str(out), "-p", str(proc.pid)]
    return Proc("py-spy", argv, CLIENT_CPU, OUT / "logs" / f"pyspy-{stem}.log")


STARTERS = {"resolver": start_resolver, "unbound": start_unbound, "dnsdist": start_dnsdist}


@dataclass
class Row:
    server: str
    transport: str
    mode: str
    run: Run | None = None
    error: str = ""


def transport_args(transport: str, port: int, method: str) -> tuple[str, ...]:
    if transport == "dot":
        return ("-m", "dot")
    return ("-m", "doh", "-O", f"doh-uri=https://{HOST}:{port}/dns-query", "-O", f"doh-method={method}")


def measure(setup: Setup, name: str, args: argparse.Namespace) -> list[Row]:
    ports = Ports()
    proc = STARTERS[name](setup, ports)
    rows: list[Row] = []
    logs = OUT / "logs"
    try:
        wait_answer(proc, ports.plain, f"sanity.{ZONE}", ANSWER_V4, timeout=60)
        say(f"[{name}] ready (pid {proc.pid}): plain {ports.plain}, DoT {ports.dot}, DoH {ports.doh}")
        for transport in args.transports:
            port, extra = ports.of(transport), transport_args(transport, ports.of(transport), args.doh_method)
            warm = dnsperf(proc, port, setup.data.w2(), logs / f"enc-{name}-{transport}-warm.log", seconds=60,
                           outstanding=args.warm_outstanding, once=True, extra=extra)
            if warm.completed < warm.sent or warm.noerror_pct < 99:
                raise RuntimeError(f"{transport} warm-up: {warm.completed}/{warm.sent} answered, "
                                   f"NOERROR {warm.noerror_pct:.1f}%")
            for mode in args.modes:
                row = Row(name, transport, mode)
                more = extra + (("-O", "num-queries-per-conn=1", "-c", str(args.handshake_clients))
                                if mode == "handshake" else ())
                outstanding = {"reused": args.outstanding, "serial": 8}.get(mode, args.handshake_outstanding)
                seconds = args.handshake_duration if mode == "handshake" else args.duration
                spy = start_py_spy(proc, f"{name}-{transport}-{mode}", seconds) \
                    if args.py_spy and name == "resolver" else None
                try:
                    row.run = dnsperf(proc, port, setup.data.w2(), logs / f"enc-{name}-{transport}-{mode}.log",
                                      seconds=seconds, outstanding=outstanding, extra=more)
                    if spy is not None:
                        spy.popen.wait(30)
                    r = row.run
                    say(f"[{name}] {transport} {mode}: {r.qps:,.0f} qps, lost {r.lost_pct:.2f}%, "
                        f"{r.cpu_us_per_query:.1f} CPU µs/query, server CPU {r.server_cpu_pct:.0f}%, "
                        f"NOERROR {r.noerror_pct:.1f}%")
                except RuntimeError as err:
                    row.error = str(err).splitlines()[0]
                    say(f"[{name}] {transport} {mode} FAILED: {err}")
                rows.append(row)
    except RuntimeError as err:
        say(f"[{name}] FAILED: {err}")
        rows.append(Row(name, "-", "-", error=str(err).splitlines()[0]))
    finally:
        proc.stop()
    return rows


def render(rows: list[Row], args: argparse.Namespace, facts: list[tuple[str, str]]) -> str:
    head = (f"Reused: {args.duration:g} s, `-c 8 -q {args.outstanding}`. Serial: {args.duration:g} s, `-c 8 -q 8`. "
            f"Handshake: {args.handshake_duration:g} s, `-c {args.handshake_clients} -q {args.handshake_outstanding} "
            f"-O num-queries-per-conn=1`. DoH method {args.doh_method}.")
    out = [head, "",
           "| transport | connections | server | qps | lost % | avg ms | CPU µs/query | server CPU % | "
           "other on its CPU % | NOERROR % |", "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        if row.run is not None and row.run.lost_pct > LOST_LIMIT:  # dnsdist's pipelined DoH under dnsperf
            row.error, row.run = f"not measured: dnsperf lost {row.run.lost_pct:.0f}% of the queries", None
        if row.run is None:
            out.append(f"| {row.transport} | {row.mode} | {row.server} | {row.error} | | | | | | |")
            continue
        r = row.run
        out.append(f"| {row.transport} | {row.mode} | {row.server} | {r.qps:,.0f} | {r.lost_pct:.2f} | "
                   f"{r.avg_ms:.3f} | {r.cpu_us_per_query:.1f} | {r.server_cpu_pct:.0f} | {r.other_cpu_pct:.0f} | "
                   f"{r.noerror_pct:.1f} |")
    ours = {(r.transport, r.mode): r.run for r in rows if r.server == "resolver" and r.run}
    peers = [p for p in ALL_SERVERS[1:] if any(r.server == p and r.run for r in rows)]
    if ours and peers:
        out += ["", "Ratios, resolver ÷ peer: CPU µs/query (lower is better for us) · qps (higher is better for us)",
                "", "| transport | connections | " + " | ".join(f"÷{p} CPU | ÷{p} qps" for p in peers) + " |",
                "|---|---|" + "--:|--:|" * len(peers)]
        for (transport, mode), run in ours.items():
            cells = []
            for peer in peers:
                other = next((r.run for r in rows if r.server == peer and r.transport == transport
                              and r.mode == mode and r.run), None)
                cells += ([f"{run.cpu_us_per_query / other.cpu_us_per_query:.2f}", f"{run.qps / other.qps:.2f}"]
                          if other else ["–", "–"])
            out.append(f"| {transport} | {mode} | " + " | ".join(cells) + " |")
    out += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encrypted", action="store_true", help="(run.sh's switch to this driver)")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS))
    parser.add_argument("--transports", default=",".join(ALL_TRANSPORTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per reused-connection run")
    parser.add_argument("--handshake-duration", type=float, default=5.0, help="seconds per handshake run")
    parser.add_argument("--outstanding", type=int, default=500, help="dnsperf -q for the reused runs")
    parser.add_argument("--handshake-outstanding", type=int, default=32, help="dnsperf -q for the handshake runs")
    parser.add_argument("--handshake-clients", type=int, default=32,
                        help="dnsperf -c for the handshake runs (the resolver admits 32 connections per client)")
    parser.add_argument("--warm-outstanding", type=int, default=8, help="dnsperf -q for the warm-up pass")
    parser.add_argument("--doh-method", choices=("GET", "POST"), default="GET")
    parser.add_argument("--py-spy", action="store_true", help="sample the resolver's stacks during its runs")
    parser.add_argument("--resolver-src", type=Path, default=HERE.parents[1])
    parser.add_argument("--resolver-rev", help="measure this git revision (exported) instead of the work tree")
    parser.add_argument("--pure", action="store_true", help="measure the interpreted build (no mypyc)")
    args = parser.parse_args(argv)
    for name, known in (("servers", ALL_SERVERS), ("transports", ALL_TRANSPORTS), ("modes", MODES)):
        chosen = [c.strip() for c in getattr(args, name).split(",") if c.strip()]
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise SystemExit(f"unknown {name}: {', '.join(unknown)} (known: {', '.join(known)})")
        setattr(args, name, [k for k in known if k in chosen])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = {"dnsperf", "nsd", "openssl", "taskset"} | {s for s in args.servers if s != "resolver"}
    missing = sorted(t for t in tools if shutil.which(t) is None)
    if missing:
        print(f"missing: {', '.join(missing)}; `bash tests/load/run.sh --encrypted` installs them", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    return drive(lambda: run(args), OUT / "pids", CLIENT_CPU)


def run(args: argparse.Namespace) -> int:
    data = Data(OUT)
    data.blocklist(1_000)
    auth_port = free_port()
    upstream = start_upstream(OUT, data, auth_port)
    wait_answer(upstream, auth_port, f"sanity.{ZONE}", ANSWER_V4, timeout=30)
    source, described = args.resolver_src.resolve(), ""
    if args.resolver_rev:
        source, described = export_revision(args.resolver_rev, args.pure)
    if "resolver" in args.servers:
        build_tree(source, args.pure)
    cert, key = make_certificate(OUT / "tls")
    setup = Setup(data, auth_port, cert, key, source, DEFAULT_RESOLVER_CONFIG)
    rows = [row for name in args.servers for row in measure(setup, name, args)]
    facts = machine_facts(source, described)
    facts.append(("dnsdist", subprocess.run(["dnsdist", "--version"], capture_output=True, text=True).stdout
                  .splitlines()[0] if shutil.which("dnsdist") else "not installed"))
    facts.append(("h2 / hpack / h11", " / ".join(_version(p) for p in ("h2", "hpack", "h11"))))
    command = "bash tests/load/run.sh " + " ".join(sys.argv[1:])
    table = f"Command: `{command.strip()}`\n\n" + render(rows, args, facts)
    print()
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"encrypted-{stamp}.md").write_text(table + "\n")
    say(f"table written to {OUT / f'encrypted-{stamp}.md'}")
    return 1 if any(r.error for r in rows) else 0


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
