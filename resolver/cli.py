"""Command line: argument parsing, output and exit codes only. Exit 2 means "your input is wrong"."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Sequence

from resolver import __version__
from resolver.config import Config, load_config, with_overrides
from resolver.core.policy import ACTION_NAMES, BLOCK, Policy, Verdict
from resolver.errors import ConfigError, ResolverError
from resolver.lists import normalise_name
from resolver.sources import Loaded, _line_of, load_policy

log = logging.getLogger("resolver")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resolver", description="A filtering DNS resolver for managed phones.")
    parser.add_argument("--version", action="version", version=f"resolver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve DNS over UDP and TCP")
    serve.add_argument("-c", "--config", help="YAML config file (default: built-in defaults)")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT", help="listen address (repeatable)")
    serve.add_argument("--upstream", action="append", metavar="ADDR[:PORT]", help="upstream resolver (repeatable)")
    serve.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics over HTTP here")
    serve.add_argument("--blocklist", action="append", metavar="FILE", help="extra list blocked for every client")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    check = sub.add_parser("check", help="validate a config and its lists, print a summary")
    check.add_argument("-c", "--config")
    check.add_argument("--blocklist", action="append", metavar="FILE")

    explain = sub.add_parser("explain", help="show the verdict for a name and the rule that decided it")
    explain.add_argument("name")
    explain.add_argument("-c", "--config")
    explain.add_argument("--client", default="127.0.0.1", help="client address (default 127.0.0.1)")
    explain.add_argument("--blocklist", action="append", metavar="FILE")

    args = parser.parse_args(argv)

    def make_config() -> Config:
        return with_overrides(load_config(args.config), listen=getattr(args, "listen", None),
                              upstreams=getattr(args, "upstream", None), metrics=getattr(args, "metrics", None),
                              blocklists=args.blocklist)

    try:
        config = make_config()
        if args.command == "serve":
            return _serve(make_config, config, args.log_level)
        loaded = load_policy(config)
        if args.command == "check":
            _check(config, loaded)
        else:
            _explain(config, loaded, args.name, args.client)
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ResolverError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `resolver check | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _serve(make_config: Callable[[], Config], config: Config, level: str) -> int:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from resolver.app import Server

    loaded = load_policy(config)

    async def run() -> None:
        server = Server(make_config, config, loaded)
        await server.run()

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


def _check(config: Config, loaded: Loaded) -> None:
    policy = loaded.policy
    out = sys.stdout.write
    out(f"config: {config.source}\n")
    out(f"policy version: {policy.version}\n")
    out(f"platforms: {len(loaded.platforms)} ({len(policy.blocked_platforms)} blocked)\n")
    width = max(len(p.id) for p in loaded.platforms)
    for p in sorted(loaded.platforms, key=lambda p: (p.category, p.id)):
        state = "blocked" if p.id in policy.blocked_platforms else "allowed" if p.id in policy.allowed_platforms \
            else "not blocked"
        out(f"  {p.id:<{width}}  {p.category:<10} {len(p.domains):>5} domains  {state}\n")
    out(f"lists: {len(loaded.lists)}\n")
    for parsed in loaded.lists:
        out(f"  {parsed.source}  {parsed.format}  {len(parsed.entries)} entries, {len(parsed.skipped)} lines skipped\n")
        for skip in parsed.skipped[:20]:
            out(f"    line {skip.line}: {skip.reason}: {skip.text}\n")
        if len(parsed.skipped) > 20:
            out(f"    … and {len(parsed.skipped) - 20} more\n")
    blocks = ", ".join(config.policy.block) or "nothing"
    out(f"groups: default (blocks {blocks}; allows {', '.join(config.policy.allow) or 'nothing more'}; "
        f"{len(config.policy.allow_domains)} allow_domains)\n")
    s = config.sinkhole
    extra = f" ipv4 {', '.join(s.ipv4) or '-'} ipv6 {', '.join(s.ipv6) or '-'}" if s.mode == "address" else ""
    out(f"sinkhole: {s.mode}, ttl {s.ttl}{extra}\n")
    out(f"listen: {' '.join(str(e) for e in config.listen)}; upstreams: "
        f"{' '.join(str(e) for e in config.upstreams) or 'from /etc/resolv.conf'}\n")
    out("ok\n")


def _explain(config: Config, loaded: Loaded, name: str, client: str) -> None:
    try:
        ipaddress.ip_address(client)
    except ValueError:
        raise ConfigError("--client", f"{client!r} is not an IP address") from None
    try:
        normal = normalise_name(name)
    except ValueError as err:
        raise ConfigError("NAME", f"{name!r}: {err}") from None
    policy = loaded.policy
    labels = normal.encode("ascii").split(b".")
    along = policy.trie.along(labels)
    out = sys.stdout.write
    out(f"name: {normal}\nclient: {client} (group default)\n")
    if not along:
        out("verdict: forwarded\nrule: none (no list entry covers this name)\n")
        return
    verdict = along[-1][1]
    # The entry that decided is the broadest one holding this verdict: a narrower entry that decides nothing
    # carries its ancestor's verdict (see DomainTrie.inherit).
    depth = min(d for d, v in along if v is verdict)
    entry = ".".join(normal.split(".")[-depth:])
    out(f"verdict: {ACTION_NAMES[verdict.action]}\nreason: {verdict.reason}\n")
    for rule in verdict.rules:
        out(f"{'rule' if rule is verdict.rule else 'also'}: {entry} ({_match_text(policy, entry, verdict)}) "
            f"in {rule.source}{_where(loaded, rule.source, entry)}\n")
        if rule.platform is not None:
            p = rule.platform
            out(f"  platform: {p.id} ({p.name}, {p.category}, {p.owner})"
                f"{' blocked' if p.id in policy.blocked_platforms else ''}\n")
    if verdict.action == BLOCK:
        out(f"answer: sinkhole {verdict.mode}, ttl {policy.sinkhole.ttl}\n")


def _match_text(policy: Policy, entry: str, verdict: Verdict) -> str:
    labels = entry.encode("ascii").split(b".")
    here = policy.trie.get(labels, "exact") is verdict
    below = policy.trie.get(labels, "below") is verdict
    return "and subdomains" if here and below else "exact name" if here else "subdomains only"


def _where(loaded: Loaded, source: str, entry: str) -> str:
    for parsed in loaded.lists:
        if parsed.source == source:
            for item in parsed.entries:
                if item.domain == entry:
                    return f" line {item.line}"
    for platform in loaded.platforms:
        if platform.source == source:
            try:
                with open(source, encoding="utf-8") as handle:
                    return f" line {_line_of(handle.read(), entry)}"
            except OSError:
                return ""
    return ""


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
