"""Observability: what ops teams watch, checked against the real server.

- deploy/prometheus: promtool checks the config and rules and runs the rule unit tests; a real Prometheus scrapes
  the real resolver after known traffic, evaluates the alert rules on it, and runs every dashboard query;
- deploy/grafana: every metric a dashboard query or an alert rule names is in a live scrape;
- resolver/ops/statuspage.py: status_json as a unit; the page rendered by headless Chromium, first on known numbers
  from a throwaway server in this process, then served by the resolver itself (skipped until it is wired).

Prometheus, promtool and Chromium come from Debian (packages ``prometheus`` and ``chromium``); a test that needs
one that is missing is skipped and says which package to install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from resolver.ops.statuspage import CONTENT_SECURITY_POLICY, PAGE, StatusSnapshot, by_platform, status_json
from tests.integration.test_metrics import parse_samples
from tests.support.authserver import AuthServer
from tests.support.resolverproc import (
    REPO_ROOT,
    ResolverFactory,
    ResolverProcess,
    addresses,
    free_port,
    udp_exchange,
    wait_for,
)
from tests.support.zone import MAIL, MISSING, WWW, WWW_V4

PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "resolver-dashboard.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: apt-get install prometheus")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: apt-get install chromium")

# ------------------------------------------------------------------------------------------- known traffic

BROKEN = "broken.example.test"  # the upstream answers SERVFAIL: an upstream error, the client gets an error
DEAD = "dead.example.test"  # the upstream never answers: an upstream timeout, the client gets SERVFAIL
REDDIT = "www.reddit.com"  # monitored for the "ops" group: answered normally, counted
WHATSAPP = "whatsapp.com"  # blocked for "ops" but lifted by the exemption TEST-EX-SOON
EXPECTED_OUTCOMES = {"blocked": 5, "forwarded": 5, "cached": 2, "refused": 1, "error": 2}
EXPECTED_TOTAL = sum(EXPECTED_OUTCOMES.values())
EXPECTED_BLOCKED = {"tiktok": 3, "telegram": 1, "bypass": 1}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _config() -> dict[str, Any]:
    """127.0.0.1 is in group "ops": messaging and TikTok blocked, Reddit monitored, WhatsApp exempted for 3 days
    (so the exemption-expiry alert has something to fire on), a Telegram exemption still pending."""
    now = time.time()
    approval = {"approved_by": "Test Approver; Test Security Officer", "reason": "observability test"}
    return {
        "upstream_timeout": 0.5,
        "query_timeout": 1.5,
        "policy": {
            "groups": {
                "default": {"block": ["social", "messaging"]},
                "ops": {"networks": ["127.0.0.0/8"], "block": ["messaging", "tiktok"], "monitor": ["reddit"]},
            },
            "exemptions": [
                {"platforms": ["whatsapp"], "clients": ["127.0.0.1"], "reference": "TEST-EX-SOON", **approval,
                 "starts": _iso(now - 86400), "expires": _iso(now + 3 * 86400)},
                {"platforms": ["telegram"], "groups": ["ops"], "reference": "TEST-EX-LATER", **approval,
                 "starts": _iso(now + 10 * 86400), "expires": _iso(now + 40 * 86400)},
            ],
        },
    }


@pytest.fixture(scope="module")
def upstream(module_auth: AuthServer) -> AuthServer:
    module_auth.add(BROKEN, "A", "192.0.2.201")
    module_auth.set_behaviour(BROKEN, "servfail")
    module_auth.add(DEAD, "A", "192.0.2.200")
    module_auth.set_behaviour(DEAD, "silent")
    module_auth.add(REDDIT, "A", "192.0.2.60")
    return module_auth


@pytest.fixture(scope="module")
def resolver(module_resolver_factory: ResolverFactory, upstream: AuthServer) -> ResolverProcess:
    return module_resolver_factory(_config(), upstreams=[upstream.address], metrics=True)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result; fails the test on a PromQL error."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as err:  # a bad query is a 400 with a JSON error body
            body = json.load(err)
        return body

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def prometheus(resolver: ResolverProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus | None]:
    """A real Prometheus on loopback scraping the resolver every second and evaluating deploy's alert rules,
    or None when it is not installed (the tests that need it skip; the others still get their traffic)."""
    if PROMETHEUS is None:
        yield None
        return
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROM_DIR / "alerts.yml")],
        "scrape_configs": [{"job_name": "resolver", "static_configs": [
            {"targets": [f"127.0.0.1:{resolver.metrics_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port(udp=False)
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return proc.poll() is not None  # stop waiting if it exited
        assert wait_for(ready, timeout=30, interval=0.1) and proc.poll() is None, log.read_text()[-3000:]
        # Prometheus hands new targets to the scraper every 5 s, so the first scrape comes 5-6 s after start.
        assert wait_for(lambda: prom.value('up{job="resolver"}') == 1.0, timeout=30, interval=0.2), (
            f"Prometheus never scraped the resolver: {prom.api('targets')}\n{log.read_text()[-3000:]}")
        yield prom
    finally:
        _stop(proc)


def _ask_class_ch(server: ResolverProcess, name: str) -> dns.message.Message:
    q = dns.message.make_query(name, "A", rdclass="CH")
    return dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)


@pytest.fixture(scope="module")
def traffic(resolver: ResolverProcess, upstream: AuthServer, prometheus: Prometheus | None) -> ResolverProcess:
    """The resolver after exactly EXPECTED_TOTAL queries covering every outcome, every labelled family and a
    malformed packet; Prometheus (when there is one) is already scraping, so it sees the counters rise."""
    s = resolver
    assert addresses(s.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert addresses(s.query("tiktok.com", "AAAA"), "AAAA") == ["::"]
    assert addresses(s.query("m.tiktok.com", "A", tcp=True), "A") == ["0.0.0.0"]
    assert addresses(s.query("t.me", "A"), "A") == ["0.0.0.0"]
    assert s.query("use-application-dns.net", "A").rcode() == dns.rcode.NXDOMAIN  # bypass defence
    assert addresses(s.query(WWW, "A"), "A") == [WWW_V4]  # forwarded
    assert s.query(MAIL, "MX", tcp=True).rcode() == dns.rcode.NOERROR  # forwarded
    assert s.query(MISSING, "A").rcode() == dns.rcode.NXDOMAIN  # forwarded
    assert addresses(s.query(WWW, "A"), "A") == [WWW_V4]  # cached
    assert s.query(MISSING, "A").rcode() == dns.rcode.NXDOMAIN  # cached
    assert addresses(s.query(WHATSAPP, "A"), "A") == ["192.0.2.40"]  # exempted, forwarded
    assert addresses(s.query(REDDIT, "A"), "A") == ["192.0.2.60"]  # monitored, forwarded
    assert _ask_class_ch(s, WWW).rcode() == dns.rcode.REFUSED
    assert s.query(BROKEN, "A").rcode() == dns.rcode.SERVFAIL  # upstream error
    assert s.query(DEAD, "A", timeout=5).rcode() == dns.rcode.SERVFAIL  # upstream timeout
    assert udp_exchange(s.port, b"\x00\x01\x02", timeout=0.3) is None  # malformed: dropped unanswered

    def counted() -> bool:
        return _total(parse_samples(s.metrics_text()), "resolver_queries_total") >= EXPECTED_TOTAL
    assert wait_for(counted, timeout=5), s.metrics_text()
    return s


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_known_traffic_in_scrape(traffic: ResolverProcess) -> None:
    samples = parse_samples(traffic.metrics_text())
    got = {o: _total(samples, "resolver_queries_total", outcome=o) for o in EXPECTED_OUTCOMES}
    assert got == EXPECTED_OUTCOMES
    assert {p: _total(samples, "resolver_blocked_total", platform=p) for p in EXPECTED_BLOCKED} == EXPECTED_BLOCKED
    assert _total(samples, "resolver_monitored_total", platform="reddit") == 1
    assert _total(samples, "resolver_exempted_total", platform="whatsapp") == 1
    assert _total(samples, "resolver_malformed_packets_total") == 1
    assert _total(samples, "resolver_upstream_timeouts_total") >= 1
    assert _total(samples, "resolver_upstream_errors_total") >= 1
    # Every answer of this small run went out: the family is there, and nothing was dropped at the send buffer.
    assert ("resolver_udp_send_dropped_total", {}, 0.0) in samples


def test_build_info_says_whether_the_hot_path_is_compiled(traffic: ResolverProcess) -> None:
    # The server runs this checkout: compiled when the editable install left mypyc's modules beside the source.
    expected = "mypyc" if list((REPO_ROOT / "resolver" / "core").glob("wire.*.so")) else "python"
    builds = [labels for name, labels, value in parse_samples(traffic.metrics_text())
              if name == "resolver_build_info" and value == 1]
    assert [b.get("build") for b in builds] == [expected]
    version = subprocess.run([sys.executable, "-m", "resolver", "--version"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT))).stdout
    assert version.strip().endswith(f"({expected})")


# ------------------------------------------------------------------------------------------- promtool


@needs_promtool
@pytest.mark.parametrize("args", [
    ("check", "config", "prometheus.yml"),
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts_test.yml"),
], ids=" ".join)
def test_promtool(args: tuple[str, ...]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_alert_rules_cover_what_ops_asked_for() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    assert set(rules) >= {"ResolverDown", "ResolverNoTraffic", "ResolverErrorRatioHigh", "ResolverUpstreamFailing",
                          "ResolverLatencyHigh", "ResolverReloadFailed", "ResolverExemptionExpiring",
                          "ResolverReloadRefused", "ResolverPolicyDivergence"}
    for name, rule in rules.items():
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "resolver" and job["scrape_interval"] == "15s"


# ------------------------------------------------------------------------------------------- real Prometheus


def _need(prom: Prometheus | None) -> Prometheus:
    if prom is None:
        pytest.skip("prometheus missing: apt-get install prometheus")
    return prom


def _eventually(prom: Prometheus, expr: str, want: Callable[[float | None], bool], timeout: float = 15) -> float | None:
    seen: list[float | None] = [None]

    def check() -> bool:
        seen[0] = prom.value(expr)
        return want(seen[0])
    wait_for(check, timeout=timeout, interval=0.25)
    return seen[0]


@needs_prometheus
def test_prometheus_scrapes_known_traffic(prometheus: Prometheus | None, traffic: ResolverProcess) -> None:
    prom = _need(prometheus)
    assert _eventually(prom, "sum(resolver_queries_total)", lambda v: v == EXPECTED_TOTAL) == EXPECTED_TOTAL
    for outcome, n in EXPECTED_OUTCOMES.items():
        assert prom.value(f'sum(resolver_queries_total{{outcome="{outcome}"}})') == n, outcome
    assert prom.value('sum(resolver_blocked_total{platform="tiktok"})') == EXPECTED_BLOCKED["tiktok"]
    assert prom.value('sum(resolver_blocked_total{group="ops"})') == sum(EXPECTED_BLOCKED.values())
    # the traffic came after the first scrape, so Prometheus saw the counters rise
    assert (prom.value("sum(increase(resolver_queries_total[5m]))") or 0) > 0


@needs_prometheus
def test_prometheus_evaluates_alert_rules(prometheus: Prometheus | None, traffic: ResolverProcess) -> None:
    prom = _need(prometheus)

    def rules() -> list[dict[str, Any]]:
        return [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
    assert wait_for(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown"
                                for r in rules()), timeout=10, interval=0.25), rules()
    assert [(r["name"], r.get("lastError")) for r in rules() if r["health"] != "ok"] == []

    def expiring() -> list[dict[str, Any]]:
        return [a for a in prom.api("alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == "ResolverExemptionExpiring"]
    assert wait_for(lambda: bool(expiring()), timeout=10, interval=0.25), prom.api("alerts")
    # only the active exemption that runs out in 3 days; the pending one is not in force
    assert [(a["labels"]["reference"], a["state"]) for a in expiring()] == [("TEST-EX-SOON", "pending")]
    assert "expires in 2d 23h" in expiring()[0]["annotations"]["summary"]


# ------------------------------------------------------------------------------------------- metric names

PROMQL_WORDS = {
    # aggregations, modifiers and operators
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2",
    # functions
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "histogram_quantile", "time",
    "timestamp", "vector", "scalar", "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "exp",
    "ln", "log2", "log10", "sqrt", "sort", "sort_desc", "absent", "absent_over_time", "label_replace", "label_join",
    "predict_linear", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "quantile_over_time", "present_over_time", "inf", "nan",
}
PROMETHEUS_SERIES = {"up"}  # made by Prometheus itself, not exported by the resolver
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression reads: identifiers followed by ``{``, ``[``, ``)``, whitespace or the
    end, once strings, label matchers, ranges and label lists (by, on …) are taken out, less PromQL's words."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ", expr)
    found = re.findall(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?=[{\[)\s]|$)", expr)
    return {name for name in found if name.lower() not in PROMQL_WORDS}


def test_metric_names_parser() -> None:
    expr = ('sum by (upstream, le) (rate(resolver_x_bucket{instance=~"$instance", a="b c"}[$__rate_interval])) '
            "/ ignoring(le) resolver_y - time() < 7 * 86400 and on (instance) up == 0 or resolver_z")
    assert metric_names(expr) == {"resolver_x_bucket", "resolver_y", "up", "resolver_z"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _exprs(node: Any) -> list[str]:
    """Every ``expr`` string anywhere in a dashboard (panel targets, annotations, nested rows)."""
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def _alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def _scraped(server: ResolverProcess) -> tuple[dict[str, str], set[str]]:
    """Family name -> type, and the names of the samples present, in a live scrape."""
    from prometheus_client.parser import text_string_to_metric_families
    families = list(text_string_to_metric_families(server.metrics_text()))
    return {f.name: f.type for f in families}, {s.name for f in families for s in f.samples}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_referenced_metric_is_exported(source: str, traffic: ResolverProcess) -> None:
    exprs = _exprs(_dashboard()) if source == "dashboard" else _alert_exprs()
    assert exprs
    referenced = {name for e in exprs for name in metric_names(e)} - PROMETHEUS_SERIES
    types, present = _scraped(traffic)
    missing = []
    for name in sorted(referenced):
        # a histogram's _bucket/_sum/_count belong to its family; anything else must be a family of its own
        family = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)
                       and types.get(name.removesuffix(s)) == "histogram"), name)
        if name not in present or (family == name and name.endswith("_bucket")):
            missing.append(name)
    assert missing == [], f"{source} uses metrics the resolver does not export (or without samples): {missing}"
    assert {n for n in referenced if not n.startswith(("resolver_", "process_"))} == set()


def test_dashboard_shape() -> None:
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    titles = " / ".join(p["title"] for p in panels).lower()
    for wanted in ("by outcome", "by platform", "by group", "p50 / p99", "cache", "upstream", "exemption",
                   "reload", "malformed", "policy version"):
        assert wanted in titles, wanted


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus would get it from Grafana: variables substituted."""
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m"), ("$instance", ".*")):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


