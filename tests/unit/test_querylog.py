"""ops/querylog.py: what a line says about its client (pseudonym, salt id, the previous salt's pseudonym during a
rotation), the run salt a supervisor hands its workers, and the ``query_log.salt`` forms the loader accepts.

No thread, no file: ``format`` is called directly. tests/integration/test_querylog.py runs the real writer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from resolver.config.loader import load_config
from resolver.config.model import QueryLogConfig
from resolver.core.stats import OUTCOMES
from resolver.errors import ConfigError
from resolver.ops.querylog import RUN_SALT_ENV, QueryLog, run_salt_env, salt_id, with_run_salt

PATH = Path("/nonexistent/queries.jsonl")  # never opened: nothing here starts the writer
RECORD = (0.0, "10.20.8.15", "comms", b"\x03www\x06tiktok\x03com\x00", 1, OUTCOMES.index("blocked"), "tiktok",
          "blocklists/tiktok.yaml", 0.0)


def line(**config: object) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(QueryLog(QueryLogConfig(path=PATH, **config)).format(RECORD))  # type: ignore[arg-type]
    return parsed


def pseudonym(salt: str, client: str = "10.20.8.15") -> str:
    return hmac.new(salt.encode(), client.encode(), hashlib.sha256).hexdigest()[:16]


def test_a_hashed_client_is_a_keyed_pseudonym_named_by_its_salt() -> None:
    got = line(salt="s3cret")
    assert (got["client"], got["salt"]) == (pseudonym("s3cret"), salt_id(b"s3cret"))
    assert "client_previous" not in got and "salt_previous" not in got
    assert list(got)[:3] == ["time", "client", "salt"]


def test_a_rotation_also_writes_the_pseudonym_under_the_previous_salt() -> None:
    got = line(salt="new", previous_salt="old")
    assert (got["client"], got["salt"]) == (pseudonym("new"), salt_id(b"new"))
    assert (got["client_previous"], got["salt_previous"]) == (pseudonym("old"), salt_id(b"old"))
    # What the old salt's lines said about the same phone is what this line links to.
    assert got["client_previous"] == line(salt="old")["client"]


def test_a_salt_id_is_keyed_by_the_salt_like_a_pseudonym() -> None:
    """Derived from the salt, so it cannot be configured wrong, and no easier to reverse than a pseudonym."""
    assert salt_id(b"a") == hmac.new(b"a", b"resolver query log salt id", hashlib.sha256).hexdigest()[:8]
    assert salt_id(b"a") != salt_id(b"b")


@pytest.mark.parametrize(("mode", "client"), [("full", "10.20.8.15"), ("none", None)])
def test_full_and_no_client_carry_no_salt(mode: str, client: str | None) -> None:
    got = line(client=mode, salt="s3cret", previous_salt="old")
    assert got["client"] == client
    assert not {"salt", "client_previous", "salt_previous"} & set(got)


def test_without_a_salt_each_query_log_makes_its_own() -> None:
    a, b = QueryLog(QueryLogConfig(path=PATH)), QueryLog(QueryLogConfig(path=PATH))
    assert a.salt_id != b.salt_id


def test_the_supervisors_run_salt_reaches_workers_only_where_no_salt_is_configured() -> None:
    hashed = QueryLogConfig(path=PATH)
    env = run_salt_env(hashed)
    assert list(env) == [RUN_SALT_ENV] and len(env[RUN_SALT_ENV]) == 32
    assert run_salt_env(hashed) != env  # one per run
    assert run_salt_env(QueryLogConfig()) == {}  # no query log
    assert run_salt_env(QueryLogConfig(path=PATH, salt="mine")) == {}
    assert run_salt_env(QueryLogConfig(path=PATH, client="full")) == {}
    assert with_run_salt(hashed, env).salt == env[RUN_SALT_ENV]
    assert with_run_salt(QueryLogConfig(path=PATH, salt="mine"), env).salt == "mine"
    assert with_run_salt(hashed, {}) == hashed


@pytest.mark.parametrize(("salt", "current", "previous"), [
    ('"one"', "one", ""),
    ('["one"]', "one", ""),
    ('["new", "old"]', "new", "old"),
    ('""', "", ""),
])
def test_the_salt_is_text_or_the_current_and_the_previous(tmp_path: Path, salt: str, current: str,
                                                          previous: str) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text(f"query_log: {{path: q.jsonl, salt: {salt}}}\n")
    config = load_config(path).query_log
    assert (config.salt, config.previous_salt) == (current, previous)


@pytest.mark.parametrize(("salt", "reason"), [
    ("5", "must be text, or a list of the current and the previous salt"),
    ('["a", "b", "c"]', "must be text, or a list of the current and the previous salt"),
    ("[]", "must be text, or a list of the current and the previous salt"),
    ('["", "old"]', "a rotation needs both salts: [CURRENT, PREVIOUS], neither empty"),
])
def test_other_salts_are_refused(tmp_path: Path, salt: str, reason: str) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text(f"query_log: {{salt: {salt}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.where, info.value.reason) == (f"{path}: query_log.salt", reason)
