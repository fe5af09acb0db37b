"""The force-day simulator (tests/load/forceday, issue 18) run small: a few hundred phones for a few seconds against
the real server with deploy/example-force.yaml's policy moved onto loopback. At this rate nothing may be lost, and
every answer must carry the verdict the policy gives that phone for that name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.load.forceday import oracle, sim, world
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory

pytestmark = pytest.mark.skipif(not world.TRANCO.exists(), reason=f"{world.TRANCO} (the Tranco list) is missing")


def test_a_small_force_day_gets_every_verdict_right(auth: AuthServer, resolver_factory: ResolverFactory,
                                                   tmp_path: Path) -> None:
    names = world.load_names(top=300)
    for name in names.every_name():
        auth.add(name, "A", world.UPSTREAM_V4)
        auth.add(name, "AAAA", world.UPSTREAM_V6)
    server = resolver_factory(world.force_config(auth.address))
    assert server.config_path is not None
    mix = world.Mix()
    phones = world.make_phones(300, mix)
    teams = {p.team: p.address for p in reversed(phones)}
    assert set(teams) == {"default", "comms", "roads-policing", "pilot"}
    expect = oracle.Oracle(server.config_path)
    assert expect.disagreements(teams) == []
    assert oracle.ask_hand_checks((server.host, server.port), teams) == []

    # 300 phones at about 150 queries a second on average, a day replayed in five seconds, then a half-second burst.
    day = world.Day(phones=300, queries_per_phone_day=43200, seconds_per_hour=0.2, burst_seconds=0.5)
    result = sim.Phones((server.host, server.port), world.Draw(names, phones, mix), expect, day, mix).run()

    total = {key: sum(getattr(b, key) for b in result.buckets)
             for key in ("sent", "answered", "lost", "blocked", "wrong", "errors", "tcp")}
    assert result.wrong_examples == []
    assert total["wrong"] == 0
    assert total["sent"] > 300
    assert total["lost"] == 0 and total["errors"] == 0
    assert total["answered"] == total["sent"]
    assert 0 < total["blocked"] < total["answered"]
    assert total["tcp"] > 0  # the TCP phones asked, and were answered
    assert server.alive()
