"""README's quick start, as a newcomer runs it: its one command line, in a fresh copy of the project (a new virtual
environment, `pip install .` from the package index, `resolver serve`), answers a query."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.authserver import AuthServer
from tests.support.resolverproc import REPO_ROOT, addresses, free_port, query

SHIPPED = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "resolver", "blocklists"]


def first_command() -> str:
    section = (REPO_ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 1, "the quick start is one command line"
    return lines[0]


def test_the_first_command_makes_its_own_environment() -> None:
    command = first_command()
    # Debian's Python refuses a bare `pip install .` (PEP 668): the command must not need one.
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install . && ")
    assert command.endswith(".venv/bin/resolver serve")


@pytest.mark.slow
def test_the_first_command_serves_from_a_fresh_copy(tmp_path: Path, auth: AuthServer) -> None:
    if subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        pytest.skip("python3-venv missing")
    work = tmp_path / "resolver"
    work.mkdir()
    for item in SHIPPED:
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(source, work / item, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copyfile(source, work / item)
    port = free_port()
    # The README's line, with loopback addresses added to its last command: the default port may be taken here.
    command = f"{first_command()} --listen 127.0.0.1:{port} --upstream {auth.address}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["RESOLVER_PURE"] = "1"  # the compile is tested by tests/run's own install; this is about the steps
    proc = subprocess.Popen(command, shell=True, cwd=work, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "resolver ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(600), "".join(lines[-30:])
        assert addresses(query(port, "www.tiktok.com"), "A") == ["0.0.0.0"]
        assert (work / ".venv" / "bin" / "resolver").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
