"""Reading YAML files (the config, the platform files) and a mapping with its key path, so every error says where:
``file:line`` for syntax, ``file: sinkhole.ipv4[1]: reason`` for values."""

from __future__ import annotations

import os
import reprlib
from typing import Any

import yaml

from resolver.config.files import open_regular
from resolver.errors import ConfigError

# libyaml's C loader when PyYAML was built with it (much faster on big platform files), else the Python one;
# both are the *safe* loader: no Python objects from tags.
_BASE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE_LOADER):  # type: ignore[misc]
    """The safe loader, stricter where a silent choice would change a policy: a key given twice in one mapping is
    an error (``block:`` twice would keep only the last, perhaps empty, one), and a value its tag cannot build
    (``!!timestamp garbage``, an offset of 99 hours) is an error at its line, not an exception from inside."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # ``<<: *base`` merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"{short(key)} given twice in one mapping", key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as err:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this {node.tag.rpartition(':')[2] or 'value'}: {err.__class__.__name__}",
                node.start_mark) from None


SAFE_LOADER: Any = _Loader
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
    with open_regular(path, file) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as err:
            raise ConfigError(file, err.strerror or str(err)) from None
    if len(data) > max_bytes:
        raise ConfigError(file, f"larger than {max_bytes} bytes{hint}")
    try:
        text = data.decode("utf-8")
        check_depth(text, file)
        raw: Any = yaml.load(text, Loader=SAFE_LOADER)
    except UnicodeDecodeError as err:
        raise ConfigError(file, f"not UTF-8 text at byte {err.start}") from None
    except yaml.MarkedYAMLError as err:
        line = f":{err.problem_mark.line + 1}" if err.problem_mark is not None else ""
        raise ConfigError(f"{file}{line}", f"YAML syntax: {err.problem}") from None
    except yaml.reader.ReaderError as err:  # a control character: named by its line and code, never echoed
        code = ord(err.character) if isinstance(err.character, str) else int(err.character)
        at = text.count("\n", 0, err.position) + 1
        raise ConfigError(f"{file}:{at}", f"YAML: character {code:#x} is not allowed") from None
    except (yaml.YAMLError, RecursionError, ValueError) as err:  # ValueError: an int too long to read
        raise ConfigError(file, f"YAML: {err.__class__.__name__}") from None
    check_shape(raw, file)
    return raw, text


def check_depth(text: str, file: str) -> None:
    """Refuse nesting past MAX_DEPTH before anything builds the document: building recurses once per level, and
    in libyaml's loader a deep enough document overflows the C stack and kills the process, which no exception
    handler sees. The parser's events come from a loop, not recursion, so counting them is safe at any depth."""
    depth = 0
    for event in yaml.parse(text, Loader=_BASE_LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                where = f"{file}:{mark.line + 1}" if mark is not None else file
                raise ConfigError(where, f"nested more than {MAX_DEPTH} levels deep: refused")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


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
