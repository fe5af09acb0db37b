"""Policy rollout: deploy/rollout/check-policy.sh (the CI gate) on real policy directories, the staging overlay's
policy against production's, and the alerts that watch a rollout (promtool runs their unit tests in
test_observability.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.resolverproc import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "rollout" / "check-policy.sh"
PRODUCTION = REPO_ROOT / "deploy" / "kubernetes"
STAGING = REPO_ROOT / "deploy" / "rollout" / "staging"


def gate(old: Path, new: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RESOLVER=f"{sys.executable} -m resolver",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    return subprocess.run(["sh", str(SCRIPT), str(old), str(new)], capture_output=True, text=True, env=env,
                          timeout=120)


def policy_dir(tmp_path: Path, name: str, edit: dict[str, object] | None = None) -> Path:
    """A copy of production's policy directory, its resolver.yaml's ``policy`` section edited."""
    directory = tmp_path / name
    directory.mkdir()
    for item in ("resolver.yaml", "force-blocklist.txt"):
        shutil.copyfile(PRODUCTION / item, directory / item)
    if edit:
        config = yaml.safe_load((directory / "resolver.yaml").read_text())
        config["policy"].update(edit)
        (directory / "resolver.yaml").write_text(yaml.safe_dump(config))
    return directory


def test_staging_to_production_passes_the_gate() -> None:
    done = gate(PRODUCTION, STAGING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\nok\n" in done.stdout and "result: 0 reduction(s)" in done.stdout


def test_a_change_that_adds_a_ban_passes(tmp_path: Path) -> None:
    done = gate(policy_dir(tmp_path, "old"), policy_dir(tmp_path, "new", {"block": ["social", "messaging", "news"]}))
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_unapproved_unblock_fails_the_gate(tmp_path: Path) -> None:
    new = policy_dir(tmp_path, "new", {"block": ["social"], "required": ["social"]})
    done = gate(policy_dir(tmp_path, "old"), new)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "whatsapp" in done.stdout  # what would become reachable, named


def test_a_policy_that_does_not_load_fails_before_the_diff(tmp_path: Path) -> None:
    new = policy_dir(tmp_path, "new", {"blokc": ["social"]})
    done = gate(policy_dir(tmp_path, "old"), new)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "blokc" in done.stderr
    assert "resolver diff" not in done.stdout


def test_rollout_alerts_exist() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load((REPO_ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    # Instances serving different versions for longer than a rollout takes, and exemptions about to lapse.
    assert "count by (job, version) (resolver_policy_info)" in rules["ResolverPolicyVersionsDiffer"]["expr"]
    assert "resolver_exemption_expiry_timestamp_seconds" in rules["ResolverExemptionExpiring"]["expr"]
    tests = (REPO_ROOT / "deploy/prometheus/alerts_test.yml").read_text()
    assert "alertname: ResolverPolicyVersionsDiffer" in tests and "alertname: ResolverExemptionExpiring" in tests
