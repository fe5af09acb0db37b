"""The encrypted listeners' sections of the config: ``dot``, ``doh``, ``tls``, ``proxy_protocol``, ``ddr``.

Phones that speak DNS over TLS (Android's Private DNS) or over HTTPS (Apple's managed DNS settings) reach these
listeners; the server name in ``tls`` is also how a phone names itself (``<id>.<server_name>`` in its TLS server
name) and what DDR advertises. Checked up front like every other section: a listener without a certificate, or
DDR with nothing to advertise, is an error naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from resolver.config.files import is_file
from resolver.config.model import EncryptedConfig, TlsConfig
from resolver.config.policy import parse_networks
from resolver.config.yamlfile import Section
from resolver.errors import ConfigError

KEYS: Final = ("dot", "doh", "tls", "proxy_protocol", "ddr")
# A host name: dot-separated labels of letters, digits and hyphens (what a TLS server name may be).
_HOSTNAME: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


def hostname(text: str, where: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not _HOSTNAME.match(name) or len(name) > 253:
        raise ConfigError(where, f"{text!r} is not a host name")
    return name


def parse_encrypted(top: Section, base: Path, parse_endpoint: Any) -> EncryptedConfig:
    """The five top-level keys (``parse_endpoint`` is the loader's ADDR:PORT reader)."""
    dot = tuple(parse_endpoint(item, 853, f"{top.where('dot')}[{i}]")
                for i, item in enumerate(top.strings("dot", ())))
    doh = tuple(parse_endpoint(item, 443, f"{top.where('doh')}[{i}]")
                for i, item in enumerate(top.strings("doh", ())))
    tls_s = top.section("tls")
    tls_s.check_keys(("cert", "key", "server_name"))
    cert, key = (_path(tls_s, k, base) for k in ("cert", "key"))
    name = tls_s.raw.get("server_name")
    tls = TlsConfig(cert, key, "" if name is None else hostname(str(name), tls_s.where("server_name")))
    proxy = top.section("proxy_protocol")
    proxy.check_keys(("trusted",))
    ddr = top.section("ddr")
    ddr.check_keys(("advertise",))
    advertise = ddr.raw.get("advertise", False)
    if not isinstance(advertise, bool):
        raise ConfigError(ddr.where("advertise"), f"must be true or false, got {advertise!r}")
    config = EncryptedConfig(dot, doh, tls, parse_networks(proxy.strings("trusted", ()), proxy.where("trusted")),
                             advertise)
    return check(config, top.file)


def _path(s: Section, key: str, base: Path) -> Path | None:
    raw = s.raw.get(key)
    if raw is None:
        return None
    path = base / str(raw)
    if not is_file(path):
        raise ConfigError(s.where(key), f"{raw!r}: no such file")
    return path


def check(config: EncryptedConfig, file: str) -> EncryptedConfig:
    """What the sections need of each other (also after the command line's flags are applied)."""
    if config.listening and (config.tls.cert is None or config.tls.key is None):
        raise ConfigError(f"{file}: tls", "dot and doh listeners need tls.cert and tls.key (or --tls-cert and "
                                          "--tls-key)")
    if config.ddr_advertise and not (config.listening and config.tls.server_name):
        raise ConfigError(f"{file}: ddr.advertise", "needs a dot or doh listener and tls.server_name: DDR names "
                                                    "the encrypted resolver phones may upgrade to")
    return config
