"""deploy/compose: valid against the Compose specification's JSON schema (the copy check-jsonschema vendors from
compose-spec/compose-spec), and everything it mounts exists and fits together. (`docker compose config` would be a
second opinion where the Compose plugin is installed.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.resolverproc import REPO_ROOT

COMPOSE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_valid_against_the_compose_specification(tmp_path: Path) -> None:
    done = _check(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "compose.yaml"  # a control: a misspelt key fails, so passing means something
    broken.write_text(COMPOSE.read_text().replace("restart:", "restarts:", 1))
    assert _check(broken).returncode == 1


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker missing")
def test_docker_compose_config_agrees() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_what_it_mounts_exists_and_fits() -> None:
    services = _compose()["services"]
    assert set(services) == {"resolver", "prometheus", "grafana"}
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), source
                mounts[target] = str((COMPOSE.parent / source).resolve().relative_to(REPO_ROOT))
    assert mounts["/etc/resolver/resolver.yaml"] == "deploy/docker.yaml"
    assert mounts["/etc/prometheus/alerts.yml"] == "deploy/prometheus/alerts.yml"
    dashboards = yaml.safe_load((COMPOSE.parent / "grafana" / "dashboards.yaml").read_text())
    (provider,) = dashboards["providers"]
    assert mounts[provider["options"]["path"] + "/resolver-dashboard.json"] == \
        "deploy/grafana/resolver-dashboard.json"
    # Prometheus scrapes the resolver by its service name, on the metrics port docker.yaml opens.
    prometheus = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (target,) = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    docker = yaml.safe_load((REPO_ROOT / "deploy" / "docker.yaml").read_text())
    assert target == "resolver:" + docker["metrics"].rsplit(":", 1)[1]
    (source,) = yaml.safe_load((COMPOSE.parent / "grafana" / "datasources.yaml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    resolver = services["resolver"]
    assert resolver["read_only"] is True and resolver["cap_drop"] == ["ALL"]
    assert resolver["cap_add"] == ["NET_BIND_SERVICE"]
