"""Shared fixtures: a test upstream (``auth``) and a factory for real resolver processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import resolver
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory
from tests.support.zone import populate


def pytest_report_header() -> str:
    return f"resolver build: {resolver.build()} (setup.py compiles the hot path with mypyc; RESOLVER_PURE=1 does not)"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a compiled module older than its source: Python would load the stale .so, not the edit."""
    package = Path(resolver.__file__).parent
    stale = [str(so.relative_to(package.parent)) for so in sorted(package.rglob("*.so"))
             for source in (so.parent / (so.name.split(".")[0] + suffix) for suffix in (".py", ".c"))
             if source.exists() and source.stat().st_mtime > so.stat().st_mtime]
    if stale:
        pytest.exit(f"compiled modules older than their source: {', '.join(stale)}. Rebuild with "
                    "`pip install -e .` (or delete them, or reinstall with RESOLVER_PURE=1, to test pure Python).",
                    returncode=4)


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    """A fresh test upstream holding the zone in ``tests/support/zone.py``."""
    with AuthServer() as server:
        yield populate(server)


@pytest.fixture(scope="module")
def module_auth() -> Iterator[AuthServer]:
    """One test upstream shared by a module's resolvers; tests that count queries use names of their own."""
    with AuthServer() as server:
        yield populate(server)


@pytest.fixture
def resolver_factory(auth: AuthServer, tmp_path: Path) -> Iterator[ResolverFactory]:
    """``resolver_factory(config=None, extra_args=(), upstreams=None, metrics=False)`` → a started server."""
    factory = ResolverFactory(tmp_path, [auth.address])
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_resolver_factory(
    module_auth: AuthServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ResolverFactory]:
    """Like ``resolver_factory`` but shared by a module, upstream ``module_auth``: start each config once."""
    factory = ResolverFactory(tmp_path_factory.mktemp("resolver"), [module_auth.address])
    yield factory
    factory.close()
