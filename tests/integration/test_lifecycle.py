"""Starting and stopping `resolver serve` as a service manager does: ready line, bad config, SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.approvals import approval
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, query, run_cli, write_config
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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_instance_on_the_same_port_is_one_error_line(resolver_factory: ResolverFactory, auth: AuthServer,
                                                              workers: str) -> None:
    """The first keeps the port and keeps answering; the second says why it cannot start, without a traceback.
    (With several workers the first already shares the port with SO_REUSEPORT among its own processes; a
    stranger without that option must still be refused.)"""
    first = resolver_factory(workers=int(workers))
    second = run_cli("serve", "--listen", f"127.0.0.1:{first.port}", "--upstream", auth.address, "--workers", "1",
                     timeout=20)
    lines = [line for line in second.stderr.splitlines() if not line.startswith("{")]
    assert second.returncode == 1, second.stderr
    assert lines == [f"error: cannot listen on 127.0.0.1:{first.port} (udp): Address already in use"], second.stderr
    assert "Traceback" not in second.stderr
    assert addresses(first.query(WWW, "A"), "A") == [WWW_V4]
