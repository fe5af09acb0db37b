"""The filtering resolver a Python user would write first: dnslib's DNSServer, a ProxyResolver, a set, a dict.

A benchmark peer, not a model: every packet is parsed into dnslib objects, the server starts a thread per
query (``socketserver.ThreadingMixIn``), and a miss is forwarded on a fresh blocking socket. Blocking walks the
name's suffixes through a ``set``; answers are kept in a ``dict`` keyed by (name, type) until their TTL runs out,
because a forwarder without a cache would be an unfair comparison on the cached workload. SIGHUP re-reads the
list (and prints ``reloaded`` on stderr when done).

usage: python naive_dnslib.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --blocklist FILE
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from dnslib import AAAA, QTYPE, RR, A, DNSRecord
from dnslib.proxy import ProxyResolver
from dnslib.server import DNSLogger, DNSServer


def read_blocklist(path: str) -> set[str]:
    with open(path) as handle:
        return {line.strip().lower() for line in handle if line.strip() and not line.startswith("#")}


class BlockingProxy(ProxyResolver):  # type: ignore[misc]
    def __init__(self, address: str, port: int, blocklist: str) -> None:
        super().__init__(address, port, timeout=2)
        self.path = blocklist
        self.blocked = read_blocklist(blocklist)
        self.cache: dict[tuple[str, int], tuple[float, bytes]] = {}
        self.lock = threading.Lock()

    def reload(self) -> None:
        self.blocked = read_blocklist(self.path)
        print("reloaded", file=sys.stderr, flush=True)

    def is_blocked(self, name: str) -> bool:
        labels = name.split(".")
        return any(".".join(labels[i:]) in self.blocked for i in range(len(labels)))

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        qtype = request.q.qtype
        if self.is_blocked(name):
            reply = request.reply()
            if qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("0.0.0.0"), ttl=10))
            elif qtype == QTYPE.AAAA:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA("::"), ttl=10))
            return reply
        key = (name, qtype)
        with self.lock:
            hit = self.cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            reply = DNSRecord.parse(hit[1])
            reply.header.id = request.header.id
            return reply
        reply = super().resolve(request, handler)
        ttls = [rr.ttl for rr in reply.rr]
        if ttls:
            with self.lock:
                self.cache[key] = (time.monotonic() + min(ttls), reply.pack())
        return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDR:PORT")
    parser.add_argument("--upstream", required=True, help="ADDR:PORT")
    parser.add_argument("--blocklist", required=True, help="plain domain list, one per line")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    resolver = BlockingProxy(up_host, int(up_port), args.blocklist)
    signal.signal(signal.SIGHUP, lambda *_: resolver.reload())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    server = DNSServer(resolver, address=host, port=int(port), logger=quiet)
    print(f"naive ready: {host}:{port}, {len(resolver.blocked)} domains", file=sys.stderr, flush=True)
    server.server.serve_forever()


if __name__ == "__main__":
    main()
