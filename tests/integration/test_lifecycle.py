"""Starting and stopping `resolver serve` as a service manager does: ready line, bad config, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.approvals import approval
from tests.support.authserver import AuthServer, format_address
from tests.support.resolverproc import (
    REPO_ROOT,
    ResolverFactory,
    ResolverProcess,
    addresses,
    free_port,
    ipv6_loopback_available,
    query,
    write_config,
)
from tests.support.zone import WWW, WWW_V4


def test_serve_with_bad_config_exits_with_error_naming_the_key(tmp_path: Path, auth: AuthServer) -> None:
    proc = ResolverProcess({"sinkhole": {"colour": "red"}}, [], tmp_path, upstreams=[auth.address])
    with pytest.raises(RuntimeError, match="exited early") as failure:
        proc.start()
    assert proc.proc is not None and proc.proc.returncode == 2
    assert "sinkhole.colour" in str(failure.value)
    assert "sinkhole.colour" in proc.stderr_text()


def test_sigterm_stops_the_server_cleanly(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory()
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
    assert server.query("www.tiktok.com", "A", tcp=True).rcode() == 0
    code = server.stop()
    assert code == 0, f"exit code {code} after SIGTERM\n{server.stderr_text()}"


def test_port_is_released_after_stop(resolver_factory: ResolverFactory) -> None:
    first = resolver_factory()
    first.stop()
    # Nothing holds the port any more: a new server can bind it at once, UDP and TCP.
    second = resolver_factory(port=first.port)
    assert addresses(query(second.port, WWW, "A"), "A") == [WWW_V4]
    assert addresses(query(second.port, WWW, "A", tcp=True), "A") == [WWW_V4]


def test_sighup_reloads_policy_and_a_broken_config_keeps_the_old_one(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory({"policy": {"block": ["tiktok"]}})
    assert server.config_path is not None and server.proc is not None
    assert addresses(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert addresses(server.query("www.facebook.com", "A"), "A") != ["0.0.0.0"]

    # Unblocking TikTok is a reduction: the new config signs it off.
    write_config(server.config_path, {"policy": {"block": ["facebook"],
                                                 "approved_changes": [approval(platforms=["tiktok"])]}})
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_stderr("policy reloaded", timeout=10), server.stderr_text()
    assert addresses(server.query("www.facebook.com", "A"), "A") == ["0.0.0.0"]
    assert addresses(server.query("www.tiktok.com", "A"), "A") != ["0.0.0.0"]

    write_config(server.config_path, {"policy": {"block": ["no-such-platform"]}})
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_stderr("reload refused", timeout=10), server.stderr_text()
    assert "no-such-platform" in server.stderr_text()
    # The old policy keeps serving.
    assert addresses(server.query("www.facebook.com", "A"), "A") == ["0.0.0.0"]
    assert server.alive()


def test_sigterm_answers_queries_in_flight_before_it_exits(resolver_factory: ResolverFactory,
                                                           auth: AuthServer) -> None:
    """A phone whose question is waiting on a slow upstream (1 s) when the service manager stops us still gets
    its answer, and the process exits soon after (the drain is bounded at 5 s)."""
    auth.set_behaviour(WWW, "slow:1")
    server = resolver_factory({"upstream_timeout": 3, "query_timeout": 4})
    assert server.proc is not None
    answers: list[list[str]] = []
    asker = threading.Thread(target=lambda: answers.append(addresses(server.query(WWW, "A", timeout=5), "A")))
    asker.start()
    assert auth.wait_for_queries(1, name=WWW)  # the question is upstream now
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    asker.join(10)
    assert answers == [[WWW_V4]]
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 1 + 5 + 2, "exit took longer than the slow answer plus the drain bound"


def _serve_until_exit(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``resolver serve ARGS`` that is expected to give up on its own. In its own session, so that whatever it
    started is killed with it if it does not (a test that fails must not leave workers behind)."""
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", *args], cwd=REPO_ROOT,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`resolver serve {' '.join(args)}` was still running after {timeout:.0f}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _error_lines(stderr: str) -> list[str]:
    """The plain ``error:`` lines, and every log line (JSON) at level error."""
    return [line for line in stderr.splitlines()
            if line.startswith("error:") or (line.startswith("{") and json.loads(line)["level"] == "error")]


@pytest.mark.parametrize("second_workers", ["1", "2"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_instance_on_the_same_port_is_one_error_line(resolver_factory: ResolverFactory, auth: AuthServer,
                                                              workers: str, second_workers: str) -> None:
    """The first keeps the port and keeps answering; the second says why it cannot start, without a traceback,
    and exits 2. (With several workers the first shares the port with SO_REUSEPORT among its own processes; a
    second resolver must still be refused, whether it has one process or a supervisor of its own.)"""
    first = resolver_factory(workers=int(workers))
    second = _serve_until_exit("--listen", f"127.0.0.1:{first.port}", "--upstream", auth.address,
                               "--workers", second_workers)
    lines = [line for line in second.stderr.splitlines() if not line.startswith("{")]
    assert second.returncode == 2, second.stderr
    assert lines == [f"error: cannot listen on 127.0.0.1:{first.port} (udp): Address already in use"], second.stderr
    assert _error_lines(second.stderr) == lines, second.stderr
    assert "Traceback" not in second.stderr
    assert addresses(first.query(WWW, "A"), "A") == [WWW_V4]


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not ipv6_loopback_available(), reason="no IPv6 loopback here"))])
def test_a_second_supervisor_cannot_join_a_running_one(resolver_factory: ResolverFactory, auth: AuthServer,
                                                       tmp_path: Path, host: str) -> None:
    """Both with several workers, so both would bind with SO_REUSEPORT: the second must not join and take part of
    the traffic with its own policy (here it would answer blocked names with 192.0.2.99, the first with 0.0.0.0).
    Every one of 200 queries, over UDP and TCP, each from a new source port, gets the first's answer."""
    first = resolver_factory(None, ["--workers", "2"], listen_host=host)
    other = write_config(tmp_path / "other.yaml", {"sinkhole": {"mode": "address", "ipv4": ["192.0.2.99"]}})
    address = format_address(host, first.port)
    second = _serve_until_exit("-c", str(other), "--listen", address, "--upstream", auth.address, "--workers", "2")
    assert second.returncode == 2, second.stderr
    assert _error_lines(second.stderr) == [f"error: cannot listen on {address} (udp): Address already in use"], \
        second.stderr
    answers = [addresses(first.query(f"n{i}.tiktok.com", "A", tcp=i % 4 == 0), "A")[0] for i in range(200)]
    assert set(answers) == {"0.0.0.0"}, f"{answers.count('192.0.2.99')} of 200 answered by the second's policy"


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("what", ["dns-udp", "dns-tcp", "metrics"])
def test_a_port_held_by_another_program_is_one_error_line_and_exit_2(auth: AuthServer, workers: str,
                                                                     what: str) -> None:
    """No traceback, no restart loop: with --workers the supervisor finds out before it starts any worker."""
    port, metrics = free_port(), free_port(udp=False)
    kind = socket.SOCK_DGRAM if what == "dns-udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", metrics if what == "metrics" else port))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        result = _serve_until_exit("--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}",
                                   "--upstream", auth.address, "--workers", workers)
    named = f"127.0.0.1:{metrics} (metrics)" if what == "metrics" else f"127.0.0.1:{port} ({what[4:]})"
    assert result.returncode == 2, result.stderr
    assert _error_lines(result.stderr) == [f"error: cannot listen on {named}: Address already in use"], result.stderr
    assert "Traceback" not in result.stderr and "restarting" not in result.stderr
