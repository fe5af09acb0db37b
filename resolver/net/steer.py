"""Each question name belongs to one worker, and the kernel hands every UDP query to its name's worker.

With ``--workers N`` each worker has its own cache and in-flight table. Left to SO_REUSEPORT's hash of the
client's address and port, a name asked from two sockets lands on two workers, and goes upstream twice. Instead a
classic BPF program attached to the reuseport group (SO_ATTACH_REUSEPORT_CBPF) picks the socket from the question
name: the program sees the DNS message from offset 0, hashes the name's bytes from offset 12 up to its root byte
(FNV-1a, each byte OR 0x20, so names that differ only in case, as 0x20-randomised clients send them, hash alike)
and returns the hash modulo N, an index into the group's sockets in the order they joined. ``owner`` is the same
function in Python, for the questions that arrive over TCP, DoT and DoH, which the kernel cannot steer
(``net/peers.py`` sends those to the owner).

The order of the group is what makes this work, so the supervisor binds all N sockets itself, in worker order,
and keeps them open for its whole life: a worker gets its socket's descriptor, and a restarted worker gets the
same one back at the same index. (Closing a socket would move the group's last socket into its slot.) While a
worker is dead the program is swapped for one that sends its share to a live worker (``remap``).

Any failure (not Linux, an old kernel, a seccomp filter) is a warning and the kernel's own spreading: the
workers still share one cache through their owners, at the cost of a hop for a query that reached the wrong one.
"""

from __future__ import annotations

import _socket
import ctypes
import socket
import struct
from collections.abc import Iterable, Mapping

from resolver.config.model import Endpoint
from resolver.net.sockets import bind_udp

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
NAME_START = 12
MAX_NAME = 255

# Classic BPF opcodes (<linux/filter.h>).
_LD_B_ABS = 0x30
_LDX_IMM = 0x01
_JEQ_K = 0x15
_JA = 0x05
_OR_K = 0x44
_XOR_X = 0xAC
_MUL_K = 0x24
_MOD_K = 0x94
_TAX = 0x07
_TXA = 0x87
_RET_A = 0x16
_LD_IMM = 0x00

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k
_INSN = struct.Struct("HBBI")


def owner(qname: bytes, workers: int) -> int:
    """The worker that owns a question name (wire form, any case): what the kernel program computes."""
    h = FNV_OFFSET
    for byte in qname[:MAX_NAME]:
        if byte == 0:
            break
        h = ((h ^ (byte | 0x20)) * FNV_PRIME) & 0xFFFFFFFF
    return h % workers


def program(workers: int, remap: Mapping[int, int] | None = None) -> list[Instruction]:
    """The classic BPF program for ``workers`` sockets; ``remap`` sends a (dead) worker's share to another.

    Unrolled, since classic BPF has no backward jumps: per name byte, load it, stop at the root byte, fold it
    into the hash kept in X. A load past the end of a short packet ends the program with 0 (the first worker,
    which answers a malformed packet like any other)."""
    insns: list[Instruction] = [(_LDX_IMM, 0, 0, FNV_OFFSET)]
    per_byte = 7
    for i in range(MAX_NAME):
        done = (MAX_NAME - i - 1) * per_byte + 4  # from the "ja" after this byte's test to the end of the loop
        insns += [
            (_LD_B_ABS, 0, 0, NAME_START + i),
            (_JEQ_K, 0, 1, 0),  # the root byte: the name is complete
            (_JA, 0, 0, done),
            (_OR_K, 0, 0, 0x20),
            (_XOR_X, 0, 0, 0),
            (_MUL_K, 0, 0, FNV_PRIME),
            (_TAX, 0, 0, 0),
        ]
    insns += [(_TXA, 0, 0, 0), (_MOD_K, 0, 0, workers)]
    for dead, alive in sorted((remap or {}).items()):
        insns += [(_JEQ_K, 0, 1, dead), (_LD_IMM, 0, 0, alive)]
    insns.append((_RET_A, 0, 0, 0))
    return insns


def attach(sock: _socket.socket | socket.socket, insns: list[Instruction]) -> None:
    """Attach (or replace) the reuseport group's program through one of its sockets; OSError when refused."""
    code = b"".join(_INSN.pack(*insn) for insn in insns)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(insns), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def bind_group(endpoint: Endpoint, workers: int, listen: Iterable[Endpoint]) -> list[_socket.socket]:
    """``workers`` UDP sockets on ``endpoint`` sharing it (SO_REUSEPORT), bound in worker order."""
    listen = tuple(listen)
    group: list[_socket.socket] = []
    try:
        for _ in range(workers):
            group.append(bind_udp(endpoint, True, listen))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group
