"""``--workers N``: processes sharing the ports, restarted when killed, reloaded and stopped together; the
supervisor's metrics add the workers up."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from resolver.ops.workers import HANG_SECONDS, START_FAILURES
from tests.integration.test_metrics import by_label, parse_samples, total
from tests.support.approvals import approval
from tests.support.resolverproc import (
    ResolverFactory,
    ResolverProcess,
    addresses,
    free_port,
    run_cli,
    wait_for,
    write_config,
)


def _workers(server: ResolverProcess) -> list[int]:
    assert server.proc is not None
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def _answered_all(server: ResolverProcess, names: list[str], expected: str) -> int:
    """Ask each name (dnspython picks a new random source port each time, so SO_REUSEPORT spreads them)."""
    for name in names:
        assert addresses(server.query(name, "A", timeout=3), "A") == [expected], name
    return len(names)


def test_two_workers_share_the_port_and_metrics_add_up(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory(None, ["--workers", "2"], metrics=True)
    assert len(_workers(server)) == 2
    sent = _answered_all(server, [f"w{i}.tiktok.com" for i in range(40)], "0.0.0.0")

    def settled() -> bool:
        samples = parse_samples(server.metrics_text())
        return total(samples, "resolver_queries_total") == sent

    assert wait_for(settled, timeout=10)
    samples = parse_samples(server.metrics_text())
    assert total(samples, "resolver_workers") == 2
    blocked = {k: v for k, v in by_label(samples, "resolver_blocked_total", "platform").items() if v}
    assert blocked == {"tiktok": 40.0}


def test_by_default_one_worker_per_cpu(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory(None, metrics=True, workers=None)  # no --workers flag: the server's default
    cpus = len(os.sched_getaffinity(0))
    assert len(_workers(server)) == (cpus if cpus > 1 else 0)  # one CPU: the server is its own single worker
    assert total(parse_samples(server.metrics_text()), "resolver_workers") == cpus
    _answered_all(server, [f"d{i}.tiktok.com" for i in range(10)], "0.0.0.0")


def test_a_killed_worker_is_restarted_and_nothing_is_lost(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory(None, ["--workers", "2"], metrics=True)
    sent = _answered_all(server, [f"a{i}.tiktok.com" for i in range(20)], "0.0.0.0")
    assert wait_for(lambda: total(parse_samples(server.metrics_text()), "resolver_queries_total") == sent, 10)
    victim = _workers(server)[0]
    os.kill(victim, signal.SIGKILL)
    # Once the dead worker is gone (its sockets closed, reaped by the supervisor), the other worker answers
    # every query while a replacement starts. (A query the kernel queued on the dying socket in the instant
    # before would be lost: a phone's stub retries it.)
    assert wait_for(lambda: not Path(f"/proc/{victim}").exists(), timeout=5)
    sent += _answered_all(server, [f"b{i}.tiktok.com" for i in range(20)], "0.0.0.0")
    assert wait_for(lambda: len(_workers(server)) == 2 and victim not in _workers(server), timeout=15)
    # Two workers and the supervisor said "ready" at start; the restarted worker says it again.
    assert wait_for(lambda: server.stderr_text().count(" ready: dns") >= 4, timeout=10), server.stderr_text()
    sent += _answered_all(server, [f"c{i}.tiktok.com" for i in range(20)], "0.0.0.0")

    def counted() -> bool:
        samples = parse_samples(server.metrics_text())
        return total(samples, "resolver_worker_restarts_total") == 1 and \
            total(samples, "resolver_queries_total") >= sent - 20
    # What the dead worker answered after its last report (at most one report interval of traffic) is the only
    # count that can be lost.
    assert wait_for(counted, timeout=10), server.metrics_text()[-2000:]


def test_a_frozen_worker_loses_its_names_at_once_and_is_replaced(resolver_factory: ResolverFactory,
                                                                  tmp_path: Path) -> None:
    """SIGSTOP: the worker's process lives and holds its socket, but nothing runs, as in a stuck event loop. Its
    share of the names (the kernel steers by name) would go unanswered; once it has been quiet a few seconds the
    other worker answers them, and once it has been quiet HANG_SECONDS it is killed and replaced."""
    querylog = tmp_path / "queries.jsonl"
    server = resolver_factory({"query_log": {"path": str(querylog), "client": "none"}}, ["--workers", "2"],
                              metrics=True)
    names = [f"s{i}.tiktok.com" for i in range(40)]
    _answered_all(server, names, "0.0.0.0")
    owned = querylog.with_name("queries.w0.jsonl")
    assert wait_for(lambda: owned.exists() and "s" in owned.read_text(), timeout=5)
    mine = [name for name in names if f'"{name}' in owned.read_text()]
    assert mine, "worker 0 answered none of the names: the test would prove nothing"
    victim = next(pid for pid in _workers(server) if b"--worker\x000:" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(victim, signal.SIGSTOP)
    try:
        assert server.wait_stderr("worker 0 has not reported for", timeout=10), server.stderr_text()[-2000:]
        _answered_all(server, mine, "0.0.0.0")  # worker 0's names, answered by worker 1 while worker 0 is frozen
        assert wait_for(lambda: victim not in _workers(server) and len(_workers(server)) == 2,
                        timeout=HANG_SECONDS + 15), server.stderr_text()[-2000:]
    finally:
        if _running(victim):
            os.kill(victim, signal.SIGCONT)
    # The lines README ("Workers") quotes.
    assert server.stderr_lines("its names go to the other workers until it does")
    assert server.stderr_lines("worker 0 has not reported for 20s: it is stuck; killing it")
    assert wait_for(lambda: server.stderr_text().count(" ready: dns") >= 4, timeout=15), server.stderr_text()
    assert wait_for(lambda: total(parse_samples(server.metrics_text()), "resolver_worker_restarts_total") == 1, 10)
    _answered_all(server, names, "0.0.0.0")
    assert "Traceback" not in server.stderr_text()


def test_sighup_reloads_every_worker_and_sigterm_stops_them(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory({"policy": {"block": ["tiktok"]}}, ["--workers", "2"])
    assert server.config_path is not None and server.proc is not None
    write_config(server.config_path, {"policy": {"block": ["facebook"],  # unblocking TikTok, signed off
                                                 "approved_changes": [approval(platforms=["tiktok"])]}})
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: server.stderr_text().count("policy reloaded") >= 2, timeout=15), server.stderr_text()
    _answered_all(server, [f"f{i}.facebook.com" for i in range(30)], "0.0.0.0")
    workers = _workers(server)
    assert server.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                   for pid in workers)


def _checked_version(config: Path) -> str:
    """The version ``resolver check`` gives the config as it is on disk now."""
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    found = re.search(r"^policy version: (\w+)$", result.stdout, re.MULTILINE)
    assert found, result.stdout
    return found[1]


def _versions(server: ResolverProcess) -> list[tuple[str, str]]:
    """(worker, version) of every resolver_policy_info series in a scrape."""
    return sorted((labels["worker"], labels["version"]) for name, labels, value in
                  parse_samples(server.metrics_text()) if name == "resolver_policy_info" and value == 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_each_worker_exports_the_policy_version_it_serves(resolver_factory: ResolverFactory, workers: int) -> None:
    """One resolver_policy_info series per worker (worker="0" for a single process), so workers serving different
    policies show as different versions on one instance (the ResolverPolicyDivergence alert)."""
    server = resolver_factory({"policy": {"block": ["tiktok"]}}, metrics=True, workers=workers)
    assert server.config_path is not None and server.proc is not None
    first = _checked_version(server.config_path)
    every = [(str(i), first) for i in range(workers)]
    assert wait_for(lambda: _versions(server) == every, timeout=10), server.metrics_text()
    write_config(server.config_path, {"policy": {"block": ["facebook"],  # unblocking TikTok, signed off
                                                 "approved_changes": [approval(platforms=["tiktok"])]}})
    second = _checked_version(server.config_path)
    assert second != first
    server.proc.send_signal(signal.SIGHUP)
    every = [(str(i), second) for i in range(workers)]
    assert wait_for(lambda: _versions(server) == every, timeout=15), server.metrics_text()
    _answered_all(server, [f"v{i}.facebook.com" for i in range(10)], "0.0.0.0")


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (by then it holds no socket)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_workers_exit_when_their_supervisor_is_killed(resolver_factory: ResolverFactory) -> None:
    """SIGKILL gives the supervisor no chance to stop its workers: the kernel tells them (PR_SET_PDEATHSIG), and
    no orphan keeps answering on the port with an old policy. The port is free for the next start."""
    server = resolver_factory(None, ["--workers", "2"])
    workers = _workers(server)
    assert len(workers) == 2 and server.proc is not None
    server.proc.kill()
    server.proc.wait()
    assert wait_for(lambda: not any(_running(pid) for pid in workers), timeout=30), \
        [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers if _running(pid)]
    again = resolver_factory(None, ["--workers", "2"], port=server.port)
    assert addresses(again.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]


def test_a_worker_that_cannot_start_stops_the_service_after_a_few_tries() -> None:
    """A worker refuses an upstream that is one of its own listen addresses (a query loop), which only workers
    check: the supervisor restarts it a few times, then stops with that worker's status and says why, instead
    of restarting it for ever."""
    port = free_port()
    result = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{port}", "--workers", "2",
                     timeout=120)
    assert result.returncode == 2, result.stderr
    refusals = result.stderr.count(f"upstream 127.0.0.1:{port} is one of our own listen addresses")
    assert START_FAILURES <= refusals <= 2 * START_FAILURES, result.stderr
    assert f"could not start, {START_FAILURES} times in a row" in result.stderr
    assert "Traceback" not in result.stderr
