"""Command line: argument parsing, output and exit codes only. Exit 2 means "your input is wrong" (a listen
address someone else holds included)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from resolver import __version__, build
from resolver.config.loader import load_config, with_overrides
from resolver.config.model import Config
from resolver.config.policy import parse_duration
from resolver.core import order
from resolver.core.client import canonical_client
from resolver.core.guard import Approval
from resolver.core.policy import ACTION_NAMES, BLOCK, Exemption, Policy, Verdict, utc_text
from resolver.errors import ConfigError, ListenError, ResolverError, one_line
from resolver.lists.formats import normalise_name
from resolver.lists.load import Loaded, load_policy
from resolver.lists.platforms import line_of
from resolver.net.limits import ensure_fds
from resolver.ops import logs
from resolver.ops.review import load_side, render, review

log = logging.getLogger("resolver")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resolver", description="A filtering DNS resolver for managed phones.")
    parser.add_argument("--version", action="version", version=f"resolver {__version__} ({build()})")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve DNS over UDP and TCP")
    serve.add_argument("-c", "--config", help="YAML config file (default: built-in defaults)")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT", help="listen address (repeatable)")
    serve.add_argument("--upstream", action="append", metavar="ADDR[:PORT]", help="upstream resolver (repeatable)")
    serve.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics over HTTP here")
    serve.add_argument("--blocklist", action="append", metavar="FILE", help="extra list blocked for every client")
    serve.add_argument("--dot", action="append", metavar="ADDR:PORT", help="serve DNS over TLS here (repeatable)")
    serve.add_argument("--doh", action="append", metavar="ADDR:PORT", help="serve DNS over HTTPS here (repeatable)")
    serve.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM) for --dot and --doh")
    serve.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--log-format", default="auto", choices=("auto", "json", "text"),
                       help="stderr log format (auto: text on a terminal, JSON lines otherwise)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes sharing the ports and one cache; default: one per CPU this "
                            "process may run on, within its cgroup's CPU quota")
    serve.add_argument("--check-against", metavar="OLD",
                       help="refuse to start when this policy unblocks anything, compared with OLD (a config or a "
                            "directory, as for `resolver diff`), that the config does not approve")
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # INDEX:FD:PID, set by the supervisor for its workers

    check = sub.add_parser("check", help="validate a config and its lists, print a summary")
    check.add_argument("-c", "--config")
    check.add_argument("--blocklist", action="append", metavar="FILE")

    explain = sub.add_parser("explain", help="show the verdict for a name and the rule that decided it")
    explain.add_argument("name")
    explain.add_argument("-c", "--config")
    explain.add_argument("--client", default="127.0.0.1", help="client address (default 127.0.0.1)")
    explain.add_argument("--client-id", metavar="ID", help="the client id a DoT/DoH phone carries")
    explain.add_argument("--blocklist", action="append", metavar="FILE")

    diff = sub.add_parser("diff", help="what changes from OLD to NEW, per group; exits 1 on a reduction NEW does "
                                       "not approve")
    diff.add_argument("old", metavar="OLD", help="config file, or a directory (its resolver.yaml, or else a "
                                                 "blocklists directory under the built-in policy)")
    diff.add_argument("new", metavar="NEW", help="the same, for the proposed policy")

    profile = sub.add_parser("profile", help="print a device profile that points a phone at this resolver over "
                                             "DoH or DoT (apple: .mobileconfig); --csv writes one per row")
    from resolver.ops.profile import add_arguments as profile_arguments
    profile_arguments(profile)

    exemptions = sub.add_parser("exemptions", help="list exemptions with their state (pending, active, expired)")
    exemptions.add_argument("-c", "--config")
    exemptions.add_argument("--expiring", metavar="DURATION", help="only those expiring within DURATION (e.g. 7d)")
    exemptions.add_argument("--blocklist", action="append", metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "diff":
        return _guarded(lambda: _diff(args.old, args.new))
    if args.command == "profile":
        from resolver.ops.profile import command as profile_command
        return _guarded(lambda: profile_command(args))

    def make_config() -> Config:
        return with_overrides(load_config(args.config), listen=getattr(args, "listen", None),
                              upstreams=getattr(args, "upstream", None), metrics=getattr(args, "metrics", None),
                              blocklists=args.blocklist,
                              encrypted={k: getattr(args, k, None) for k in ("dot", "doh", "tls_cert", "tls_key")})

    def command() -> int:
        config = make_config()
        if args.command in ("serve", "check") and config.encrypted.listening:
            from resolver.net.tlsconf import check_certificate
            check_certificate(config.encrypted.tls)  # a bad certificate is one error line, before anything starts
        if args.command == "serve":
            ensure_fds(config)  # before anything is bound or a worker started: workers inherit the raised limit
            args.chosen = "--workers"
            if args.workers is None:
                from resolver.ops.cpus import cpu_budget
                budget = cpu_budget()
                args.workers, args.chosen = budget.workers, budget.describe()
            if args.workers < 1:
                raise ConfigError("--workers", "must be at least 1")
            if args.workers > 1 and args.worker is None:
                return _supervise(list(argv if argv is not None else sys.argv[1:]), config, args)
            return _serve(make_config, config, args.log_level, args.log_format, args.worker, args.check_against)
        loaded = load_policy(config, strict=args.command == "check")  # check: a public-suffix entry is an error
        if args.command == "check":
            _check(config, loaded)
        elif args.command == "exemptions":
            _exemptions(config, loaded, args.expiring)
        else:
            _explain(config, loaded, args.name, args.client, args.client_id)
        return 0

    return _guarded(command)


def _guarded(command: Callable[[], int]) -> int:
    """Run a command; what goes wrong becomes one ``error:`` line and an exit code, never a traceback."""
    try:
        return command()
    except (ConfigError, ListenError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `resolver check | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # ResolverError, or input nobody foresaw (named as such): one line, status 1
        internal = "" if isinstance(err, ResolverError) else f"internal error: {err.__class__.__name__}: "
        print(f"error: {internal}{one_line(str(err))}", file=sys.stderr)
        return 1


def _diff(old_path: str, new_path: str) -> int:
    old_config, old = load_side(old_path)
    new_config, new = load_side(new_path)
    outcome = review(old.side(), new.side(), new_config.policy.guard, time.time(), old_config.policy.guard)
    sys.stdout.write(render(old_path, new_path, old, new, outcome))
    return 1 if outcome.refused else 0


def _check_against(old_path: str, config: Config, loaded: Loaded) -> None:
    """``serve --check-against``: the policy about to serve passes the same review as a reload would."""
    old_config, old = load_side(old_path)
    outcome = review(old.side(), loaded.side(), config.policy.guard, time.time(), old_config.policy.guard)
    if outcome.refused:
        raise ConfigError("--check-against", f"refusing to start against {old_path}: {outcome.refusal()}")


def _run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def _supervise(argv: list[str], config: Config, args: argparse.Namespace) -> int:
    from resolver.ops.querylog import run_salt_env
    from resolver.ops.systemd import Notifier
    from resolver.ops.workers import Supervisor, pin_ports

    logs.setup(args.log_level, args.log_format)
    loaded = load_policy(config)  # refuse a bad config here, once, rather than in N workers
    if args.check_against:  # here too, once: the workers are not asked again
        _check_against(args.check_against, config, loaded)
    config = pin_ports(config)
    _warn_if_open(config)
    worker_argv: list[str] = []
    skip = 0
    for item in argv:
        if skip:
            skip -= 1
            continue
        if item in ("--workers", "--listen"):
            skip = 1
            continue
        if item.startswith(("--workers=", "--listen=")):
            continue
        worker_argv.append(item)
    for endpoint in config.listen:
        worker_argv += ["--listen", str(endpoint)]

    async def main() -> int:
        supervisor = Supervisor(args.workers, worker_argv, config, env=run_salt_env(config.query_log),
                                chosen=args.chosen)
        systemd = Notifier.from_env()  # before any worker starts: they must not inherit NOTIFY_SOCKET
        supervisor.notify = systemd.send
        return await systemd.watching(supervisor.run())

    result: int = _run(main)
    return result


def _serve(make_config: Callable[[], Config], config: Config, level: str, fmt: str,
           worker: str | None = None, check_against: str | None = None) -> int:
    logs.setup(level, fmt)
    from resolver.app import Server
    from resolver.ops.link import WorkerLink, follow_supervisor
    from resolver.ops.querylog import with_run_salt
    from resolver.ops.reload import fetch_missing

    link = None
    if worker:
        link = WorkerLink.parse(worker)
        if not follow_supervisor(link.supervisor):
            log.error("worker %d: the supervisor is gone before this worker started; not starting", link.index)
            return 1
        config = replace(config, query_log=with_run_salt(config.query_log, os.environ))
    else:
        _warn_if_open(config)  # (a supervisor has said it for its workers)
    # A URL list never fetched before (or pinned to new content) is fetched now, so the first policy already has
    # it; on failure the resolver still starts (without that list) and keeps trying.
    fetch_missing(config)
    loaded = load_policy(config)
    if check_against and worker is None:  # a supervisor has checked for its workers
        _check_against(check_against, config, loaded)

    async def run() -> None:
        server = Server(make_config, config, loaded, link)
        await server.run()

    _run(run)
    return 0


def _warn_if_open(config: Config) -> None:
    from resolver.net.sockets import access_warning

    warning = access_warning(config.listen, config.access)
    if warning is not None:
        log.warning("%s", warning)


def _check(config: Config, loaded: Loaded) -> None:
    policy = loaded.policy
    out = sys.stdout.write
    default = policy.groups[0]
    out(f"config: {config.source}\n")
    out(f"policy version: {policy.version}\n")
    out(f"platforms: {len(loaded.platforms)} ({len(default.block)} blocked for the default group)\n")
    width = max(len(p.id) for p in loaded.platforms)
    for p in sorted(loaded.platforms, key=lambda p: (p.category, p.id)):
        state = "blocked" if p.id in default.block else "allowed" if p.id in default.allow else \
            "monitored" if p.id in default.monitor else "not blocked"
        out(f"  {p.id:<{width}}  {p.category:<10} {len(p.domains):>5} domains  {state}\n")
    out(f"lists: {len(loaded.lists)}\n")
    for (name, _), parsed, source in zip(policy.lists.items(), loaded.lists, config.policy.lists, strict=True):
        kind = "allow list, " if source.allowlist else ""
        out(f"  {name}: {parsed.source}  {parsed.format}  {kind}{len(parsed.entries)} entries "
            f"({parsed.blocking} blocking), {parsed.skipped_count} lines skipped\n")
        for skip in parsed.skipped[:20]:
            out(f"    line {skip.line}: {_printable(skip.reason)}: {_printable(skip.text)}\n")
        if parsed.skipped_count > 20:
            out(f"    … and {parsed.skipped_count - 20} more\n")
    out(f"groups: {len(policy.groups)}\n")
    for group in policy.groups:
        members = ", ".join([str(n) for n in group.networks] + [f"id:{c}" for c in sorted(group.client_ids)])
        out(f"  {group.name}: {members or 'every client in no other group'}\n"
            f"    blocks {_summary(group.block, loaded)}; monitors {_summary(group.monitor, loaded)}; "
            f"allows {_summary(group.allow, loaded)}\n")
    now = time.time()
    states = [e.state(now) for e in policy.exemptions]
    out(f"exemptions: {len(states)} ({states.count('active')} active, {states.count('pending')} pending, "
        f"{states.count('expired')} expired)\n")
    guard = config.policy.guard
    out("required for the default group: " + (", ".join(guard.required) + " (all blocked)" if guard.required
                                                else "nothing (policy.required)") + "\n")
    out("approved changes: " + ("; ".join(f"{a.reference} ({_approved(a)}) by {a.approved_by}, until "
                                           f"{utc_text(a.expires)}{' [expired]' if a.expires <= now else ''}"
                                           for a in guard.approvals) or "none") + "\n")
    bypass = policy.spec.bypass
    out("bypass defences: " + ", ".join(f"{k} {'on' if getattr(bypass, k) else 'off'}" for k in
                                        ("firefox_canary", "private_relay", "ddr", "doh_servers", "cname_cloaking"))
        + "\n")
    s = config.sinkhole
    extra = f" ipv4 {', '.join(s.ipv4) or '-'} ipv6 {', '.join(s.ipv6) or '-'}" if s.mode == "address" else ""
    out(f"sinkhole: {s.mode}, ttl {s.ttl}{extra}\n")
    out(f"listen: {' '.join(str(e) for e in config.listen)}; upstreams: "
        f"{' '.join(str(e) for e in config.upstreams) or 'from /etc/resolv.conf'}\n")
    out("ok\n")


def _approved(approval: Approval) -> str:
    kinds = (("platforms", approval.platforms), ("lists", approval.lists), ("domains", approval.domains),
             ("bypass", approval.bypass))
    return "; ".join(f"{kind} {', '.join(sorted(names))}" for kind, names in kinds if names)


def _printable(text: str) -> str:
    """A stranger's list must not send escape sequences to the operator's terminal: show them escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _summary(platform_ids: frozenset[str], loaded: Loaded) -> str:
    """Platform ids grouped back into whole categories where a category is complete."""
    if not platform_ids:
        return "nothing"
    parts = []
    left = set(platform_ids)
    for category in sorted({p.category for p in loaded.platforms}):
        members = {p.id for p in loaded.platforms if p.category == category}
        if members <= left:
            parts.append(category)
            left -= members
    return ", ".join(parts + sorted(left))


