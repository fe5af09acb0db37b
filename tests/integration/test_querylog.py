"""The query log, JSON process logs, health endpoints and the qtype label, against the real server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_metrics import by_label, parse_samples
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, wait_for
from tests.support.zone import WWW, WWW_V4


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_query_log_records_blocked_and_forwarded_queries(resolver_factory: ResolverFactory, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "queries.jsonl"
    server = resolver_factory({"query_log": {"path": str(log), "client": "full"}})
    assert addresses(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
    assert wait_for(lambda: log.exists() and len(_lines(log)) == 3, timeout=10), log.read_text() if log.exists() else ""
    blocked, forwarded, cached = _lines(log)
    assert blocked["name"] == "www.tiktok.com." and blocked["type"] == "A"
    assert blocked["outcome"] == "blocked" and blocked["platform"] == "tiktok"
    assert str(blocked["rule"]).endswith("tiktok.yaml")
    assert blocked["client"] == "127.0.0.1" and blocked["group"] == "default"
    assert isinstance(blocked["latency_ms"], float) and str(blocked["time"]).endswith("Z")
    assert (forwarded["outcome"], cached["outcome"]) == ("forwarded", "cached")
    assert forwarded["platform"] is None


@pytest.mark.parametrize("mode", ["hashed", "none"])
def test_query_log_client_privacy(resolver_factory: ResolverFactory, tmp_path: Path, mode: str) -> None:
    log = tmp_path / "q.jsonl"
    server = resolver_factory({"query_log": {"path": str(log), "client": mode, "salt": "s3cret"}})
    server.query("www.tiktok.com", "A")
    server.query("www.tiktok.com", "AAAA")
    assert wait_for(lambda: log.exists() and len(_lines(log)) == 2, timeout=10)
    clients = {line["client"] for line in _lines(log)}
    assert "127.0.0.1" not in json.dumps(_lines(log))
    if mode == "none":
        assert clients == {None}
    else:
        assert len(clients) == 1 and len(str(next(iter(clients)))) == 16  # same client, same pseudonym


def test_query_log_only_blocked(resolver_factory: ResolverFactory, tmp_path: Path) -> None:
    log = tmp_path / "q.jsonl"
    server = resolver_factory({"query_log": {"path": str(log), "only_blocked": True}})
    server.query(WWW, "A")
    server.query("m.facebook.com", "A")
    server.query(WWW, "AAAA")
    assert wait_for(lambda: log.exists() and len(_lines(log)) >= 1, timeout=10)
    server.query("web.whatsapp.com", "A")
    assert wait_for(lambda: len(_lines(log)) == 2, timeout=10)
    assert [line["name"] for line in _lines(log)] == ["m.facebook.com.", "web.whatsapp.com."]


def test_query_log_rotates_and_stays_bounded(resolver_factory: ResolverFactory, tmp_path: Path) -> None:
    log = tmp_path / "q.jsonl"
    server = resolver_factory({"query_log": {"path": str(log), "max_bytes": 2048, "backups": 2}})
    for i in range(60):
        assert addresses(server.query(f"n{i}.tiktok.com", "A"), "A") == ["0.0.0.0"]
    rotated = [Path(f"{log}.1"), Path(f"{log}.2")]

    def finished() -> bool:
        # The last line lands in the live file; until then the writer may be between two renames.
        try:
            return "n59.tiktok.com." in log.read_text() and all(p.exists() for p in rotated)
        except FileNotFoundError:
            return False

    assert wait_for(finished, timeout=20)
    assert not Path(f"{log}.3").exists()
    for path in [log, *rotated]:
        assert path.stat().st_size <= 2048, f"{path} grew past the bound"
        assert all(line["outcome"] == "blocked" for line in _lines(path))
    names = {line["name"] for p in [log, *rotated] for line in _lines(p)}
    assert "n59.tiktok.com." in names  # the newest lines are kept, the oldest rotated away


def test_full_disk_drops_log_lines_never_queries(resolver_factory: ResolverFactory, tmp_path: Path) -> None:
    log = tmp_path / "full.jsonl"
    log.symlink_to("/dev/full")  # every write fails with ENOSPC
    server = resolver_factory({"query_log": {"path": str(log)}}, metrics=True)
    for i in range(50):
        assert addresses(server.query(f"d{i}.tiktok.com", "A"), "A") == ["0.0.0.0"]
        assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]

    def dropped() -> float:
        samples = parse_samples(server.metrics_text())
        return by_label(samples, "resolver_querylog_lines_total", "result").get("dropped", 0.0)

    assert wait_for(lambda: dropped() == 100.0, timeout=10), dropped()
    assert server.alive()
    assert "query log write failed" in server.stderr_text()


def test_stderr_logs_are_json_lines(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory()
    lines = [line for line in server.stderr_text().splitlines() if line.strip()]
    ready = [json.loads(line) for line in lines if "resolver ready" in line]
    assert ready and ready[0]["level"] == "info" and ready[0]["logger"] == "resolver"
    for line in lines:
        json.loads(line)  # every line is JSON when stderr is not a terminal


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_and_readiness(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    server = resolver_factory(metrics=True)
    base = f"http://127.0.0.1:{server.metrics_port}"
    assert _get(base + "/healthz") == (200, "ok\n")
    assert _get(base + "/readyz") == (200, "ready\n")
    # The start-up probe's answer shows in the verbose checks.
    assert wait_for(lambda: f"[+]upstream {auth.address} up" in _get(base + "/readyz?verbose")[1], timeout=10)


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_while_every_upstream_is_down_and_verbose_says_so(resolver_factory: ResolverFactory,
                                                                workers: int) -> None:
    """Ready means listening with a policy loaded, not "an upstream answers": in an upstream outage every replica
    must stay in its load balancer, where serve-stale keeps answering phones. /readyz?verbose lists every check,
    the upstreams as information (resolver_upstream_healthy exports them too)."""
    with AuthServer() as dead:
        dead.set_behaviour("", "silent")
        server = resolver_factory({"upstream_timeout": 0.3}, upstreams=[dead.address], metrics=True,
                                  workers=workers)
        base = f"http://127.0.0.1:{server.metrics_port}"
        assert wait_for(lambda: dead.count("") >= 1, timeout=10)  # the probe went out and got nothing
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz") == (200, "ready\n")
        status, body = _get(base + "/readyz?verbose")
        lines = body.splitlines()
        assert status == 200, body
        assert lines[0] == "[+]listening ok" and lines[1].startswith("[+]policy ok: version "), body
        assert lines[2].startswith(f"[-]upstream {dead.address} down: no good reply in the last 30s"), body
        assert lines[-1] == "readyz check passed", body


def test_queries_counted_by_qtype(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory(metrics=True)
    for rtype in ("A", "A", "AAAA", "HTTPS", "MX", "NAPTR"):
        server.query("www.tiktok.com", rtype)
    samples = parse_samples(server.metrics_text())
    qtypes = {k: v for k, v in by_label(samples, "resolver_queries_total", "qtype").items() if v}
    assert qtypes == {"A": 2.0, "AAAA": 1.0, "HTTPS": 1.0, "MX": 1.0, "other": 1.0}


def _worker_lines(log: Path, workers: int, sent: int) -> list[list[dict[str, object]]]:
    """Each worker's lines (queries.w0.jsonl, …) once all ``sent`` are written."""
    files = [log.with_name(f"{log.stem}.w{i}{log.suffix}") for i in range(workers)]
    assert wait_for(lambda: sum(len(_lines(f)) for f in files if f.exists()) == sent, timeout=15)
    return [_lines(f) if f.exists() else [] for f in files]


