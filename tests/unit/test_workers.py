"""The supervisor's decisions on a fake clock, with fake workers: no process, no pipe, no socket, no sleep.

Each test plays the events real workers would cause (``reported`` when a snapshot arrives, ``exited`` when one
dies) and checks what the supervisor does about them. tests/integration/test_workers.py runs the real processes.
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from resolver.config.model import Config
from resolver.ops.snapshot import Snapshot
from resolver.ops.workers import (
    HANG_SECONDS,
    RESTART_BACKOFF,
    SILENT_SECONDS,
    START_FAILURES,
    STOP_SECONDS,
    Supervisor,
)


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Timers fire only when the test moves the clock on."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None], /) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        heapq.heappush(self._queue, (timer.when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._queue and self._queue[0][0] <= until:
            when, _, timer = heapq.heappop(self._queue)
            self.now = when
            if not timer.cancelled:
                timer.callback()
        self.now = until

    def time(self) -> float:
        return self.now

    def stall(self, seconds: float) -> None:
        """Our own loop was blocked for ``seconds``: every timer due meanwhile fires late, all at the end."""
        self.now += seconds
        while self._queue and self._queue[0][0] <= self.now:
            _, _, timer = heapq.heappop(self._queue)
            if not timer.cancelled:
                timer.callback()


@dataclass
class FakeChild:
    index: int
    signals: list[int] = field(default_factory=list)
    told: list[tuple[bytes, int]] = field(default_factory=list)
    killed: bool = False

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def tell(self, kind: bytes, number: int) -> None:
        self.told.append((kind, number))

    def kill(self) -> None:
        self.killed = True


class Plant:
    """Starts fake workers and remembers every one it started, in order."""

    def __init__(self) -> None:
        self.started: list[FakeChild] = []

    def start(self, index: int) -> FakeChild:
        child = FakeChild(index)
        self.started.append(child)
        return child

    def of(self, index: int) -> list[FakeChild]:
        return [c for c in self.started if c.index == index]


def snap(queries: int, *, ready: bool = True) -> Snapshot:
    return Snapshot(
        queries=[queries], buckets=[[queries]], sums=[0.0], blocked={}, monitored={}, exempted={},
        counters={"cache_hits": queries}, cache_entries=queries, upstreams={}, policy_version="v1", platforms=[],
        exemptions=[], loaded_at=1.0, ready=ready, started=1.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def plant() -> Plant:
    return Plant()


@pytest.fixture
def sup(clock: FakeClock, plant: Plant) -> Supervisor:
    supervisor = Supervisor(2, ["serve"], Config(), start=plant.start, timers=clock)
    supervisor.start()
    return supervisor


def test_every_worker_is_started(sup: Supervisor, plant: Plant) -> None:
    assert [c.index for c in plant.started] == [0, 1]


def test_ready_only_when_every_worker_has_reported_ready(sup: Supervisor) -> None:
    assert not sup.ready() and not sup.announced
    sup.reported(0, snap(1))
    assert not sup.ready() and not sup.announced  # one worker bound its ports; the other may not yet
    sup.reported(1, snap(1, ready=False))
    assert sup.announced and not sup.ready()  # both have bound, but one is already shutting down
    sup.reported(1, snap(1))
    assert sup.ready()


def test_a_dead_worker_is_restarted_after_the_backoff_and_counted(sup: Supervisor, clock: FakeClock,
                                                                  plant: Plant) -> None:
    sup.reported(0, snap(1))
    sup.reported(1, snap(1))
    sup.exited(0, -9)
    assert not sup.ready()  # one worker short until its replacement reports
    clock.advance(RESTART_BACKOFF * 0.99)
    assert len(plant.of(0)) == 1 and sup.restarts == 0  # no restart storm from a worker that dies at once
    clock.advance(RESTART_BACKOFF * 0.02)
    assert len(plant.of(0)) == 2 and sup.restarts == 1
    sup.reported(0, snap(0))
    assert sup.ready()
    assert sup.snapshot().counters["worker_restarts"] == 1


def test_a_death_while_stopping_is_not_restarted(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    sup.stop()
    sup.exited(0, 0)
    clock.advance(RESTART_BACKOFF * 2)
    assert len(plant.started) == 2 and sup.restarts == 0 and not sup.done
    sup.exited(1, 0)
    assert sup.done


def test_a_restart_due_after_the_stop_began_does_not_happen(sup: Supervisor, clock: FakeClock,
                                                            plant: Plant) -> None:
    sup.exited(0, -9)  # e.g. SIGTERM sent to the whole group reached this worker before the supervisor
    sup.stop()
    clock.advance(RESTART_BACKOFF * 2)
    assert len(plant.started) == 2 and sup.restarts == 0
    sup.exited(1, 0)
    assert sup.done


def test_stop_asks_every_worker_to_drain_and_kills_one_that_ignores_it(sup: Supervisor, clock: FakeClock,
                                                                       plant: Plant) -> None:
    finished: list[bool] = []
    sup.on_done = lambda: finished.append(True)
    sup.stop()
    first, second = plant.started
    assert first.signals == [signal.SIGTERM] and second.signals == [signal.SIGTERM]
    sup.exited(0, 0)
    clock.advance(STOP_SECONDS * 0.99)
    assert not second.killed and not sup.done  # still draining: its time is not up
    clock.advance(STOP_SECONDS * 0.02)
    assert second.killed and not first.killed
    sup.exited(1, -9)
    assert sup.done and finished == [True]


def test_stop_kills_nobody_once_every_worker_has_stopped(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    sup.stop()
    sup.exited(0, 0)
    sup.exited(1, 0)
    assert sup.done
    clock.advance(STOP_SECONDS * 2)
    assert not any(c.killed for c in plant.started)


def test_a_second_stop_signal_changes_nothing(sup: Supervisor, plant: Plant) -> None:
    sup.stop()
    sup.stop()
    assert all(c.signals == [signal.SIGTERM] for c in plant.started)


def test_counts_of_a_dead_worker_survive_in_the_merged_snapshot(sup: Supervisor, clock: FakeClock) -> None:
    sup.reported(0, snap(5))
    sup.reported(1, snap(3))
    assert sup.snapshot().queries == [8]
    sup.exited(0, -9)
    merged = sup.snapshot()
    assert merged.queries == [8] and merged.counters["cache_hits"] == 8  # nothing went backwards
    assert merged.cache_entries == 3 and merged.workers == 1  # its cache died with it
    clock.advance(RESTART_BACKOFF)
    sup.reported(0, snap(2))  # the replacement counts from zero
    assert sup.snapshot().queries == [10]


def test_a_late_report_from_a_dead_worker_is_not_counted_twice(sup: Supervisor) -> None:
    sup.reported(0, snap(5))
    sup.exited(0, -9)
    sup.reported(0, snap(5))
    sup.reported(1, snap(0))
    assert sup.snapshot().queries == [5]


def test_sighup_reaches_every_live_worker(sup: Supervisor, plant: Plant) -> None:
    sup.exited(1, -9)  # dead, waiting for its restart: nothing to signal (its replacement reads the new config)
    sup.hup()
    assert plant.started[0].signals == [signal.SIGHUP]
    assert plant.started[1].signals == []


def test_sighup_reaches_a_restarted_worker(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    sup.exited(1, -9)
    clock.advance(RESTART_BACKOFF)
    sup.hup()
    assert [c.signals for c in plant.started] == [[signal.SIGHUP], [], [signal.SIGHUP]]


def test_no_snapshot_before_any_worker_reported(sup: Supervisor) -> None:
    with pytest.raises(RuntimeError):
        sup.snapshot()


def test_a_worker_that_cannot_start_stops_the_supervisor_after_a_few_tries(sup: Supervisor, clock: FakeClock,
                                                                           plant: Plant) -> None:
    """Dying before its first report means it could not start (a config only a worker reads, a port only a worker
    binds): the same again is no help, so after START_FAILURES in a row the service stops with that exit status."""
    sup.reported(1, snap(1))  # the other worker is fine
    for attempt in range(1, START_FAILURES):
        sup.exited(0, 2)
        assert not sup.stopping
        clock.advance(RESTART_BACKOFF)
        assert len(plant.of(0)) == attempt + 1
    sup.exited(0, 2)
    assert sup.stopping and sup.exit_code == 2
    assert plant.of(1)[0].signals == [signal.SIGTERM]
    clock.advance(RESTART_BACKOFF * 2)
    assert len(plant.of(0)) == START_FAILURES  # no further try
    sup.exited(1, 0)
    assert sup.done


def test_a_worker_killed_at_start_by_a_signal_stops_it_with_status_1(sup: Supervisor, clock: FakeClock) -> None:
    for _ in range(START_FAILURES):
        sup.exited(0, -9)
        clock.advance(RESTART_BACKOFF)
    assert sup.stopping and sup.exit_code == 1


def test_a_worker_that_ran_is_restarted_however_often_it_dies(sup: Supervisor, clock: FakeClock,
                                                              plant: Plant) -> None:
    for _ in range(START_FAILURES * 2):
        sup.reported(0, snap(1))
        sup.exited(0, -9)
        clock.advance(RESTART_BACKOFF)
    assert not sup.stopping and len(plant.of(0)) == START_FAILURES * 2 + 1 and sup.exit_code == 0


def test_failed_starts_count_only_in_a_row(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    for _ in range(2):
        for _ in range(START_FAILURES - 1):
            sup.exited(0, 2)
            clock.advance(RESTART_BACKOFF)
        sup.reported(0, snap(1))  # this start worked: the count begins again
        sup.exited(0, -9)
        clock.advance(RESTART_BACKOFF)
    assert not sup.stopping and len(plant.of(0)) == 2 * START_FAILURES + 1


def test_a_worker_follows_a_living_supervisor_only() -> None:
    """``follow_supervisor`` in a child of this test: True under its real parent, False under a wrong pid (a
    supervisor that died before the worker asked). Run in a child, since it asks for a signal on parent death."""
    script = ("import os, sys\nfrom resolver.ops.workers import follow_supervisor\n"
              "print(follow_supervisor(int(sys.argv[1])), follow_supervisor(int(sys.argv[1]) + 1))")
    out = subprocess.run([sys.executable, "-c", script, str(os.getpid())], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_peers_hear_when_a_worker_dies_and_when_it_is_back(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    """While a worker is dead its peers ask the upstream for the names it owns instead of waiting on it."""
    sup.reported(0, snap(1))
    sup.reported(1, snap(1))
    other = plant.of(1)[0]
    other.told.clear()
    sup.exited(0, -9)
    assert other.told == [(b"D", 0)]
    clock.advance(RESTART_BACKOFF * 1.01)
    replacement = plant.of(0)[1]
    assert replacement.told == []  # its peer is alive: nothing to avoid
    sup.reported(0, snap(0))
    assert other.told == [(b"D", 0), (b"U", 0)]


def test_a_worker_started_while_a_peer_is_dead_is_told_so(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    sup.reported(0, snap(1))
    sup.reported(1, snap(1))
    sup.exited(0, -9)
    sup.exited(1, -9)
    clock.advance(RESTART_BACKOFF * 1.01)
    assert (b"D", 1) in plant.of(0)[1].told or (b"D", 0) in plant.of(1)[1].told


def test_a_scrape_waits_for_every_running_worker_to_answer() -> None:
    import asyncio

    async def scenario() -> tuple[list[list[tuple[bytes, int]]], bool, bool]:
        plant = Plant()
        sup = Supervisor(2, ["serve"], Config(), start=plant.start, timers=FakeClock())
        sup.start()
        sup.reported(0, snap(1))
        sup.reported(1, snap(1))
        scrape = asyncio.ensure_future(sup.fresh())
        await asyncio.sleep(0)
        told = [[m for m in c.told if m[0] == b"S"] for c in plant.started]
        sup.reported(0, snap(5), 1)
        await asyncio.sleep(0)
        waiting = not scrape.done()  # worker 1 has not answered scrape 1 yet
        sup.reported(1, snap(7), 1)
        await asyncio.wait_for(scrape, 1)
        return told, waiting, sup.snapshot().queries == [12]

    told, waiting, summed = asyncio.run(scenario())
    assert told == [[(b"S", 1)], [(b"S", 1)]]
    assert waiting and summed


# ------------------------------------------------------------------------------------------- a worker gone quiet


class FakeFabric:
    """Records which workers the steering was last told are not answering."""

    def __init__(self) -> None:
        self.not_answering: list[int] = []

    def dead(self, workers: Iterable[int]) -> None:
        self.not_answering = sorted(workers)


def _both_up(sup: Supervisor) -> FakeFabric:
    fabric = FakeFabric()
    sup.fabric = fabric  # type: ignore[assignment]
    sup.reported(0, snap(1))
    sup.reported(1, snap(1))
    return fabric


def _keep_reporting(sup: Supervisor, clock: FakeClock, index: int, seconds: float) -> None:
    """Worker ``index`` reports every second (as ops/link.py does) while ``seconds`` go by."""
    for _ in range(int(seconds)):
        clock.advance(1.0)
        sup.reported(index, snap(1))


def test_a_quiet_worker_loses_its_names_to_the_others_until_it_reports_again(sup: Supervisor, clock: FakeClock,
                                                                              plant: Plant) -> None:
    """Its UDP share is steered to the live worker and its peers stop asking it; nothing is killed. Its next
    report gives it all back."""
    fabric = _both_up(sup)
    other = plant.of(1)[0]
    other.told.clear()
    _keep_reporting(sup, clock, 1, SILENT_SECONDS - 1)
    assert fabric.not_answering == [] and other.told == []
    _keep_reporting(sup, clock, 1, 1)
    assert fabric.not_answering == [0]
    assert other.told == [(b"D", 0)]
    sup.reported(0, snap(2))
    assert fabric.not_answering == []
    assert other.told == [(b"D", 0), (b"U", 0)]
    assert not any(c.killed for c in plant.started)


def test_a_worker_quiet_for_good_is_killed_once_and_restarted(sup: Supervisor, clock: FakeClock,
                                                              plant: Plant) -> None:
    fabric = _both_up(sup)
    stuck, other = plant.of(0)[0], plant.of(1)[0]
    _keep_reporting(sup, clock, 1, HANG_SECONDS - 1)
    assert not stuck.killed and fabric.not_answering == [0]
    _keep_reporting(sup, clock, 1, 1)
    assert stuck.killed and not other.killed
    other.told.clear()
    sup.exited(0, -9)  # the kill lands
    assert other.told == []  # it was told when the worker went quiet
    clock.advance(RESTART_BACKOFF)
    assert len(plant.of(0)) == 2 and sup.restarts == 1
    sup.reported(0, snap(0))
    assert fabric.not_answering == [] and other.told == [(b"U", 0)]


def test_workers_that_report_every_second_are_left_alone(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    fabric = _both_up(sup)
    for child in plant.started:
        child.told.clear()
    for _ in range(int(HANG_SECONDS * 3)):
        clock.advance(1.0)
        sup.reported(0, snap(1))
        sup.reported(1, snap(1))
    assert fabric.not_answering == []
    assert not any(c.killed for c in plant.started) and not any(c.told for c in plant.started)


def test_when_the_supervisor_itself_was_stalled_nobody_is_blamed(sup: Supervisor, clock: FakeClock,
                                                                 plant: Plant) -> None:
    """Our loop blocked: the workers' reports wait unread in their pipes. The silence is ours."""
    fabric = _both_up(sup)
    clock.stall(HANG_SECONDS * 2)
    assert fabric.not_answering == [] and not any(c.killed for c in plant.started)
    sup.reported(0, snap(1))  # the reports read once we run again
    sup.reported(1, snap(1))
    _keep_reporting(sup, clock, 1, SILENT_SECONDS)
    assert fabric.not_answering == [0]  # but a worker quiet since is judged as usual