def _explain(config: Config, loaded: Loaded, name: str, client: str, client_id: str | None = None) -> None:
    try:
        client = canonical_client(str(ipaddress.ip_address(client)))
    except ValueError:
        raise ConfigError("--client", f"{client!r} is not an IP address") from None
    try:
        normal = normalise_name(name)
    except ValueError as err:
        raise ConfigError("NAME", f"{name!r}: {err}") from None
    policy = loaded.policy
    out = sys.stdout.write
    gi = policy.group_of(client, client_id)
    group = policy.groups[gi]
    why = f"client id {client_id}" if client_id is not None and policy.by_client_id.get(client_id) == gi else next(
        (f"network {n}" for n, i in policy.by_network if i == gi and ipaddress.ip_address(client) in n),
        "in no group's networks")
    out(f"name: {normal}\nclient: {client}\n" + (f"client id: {client_id}\n" if client_id is not None else "")
        + f"group: {group.name} ({why})\n")
    along = policy.trie.along(normal.encode("ascii").split(b"."))
    if not along:
        out("steps: no special name, allow entry, platform or list covers this name\n"
            "verdict: forwarded\nrule: none (no list entry covers this name)\n")
        return
    verdict = along[-1][1][gi]
    # The deciding entry is the broadest one holding this verdict: a narrower entry that decides nothing
    # carries its ancestor's verdict (see builder.finish).
    depth = min(d for d, v in along if v[gi] is verdict)
    entry = ".".join(normal.split(".")[-depth:])
    claims = verdict.rules
    exemption = policy.exemption_for(verdict, client, client_id, time.time()) if verdict.action == BLOCK else None
    decided = order.decide(claims, group, verdict.exemptions)[0]
    if exemption is not None:
        decided = order.EXEMPTIONS  # it lifts the block the later step gave
    out("steps:\n")
    for index, step in enumerate(order.STEPS):
        mark = "  <- decides" if index == decided else "" if index < decided else "  (not reached)"
        if index == order.EXEMPTIONS:
            _explain_exemptions(verdict, exemption, index, mark, out)
        else:
            out(f"  {index + 1} {step.name}: {step.describe(claims, group)}{mark}\n")
    if decided < len(order.STEPS):
        out(f"decided by: step {decided + 1}, {order.STEPS[decided].name}: {order.STEPS[decided].why}\n")
    else:
        out("decided by: no step (the name's platforms are neither blocked nor allowed for the group)\n")
    if exemption is not None:
        out(f"verdict: allowed\nreason: exemption {exemption.reference}: {exemption.reason}\n")
    else:
        out(f"verdict: {ACTION_NAMES[verdict.action]}\nreason: {verdict.reason}\n")
    for rule in claims:
        out(f"{'rule' if rule is verdict.rule else 'also'}: {entry} ({_match_text(policy, entry)}) "
            f"in {_shown(rule.source)}{_where(loaded, rule.source, entry)}\n")
        if rule.platform is not None:
            p = rule.platform
            out(f"  platform: {p.id} ({p.name}, {p.category}, {p.owner})\n")
    if verdict.action == BLOCK and exemption is None:
        out(f"answer: sinkhole {verdict.mode or policy.sinkhole.mode}, ttl {policy.sinkhole.ttl}\n")