def _ask_from_many_ports(server: ResolverProcess, count: int, prefix: str) -> int:
    # dnspython takes a new source port for each query, so SO_REUSEPORT spreads them over the workers.
    for i in range(count):
        assert addresses(server.query(f"{prefix}{i}.tiktok.com", "A"), "A") == ["0.0.0.0"]
    return count


@pytest.mark.parametrize("salt", ["", "configured-secret"])
def test_one_phone_has_one_pseudonym_in_every_workers_log(resolver_factory: ResolverFactory, tmp_path: Path,
                                                          salt: str) -> None:
    """Without a configured salt the supervisor makes one for the run and hands it to every worker; with one,
    every worker uses it. Either way an analyst sees one pseudonym per phone, and one salt id, across the files."""
    log = tmp_path / "queries.jsonl"
    server = resolver_factory({"query_log": {"path": str(log), "salt": salt}}, ["--workers", "2"])
    sent = _ask_from_many_ports(server, 60, "p")
    per_worker = _worker_lines(log, 2, sent)
    assert all(per_worker), "the queries did not reach both workers"
    pseudonyms = {(line["client"], line["salt"]) for lines in per_worker for line in lines}
    assert len(pseudonyms) == 1, pseudonyms
    client, _ = pseudonyms.pop()
    assert len(str(client)) == 16 and "127.0.0.1" not in log.parent.joinpath(f"{log.stem}.w0.jsonl").read_text()


def test_a_configured_salt_keeps_pseudonyms_across_restarts_and_a_rotation_links_old_and_new(
        resolver_factory: ResolverFactory, tmp_path: Path) -> None:
    log = tmp_path / "queries.jsonl"

    def run(salt: object, prefix: str) -> list[dict[str, object]]:
        path = log.with_name(f"{prefix}.jsonl")
        server = resolver_factory({"query_log": {"path": str(path), "salt": salt}})
        sent = _ask_from_many_ports(server, 3, prefix)
        assert wait_for(lambda: path.exists() and len(_lines(path)) == sent, timeout=10)
        server.stop()
        return _lines(path)

    first, again = run("old-secret", "first"), run("old-secret", "again")
    old = {(line["client"], line["salt"]) for line in first + again}
    assert len(old) == 1, old  # the same phone, the same pseudonym after a restart
    (pseudonym, old_id), = old
    rotated = run(["new-secret", "old-secret"], "rotated")
    new = {(line["client"], line["salt"], line["client_previous"], line["salt_previous"]) for line in rotated}
    assert len(new) == 1, new
    (current, new_id, previous, previous_id), = new
    assert (previous, previous_id) == (pseudonym, old_id)  # the link from the old pseudonym to the new one
    assert current != pseudonym and new_id != old_id
    plain = run("", "plain")
    assert {line["salt"] for line in plain} != {old_id}  # a random salt for that run: a different id