@needs_prometheus
def test_dashboard_queries_run_in_prometheus(prometheus: Prometheus | None, traffic: ResolverProcess) -> None:
    """Every dashboard query parses and, except filters (``> 0``), returns series on the live data."""
    prom = _need(prometheus)
    # A labelled series is born at its first increment: rate() needs a second sample of it.
    for family in ("resolver_blocked_total", "resolver_monitored_total", "resolver_exempted_total"):
        _eventually(prom, f"min(count_over_time({family}[5m]))", lambda v: (v or 0) >= 2)
    empty = []
    for expr in _exprs(_dashboard()):
        result = prom.query(_grafana_to_promql(expr))
        if not result and not re.search(r"(>|<|==|!=)\s*[\d.]+\s*$", expr):
            empty.append(expr)
    assert empty == [], "\n".join(empty)


# ------------------------------------------------------------------------------------------- status page: unit


def _snapshot(k: int = 1, **changes: Any) -> StatusSnapshot:
    """Known numbers after ``k`` steps of 2 s: 50 queries/s, a quarter of them blocked, TikTok 60% of the blocks."""
    values: dict[str, Any] = dict(
        time=1_800_000_000.0 + 2 * k, uptime_seconds=3600.0 + 2 * k, version="0.1.0", policy_version="4bbd8c5c8eb83f54",
        policy_loaded_at=1_800_000_000.0 - 5400,
        queries={"blocked": 25 * k, "forwarded": 50 * k, "cached": 20 * k, "error": 4 * k, "refused": 1 * k},
        blocked={"tiktok": 15 * k, "facebook": 6 * k, "instagram": 3 * k, "list:ads": 1 * k, "signal": 0},
        cache_hits=20 * k, cache_misses=30 * k, cache_entries=1234,
        upstreams={"192.0.2.53:53": {"requests": 50 * k, "errors": k, "timeouts": 2 * k, "healthy": 1},
                   "198.51.100.53:53": {"requests": 10 * k, "errors": 5 * k, "timeouts": 5 * k, "healthy": 0}},
        reloads_failed=1, exemptions={"active": 2, "pending": 1, "expired": 0},
    )
    values.update(changes)
    return StatusSnapshot(**values)