def test_a_starting_worker_is_not_judged_by_its_silence(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    """A first report comes once the policy is loaded and the sockets are bound, which can take a while."""
    told = [list(c.told) for c in plant.started]
    clock.advance(HANG_SECONDS * 3)
    assert not any(c.killed for c in plant.started)
    assert [c.told for c in plant.started] == told


def test_nobody_is_killed_for_silence_while_stopping(sup: Supervisor, clock: FakeClock, plant: Plant) -> None:
    _both_up(sup)
    sup.stop()
    clock.advance(STOP_SECONDS * 0.9)
    assert not any(c.killed for c in plant.started)


def test_a_scrape_does_not_wait_for_a_quiet_worker() -> None:
    import asyncio

    async def scenario() -> bool:
        clock = FakeClock()
        sup = Supervisor(2, ["serve"], Config(), start=Plant().start, timers=clock)
        sup.start()
        sup.reported(0, snap(1))
        sup.reported(1, snap(1))
        _keep_reporting(sup, clock, 1, SILENT_SECONDS)
        scrape = asyncio.ensure_future(sup.fresh())
        await asyncio.sleep(0)
        sup.reported(1, snap(7), 1)
        for _ in range(10):  # a few turns of the loop, far less than SCRAPE_WAIT
            await asyncio.sleep(0)
        return scrape.done()

    assert asyncio.run(scenario())
