"""The sockets a supervisor holds for its workers' whole lives: each listen address's UDP reuseport group, bound
in worker order with the steering program attached (``net/steer.py``), and the socket pairs between workers
(``net/peers.py``). Held here, not in the workers, so a restarted worker takes over the same socket at the same
index, and its peers keep their end of the pair."""

from __future__ import annotations

import _socket
import logging
import socket
from collections.abc import Iterable

from resolver.config.model import Endpoint
from resolver.net import steer
from resolver.net.peers import mesh
from resolver.ops.link import WorkerLink

log = logging.getLogger("resolver.ops.workers")


class Fabric:
    def __init__(self, listen: tuple[Endpoint, ...], count: int) -> None:
        self.count = count
        self.groups: list[list[_socket.socket]] = []
        self.pairs: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
        try:
            for endpoint in listen:
                self.groups.append(steer.bind_group(endpoint, count, listen))
            self.pairs = mesh(count)
        except BaseException:
            self.close()
            raise
        self.steered = self._attach(set())
        if self.steered:
            log.info("udp queries steered to workers by question name (one cache for %d workers)", count)

    def _attach(self, dead: Iterable[int]) -> bool:
        """(Re)attach the steering program to every group, a dead worker's share sent to the next live one."""
        dead = set(dead)
        live = [i for i in range(self.count) if i not in dead]
        remap = {d: min((i for i in live if i > d), default=live[0]) for d in dead} if live else {}
        try:
            for group in self.groups:
                steer.attach(group[0], steer.program(self.count, remap))
        except OSError as err:
            log.warning("cannot steer udp queries to workers by name (%s): the kernel spreads them, and a worker "
                        "asks a name's owner for what it does not hold", err.strerror or err)
            return False
        return True

    def dead(self, workers: Iterable[int]) -> None:
        """The workers that are not reading their sockets now: their share goes to live ones meanwhile."""
        if self.steered:
            self.steered = self._attach(workers)

    def link(self, index: int, supervisor: int, snapshot_fd: int, control_fd: int) -> WorkerLink:
        peers = {}
        for (i, j), (a, b) in self.pairs.items():
            if i == index:
                peers[j] = a.fileno()
            elif j == index:
                peers[i] = b.fileno()
        udp = tuple(group[index].fileno() for group in self.groups)
        return WorkerLink(index, self.count, supervisor, snapshot_fd, control_fd, udp, peers)

    def close(self) -> None:
        for group in self.groups:
            for sock in group:
                sock.close()
        for a, b in self.pairs.values():
            a.close()
            b.close()