def test_status_json_is_cumulative_counters_and_server_time() -> None:
    body = json.loads(status_json(_snapshot(4)))
    assert body["schema"] == 1 and body["time"] == 1_800_000_008.0 and body["uptime_seconds"] == 3608.0
    assert body["queries"] == {"blocked": 100, "forwarded": 200, "cached": 80, "error": 16, "refused": 4, "stale": 0,
                               "invalid": 0}
    assert body["queries_total"] == 400
    assert body["blocked"] == [{"platform": "tiktok", "count": 60}, {"platform": "facebook", "count": 24},
                               {"platform": "instagram", "count": 12}, {"platform": "list:ads", "count": 4}]
    assert body["cache"] == {"hits": 80, "misses": 120, "entries": 1234}
    assert body["upstreams"] == [
        {"name": "192.0.2.53:53", "requests": 200, "errors": 4, "timeouts": 8, "healthy": True},
        {"name": "198.51.100.53:53", "requests": 40, "errors": 20, "timeouts": 20, "healthy": False},
    ]
    assert body["policy"] == {"version": "4bbd8c5c8eb83f54", "loaded_at": 1_799_994_600.0, "reloads_failed": 1}
    assert body["exemptions"] == {"active": 2, "pending": 1, "expired": 0}


def test_status_json_fills_missing_outcomes_and_orders_ties_by_name() -> None:
    body = json.loads(status_json(_snapshot(queries={"forwarded": 3, "new-outcome": 2}, blocked={"b": 1, "a": 1},
                                            upstreams={}, exemptions={})))
    assert body["queries"] == {"blocked": 0, "forwarded": 3, "cached": 0, "error": 0, "refused": 0, "stale": 0,
                               "invalid": 0, "new-outcome": 2}
    assert body["queries_total"] == 5
    assert [b["platform"] for b in body["blocked"]] == ["a", "b"]
    assert body["upstreams"] == [] and body["exemptions"] == {}


