"""A self-contained status page for small sites without Grafana, and the JSON it polls.

``PAGE`` is served at ``/``; every ``POLL_MS`` it fetches ``status.json`` (``status_json(snapshot)``). The JSON
carries only cumulative counters and the server's clock, so the server keeps no history: the page remembers the
last ``WINDOW_S`` itself and turns counter differences into rates. No external assets (no CDN, no fonts, no images);
a Content-Security-Policy in the page allows only its own inline style and script (by hash) and fetches to its
own origin. Values reach the DOM through ``textContent`` only, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from resolver.core.stats import OUTCOMES

SCHEMA = 1  # bumped when a field of status.json changes meaning
UPSTREAM_COUNTS = ("requests", "errors", "timeouts")


@dataclass(frozen=True)
class StatusSnapshot:
    """Plain values read from the running server; every count is cumulative since start."""

    time: float  # server Unix time when the snapshot was taken: the page's clock for rates
    uptime_seconds: float
    version: str  # resolver build
    policy_version: str  # content hash, as in resolver_policy_info
    policy_loaded_at: float  # Unix time
    queries: dict[str, int]  # outcome (as resolver_queries_total's label) -> answered queries
    blocked: dict[str, int]  # platform id (or list:NAME, or bypass) -> blocked queries, summed over groups
    cache_hits: int
    cache_misses: int
    cache_entries: int
    # upstream address -> {"requests", "errors", "timeouts": counts; "healthy": 1 in the rotation, 0 asked last}
    upstreams: dict[str, dict[str, int]]
    reloads_failed: int = 0
    exemptions: dict[str, int] = field(default_factory=dict)  # state (active, pending, expired) -> count


def by_platform(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Stats' ``{(platform, group): n}`` summed over groups, for ``StatusSnapshot.blocked``."""
    out: dict[str, int] = {}
    for (platform, _group), n in counts.items():
        out[platform] = out.get(platform, 0) + n
    return out


def status_json(snapshot: StatusSnapshot) -> bytes:
    """The body of ``/status.json``: UTF-8 JSON, platforms by count (highest first), upstreams in config order."""
    queries = {outcome: int(snapshot.queries.get(outcome, 0)) for outcome in OUTCOMES}
    for outcome, n in snapshot.queries.items():  # an outcome added later still shows up in the total
        queries.setdefault(outcome, int(n))
    blocked = sorted(((p, int(n)) for p, n in snapshot.blocked.items() if n), key=lambda item: (-item[1], item[0]))
    body = {
        "schema": SCHEMA,
        "time": float(snapshot.time),
        "uptime_seconds": float(snapshot.uptime_seconds),
        "version": snapshot.version,
        "queries": queries,
        "queries_total": sum(queries.values()),
        "blocked": [{"platform": p, "count": n} for p, n in blocked],
        "cache": {"hits": int(snapshot.cache_hits), "misses": int(snapshot.cache_misses),
                  "entries": int(snapshot.cache_entries)},
        "upstreams": [
            {"name": name, **{k: int(stats.get(k, 0)) for k in UPSTREAM_COUNTS},
             "healthy": bool(stats.get("healthy", 1))}
            for name, stats in snapshot.upstreams.items()
        ],
        "policy": {"version": snapshot.policy_version, "loaded_at": float(snapshot.policy_loaded_at),
                   "reloads_failed": int(snapshot.reloads_failed)},
        "exemptions": {state: int(n) for state, n in snapshot.exemptions.items()},
    }
    return json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


