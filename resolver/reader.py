"""Reading a YAML mapping with its key path, so every error says where: ``file: sinkhole.ipv4[1]: reason``."""

from __future__ import annotations

from typing import Any

from resolver.errors import ConfigError


class Section:
    """A mapping being read, remembering its path for error messages and refusing keys nobody reads."""

    def __init__(self, raw: Any, file: str, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: {path or 'top level'}", "must be a mapping")
        self.raw = raw
        self.file = file
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.file}: {self.path}.{key}" if self.path else f"{self.file}: {key}"

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.raw:
            if key not in allowed:
                raise ConfigError(self.where(str(key)), f"unknown key (known: {', '.join(allowed)})")

    def section(self, key: str) -> Section:
        return Section(self.raw.get(key), self.file, f"{self.path}.{key}" if self.path else key)

    def number(self, key: str, default: float, minimum: float, maximum: float, integer: bool = False) -> Any:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            kind = "a whole number" if integer else "a number"
            raise ConfigError(self.where(key), f"must be {kind}, got {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(self.where(key), f"must be between {minimum} and {maximum}, got {value}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw.get(key, list(default))
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(self.where(key), "must be a list")
        for i, item in enumerate(value):
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise ConfigError(f"{self.where(key)}[{i}]", f"must be a string, got {item!r}")
        return tuple(str(item) for item in value)