def _explain_exemptions(verdict: Verdict, exemption: Exemption | None, index: int, mark: str,
                        out: Callable[[str], object]) -> None:
    if not (verdict.exemptions and verdict.action == BLOCK):
        out(f"  {index + 1} exemptions: none for this name{mark if exemption is not None else ''}\n")
        return
    now = time.time()
    for e in verdict.exemptions:
        applies = "applies" if e is exemption else "does not cover this client" if e.state(now) == "active" \
            else e.state(now)
        out(f"  {index + 1} exemption {e.reference} ({', '.join(sorted(e.platforms))}) approved by {e.approved_by}, "
            f"{utc_text(e.starts)} to {utc_text(e.expires)}: {applies}{mark if e is exemption else ''}\n")


def _shown(path: str) -> str:
    """A file under the current directory as a relative path, as the operator would type it."""
    cwd = os.getcwd() + os.sep
    return path[len(cwd):] if path.startswith(cwd) else path


def _match_text(policy: Policy, entry: str) -> str:
    labels = entry.encode("ascii").split(b".")
    here = policy.trie.get(labels, "exact") is not None
    below = policy.trie.get(labels, "below") is not None
    return "and subdomains" if here and below else "exact name" if here else "subdomains only"


def _where(loaded: Loaded, source: str, entry: str) -> str:
    """`` line N`` of the entry in its list or platform file, when it can be found."""
    for parsed in loaded.lists:
        if parsed.source == source:
            for item in parsed.entries:
                if item.domain == entry:
                    return f" line {item.line}"
    for platform in loaded.platforms:
        if platform.source == source:
            try:
                with open(source, encoding="utf-8") as handle:
                    return f" line {line_of(handle.read(), entry)}"
            except OSError:
                return ""
    return ""


def _exemptions(config: Config, loaded: Loaded, expiring: str | None) -> None:
    now = time.time()
    horizon = parse_duration(expiring, "--expiring") if expiring else None
    rows = []
    for e in sorted(loaded.policy.exemptions, key=lambda e: e.expires):
        state = e.state(now)
        if horizon is not None and not (state != "expired" and e.expires - now <= horizon):
            continue
        who = ", ".join(e.who())
        rows.append((state, e, who))
    out = sys.stdout.write
    if not rows:
        out("no exemptions" + (f" expiring within {expiring}" if expiring else "") + "\n")
        return
    for state, e, who in rows:
        left = e.expires - now
        due = f"expires in {left / 86400:.1f} days" if state != "expired" else "expired"
        out(f"{state:<8} {e.reference:<14} {','.join(sorted(e.platforms)):<16} {utc_text(e.starts)} -> "
            f"{utc_text(e.expires)}  ({due})\n         for {who}; approved by {e.approved_by}: {e.reason}\n")


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