_STYLE = """
:root{--bg:#f4f6f8;--card:#fff;--ink:#1b2430;--dim:#5b6776;--line:#d9dee5;--q:#1f6fd1;--b:#d1451f;--ok:#1a7f37;
--bad:#c62828;--warn:#a15c00}
@media (prefers-color-scheme:dark){:root{--bg:#12161c;--card:#1b222b;--ink:#e6eaf0;--dim:#9aa6b4;--line:#2e3946;
--q:#5aa2ff;--b:#ff7a50;--ok:#4cc26b;--bad:#ff6b6b;--warn:#e0a030}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",sans-serif}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.4rem 1rem;padding:14px 24px;background:var(--card);
border-bottom:1px solid var(--line)}
h1{font-size:20px;margin:0}h2{font-size:15px;margin:0 0 10px;color:var(--dim);font-weight:600}
#meta{color:var(--dim);font-size:13px}
main{padding:16px 24px;display:grid;gap:16px;max-width:1400px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:16px}
.card,.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px}
.label{color:var(--dim);font-size:13px}.value{font-size:30px;font-weight:650;font-variant-numeric:tabular-nums}
.sub{color:var(--dim);font-size:12px;min-height:1.2em}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:5px 8px;border-bottom:1px solid var(--line)}
th:first-child,td:first-child{text-align:left}th{color:var(--dim);font-weight:600;font-size:13px}
td.empty{text-align:left;color:var(--dim)}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
background:var(--dim)}
.pill.ok{background:var(--ok)}.pill.bad{background:var(--bad)}.pill.warn{background:var(--warn)}
#chart{width:100%;height:220px;display:block}#chart text{fill:var(--dim);font-size:11px}
#chart .grid{stroke:var(--line)}#chart .q{stroke:var(--q);fill:none;stroke-width:2}
#chart .b{stroke:var(--b);fill:none;stroke-width:2}
.legend{display:flex;gap:16px;font-size:13px;color:var(--dim)}
.legend i{display:inline-block;width:12px;height:3px;margin-right:6px;vertical-align:middle}
.legend .q{background:var(--q)}.legend .b{background:var(--b)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}dt{color:var(--dim)}dd{margin:0}
h2.next{margin-top:22px}code{font-size:13px}.alarm{color:var(--bad)}
body.stale .value,body.stale td{opacity:.45}
footer{padding:0 24px 20px;color:var(--dim);font-size:12px}footer a{color:var(--q)}
"""

