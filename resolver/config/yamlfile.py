"""Reading YAML files (the config, the platform files) and a mapping with its key path, so every error says where:
``file:line`` for syntax, ``file: sinkhole.ipv4[1]: reason`` for values."""

from __future__ import annotations

import os
import reprlib
from typing import Any

import yaml

from resolver.errors import ConfigError

# libyaml's C loader when PyYAML was built with it (much faster on big platform files), else the Python one;
# both are the *safe* loader: no Python objects from tags.
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 200_000  # values in one YAML document, counting every use of an alias
MAX_DEPTH = 64
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlevel = 2


def short(value: Any) -> str:
    """A bounded repr of a user's value for an error message (never the whole of a hostile value)."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"


def check_shape(raw: Any, file: str) -> None:
    """Refuse documents that are too big or too deep to walk safely: alias bombs ("billion laughs") expand to
    an exponential number of values once anything walks or prints them; huge integers cannot even be printed."""
    seen = 0
    stack: list[tuple[Any, int]] = [(raw, 0)]
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(file, f"more than {MAX_NODES} values (counting aliases): refused")
        if depth > MAX_DEPTH:
            raise ConfigError(file, f"nested more than {MAX_DEPTH} levels deep: refused")
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value.bit_length() > 64:
            raise ConfigError(file, "a number with more than 64 bits: refused")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load_yaml(path: str | os.PathLike[str], max_bytes: int, hint: str = "") -> tuple[Any, str]:
    """Read one YAML document of at most ``max_bytes`` and return it with its text (for ``file:line`` lookups
    later). Refused with ``ConfigError`` naming the file, and the line for a syntax error: unreadable, too big
    (``hint`` is added to that message), not UTF-8, not YAML, or a shape ``check_shape`` refuses."""
    file = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(file, err.strerror or str(err)) from None
    if len(data) > max_bytes:
        raise ConfigError(file, f"larger than {max_bytes} bytes{hint}")
    try:
        text = data.decode("utf-8")
        raw: Any = yaml.load(text, Loader=SAFE_LOADER)
    except UnicodeDecodeError as err:
        raise ConfigError(file, f"not UTF-8 text at byte {err.start}") from None
    except yaml.MarkedYAMLError as err:
        line = f":{err.problem_mark.line + 1}" if err.problem_mark is not None else ""
        raise ConfigError(f"{file}{line}", f"YAML syntax: {err.problem}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as err:  # ValueError: an int too long to read
        raise ConfigError(file, f"YAML: {err.__class__.__name__}") from None
    check_shape(raw, file)
    return raw, text


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
            raise ConfigError(self.where(key), f"must be {kind}, got {short(value)}")
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
                raise ConfigError(f"{self.where(key)}[{i}]", f"must be a string, got {short(item)}")
        return tuple(str(item) for item in value)
