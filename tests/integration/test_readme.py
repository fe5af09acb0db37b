"""README's example outputs are what the commands print today.

Each ``$ resolver …`` block of README's first ``text`` example is run from the repository root; every line the
README shows must appear in the real output, in order (a ``…`` line stands for lines left out).
"""

from __future__ import annotations

import re
import shlex
import time

import pytest
import yaml

from tests.support.resolverproc import REPO_ROOT, run_cli


def _examples() -> list[tuple[list[str], list[str]]]:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```text\n(\$ resolver explain.*?)```", text, re.DOTALL)
    assert block, "README has no `$ resolver explain` example"
    out: list[tuple[list[str], list[str]]] = []
    for chunk in re.split(r"^(?=\$ )", block.group(1), flags=re.MULTILINE):
        lines = chunk.rstrip("\n").split("\n")
        if lines and lines[0].startswith("$ resolver "):
            out.append((shlex.split(lines[0][len("$ resolver "):]), [x for x in lines[1:] if x]))
    return out


def _exemptions_active() -> bool:
    config = yaml.safe_load((REPO_ROOT / "deploy/example-force.yaml").read_text())
    now = time.time()
    return all(e["starts"].timestamp() <= now < e["expires"].timestamp()
               for e in config["policy"]["exemptions"])


EXAMPLES = _examples()


@pytest.mark.parametrize(("args", "shown"), EXAMPLES, ids=[args[0] for args, _ in EXAMPLES])
def test_readme_example_output(args: list[str], shown: list[str]) -> None:
    if not _exemptions_active():
        pytest.skip("deploy/example-force.yaml's exemptions are no longer active: renew them (and this example)")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    real = result.stdout.splitlines()
    at = 0
    for line in shown:
        if line.strip() == "…":
            continue
        try:
            at = real.index(line, at) + 1
        except ValueError:
            pytest.fail(f"README shows {line!r} for `resolver {' '.join(args)}`, not in the output (in order):\n"
                        + result.stdout)
