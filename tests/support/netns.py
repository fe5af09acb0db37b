"""Run the real server on wildcard addresses where only loopback exists: inside a private network namespace.

Tests listen on loopback only. A configuration that listens on ``0.0.0.0`` and ``[::]`` (deploy/docker.yaml) can
still be run as written inside a fresh network namespace (``unshare -rn``: a user namespace makes it possible
without privileges where the kernel allows it), whose only interface is its own loopback: nothing outside can
reach the server, and it reaches nothing outside.

``python -m tests.support.netns NAME -- SERVE_ARGS...`` is run inside the namespace: it brings its loopback up,
starts ``resolver serve SERVE_ARGS``, waits for ``resolver ready``, asks for NAME (A) over UDP and TCP on
127.0.0.1 and ::1 (port from ``--port``, default 53), stops the server and prints one JSON report.
``run_in_netns`` does all of that from a test and returns the report, or None where namespaces are not allowed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_MARK = "resolver ready"
READY_TIMEOUT = 30.0


def netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
    return probe.returncode == 0


def run_in_netns(name: str, serve_args: list[str], port: int = 53, timeout: float = 90.0) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(["unshare", "-rn", sys.executable, "-m", "tests.support.netns", name, "--port",
                             str(port), "--", *serve_args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"the namespace helper failed ({result.returncode}):\n{result.stderr}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _ask(name: str, host: str, port: int, tcp: bool) -> str:
    import dns.message
    import dns.query
    import dns.rcode

    query = dns.message.make_query(name, "A")
    try:
        reply = (dns.query.tcp if tcp else dns.query.udp)(query, host, port=port, timeout=3)
    except Exception as err:  # the report says what a client saw, whatever it was
        return f"no answer: {type(err).__name__}"
    addresses = sorted(rd.to_text() for rrset in reply.answer for rd in rrset)
    return f"{dns.rcode.to_text(reply.rcode())} {' '.join(addresses)}".strip()


def _inside(name: str, port: int, serve_args: list[str]) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "serve", *serve_args], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    cond = threading.Condition()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with cond:
                lines.append(line)
                cond.notify_all()
        with cond:
            lines.append("")  # end of file
            cond.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with cond:
        cond.wait_for(lambda: any(READY_MARK in x for x in lines) or "" in lines, READY_TIMEOUT)
        ready = any(READY_MARK in x for x in lines)
    answers = {}
    if ready:
        for host in ("127.0.0.1", "::1"):
            for tcp in (False, True):
                answers[f"{host} {'tcp' if tcp else 'udp'}"] = _ask(name, host, port, tcp)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    reader.join(5)
    return {"ready": ready, "answers": answers, "exit": code, "stderr": "".join(lines)}


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--")
    head, serve = args[:split], args[split + 1:]
    port = int(head[head.index("--port") + 1]) if "--port" in head else 53
    print(json.dumps(_inside(head[0], port, serve)))