def test_status_json_is_strict_utf8_json() -> None:
    raw = status_json(_snapshot(blocked={"list:café<script>": 2}))
    assert json.loads(raw.decode("utf-8"))["blocked"][0]["platform"] == "list:café<script>"
    with pytest.raises(ValueError):
        status_json(_snapshot(time=float("nan")))


def test_by_platform_sums_over_groups() -> None:
    assert by_platform({("tiktok", "default"): 2, ("tiktok", "ops"): 3, ("bypass", "ops"): 1}) == {
        "tiktok": 5, "bypass": 1}


def test_page_is_self_contained() -> None:
    html = PAGE.decode("utf-8")
    assert html.startswith("<!doctype html>")
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc=|@import|url\(", html, re.I)
    # the only absolute URL is the SVG namespace name, which is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert f'content="{CONTENT_SECURITY_POLICY}"' in html
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY and "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert 'fetch("status.json"' in html and "innerHTML" not in html


# ------------------------------------------------------------------------------------------- status page: Chromium


def _chromium(url: str, tmp: Path, *args: str, budget_ms: int = 8000) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}",
           f"--virtual-time-budget={budget_ms}", "--window-size=1200,900", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _by_id(dom: str, ident: str) -> str:
    m = re.search(rf'id="{re.escape(ident)}"[^>]*>(.*?)</', dom, re.S)
    assert m, f"no element #{ident} in the DOM"
    return _text(m[1])


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).replace("&amp;", "&").strip()


