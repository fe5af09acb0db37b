"""Read the bundled platform files the way a reviewer would, to know what the server should block."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.resolverproc import REPO_ROOT

BLOCKLISTS_DIR = REPO_ROOT / "blocklists"


@dataclass(frozen=True)
class Platform:
    id: str
    name: str
    category: str
    domains: tuple[str, ...]
    path: Path


def load_platforms(directory: Path = BLOCKLISTS_DIR) -> dict[str, Platform]:
    platforms: dict[str, Platform] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        platforms[path.stem] = Platform(
            id=path.stem,
            name=str(data.get("name", path.stem)),
            category=str(data.get("category", "")),
            domains=tuple(str(d) for d in data.get("domains", []) or []),
            path=path,
        )
    return platforms
