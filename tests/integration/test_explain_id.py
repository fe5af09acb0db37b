"""``resolver explain NAME --client-id ID``: the verdict a DoT/DoH phone with that id gets."""

from __future__ import annotations

from pathlib import Path

from tests.support.phones import exemption_config
from tests.support.resolverproc import run_cli, write_config


def test_explain_with_a_client_id(tmp_path: Path) -> None:
    config = exemption_config("127.0.0.1:53")
    config["policy"]["groups"]["roads"] = {"client_ids": ["roads"], "block": ["messaging"]}
    path = write_config(tmp_path / "resolver.yaml", config)

    def explain(*args: str) -> list[str]:
        done = run_cli("explain", "www.tiktok.com", "-c", str(path), *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    exempted = explain("--client-id", "comms-01")
    assert "client id: comms-01" in exempted and "verdict: allowed" in exempted
    assert any(line.startswith("  2 exemption SEC-EX-TEST") and line.endswith("applies  <- decides")
               for line in exempted), exempted
    assert "verdict: blocked" in explain()  # no id: the ban
    assert "verdict: blocked" in explain("--client-id", "comms-02")
    roads = explain("--client-id", "roads")
    assert "group: roads (client id roads)" in roads and "verdict: forwarded" in roads, roads