_SCRIPT = r"""
"use strict";
const POLL_MS = 2000, WINDOW_S = 300, NOW_S = 10, STALE_MS = 7000;
let samples = [];  // cumulative snapshots within the window, oldest first (server time)
let lastOk = 0;
const $ = (id) => document.getElementById(id);
function setText(id, text) { $(id).textContent = text; }
function fmtRate(x) { return x < 100 ? x.toFixed(1) : Math.round(x).toLocaleString("en-GB"); }
function fmtInt(n) { return Math.round(n).toLocaleString("en-GB"); }
function fmtPct(x) { const v = Math.round(x * 1000) / 10; return (Number.isInteger(v) ? v : v.toFixed(1)) + "%"; }
function fmtUtc(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"; }
function fmtAge(s) {
  s = Math.max(0, Math.round(s));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
}
function total(s) { return s.queries_total; }
function blockedOf(s, platform) {
  for (const row of s.blocked) if (row.platform === platform) return row.count;
  return 0;
}
// The sample to measure "now" against: the oldest one at most NOW_S seconds old (never the latest itself).
function recentBase(latest) {
  let base = null;
  for (const s of samples) {
    if (s !== latest && latest.time - s.time <= NOW_S + 0.5) { base = s; break; }
  }
  return base || (samples.length > 1 ? samples[samples.length - 2] : null);
}
// A share over the window when the window saw traffic, else since start: [value or null, caption].
function share(part, whole, basePart, baseWhole) {
  const dw = whole - baseWhole;
  if (dw > 0) return [(part - basePart) / dw, fmtInt(part - basePart) + " of " + fmtInt(dw) + ", last 5 min"];
  if (whole > 0) return [part / whole, fmtInt(part) + " of " + fmtInt(whole) + ", since start"];
  return [null, "no data yet"];
}
function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}
function emptyRow(tbody, cols, text) {
  const tr = document.createElement("tr"), td = document.createElement("td");
  td.colSpan = cols; td.className = "empty"; td.textContent = text; tr.appendChild(td); tbody.appendChild(tr);
}
function pill(text, cls) {
  const s = document.createElement("span"); s.className = "pill " + cls; s.textContent = text; return s;
}
function render(s) {
  const first = samples[0], base = recentBase(s);
  const dt = base ? s.time - base.time : 0;
  const qps = dt > 0 ? (total(s) - total(base)) / dt : null;
  const bqps = dt > 0 ? (s.queries.blocked - base.queries.blocked) / dt : null;
  setText("qps", qps === null ? "—" : fmtRate(qps));
  setText("qps-sub", fmtInt(total(s)) + " answered since start");
  setText("bqps", bqps === null ? "—" : fmtRate(bqps));
  setText("bqps-sub", fmtInt(s.queries.blocked) + " blocked since start");
  const [bs, bcap] = share(s.queries.blocked, total(s), first.queries.blocked, total(first));
  setText("blocked-share", bs === null ? "—" : fmtPct(bs)); setText("blocked-sub", bcap);
  const lookups = s.cache.hits + s.cache.misses, firstLookups = first.cache.hits + first.cache.misses;
  const [hr, hcap] = share(s.cache.hits, lookups, first.cache.hits, firstLookups);
  setText("hit-ratio", hr === null ? "—" : fmtPct(hr));
  setText("hit-sub", hcap + "; " + fmtInt(s.cache.entries) + " entries");
  const errors = s.queries.error || 0;
  const [er, ecap] = share(errors, total(s), first.queries.error || 0, total(first));
  const stale = s.queries.stale || 0;  // answered from expired cache entries: upstreams are failing
  setText("errors", er === null ? "—" : fmtPct(er));
  setText("errors-sub", ecap + " (SERVFAIL, FORMERR…)" + (stale ? " · " + fmtInt(stale) + " stale answers" : ""));
  $("errors").className = "value" + (er !== null && er > 0.05 ? " alarm" : "");
  setText("meta", "version " + s.version + " · up " + fmtAge(s.uptime_seconds) + " · updated " + fmtUtc(s.time));
  const tb = $("platforms").tBodies[0]; tb.replaceChildren();
  const blockedTotal = s.blocked.reduce((a, r) => a + r.count, 0);
  for (const r of s.blocked.slice(0, 10)) {
    const now = dt > 0 ? (r.count - blockedOf(base, r.platform)) / dt : null;
    row(tb, [r.platform, fmtInt(r.count), fmtPct(r.count / blockedTotal), now === null ? "—" : fmtRate(now)]);
  }
  if (!s.blocked.length) emptyRow(tb, 4, "nothing blocked yet");
  const ub = $("upstreams").tBodies[0]; ub.replaceChildren();
  for (const u of s.upstreams) {
    const failed = u.errors + u.timeouts;
    row(ub, [u.name, fmtInt(u.requests), fmtInt(u.errors), fmtInt(u.timeouts),
             u.requests ? fmtPct(failed / u.requests) : "—", u.healthy ? pill("healthy", "ok") : pill("down", "bad")]);
  }
  if (!s.upstreams.length) emptyRow(ub, 6, "no upstreams configured");
  setText("policy-version", s.policy.version);
  setText("policy-loaded", fmtUtc(s.policy.loaded_at) + " (" + fmtAge(s.time - s.policy.loaded_at) + " ago)");
  setText("reloads-failed", fmtInt(s.policy.reloads_failed));
  $("reloads-failed").className = s.policy.reloads_failed ? "alarm" : "";
  const ex = s.exemptions;
  setText("exemptions",
          (ex.active || 0) + " active, " + (ex.pending || 0) + " pending, " + (ex.expired || 0) + " expired");
  drawChart(s);
}
function drawChart(latest) {
  const svg = $("chart"), W = Math.max(300, svg.clientWidth || 800), H = 220, L = 48, R = 10, T = 10, B = 24;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const pts = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = b.time - a.time;
    if (dt > 0) pts.push([b.time, (total(b) - total(a)) / dt, (b.queries.blocked - a.queries.blocked) / dt]);
  }
  let max = 1;
  for (const p of pts) max = Math.max(max, p[1]);
  const mag = Math.pow(10, Math.floor(Math.log10(max)));
  max = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= max);
  const x = (t) => L + (W - L - R) * (1 - (latest.time - t) / WINDOW_S);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const ns = "http://www.w3.org/2000/svg", kids = [];
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    kids.push(e);
  };
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"});
    el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, (+v.toPrecision(3)).toLocaleString("en-GB"));
  }
  for (let m = 5; m >= 0; m--) {
    el("text", {x: x(latest.time - m * 60), y: H - 6, "text-anchor": m === 5 ? "start" : m ? "middle" : "end"},
       m ? "−" + m + " min" : "now");
  }
  for (const [i, cls] of [[1, "q"], [2, "b"]]) {
    const line = pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[i]).toFixed(1)).join(" ");
    if (pts.length) el("polyline", {class: cls, points: line});
  }
  svg.replaceChildren(...kids);
}
function setConn(ok, why) {
  const c = $("conn");
  if (ok) { c.className = "pill ok"; c.textContent = "live"; document.body.classList.remove("stale"); return; }
  const stale = Date.now() - lastOk > STALE_MS;
  c.className = "pill " + (stale ? "bad" : "warn");
  c.textContent = (stale ? "unreachable" : "retrying") + (why ? ": " + why : "");
  if (stale) document.body.classList.add("stale");
}
async function poll() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    let prev = samples[samples.length - 1];
    if (prev && (s.time < prev.time || s.uptime_seconds < prev.uptime_seconds
                 || s.queries_total < prev.queries_total)) {
      samples = [];  // the resolver restarted: its counters began again
      prev = undefined;
    }
    if (!prev || s.time > prev.time) samples.push(s); else samples[samples.length - 1] = s;
    while (samples.length > 2 && s.time - samples[0].time > WINDOW_S) samples.shift();
    lastOk = Date.now();
    render(s);
    setConn(true);
  } catch (e) {
    setConn(false, e && e.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
"""

