"""Build hook: compile the hot path with mypyc when a C compiler is at hand; pure Python otherwise.

The modules below are plain, ``mypy --strict``-clean Python: the same source runs interpreted or compiled, and the
tests run against whichever build is installed. Compiled, the per-query CPU falls markedly: see
tests/load/RESULTS.md. The rest of the metadata is in pyproject.toml.

``RESOLVER_PURE=1`` skips compiling (e.g. to step through the hot path in a debugger). Without a compiler the
extensions are optional: the build warns and installs the pure-Python package.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

# The per-query path and the list build; nothing here is monkeypatched by the tests or subclassed outside it
# (a compiled class cannot be subclassed by interpreted code).
COMPILED = [
    "resolver/config/model.py",
    "resolver/core/access.py",
    "resolver/core/builder.py",
    "resolver/core/client.py",
    "resolver/core/cache.py",
    "resolver/core/forwarding.py",
    "resolver/core/pipeline.py",
    "resolver/core/policy.py",
    "resolver/core/stats.py",
    "resolver/core/table.py",
    "resolver/core/trie.py",
    "resolver/core/wire.py",
    "resolver/lists/stream.py",
    "resolver/net/attempt.py",
    "resolver/net/dohmsg.py",
    "resolver/net/framing.py",
    "resolver/net/health.py",
    "resolver/net/streamconn.py",
    "resolver/net/listeners.py",
    "resolver/net/resolution.py",
    "resolver/net/udp.py",
    "resolver/net/upstream.py",
]


# Hand-written C, not mypyc's: the UDP listener's recvmmsg/sendmmsg (resolver/net/mmsg.py says what it is for).
# Linux only, like the syscalls; elsewhere the listener reads and answers a datagram at a time.
HAND_WRITTEN = [Extension("resolver.net._mmsg", ["resolver/net/_mmsg.c"])] if sys.platform.startswith("linux") else []
# DoH's HTTP/2 on nghttp2 (resolver/net/_h2.c says why), where its headers are installed (Debian: libnghttp2-dev);
# without them DoH speaks HTTP/2 through the pure-Python h2 library.
HAND_WRITTEN.append(Extension("resolver.net._h2", ["resolver/net/_h2.c"], libraries=["nghttp2"]))


def _extensions() -> list[object]:
    if os.environ.get("RESOLVER_PURE") == "1":
        return []
    extensions = list(HAND_WRITTEN)
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # only when built without build isolation and without mypy
        print(f"setup.py: mypyc not available ({exc}); the hot path stays pure Python", file=sys.stderr)
    else:
        extensions += mypycify(COMPILED, opt_level="3", group_name="resolver")
    for ext in extensions:
        ext.optional = True  # no compiler: a warning and the pure-Python package, not a failed install
    return extensions


setup(ext_modules=_extensions())