def _table(dom: str, ident: str) -> list[list[str]]:
    m = re.search(rf'<table id="{re.escape(ident)}".*?<tbody>(.*?)</tbody>', dom, re.S)
    assert m, f"no table #{ident}"
    return [[_text(td) for td in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", m[1], re.S)]


class _SyntheticStatus(ThreadingHTTPServer):
    """PAGE at / and status.json from ``snapshot(k)`` for the k-th request: the server side in miniature."""

    daemon_threads = True

    def __init__(self, snapshot: Callable[[int], StatusSnapshot]) -> None:
        self.snapshot = snapshot
        self.requests = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _SyntheticHandler)


class _SyntheticHandler(BaseHTTPRequestHandler):
    server: _SyntheticStatus

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, "text/html; charset=utf-8", PAGE)
        elif self.path == "/status.json":
            with self.server.lock:
                self.server.requests += 1
                k = self.server.requests
            self._send(200, "application/json", status_json(self.server.snapshot(k)))
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(snapshot: Callable[[int], StatusSnapshot]) -> Iterator[_SyntheticStatus]:
    server = _SyntheticStatus(snapshot)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def synthetic() -> Iterator[_SyntheticStatus]:
    yield from _serve(_snapshot)


@needs_chromium
def test_status_page_renders_known_numbers(synthetic: _SyntheticStatus, tmp_path: Path) -> None:
    """Each status.json is 2 s of server time later, with 100 more queries of which 25 blocked, 15 TikTok."""
    url = f"http://127.0.0.1:{synthetic.server_address[1]}/"
    dom = _chromium(url, tmp_path, "--dump-dom").stdout
    assert synthetic.requests >= 3, "the page did not poll status.json every 2 s"
    assert _by_id(dom, "conn") == "live"
    assert _by_id(dom, "qps") == "50.0"
    assert _by_id(dom, "bqps") == "12.5"
    assert _by_id(dom, "blocked-share") == "25%"
    assert _by_id(dom, "blocked-sub").endswith("last 5 min")
    assert _by_id(dom, "hit-ratio") == "40%"
    assert _by_id(dom, "errors") == "4%"
    platforms = _table(dom, "platforms")
    assert [row[0] for row in platforms] == ["tiktok", "facebook", "instagram", "list:ads"]
    assert platforms[0][2:] == ["60%", "7.5"]
    k = int(_by_id(dom, "qps-sub").split()[0].replace(",", "")) // 100  # the snapshot on the page
    assert _table(dom, "upstreams") == [
        ["192.0.2.53:53", *(f"{n * k:,}" for n in (50, 1, 2)), "6%", "healthy"],
        ["198.51.100.53:53", *(f"{n * k:,}" for n in (10, 5, 5)), "100%", "down"],
    ]
    assert _by_id(dom, "policy-version") == "4bbd8c5c8eb83f54"
    assert _by_id(dom, "policy-loaded") == "2027-01-15 06:30:00 UTC (90 min ago)"
    assert _by_id(dom, "reloads-failed") == "1"
    assert _by_id(dom, "exemptions") == "2 active, 1 pending, 0 expired"
    assert dom.count("<polyline") == 2

    shot = tmp_path / "page.png"
    _chromium(url, tmp_path, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def _restarting(k: int) -> StatusSnapshot:
    """A resolver that restarts after the second poll: its counters and uptime begin again."""
    return _snapshot(k + 1000) if k <= 2 else _snapshot(k - 2, time=1_800_000_000.0 + 2 * k, uptime_seconds=2.0 * k)


@needs_chromium
def test_status_page_starts_over_when_the_resolver_restarts(tmp_path: Path) -> None:
    for server in _serve(_restarting):
        dom = _chromium(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path, "--dump-dom").stdout
        assert server.requests >= 4
    assert _by_id(dom, "qps") == "50.0"  # not a negative rate across the restart
    assert _by_id(dom, "blocked-share") == "25%"
    points = [float(v) for line in re.findall(r'points="([^"]*)"', dom) for xy in line.split() for v in xy.split(",")]
    assert points and min(points) >= 0


def _demo_snapshot(k: int) -> StatusSnapshot:
    """Varying traffic for the README screenshot: a morning shift ramping up, bursts of blocked lookups."""
    import math
    t = 2.0 * k
    qps = [180 + 120 * math.sin(i / 23) + 40 * math.sin(i / 5.3) for i in range(k + 1)]
    bqps = [q * (0.22 + 0.08 * math.sin(i / 11)) for i, q in enumerate(qps)]
    total = int(2 * sum(qps)) + 400_000
    blocked = int(2 * sum(bqps)) + 90_000
    shares = {"tiktok": 0.41, "facebook": 0.19, "instagram": 0.14, "whatsapp": 0.09, "snapchat": 0.06,
              "doh-bypass": 0.05, "bypass": 0.03, "telegram": 0.02, "list:ads": 0.01}
    return StatusSnapshot(
        time=1_800_000_000.0 + t, uptime_seconds=5 * 86400 + 3 * 3600 + t, version="0.1.0",
        policy_version="4bbd8c5c8eb83f54", policy_loaded_at=1_800_000_000.0 - 7 * 3600,
        queries={"blocked": blocked, **{o: int((total - blocked) * f) for o, f in (
            ("forwarded", 0.38), ("cached", 0.61), ("error", 0.008), ("refused", 0.002))}},
        blocked={p: int(blocked * s) for p, s in shares.items()},
        cache_hits=int((total - blocked) * 0.61), cache_misses=int((total - blocked) * 0.39), cache_entries=48_211,
        upstreams={"10.20.0.53:53": {"requests": int((total - blocked) * 0.3), "errors": 41, "timeouts": 17,
                                     "healthy": 1},
                   "10.20.1.53:53": {"requests": int((total - blocked) * 0.1), "errors": 12, "timeouts": 9,
                                     "healthy": 1}},
        reloads_failed=0, exemptions={"active": 2, "pending": 0, "expired": 1},
    )


@needs_chromium
@pytest.mark.skipif(not os.environ.get("STATUS_PAGE_SCREENSHOT"),
                    reason="set STATUS_PAGE_SCREENSHOT=docs/status-page.png to regenerate the docs screenshot")
def test_status_page_docs_screenshot(tmp_path: Path) -> None:
    """Regenerates the docs screenshot: five minutes of synthetic traffic (virtual time), 1200x900."""
    target = REPO_ROOT / os.environ["STATUS_PAGE_SCREENSHOT"]
    for server in _serve(_demo_snapshot):
        _chromium(f"http://127.0.0.1:{server.server_address[1]}/", tmp_path, f"--screenshot={target}",
                  budget_ms=310_000)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_status_page_served_by_resolver(traffic: ResolverProcess, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{traffic.metrics_port}/"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers.get_content_type() == "text/html"
            assert resp.read() == PAGE
    except urllib.error.HTTPError as err:
        if err.code == 404:
            pytest.skip("status page not wired yet")
        raise
    with urllib.request.urlopen(url + "status.json", timeout=5) as resp:
        body = json.load(resp)
    assert body["queries_total"] == EXPECTED_TOTAL and body["blocked"][0] == {"platform": "tiktok", "count": 3}

    dom = _chromium(url, tmp_path, "--dump-dom").stdout
    assert _by_id(dom, "conn") == "live"
    assert re.fullmatch(r"\d+(\.\d)?", _by_id(dom, "qps")), _by_id(dom, "qps")
    blocked = EXPECTED_OUTCOMES["blocked"]
    assert _by_id(dom, "blocked-share") == f"{round(100 * blocked / EXPECTED_TOTAL, 1)}%"
    assert _by_id(dom, "blocked-sub") == f"{blocked} of {EXPECTED_TOTAL}, since start"
    assert _table(dom, "platforms")[0][:2] == ["tiktok", "3"]
    assert [row[0] for row in _table(dom, "upstreams")] == [body["upstreams"][0]["name"]]
    shot = tmp_path / "page.png"
    _chromium(url, tmp_path, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
