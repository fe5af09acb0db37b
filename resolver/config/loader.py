"""Read a config file into the frozen ``Config``; command-line overrides; the system's nameservers.

Every error names the file and the key path (``sinkhole.ipv4[1]``) or line, because the person reading it is
an operator with a broken deploy, not the author of this module. Nothing reads raw dicts after this.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from resolver.config import encrypted as encrypted_section
from resolver.config.files import is_file
from resolver.config.model import CLIENT_MODES, Config, EncryptedConfig, Endpoint, QueryLogConfig, TcpConfig
from resolver.config.policy import ListSource, parse_networks, parse_policy
from resolver.config.yamlfile import Section, load_yaml
from resolver.core.access import DEFAULT_ALLOWED, AccessSpec, RateSpec
from resolver.core.cache import CacheLimits
from resolver.core.policy import SinkholeSpec
from resolver.errors import ConfigError

SINKHOLE_MODES = ("null", "nxdomain", "refused", "address")
MAX_CONFIG_BYTES = 1024 * 1024


def parse_upstream(text: str, where: str) -> Endpoint:
    """``1.2.3.4[:53]`` (UDP, TCP when truncated), ``tcp://1.2.3.4[:53]``, ``tls://1.2.3.4[:853][#dns.name]``."""
    text = str(text).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return parse_endpoint(text, 53, where)
    if scheme not in ("tcp", "tls"):
        raise ConfigError(where, f"{text!r}: the scheme is udp (no scheme), tcp:// or tls://")
    address, _, name = rest.partition("#")
    endpoint = parse_endpoint(address, 853 if scheme == "tls" else 53, where)
    return Endpoint(endpoint.host, endpoint.port, scheme, name.strip())


