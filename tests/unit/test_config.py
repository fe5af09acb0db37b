"""The config package: one YAML reader for the config and the platform files, the model apart from the loader.

Messages are compared whole: an operator reads them, and the two kinds of file must say the same thing the same way.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import resolver.config
from resolver.config.loader import MAX_CONFIG_BYTES, load_config, parse_upstream, with_overrides
from resolver.config.model import BUNDLED_BLOCKLISTS, Config, Endpoint, QueryLogConfig, TcpConfig
from resolver.config.yamlfile import MAX_DEPTH, load_yaml
from resolver.core.access import AccessSpec
from resolver.core.policy import IPNetwork
from resolver.errors import ConfigError
from resolver.lists.platforms import BUNDLED_CATEGORIES, MAX_PLATFORM_BYTES, load_platform, load_platforms
from resolver.net.sockets import access_warning

PLATFORM = "name: Example\ncategory: social\nowner: Example Inc.\ndomains: [example.com]\nsources: [docs]\n"


def refusal(load: object, path: Path) -> tuple[str, str]:
    with pytest.raises(ConfigError) as info:
        load(path)  # type: ignore[operator]
    return info.value.where, info.value.reason


@pytest.mark.parametrize(("data", "where", "reason"), [
    (b"listen: [127.0.0.1:53\n", ":2", "YAML syntax: "),  # (the rest is libyaml's or PyYAML's own words)
    (b"a: 1\nb: caf\xe9\n", "", "not UTF-8 text at byte 11"),
    (b"a: !!python/object:os.system {}\n", ":1", "YAML syntax: could not determine a constructor for the tag"),
    (b"a: " + b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2) + b"\n", ":1",
     f"nested more than {MAX_DEPTH} levels deep: refused"),
])
def test_config_and_platform_files_are_refused_alike(tmp_path: Path, data: bytes, where: str, reason: str) -> None:
    config, platform = tmp_path / "resolver.yaml", tmp_path / "example.yaml"
    config.write_bytes(data)
    platform.write_bytes(data)
    refused = [refusal(load_config, config), refusal(load_platform, platform)]
    assert [where_ for where_, _ in refused] == [f"{config}{where}", f"{platform}{where}"]
    assert refused[0][1] == refused[1][1] and refused[0][1].startswith(reason)


def test_size_caps_and_their_hint(tmp_path: Path) -> None:
    config = tmp_path / "resolver.yaml"
    config.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    assert refusal(load_config, config) == (str(config),
                                            f"larger than {MAX_CONFIG_BYTES} bytes; lists belong in list files")
    platform = tmp_path / "example.yaml"
    platform.write_bytes(b"#" * (MAX_PLATFORM_BYTES + 1))
    assert refusal(load_platform, platform) == (str(platform), f"larger than {MAX_PLATFORM_BYTES} bytes")


def test_unreadable_files(tmp_path: Path) -> None:
    assert refusal(load_config, tmp_path / "missing.yaml") == (str(tmp_path / "missing.yaml"),
                                                               "No such file or directory")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert refusal(load_platform, directory) == (str(directory), "Is a directory")


def test_load_yaml_returns_the_text_for_line_lookups(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(PLATFORM)
    assert load_yaml(path, 1000) == ({"name": "Example", "category": "social", "owner": "Example Inc.",
                                      "domains": ["example.com"], "sources": ["docs"]}, PLATFORM)
    assert load_platform(path).domains == ("example.com",)
    path.write_text(PLATFORM + "colour: red\n")
    assert refusal(load_platform, path) == (f"{path}:6", "colour: unknown key "
                                            "(known: name, category, owner, domains, notes, sources)")


KNOWN = "doh-bypass, maps, messaging, news, social, transport"


def test_a_category_outside_the_closed_set_is_refused_at_its_line(tmp_path: Path) -> None:
    """A typo must not move a platform out of the category its group blocks: it is an error, naming the line."""
    path = tmp_path / "example.yaml"
    path.write_text(PLATFORM.replace("category: social", "category: socail"))
    assert refusal(load_platform, path) == (f"{path}:2", f"category: unknown category 'socail' (known: {KNOWN}; "
                                            "declare a new one in the config's policy.categories)")
    declared = functools.partial(load_platform, extra_categories=("video",))
    assert refusal(declared, path)[1].startswith(f"category: unknown category 'socail' (known: {KNOWN}, video;")
    path.write_text(PLATFORM.replace("category: social", "category: video"))
    assert declared(path).category == "video"
    assert refusal(load_platform, path)[0] == f"{path}:2"  # the declaration is the config's, not the file's


def test_the_bundled_categories_are_those_the_bundled_platforms_use() -> None:
    """Declared once, and true: no bundled platform outside the set, and no bundled category nobody uses."""
    assert sorted(BUNDLED_CATEGORIES) == KNOWN.split(", ")
    assert {p.category for p in load_platforms(BUNDLED_BLOCKLISTS)} == set(BUNDLED_CATEGORIES)


def test_the_config_declares_more_categories_spelt_like_platform_ids(tmp_path: Path) -> None:
    config = tmp_path / "resolver.yaml"
    config.write_text("policy:\n  categories: [video, radio-2]\n")
    assert load_config(config).policy.categories == ("video", "radio-2")
    config.write_text("policy:\n  categories: [video, Radio 2]\n")
    assert refusal(load_config, config) == (f"{config}: policy.categories[1]",
                                            "'Radio 2': lowercase letters, digits, - and _ only")
    config.write_text("policy: {}\n")
    assert load_config(config).policy.categories == ()


def test_the_model_reads_no_files() -> None:
    """model.py is the frozen dataclasses only (and compiled): no YAML, no loader."""
    tree = ast.parse((Path(resolver.config.__file__).parent / "model.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"yaml", "resolver.config.yamlfile", "resolver.config.loader"}


def test_a_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text("upstreams: [tls://9.9.9.9#dns.quad9.net]\nquery_log: {path: q.jsonl, client: none}\n")
    config = with_overrides(load_config(path), listen=["[::1]:5300"])
    assert config.listen == (Endpoint("::1", 5300),)
    assert config.upstreams == (Endpoint("9.9.9.9", 853, "tls", "dns.quad9.net"),)
    assert config.query_log == QueryLogConfig(path=tmp_path / "q.jsonl", client="none")
    assert load_config(None) == Config()
    assert parse_upstream("tcp://[2001:db8::1]", "x") == Endpoint("2001:db8::1", 53, "tcp")


@pytest.mark.parametrize(("text", "value"), [
    ("64MiB", 64 << 20), ("2 GiB", 2 << 30), ("1024KiB", 1 << 20), ("1024 kib", 1 << 20), ("10MB", 10_000_000),
    ("1048576", 1 << 20), (3 << 20, 3 << 20),
])
def test_cache_sizes_take_units(tmp_path: Path, text: object, value: int) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text(f"cache: {{max_bytes: {text}}}\n")
    assert load_config(path).cache.max_bytes == value


@pytest.mark.parametrize(("text", "reason"), [
    ("1.5MiB", "must be a size in bytes (an integer, or e.g. 64MiB, 512KiB), got '1.5MiB'"),
    ("64 MiBs", "must be a size in bytes (an integer, or e.g. 64MiB, 512KiB), got '64 MiBs'"),
    ("true", "must be a size in bytes (an integer, or e.g. 64MiB, 512KiB), got True"),
    ("1KiB", "must be between 1048576 and 1099511627776 bytes, got '1KiB'"),
])
def test_cache_sizes_refused(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text(f"cache: {{max_bytes: {text}}}\n")
    assert refusal(load_config, path) == (f"{path}: cache.max_bytes", reason)


def test_defaults_bound_the_cache_and_cap_ttls() -> None:
    cache = Config().cache
    assert (cache.max_bytes, cache.max_answer_bytes, cache.max_ttl) == (64 << 20, 16 << 10, 86400)


@pytest.mark.parametrize("name", ["example-force.yaml", "docker.yaml", "kubernetes/resolver.yaml",
                                  "rollout/staging/resolver.yaml"])
def test_shipped_configs_limit_each_phones_rate(name: str) -> None:
    limit = load_config(Path(resolver.config.__file__).parents[2] / "deploy" / name).rate_limit
    assert limit.qps > 0 and limit.burst >= limit.qps and limit.action == "truncate"


def test_tcp_limits_are_read_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text("tcp: {idle_timeout: 5, max_connections: 200, max_per_client: 8, max_per_network: 40,\n"
                    "      write_timeout: 3, max_lifetime: 120}\n")
    assert load_config(path).tcp == TcpConfig(5, 200, 8, 40, 3, 120)
    assert load_config(None).tcp == TcpConfig(10.0, 1024, 32, 128, 10.0, 600.0)
    path.write_text("tcp: {max_lifetime: 0}\n")
    assert refusal(load_config, path) == (f"{path}: tcp.max_lifetime", "must be between 1 and 604800, got 0")


# ---------------------------------------------------------------- the shipped configurations

REPO = Path(resolver.__file__).resolve().parent.parent
# Every resolver config under deploy/: the top level's, and those the Kubernetes ConfigMaps carry.
SHIPPED = sorted([*(REPO / "deploy").glob("*.yaml"), *(REPO / "deploy").glob("*/**/resolver.yaml")])
BROAD = set(AccessSpec().allow)  # the default: every private, CGNAT and link-local range


def inside(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


def test_every_shipped_config_is_checked_here() -> None:
    assert [str(p.relative_to(REPO / "deploy")) for p in SHIPPED] == [
        "docker.yaml", "example-force.yaml", "kubernetes/resolver.yaml", "rollout/staging/resolver.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO / "deploy")) for p in SHIPPED])
def test_shipped_configs_answer_only_this_host_and_the_documented_vpn_pools(path: Path) -> None:
    config = load_config(path)
    pools = [n for n in config.access.allow if not n.is_loopback]
    assert pools, f"{path.name}: no VPN pool in access.allow"
    readme = (REPO / "README.md").read_text()
    for pool in pools:
        assert not any(inside(b, pool) for b in BROAD), f"{path.name}: {pool} is a whole private range, not a pool"
        assert f"`{pool}`" in readme, f"{path.name}: {pool} is not among README's documented pools"
    # A team's pool the access list refused would be an outage for that team.
    for group in config.policy.spec.groups:
        for network in group.networks:
            assert any(inside(network, p) for p in pools), \
                f"{path.name}: group {group.name}'s {network} is outside access.allow"
    assert access_warning(config.listen, config.access) is None
