"""The verdict every answer should carry, and how to read the verdict an answer does carry.

The expectation comes from the product's own policy build (``resolver.lists.load.load_policy``, what ``resolver
explain`` reads), evaluated in this process: the server must answer as its policy says, from another process, over
the wire, under load. So that a bug shared by both cannot hide, ``HAND_CHECKS`` are written down from the example
policy's own words, and the build must agree with each of them before a run starts.

An answer is "blocked" when it carries the sinkhole (A 0.0.0.0, AAAA ::) or the policy's own SOA
(``resolver.invalid``, on NODATA and NXDOMAIN answers); anything else that is NOERROR or NXDOMAIN is "allowed".
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import dns.message
import dns.query

from resolver.config.loader import load_config
from resolver.core.policy import BLOCK
from resolver.lists.load import load_policy

BLOCKED, ALLOWED, ERROR = "blocked", "allowed", "error"
SINKHOLE_SOA = b"\x08resolver\x07invalid\x00"
_RR = struct.Struct("!HHIH")

# (name, team, verdict), from deploy/example-force.yaml's comments: social and messaging blocked for every phone;
# the comms team may use TikTok and the Roads Policing Unit WhatsApp (exemptions); the pilot pool only monitors
# social media (but Messenger, a messaging platform, claims facebook.com too); maps, news and the force's own
# domains are always reachable; public DoH resolvers and the Private Relay and Firefox probes are blocked for
# everyone.
HAND_CHECKS = (
    ("www.tiktok.com", "default", BLOCKED),
    ("www.tiktok.com", "comms", ALLOWED),
    ("www.tiktok.com", "roads-policing", BLOCKED),
    ("www.tiktok.com", "pilot", ALLOWED),
    ("web.whatsapp.com", "default", BLOCKED),
    ("web.whatsapp.com", "roads-policing", ALLOWED),
    ("web.whatsapp.com", "comms", BLOCKED),
    ("web.whatsapp.com", "pilot", BLOCKED),
    ("www.facebook.com", "default", BLOCKED),
    ("www.facebook.com", "comms", BLOCKED),
    ("www.facebook.com", "pilot", BLOCKED),  # Messenger (messaging, blocked for pilot) claims facebook.com too
    ("www.instagram.com", "pilot", ALLOWED),
    ("www.instagram.com", "roads-policing", BLOCKED),
    ("www.bbc.co.uk", "default", ALLOWED),
    ("www.google.com", "default", ALLOWED),
    ("www.police.uk", "default", ALLOWED),
    ("dns.google", "pilot", BLOCKED),
    ("mask.icloud.com", "default", BLOCKED),
    ("use-application-dns.net", "comms", BLOCKED),
)


class Oracle:
    """Expected verdicts from the policy that a config file builds."""

    def __init__(self, config_path: Path) -> None:
        self.policy = load_policy(load_config(config_path)).policy
        self._plain: dict[tuple[str, int], str] = {}  # verdicts that no exemption can change, per group

    def expect(self, name: str, client: str, now: float | None = None) -> str:
        policy = self.policy
        group = policy.group_of(client)
        known = self._plain.get((name, group))
        if known is not None:
            return known
        verdict = policy.lookup(name.encode("ascii").split(b"."), group)
        if verdict is None or verdict.action != BLOCK:
            result = ALLOWED
        elif not verdict.exemptions:
            result = BLOCKED
        else:  # an exemption may cover some clients of the group and not others, and has a clock: per query
            exempt = policy.exemption_for(verdict, client, None, time.time() if now is None else now)
            return ALLOWED if exempt is not None else BLOCKED
        self._plain[(name, group)] = result
        return result

    def disagreements(self, address_of_team: dict[str, str]) -> list[str]:
        """The hand-written checks the policy build does not agree with (must be none)."""
        wrong = []
        for name, team, want in HAND_CHECKS:
            got = self.expect(name, address_of_team[team])
            if got != want:
                wrong.append(f"{name} for {team} ({address_of_team[team]}): policy says {got}, expected {want}")
        return wrong


def skip_name(reply: bytes, pos: int) -> int:
    while True:
        length = reply[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos


def classify(reply: bytes) -> tuple[str, int]:
    """(blocked | allowed | error, rcode) of one answer. Raises IndexError/struct.error on a short packet."""
    rcode = reply[3] & 0x0F
    if rcode not in (0, 3):  # NOERROR, NXDOMAIN
        return ERROR, rcode
    ancount, nscount = struct.unpack_from("!HH", reply, 6)
    pos = skip_name(reply, 12) + 4
    for _ in range(ancount):
        pos = skip_name(reply, pos)
        rtype, _, _, rdlen = _RR.unpack_from(reply, pos)
        data = reply[pos + 10 : pos + 10 + rdlen]
        if (rtype == 1 and data == b"\0\0\0\0") or (rtype == 28 and data == bytes(16)):
            return BLOCKED, rcode
        pos += 10 + rdlen
    if ancount == 0 and nscount:
        pos = skip_name(reply, pos)
        rtype, _, _, rdlen = _RR.unpack_from(reply, pos)
        if rtype == 6 and reply[pos + 10 : pos + 10 + len(SINKHOLE_SOA)] == SINKHOLE_SOA:
            return BLOCKED, rcode
    return ALLOWED, rcode


def ask_hand_checks(server: tuple[str, int], address_of_team: dict[str, str]) -> list[str]:
    """Ask the server each of ``HAND_CHECKS`` (A, from an address of the team, with dnspython) and return the
    answers that differ from the hand-written verdict (must be none)."""
    wrong = []
    for name, team, want in HAND_CHECKS:
        reply = dns.query.udp(dns.message.make_query(name, "A"), server[0], port=server[1], timeout=3,
                              source=address_of_team[team])
        got = classify(reply.to_wire())[0]
        if got != want:
            wrong.append(f"{name} for {team}: the server answered {got}, expected {want}")
    return wrong