def parse_endpoint(text: str, default_port: int | None, where: str) -> Endpoint:
    """``1.2.3.4:53``, ``[::1]:53``, and without a port when ``default_port`` is given."""
    text = str(text).strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(where, f"{text!r} is not [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ConfigError(where, f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:5353")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(where, f"{host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise ConfigError(where, f"{text!r} needs a port (ADDR:PORT)")
        return Endpoint(host, default_port)
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(where, f"{port_text!r} is not a port number")
    return Endpoint(host, int(port_text))


def load_config(path: str | Path | None) -> Config:
    """Read a YAML config file; None gives the built-in default."""
    if path is None:
        return Config()
    raw, _ = load_yaml(path, MAX_CONFIG_BYTES, "; lists belong in list files")
    # Relative to the directory the file is named in, not to where a symlink leads: a Kubernetes ConfigMap or Secret
    # volume names its files through a ``..data`` symlink swapped at each update, so paths resolved through it would
    # keep pointing into the old, deleted copy.
    return config_from_dict(raw, str(path), Path(path).absolute().parent)


def config_from_dict(raw: Any, file: str, base: Path) -> Config:
    top = Section(raw, file, "")
    top.check_keys(("listen", "upstreams", "upstream_strategy", "upstream_ca", "upstream_timeout", "query_timeout",
                    "metrics", "sinkhole", "cache",
                    "tcp", "policy", "query_log", "access", "rate_limit", *encrypted_section.KEYS))
    default = Config()
    listen = tuple(
        parse_endpoint(item, None, f"{top.where('listen')}[{i}]")
        for i, item in enumerate(top.strings("listen", tuple(str(e) for e in default.listen)))
    )
    if not listen:
        raise ConfigError(top.where("listen"), "needs at least one ADDR:PORT")
    upstreams = tuple(
        parse_upstream(item, f"{top.where('upstreams')}[{i}]")
        for i, item in enumerate(top.strings("upstreams", ()))
    )
    strategy = str(top.raw.get("upstream_strategy", "strict"))
    if strategy not in ("strict", "random", "parallel_best"):
        raise ConfigError(top.where("upstream_strategy"), f"must be strict, random or parallel_best, got {strategy!r}")
    ca_file = top.raw.get("upstream_ca")
    if ca_file is not None and not is_file(base / str(ca_file)):
        raise ConfigError(top.where("upstream_ca"), f"{ca_file!r}: no such file")
    metrics_raw = top.raw.get("metrics")
    metrics = None if metrics_raw is None else parse_endpoint(metrics_raw, None, top.where("metrics"))
    sinkhole, cache, tcp = _sinkhole(top.section("sinkhole")), _cache(top.section("cache")), _tcp(top.section("tcp"))
    return Config(
        source=file,
        listen=listen,
        upstreams=upstreams,
        upstream_strategy=strategy,
        upstream_ca=None if ca_file is None else str(base / str(ca_file)),
        upstream_timeout=top.number("upstream_timeout", 1.5, 0.05, 30),
        query_timeout=top.number("query_timeout", 4.0, 0.1, 60),
        metrics=metrics,
        sinkhole=sinkhole,
        cache=cache,
        tcp=tcp,
        policy=parse_policy(top.section("policy"), base),
        query_log=_query_log(top.section("query_log"), base),
        access=_access(top.section("access")),
        rate_limit=_rate_limit(top.section("rate_limit")),
        encrypted=encrypted_section.parse_encrypted(top, base, parse_endpoint),
    )


def _sinkhole(sink: Section) -> SinkholeSpec:
    sink.check_keys(("mode", "ipv4", "ipv6", "ttl"))
    mode = sink.raw.get("mode", "null")
    mode = "null" if mode is None else str(mode)
    if mode not in SINKHOLE_MODES:
        raise ConfigError(sink.where("mode"), f"must be one of {', '.join(SINKHOLE_MODES)}, got {mode!r}")
    ipv4 = _addresses(sink, "ipv4", 4)
    ipv6 = _addresses(sink, "ipv6", 6)
    if mode == "address" and not ipv4 and not ipv6:
        raise ConfigError(sink.where("mode"), "mode address needs sinkhole.ipv4 or sinkhole.ipv6 addresses")
    return SinkholeSpec(mode, ipv4, ipv6, sink.number("ttl", 10, 0, 86400, integer=True))


def _cache(cache_s: Section) -> CacheLimits:
    cache_s.check_keys(("max_entries", "max_bytes", "max_answer_bytes", "min_ttl", "max_ttl", "negative_max_ttl",
                        "stale_max_age", "stale_ttl", "prefetch_fraction", "prefetch_min_hits"))
    return CacheLimits(
        max_entries=cache_s.number("max_entries", 100_000, 0, 50_000_000, integer=True),
        min_ttl=cache_s.number("min_ttl", 0, 0, 86400, integer=True),
        max_ttl=cache_s.number("max_ttl", 86400, 0, 7 * 86400, integer=True),
        negative_max_ttl=cache_s.number("negative_max_ttl", 3600, 0, 86400, integer=True),
        stale_max_age=cache_s.number("stale_max_age", 86400, 0, 7 * 86400, integer=True),
        stale_ttl=cache_s.number("stale_ttl", 30, 1, 3600, integer=True),
        prefetch_fraction=cache_s.number("prefetch_fraction", 0.1, 0, 0.9),
        prefetch_min_hits=cache_s.number("prefetch_min_hits", 3, 1, 1_000_000, integer=True),
        max_bytes=byte_size(cache_s, "max_bytes", 64 << 20, 1 << 20, 1 << 40),
        max_answer_bytes=byte_size(cache_s, "max_answer_bytes", 16 << 10, 512, 65535),
    )


_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


def byte_size(s: Section, key: str, default: int, minimum: int, maximum: int) -> int:
    """A number of bytes: an integer, or text such as ``64MiB``, ``512 KiB`` or ``1GB`` (KiB = 1024, KB = 1000)."""
    raw = s.raw.get(key, default)
    value: int | None = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    if isinstance(raw, str):
        number, unit = raw.strip(), ""
        while number and not (number[-1].isascii() and number[-1].isdigit()):
            number, unit = number[:-1], number[-1] + unit
        scale = _UNITS.get(unit.strip().upper())
        if number.isascii() and number.isdigit() and scale is not None:
            value = int(number) * scale
    if value is None:
        raise ConfigError(s.where(key), f"must be a size in bytes (an integer, or e.g. 64MiB, 512KiB), got {raw!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(s.where(key), f"must be between {minimum} and {maximum} bytes, got {raw!r}")
    return value


def _tcp(tcp_s: Section) -> TcpConfig:
    tcp_s.check_keys(("idle_timeout", "max_connections", "max_per_client", "max_per_network", "write_timeout",
                      "max_lifetime"))
    return TcpConfig(tcp_s.number("idle_timeout", 10.0, 0.1, 3600),
                     tcp_s.number("max_connections", 1024, 1, 1_000_000, integer=True),
                     tcp_s.number("max_per_client", 32, 1, 1_000_000, integer=True),
                     tcp_s.number("max_per_network", 128, 1, 1_000_000, integer=True),
                     tcp_s.number("write_timeout", 10.0, 0.1, 3600),
                     tcp_s.number("max_lifetime", 600.0, 1, 7 * 86400))


def _access(s: Section) -> AccessSpec:
    s.check_keys(("allow", "action"))
    action = str(s.raw.get("action", "refuse"))
    if action not in ("refuse", "drop"):
        raise ConfigError(s.where("action"), f"must be refuse or drop, got {action!r}")
    return AccessSpec(parse_networks(s.strings("allow", DEFAULT_ALLOWED), s.where("allow")), action)


def _rate_limit(s: Section) -> RateSpec:
    s.check_keys(("qps", "burst", "action", "max_clients"))
    action = str(s.raw.get("action", "drop"))
    if action not in ("drop", "truncate"):
        raise ConfigError(s.where("action"), f"must be drop or truncate, got {action!r}")
    qps = s.number("qps", 0, 0, 1e6)
    return RateSpec(qps, s.number("burst", 2 * qps, 0, 1e7), action,
                    s.number("max_clients", 100_000, 1, 10_000_000, integer=True))


def _query_log(s: Section, base: Path) -> QueryLogConfig:
    s.check_keys(("path", "only_blocked", "client", "salt", "max_bytes", "backups", "queue"))
    path = s.raw.get("path")
    client = str(s.raw.get("client", "hashed"))
    if client not in CLIENT_MODES:
        raise ConfigError(s.where("client"), f"must be one of {', '.join(CLIENT_MODES)}, got {client!r}")
    only = s.raw.get("only_blocked", False)
    if not isinstance(only, bool):
        raise ConfigError(s.where("only_blocked"), f"must be true or false, got {only!r}")
    salt, previous = _salts(s)
    return QueryLogConfig(
        path=None if path is None else base / str(path),
        only_blocked=only,
        client=client,
        salt=salt,
        previous_salt=previous,
        max_bytes=s.number("max_bytes", 100 * 1024 * 1024, 1024, 1 << 40, integer=True),
        backups=s.number("backups", 5, 0, 100, integer=True),
        queue=s.number("queue", 10_000, 1, 10_000_000, integer=True),
    )


def _salts(s: Section) -> tuple[str, str]:
    """``salt: TEXT``, or ``salt: [CURRENT, PREVIOUS]`` while rotating it (see ops/querylog.py)."""
    raw = s.raw.get("salt", "")
    salts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if salts is None or not 1 <= len(salts) <= 2 or not all(isinstance(x, str) for x in salts):
        raise ConfigError(s.where("salt"), "must be text, or a list of the current and the previous salt")
    if len(salts) == 2 and not all(salts):
        raise ConfigError(s.where("salt"), "a rotation needs both salts: [CURRENT, PREVIOUS], neither empty")
    return salts[0], salts[1] if len(salts) == 2 else ""


def _addresses(section: Section, key: str, version: int) -> tuple[str, ...]:
    out = []
    for i, text in enumerate(section.strings(key, ())):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise ConfigError(f"{section.where(key)}[{i}]", f"{text!r} is not an IPv{version} address")
        out.append(str(address))
    return tuple(out)


def with_overrides(
    config: Config,
    listen: list[str] | None = None,
    upstreams: list[str] | None = None,
    metrics: str | None = None,
    blocklists: list[str] | None = None,
    encrypted: dict[str, Any] | None = None,
) -> Config:
    """Apply command-line flags, which win over the file (``encrypted``: --dot, --doh, --tls-cert, --tls-key)."""
    if listen:
        config = replace(config, listen=tuple(parse_endpoint(x, None, "--listen") for x in listen))
    if upstreams:
        config = replace(config, upstreams=tuple(parse_upstream(x, "--upstream") for x in upstreams))
    if metrics:
        config = replace(config, metrics=parse_endpoint(metrics, None, "--metrics"))
    if blocklists:
        taken = {s.name for s in config.policy.lists}
        extra = []
        for i, item in enumerate(blocklists):
            path = Path(item).resolve()
            name = path.stem if path.stem not in taken else f"{path.stem}-{i}"
            taken.add(name)
            extra.append(ListSource(name, path))
        config = replace(config, policy=replace(config.policy, lists=config.policy.lists + tuple(extra)))
    if encrypted and any(encrypted.values()):
        config = replace(config, encrypted=_encrypted_flags(config, encrypted))
    return config


def _encrypted_flags(config: Config, flags: dict[str, Any]) -> EncryptedConfig:
    e = config.encrypted
    dot = tuple(parse_endpoint(x, 853, "--dot") for x in flags.get("dot") or ()) or e.dot
    doh = tuple(parse_endpoint(x, 443, "--doh") for x in flags.get("doh") or ()) or e.doh
    cert, key = (_flag_file(flags, name) for name in ("tls_cert", "tls_key"))
    tls = replace(e.tls, cert=cert or e.tls.cert, key=key or e.tls.key)
    return encrypted_section.check(replace(e, dot=dot, doh=doh, tls=tls), config.source)


def _flag_file(flags: dict[str, Any], name: str) -> Path | None:
    given = flags.get(name)
    if not given:
        return None
    if not is_file(given):
        raise ConfigError(f"--{name.replace('_', '-')}", f"{given!r}: no such file")
    return Path(given).absolute()  # not resolved: a Secret volume's ``..data`` symlink is followed through rotations


def system_nameservers(path: str = "/etc/resolv.conf") -> tuple[Endpoint, ...]:
    """The ``nameserver`` lines of resolv.conf, the default upstreams."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    host = parts[1].split("%", 1)[0]  # drop an IPv6 zone index
                    out.append(parse_endpoint(f"[{host}]" if ":" in host else host, 53, f"{path}:{number}"))
    except OSError as err:
        raise ConfigError(path, err.strerror or str(err)) from None
    return tuple(out)
