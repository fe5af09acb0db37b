"""Replay a force day against the resolver: ``python -m tests.load.forceday [--write-results]``.

Starts, all on loopback: nsd (the upstream, a root zone holding every name the phones ask) and the resolver
(deploy/example-force.yaml moved onto loopback), the resolver pinned to its own CPU and the phones and nsd to the
other. Then 30,000 phones replay the day, every answer checked; the resolver's CPU and cache counters are sampled
meanwhile. Writes plots and a summary to out/ and, with --write-results, the "Force day" section of
tests/load/RESULTS.md and its plots (tests/load/forceday/plots/). Run it under ``flock /tmp/loadbench.lock``.
Needs nsd (Debian's package) and matplotlib (``pip install -e '.[test,load]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from tests.load.forceday import oracle, report, sim, world
from tests.load.forceday.sample import Sample, Sampler
from tests.load.forceday.summary import Facts, summarise
from tests.load.procs import Proc, free_port, set_pidfile, stop_all, wait_answer

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "RESULTS.md"
PLOTS = HERE / "plots"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    day, mix = world.Day(), world.Mix()
    p = argparse.ArgumentParser(prog="python -m tests.load.forceday", description=__doc__.split("\n\n")[0])
    p.add_argument("--phones", type=int, default=day.phones)
    p.add_argument("--queries-per-phone-day", type=float, default=day.queries_per_phone_day)
    p.add_argument("--seconds-per-hour", type=float, default=day.seconds_per_hour,
                   help="wall-clock seconds each simulated hour is replayed for (at that hour's real rate)")
    p.add_argument("--burst-seconds", type=float, default=day.burst_seconds)
    p.add_argument("--top", type=int, default=10000, help="how many Tranco names the phones draw from")
    p.add_argument("--tcp-share", type=float, default=mix.tcp_share)
    p.add_argument("--workers", type=int, default=1, help="resolver --workers (processes of the one replica)")
    p.add_argument("--server-cpus", default=os.environ.get("LOAD_SERVER_CPUS", "1"))
    p.add_argument("--client-cpus", default=os.environ.get("LOAD_CLIENT_CPUS", "0"))
    p.add_argument("--resolver-rev", metavar="REV", help="export REV and build it with mypyc (as pip install does)")
    p.add_argument("--resolver-src", type=Path, metavar="DIR", help="serve from this tree instead (built already)")
    p.add_argument("--out", type=Path, default=HERE.parent / "out" / "forceday")
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def say(text: str) -> None:
    print(f"forceday: {text}", file=sys.stderr, flush=True)


def export_and_build(rev: str, out: Path) -> tuple[Path, str]:
    repo = world.REPO
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    target = out / f"src-{sha[:12]}"
    if not (target / "resolver").is_dir():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha, "resolver", "blocklists",
                                  "pyproject.toml", "setup.py", "README.md"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        say(f"compiling {sha[:12]} with mypyc in {target} (about a minute and a half)")
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=target, check=True,
                       stdout=subprocess.DEVNULL)
    return target, f"git {sha[:12]} ({rev}, exported)"


def start_nsd(out: Path, names: world.Names, cpus: str) -> tuple[Proc, int]:
    port = free_port()
    (out / "root.zone").write_text(world.zone_text(names))
    conf = out / "nsd.conf"
    conf.write_text("\n".join([
        "server:", f"  ip-address: 127.0.0.1@{port}", "  server-count: 1", '  username: ""', '  chroot: ""',
        f'  zonesdir: "{out}"', f'  pidfile: "{out / "nsd.pid"}"', f'  xfrdfile: "{out / "nsd-xfrd.state"}"',
        f'  zonelistfile: "{out / "nsd-zone.list"}"', '  database: ""', "  do-ip6: no", "  verbosity: 1",
        "  rrl-ratelimit: 0", "  rrl-whitelist-ratelimit: 0",
        "remote-control:", "  control-enable: no", "zone:", '  name: "."', '  zonefile: "root.zone"', ""]))
    proc = Proc("nsd", ["nsd", "-d", "-c", str(conf)], cpus, out / "nsd.log")
    wait_answer(proc, port, "www.google.com", world.UPSTREAM_V4, timeout=30)
    return proc, port


def start_resolver(args: argparse.Namespace, out: Path, src: Path, nsd_port: int) -> tuple[Proc, int, int, Path]:
    port, metrics = free_port(), free_port()
    config = world.force_config(f"127.0.0.1:{nsd_port}", f"127.0.0.1:{port}", f"127.0.0.1:{metrics}")
    path = out / "force-loopback.yaml"
    path.write_text("# deploy/example-force.yaml moved onto loopback by tests/load/forceday (world.force_config)\n"
                    + yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "resolver", "serve", "-c", str(path), "--workers", str(args.workers)]
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1")
    proc = Proc("resolver", argv, args.server_cpus, out / "resolver.log", cwd=src, env=env)
    wait_answer(proc, port, "www.google.com", world.UPSTREAM_V4, timeout=60)
    return proc, port, metrics, path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    set_pidfile(Path(os.environ.get("LOAD_PIDFILE", out / "pids")))
    os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        return run(args, out, sys.argv[1:] if argv is None else argv)
    finally:
        stop_all()


def summary_rows(result: sim.Result, samples: list[Sample], day: world.Day,
                 client_cpus: str) -> tuple[list[report.Row], list[report.Row]]:
    cpus = [f"cpu{c}" for c in client_cpus.split(",")]
    windows = report.window_rows(result, samples, day.slots()[-1].end, 2.0, cpus)
    return windows, report.slot_rows(result, samples, day.slots(), cpus)


def run(args: argparse.Namespace, out: Path, argv: list[str]) -> int:
    began = time.time()
    if args.resolver_rev:
        src, described = export_and_build(args.resolver_rev, out)
    else:
        src = args.resolver_src or world.REPO
        described = f"tree {src}"
    day = world.Day(phones=args.phones, queries_per_phone_day=args.queries_per_phone_day,
                    seconds_per_hour=args.seconds_per_hour, burst_seconds=args.burst_seconds)
    mix = world.Mix(tcp_share=args.tcp_share)
    names = world.load_names(top=args.top, zipf_s=mix.zipf_s)
    phones = world.make_phones(args.phones, mix)
    teams = {p.team: p.address for p in reversed(phones)}
    _nsd, nsd_port = start_nsd(out, names, args.client_cpus)
    resolver, port, metrics, config_path = start_resolver(args, out, src, nsd_port)
    build = subprocess.run([sys.executable, "-c", "import resolver; print(resolver.build())"], cwd=src,
                           env=dict(os.environ, PYTHONPATH=str(src)), capture_output=True, text=True).stdout.strip()
    expect = oracle.Oracle(config_path)
    problems = expect.disagreements(teams) + oracle.ask_hand_checks(("127.0.0.1", port), teams)
    if problems:
        say("the policy or the server disagrees with the hand-written verdicts:\n  " + "\n  ".join(problems))
        return 1
    say(f"{len(phones):,} phones, {day.mean_qps():,.0f} qps on average, busy hour {max(day.hour_qps()):,.0f}, "
        f"burst {max(s.qps for s in day.slots()):,.0f}; replay {day.slots()[-1].end:.0f} s; resolver {build} "
        f"pid {resolver.pid} on CPU {args.server_cpus}")
    phones_sim = sim.Phones(("127.0.0.1", port), world.Draw(names, phones, mix), expect, day, mix)
    sampler = Sampler(resolver.pids, f"http://127.0.0.1:{metrics}/metrics")
    sampler.start(time.monotonic())
    result = phones_sim.run(on_tick=lambda t: None)
    samples = sampler.stop()
    after = oracle.ask_hand_checks(("127.0.0.1", port), teams)
    alive = resolver.alive()
    stop_all()
    facts = Facts(command=" ".join(["python -m tests.load.forceday", *(argv or [])]), described=described,
                  build=build, began=began, hand_checks_after=after, alive=alive, workers=args.workers,
                  server_cpus=args.server_cpus, client_cpus=args.client_cpus)
    pngs = report.plots(*summary_rows(result, samples, day, args.client_cpus), day, out)
    (out / "samples.json").write_text(json.dumps([asdict(s) for s in samples]))
    (out / "summary.md").write_text(summarise(facts, day, mix, result, samples, ""))
    print((out / "summary.md").read_text())
    if args.write_results:
        PLOTS.mkdir(exist_ok=True)
        for png in pngs:
            shutil.copy(png, PLOTS / png.name)
        report.write_results(RESULTS, summarise(facts, day, mix, result, samples, "forceday/plots/"))
        say(f"wrote {RESULTS} and {PLOTS}")
    wrong = sum(b.wrong for b in result.buckets)
    return 0 if wrong == 0 and not after and alive else 1

if __name__ == "__main__":
    sys.exit(main())