_TILES = "\n".join(
    f'<div class="tile"><div class="label">{label}</div><div class="value" id="{key}">—</div>'
    f'<div class="sub" id="{sub}"></div></div>'
    for label, key, sub in (
        ("Queries / s", "qps", "qps-sub"),
        ("Blocked / s", "bqps", "bqps-sub"),
        ("Blocked share", "blocked-share", "blocked-sub"),
        ("Cache hit ratio", "hit-ratio", "hit-sub"),
        ("Error answers", "errors", "errors-sub"),
    )
)

_BODY = """<header><h1>resolver</h1><span id="conn" class="pill">connecting…</span><span id="meta"></span></header>
<main>
<section class="tiles">
{tiles}
</section>
<section class="card"><h2>Queries per second, last 5 minutes</h2>
<div class="legend"><span><i class="q"></i>all queries</span><span><i class="b"></i>blocked</span></div>
<svg id="chart" role="img" aria-label="Queries and blocked queries per second over the last 5 minutes"></svg></section>
<div class="grid2">
<section class="card"><h2>Top blocked platforms</h2><table id="platforms"><thead><tr><th scope="col">Platform</th>
<th scope="col">Blocked</th><th scope="col">Share of blocks</th><th scope="col">Per second</th></tr></thead>
<tbody></tbody></table></section>
<section class="card"><h2>Upstreams</h2><table id="upstreams"><thead><tr><th scope="col">Upstream</th>
<th scope="col">Requests</th><th scope="col">Errors</th><th scope="col">Timeouts</th><th scope="col">Failed</th>
<th scope="col">State</th></tr></thead><tbody></tbody></table>
<h2 class="next">Policy</h2><dl>
<dt>Version</dt><dd><code id="policy-version">—</code></dd>
<dt>Loaded</dt><dd id="policy-loaded">—</dd>
<dt>Failed reloads</dt><dd id="reloads-failed">—</dd>
<dt>Exemptions</dt><dd id="exemptions">—</dd>
</dl></section>
</div>
</main>
<footer>Refreshes every 2 s. Rates are computed in this browser from the resolver's counters and reset when the page
is reloaded. Prometheus metrics: <a href="metrics">/metrics</a>.</footer>""".replace("{tiles}", _TILES)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own style and script run; it may fetch from its own origin and nothing else.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)

PAGE: bytes = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
    f"<title>resolver status</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{_BODY}\n"
    f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
).encode()
