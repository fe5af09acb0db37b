"""The changes of a policy review that are not about one name: exemptions and the sinkhole (``resolver.core.guard``
compares the rest, and ``Change`` is what both report). Pure: no I/O.

An exemption is the security team's signed record (who approved it, why, the ticket, a start and an expiry no
longer than ``max_exemption_days``), so adding or widening one is a change every reviewer sees but not a reduction
that needs a second signature, unless its scope is effectively everyone: a network wider than a /8 (IPv4) or a
/32 (IPv6), or the default group. That is a ban lifted, not an exception to it, and needs an approval for every
platform it lifts. Exemptions are compared by their whole content, not their reference, so one that reuses a
reference is still seen.

A sinkhole that answers blocked names with an address it did not use before may point them at the banned
platform itself, so a new routable address needs an approval (``sinkhole: [ADDRESS]``); answering with nothing
(REFUSED, NXDOMAIN, ``0.0.0.0``) or the same addresses is reported but weakens nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from resolver.core.policy import Exemption, Policy, SinkholeSpec, utc_text

EVERYONE_V4 = 1 << 24  # addresses in a /8: an exemption for more than that is for everyone
EVERYONE_V6 = 1 << 96  # a /32


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "platform" | "list" | "domain" | "bypass" | "exemption" | "sinkhole"
    subject: str  # platform id, list name, domain, bypass switch, exemption reference or sinkhole address
    group: str  # the group whose clients see it; "" for every group concerned
    effect: str  # "allowed" or "blocked"; for exemptions "added", "removed" or "changed"; "changed" for a sinkhole
    detail: str
    reduction: bool = False
    platform: str = ""  # the platform a domain belongs to, so approving the platform approves the domain
    seen_by: frozenset[str] = frozenset()  # with group "": the groups whose clients see it; empty: every client
    platforms: frozenset[str] = frozenset()  # an exemption's platforms: an approval must cover each

    def text(self) -> str:
        who = f" for group {self.group}" if self.group else ""
        return f"{self.kind} {self.subject}{who}: {self.detail}"


def exemption_changes(old: Policy, new: Policy) -> Iterator[Change]:
    """Exemptions added, removed or changed, by content; an added or changed one for everyone is a reduction."""
    before, after = {grant_key(e): e for e in old.exemptions}, {grant_key(e): e for e in new.exemptions}
    gone = [before[k] for k in sorted(before.keys() - after.keys())]
    default = new.groups[0].name
    for now in (after[k] for k in sorted(after.keys() - before.keys())):
        was = next((e for e in gone if e.reference == now.reference), None)
        broad = everyone(now, default)
        note = f"; for everyone ({broad}): needs an approval for its platforms" if broad else ""
        if was is None:
            yield Change("exemption", now.reference, "", "added", _text(now) + note, bool(broad),
                         platforms=now.platforms)
        else:
            gone.remove(was)
            yield Change("exemption", now.reference, "", "changed", f"{_text(was)} -> {_text(now)}{note}",
                         bool(broad), platforms=now.platforms)
    for was in gone:
        yield Change("exemption", was.reference, "", "removed", _text(was))


def everyone(e: Exemption, default: str) -> str:
    """Why ``e`` covers effectively every client, or "" when it does not."""
    if default in e.groups:
        return f"group {default}"
    v4 = [n for n in e.networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in e.networks if isinstance(n, ipaddress.IPv6Network)]
    # Collapsed first, so neither overlaps nor many narrow networks side by side hide the total.
    if sum(n.num_addresses for n in ipaddress.collapse_addresses(v4)) > EVERYONE_V4:
        return "networks wider than a /8"
    if sum(n.num_addresses for n in ipaddress.collapse_addresses(v6)) > EVERYONE_V6:
        return "networks wider than a /32"
    return ""


def grant_key(e: Exemption) -> tuple[str, str]:
    """What an exemption grants, in an order to sort by; not where it is written (``where``), which moves."""
    return e.reference, repr((sorted(e.platforms), e.approved_by, e.reason, e.starts, e.expires, sorted(e.clients),
                              [str(n) for n in e.networks], sorted(e.groups), sorted(e.client_ids)))


def _text(e: Exemption) -> str:
    return (f"{', '.join(sorted(e.platforms))} for {', '.join(e.who())}, approved by {e.approved_by}, "
            f"until {utc_text(e.expires)}")


def sinkhole_changes(old: SinkholeSpec, new: SinkholeSpec) -> Iterator[Change]:
    """A changed sinkhole: one reduction per routable address it answers with that it did not before."""
    if old == new:
        return
    text = f"{sinkhole_text(old)} -> {sinkhole_text(new)}"
    fresh = sorted(answers(new) - answers(old), key=lambda a: (a.version, a))
    routable = [a for a in fresh if not (a.is_unspecified or a.is_loopback)]
    for address in routable:
        yield Change("sinkhole", str(address), "", "allowed", f"blocked names answered with {address}: {text}",
                     True)
    if not routable:
        yield Change("sinkhole", "sinkhole", "", "changed", text)


def answers(spec: SinkholeSpec) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a blocked name's A and AAAA answers carry."""
    if spec.mode == "null":
        return frozenset({ipaddress.IPv4Address(0), ipaddress.IPv6Address(0)})
    if spec.mode == "address":
        return frozenset(ipaddress.ip_address(a) for a in (*spec.ipv4, *spec.ipv6))
    return frozenset()


def sinkhole_text(spec: SinkholeSpec) -> str:
    addresses = f" {', '.join((*spec.ipv4, *spec.ipv6))}" if spec.mode == "address" else ""
    return f"mode {spec.mode}{addresses}, ttl {spec.ttl}"
