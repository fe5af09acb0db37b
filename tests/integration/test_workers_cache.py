"""``--workers N`` act as one resolver: one cache and one queue for the upstream whichever worker a query reaches,
exact scrapes, the worker count from the CPU budget, and workers running the build that is installed.

Every query here comes from a fresh socket (dnspython opens one per query, with a new source port; TCP a new
connection), which is what spreads queries over the workers; the loopback upstream counts what reaches it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import dns.message
import pytest

from tests.integration.test_metrics import parse_samples, total
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, free_port, wait_for


def _name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}.example.com"


def _recased(name: str, seed: int) -> str:
    """The name with its letters' case flipped by ``seed``'s bits, as a 0x20-randomising stub sends it."""
    return "".join(c.upper() if c.isalpha() and (seed >> (i % 16)) & 1 else c for i, c in enumerate(name))


@pytest.fixture
def two(resolver_factory: ResolverFactory) -> ResolverProcess:
    return resolver_factory(None, ["--workers", "2"], metrics=True)


def _at_once(count: int, ask: Callable[[int], dns.message.Message]) -> list[dns.message.Message]:
    """``count`` questions released together (a barrier), each from its own thread and socket."""
    barrier = threading.Barrier(count)
    replies: list[dns.message.Message | BaseException] = [RuntimeError("no reply")] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            replies[i] = ask(i)
        except BaseException as err:  # reported below, with the others
            replies[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [r for r in replies if isinstance(r, BaseException)]
    assert not errors, errors
    return [r for r in replies if isinstance(r, dns.message.Message)]


def test_a_name_asked_again_from_new_sockets_reaches_the_upstream_once(two: ResolverProcess,
                                                                       auth: AuthServer) -> None:
    name = _name("again")
    auth.add(name, "A", "192.0.2.41")
    for i in range(8):  # 8 source ports: with the kernel's own spreading, both workers would have been asked
        assert addresses(two.query(_recased(name, i * 7919), "A"), "A") == ["192.0.2.41"]
    assert auth.count(name, "A") == 1, auth.seen(name)


def test_sixteen_identical_questions_at_once_reach_the_upstream_once(two: ResolverProcess, auth: AuthServer) -> None:
    for tcp in (False, True):
        name = _name("burst-tcp" if tcp else "burst")
        auth.add(name, "A", "192.0.2.42")
        replies = _at_once(16, lambda i, name=name, tcp=tcp: two.query(name, "A", tcp=tcp, timeout=5))  # type: ignore[misc]
        assert all(addresses(r, "A") == ["192.0.2.42"] for r in replies)
        assert auth.count(name, "A") == 1, "tcp" if tcp else "udp"


def test_tcp_after_udp_and_udp_after_tcp_reach_the_upstream_once(two: ResolverProcess, auth: AuthServer) -> None:
    first_udp, first_tcp = _name("udp-first"), _name("tcp-first")
    auth.add(first_udp, "A", "192.0.2.43")
    auth.add(first_tcp, "A", "192.0.2.44")
    assert addresses(two.query(first_udp, "A"), "A") == ["192.0.2.43"]
    assert addresses(two.query(first_tcp, "A", tcp=True), "A") == ["192.0.2.44"]
    for i in range(6):  # new connections: the kernel spreads them over both workers
        assert addresses(two.query(first_udp, "A", tcp=True), "A") == ["192.0.2.43"]
        assert addresses(two.query(_recased(first_tcp, i), "A"), "A") == ["192.0.2.44"]
        assert addresses(two.query(first_tcp, "A", tcp=True), "A") == ["192.0.2.44"]
    assert auth.count(first_udp) == 1
    assert auth.count(first_tcp) == 1


def test_a_scrape_counts_every_query_answered_before_it(two: ResolverProcess, auth: AuthServer) -> None:
    before = total(parse_samples(two.metrics_text()), "resolver_queries_total")
    sent = 0
    for i in range(30):
        name = _name(f"scrape{i}")
        auth.add(name, "A", "192.0.2.45")
        two.query(name, "A", tcp=i % 3 == 0)
        sent += 1
    assert total(parse_samples(two.metrics_text()), "resolver_queries_total") - before == sent


def test_a_restarted_worker_takes_its_share_back(two: ResolverProcess, auth: AuthServer) -> None:
    """While a worker is dead its UDP share goes to the other, and its peers ask the upstream for its names; once
    it is back (same socket, same place in the group) one cache serves again."""
    assert two.proc is not None
    victim = int(Path(f"/proc/{two.proc.pid}/task/{two.proc.pid}/children").read_text().split()[0])
    os.kill(victim, 9)
    assert wait_for(lambda: not Path(f"/proc/{victim}").exists(), timeout=5)
    during = [_name(f"during{i}") for i in range(10)]
    for name in during:
        auth.add(name, "A", "192.0.2.46")
        assert addresses(two.query(name, "A", timeout=5), "A") == ["192.0.2.46"]
    assert wait_for(lambda: two.stderr_text().count(" ready: dns") >= 4, timeout=15), two.stderr_text()
    name = _name("after")
    auth.add(name, "A", "192.0.2.47")
    for i in range(6):
        assert addresses(two.query(name, "A", tcp=i % 2 == 1), "A") == ["192.0.2.47"]
    assert auth.count(name) == 1


def test_the_supervisor_says_how_many_workers_it_chose_and_why(resolver_factory: ResolverFactory) -> None:
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("one CPU: the server runs as a single process, without a supervisor")
    server = resolver_factory(None, workers=None)  # no --workers: the default from the CPU budget
    found = re.search(r"starting (\d+) workers \((\d+) CPUs in our affinity, ([^)]*)\)", server.stderr_text())
    assert found, server.stderr_text()
    assert int(found[2]) == cpus
    quota = re.fullmatch(r"cgroup CPU quota (\d+)", found[3])
    assert int(found[1]) == (min(cpus, int(quota[1])) if quota else cpus), found[0]
    explicit = resolver_factory(None, ["--workers", "2"])
    assert "starting 2 workers (--workers)" in explicit.stderr_text()


def test_workers_run_the_installed_build_not_a_copy_in_the_working_directory(tmp_path: Path, auth: AuthServer) -> None:
    """Started from a directory holding another ``resolver`` package (a source checkout next to an installed
    build), the workers import the package their supervisor imported: their ready lines say the same build."""
    import resolver

    decoy = tmp_path / "resolver"
    shutil.copytree(Path(resolver.__file__).parent, decoy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    init = decoy / "__init__.py"
    init.write_text(init.read_text().replace('return "mypyc" if', 'return "decoy" if True else "mypyc" if'))
    script = shutil.which("resolver", path=str(Path(sys.executable).parent))
    assert script is not None
    version = subprocess.run([script, "--version"], cwd=tmp_path, capture_output=True, text=True, check=True)
    build = re.search(r"\((\w+)\)", version.stdout)
    assert build and build[1] != "decoy", version.stdout
    port = free_port()
    proc = subprocess.Popen([script, "serve", "--listen", f"127.0.0.1:{port}", "--upstream", auth.address,
                             "--workers", "2", "--log-format", "text"], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "resolver ready" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    ready = [line for line in lines if re.search(r"(worker \d|resolver) ready", line)]
    assert len(ready) == 3, "".join(lines)  # two workers and the supervisor
    assert all(f"build {build[1]}" in line for line in ready), "".join(ready)
