#!/usr/bin/env python3
"""Where a server's time goes, from py-spy's collapsed stacks (``encrypted.py --py-spy`` writes them)::

    python3 tests/load/pyspy_top.py tests/load/out/pyspy-resolver-doh-reused.txt

Two tables: the share of samples under each part (a stack counts for the first part, from the leaf up, that it
passes through: time in hpack called by h2 is hpack's), and the functions with the most samples of their own.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# Checked from the leaf up: the first that matches names the part.
PARTS = (
    ("nghttp2 (HTTP/2 in C)", "libnghttp2"),
    ("OpenSSL (TLS records, handshakes)", "libssl"),
    ("OpenSSL crypto", "libcrypto"),
    ("hpack (header compression)", "hpack/"),
    ("hyperframe (frame encode/decode)", "hyperframe/"),
    ("h2 (streams, state machine, flow control)", "h2/"),
    ("h11", "h11/"),
    ("core pipeline (policy, cache, answer)", "resolver/core/"),
    ("DoH request and answer rules", "resolver/net/dohmsg.py"),
    ("DoH session (ours, around the HTTP/2 library)", "resolver/net/doh.py"),
    ("DoT session", "resolver/net/dot.py"),
    ("TLS connection (ssl, records, writes)", "resolver/net/tlsconn.py"),
    ("other resolver code", "resolver/"),
    ("resolver code compiled by mypyc (native frames)", "__native_resolver"),
    ("event loop", "uvloop/"),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def summarize(text: str) -> tuple[Counter[str], Counter[str], int]:
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = _FRAME.match(frames[-1])
        leaves[f"{leaf['func']} ({leaf['file']})" if leaf else frames[-1]] += count
        parts[next((name for frame in reversed(frames) for name, marker in PARTS if marker in frame),
                   "other (interpreter, idle)")] += count
    return parts, leaves, total


def main(argv: list[str]) -> int:
    for path in argv:
        parts, leaves, total = summarize(Path(path).read_text())
        print(f"## {path}: {total} samples\n\n| part | share |\n|---|--:|")
        for name, count in parts.most_common():
            print(f"| {name} | {100 * count / total:.0f}% |")
        print("\n| function (own samples) | share |\n|---|--:|")
        for name, count in leaves.most_common(15):
            print(f"| {name} | {100 * count / total:.1f}% |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
