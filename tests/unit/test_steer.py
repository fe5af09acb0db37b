"""The pieces of "N workers act as one resolver" that need no process: the steering program agrees with ``owner``
(run here on a small classic-BPF interpreter, and in the kernel by tests/integration/test_workers_cache.py), the
worker count from sample cgroup trees, and the worker spec."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from resolver.core import wire
from resolver.net import steer
from resolver.ops.cpus import CpuBudget, cgroup_cpus, quota_cpus
from resolver.ops.link import WorkerLink


def run_cbpf(insns: list[steer.Instruction], packet: bytes) -> int:
    """The subset of classic BPF the program uses, as the kernel runs it (a load past the end returns 0)."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x30:  # ld b [k]
            if k >= len(packet):
                return 0
            a = packet[k]
        elif code == 0x00:
            a = k
        elif code == 0x01:
            x = k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x05:
            pc += k
        elif code == 0x44:
            a |= k
        elif code == 0xAC:
            a ^= x
        elif code == 0x24:
            a = (a * k) & 0xFFFFFFFF
        elif code == 0x94:
            a %= k
        elif code == 0x07:
            x = a
        elif code == 0x87:
            a = x
        elif code == 0x16:
            return a
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def _packet(name: str, edns: bool = True) -> bytes:
    opt = wire.opt_record(False) if edns else b""
    header = wire.HEADER.pack(0x1234, wire.RD, 1, 0, 0, 1 if edns else 0)
    return header + wire.encode_name(name) + b"\x00\x01\x00\x01" + opt


@pytest.mark.parametrize("workers", [2, 3, 16])
def test_the_program_and_owner_agree_whatever_the_case(workers: int) -> None:
    rng = random.Random(workers)
    program = steer.program(workers)
    seen = set()
    for i in range(300):
        name = f"host{i}-{rng.randrange(10**6)}.Example.COM"
        mixed = "".join(c.swapcase() if rng.random() < 0.5 else c for c in name)
        want = steer.owner(wire.encode_name(name.lower()), workers)
        assert run_cbpf(program, _packet(mixed, edns=bool(i % 2))) == want
        seen.add(want)
    assert seen == set(range(workers))  # every worker owns some names


def test_a_long_name_is_hashed_whole_and_a_short_packet_goes_to_the_first_worker() -> None:
    name = ".".join(["a" * 60] * 4)  # 245 bytes on the wire
    assert run_cbpf(steer.program(5), _packet(name)) == steer.owner(wire.encode_name(name), 5)
    assert run_cbpf(steer.program(5), b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ab") == 0


def test_a_dead_workers_share_goes_elsewhere() -> None:
    program = steer.program(3, {1: 2})
    owners = {run_cbpf(program, _packet(f"n{i}.example")) for i in range(200)}
    assert owners == {0, 2}


def test_the_jumps_fit_classic_bpf() -> None:
    insns = steer.program(16, {3: 4})
    assert len(insns) <= 4096  # BPF_MAXINSNS
    assert all(jt <= 255 and jf <= 255 for _, jt, jf, _ in insns)


@pytest.mark.parametrize(("text", "cpus"), [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 2),
                                            ("50000 100000", 1), ("max", None), ("garbage", None), ("", None)])
def test_quota_from_cpu_max(text: str, cpus: int | None) -> None:
    assert quota_cpus(text) == cpus


def test_the_tightest_quota_on_the_way_to_the_root_counts(tmp_path: Path) -> None:
    (tmp_path / "system.slice" / "resolver.service").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "system.slice" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "system.slice" / "resolver.service" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path, "0::/system.slice/resolver.service\n") == 3
    assert cgroup_cpus(tmp_path, "0::/\n") is None  # a container's namespace: the root is its own cgroup
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cgroup_cpus(tmp_path, "0::/\n") == 1


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path, "") is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    assert cgroup_cpus(tmp_path, "") == 3


def test_the_smaller_of_affinity_and_quota_and_at_least_one() -> None:
    assert CpuBudget(8, 2).workers == 2
    assert CpuBudget(2, 8).workers == 2
    assert CpuBudget(4, None).workers == 4
    assert CpuBudget(0, None).workers == 1
    assert "cgroup CPU quota 2" in CpuBudget(8, 2).describe()


def test_a_worker_spec_round_trips() -> None:
    link = WorkerLink(1, 3, 4242, 7, 8, (9, 10), {0: 11, 2: 12})
    assert WorkerLink.parse(link.encode()) == link
    assert set(link.fds()) == {7, 8, 9, 10, 11, 12}
    assert WorkerLink.parse("0:5:99") == WorkerLink(0, 1, 99, 5)
