"""Review a policy change before it serves: what a reload, ``serve --check-against`` and ``resolver diff`` show.

``review`` runs the core's comparison (``resolver.core.guard``) with the new config's approvals; ``render`` prints
it per group for a change-advisory board; ``audit_event`` is the one JSON record every reload attempt writes;
``load_side`` reads either side of a diff, a config file or a directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from resolver.config.changes import Guard
from resolver.config.loader import load_config
from resolver.config.model import Config
from resolver.core.guard import Approval, Side, approvals_used, categories_of, compare, unapproved
from resolver.core.policy import utc_text
from resolver.core.scope import Change
from resolver.errors import ConfigError
from resolver.lists.load import Loaded, load_policy

SHOWN = 10  # reductions named in one log line; the audit event and ``resolver diff`` list more
AUDIT_ITEMS = 100  # changes listed in one audit event: a reload of a new list must not write a megabyte
CONFIG_IN_DIRECTORY = "resolver.yaml"


@dataclass(frozen=True, slots=True)
class Review:
    changes: list[Change]
    refused: list[Change]  # reductions that no active approval covers
    approvals: list[Approval]  # the approvals that covered some reduction
    new: Side  # what was reviewed: kept by a reload that takes it, to compare the next one with

    @property
    def reductions(self) -> list[Change]:
        return [c for c in self.changes if c.reduction]

    def refusal(self) -> str:
        """The one log line of a refused reload: what would be unblocked, for whom, and how to approve it."""
        named = "; ".join(c.text() for c in self.refused[:SHOWN])
        more = f" (and {len(self.refused) - SHOWN} more)" if len(self.refused) > SHOWN else ""
        return (f"it would unblock: {named}{more}. To accept this, approve it in policy.approved_changes "
                f"(platforms, lists, domains, bypass or sinkhole, with approved_by, reason, reference, expires)")


def review(old: Side, new: Side, guard: Guard, now: float, old_guard: Guard | None = None) -> Review:
    """``guard`` is the NEW config's: a change is approved where it is made. The shrink limits are the stricter of
    the two configs', so raising a limit and cutting a list in one change is still caught."""
    limits = guard.limits if old_guard is None else guard.limits.stricter(old_guard.limits)
    changes = compare(old, new, limits)
    categories = categories_of(old.policy) | categories_of(new.policy)
    return Review(changes, unapproved(changes, guard.approvals, now, categories),
                  approvals_used(changes, guard.approvals, now, categories), new)


def audit_event(result: str, why: str, old_version: str, new_version: str | None, outcome: Review | None,
                error: str = "") -> dict[str, object]:
    """One reload attempt, accepted, refused or failed, as a JSON-ready record."""
    event: dict[str, object] = {"event": "policy_reload", "result": result, "trigger": why,
                                "old_version": old_version, "new_version": new_version}
    if error:
        event["error"] = error
    if outcome is not None:
        event["summary"] = {
            "reductions": len(outcome.reductions), "refused": len(outcome.refused),
            "now_allowed": sum(c.effect == "allowed" for c in outcome.changes),
            "now_blocked": sum(c.effect == "blocked" for c in outcome.changes),
            "exemption_changes": sum(c.kind == "exemption" for c in outcome.changes),
            "sinkhole_changes": sum(c.kind == "sinkhole" for c in outcome.changes),
        }
        event["changes"] = [{"kind": c.kind, "subject": c.subject, "group": c.group, "effect": c.effect,
                             "detail": c.detail, "reduction": c.reduction} for c in outcome.changes[:AUDIT_ITEMS]]
        event["approvals"] = [{"reference": a.reference, "approved_by": a.approved_by, "reason": a.reason,
                               "expires": utc_text(a.expires)} for a in outcome.approvals]
    return event


def load_side(path: str) -> tuple[Config, Loaded]:
    """A config file; or a directory holding ``resolver.yaml``; or else a blocklists directory, read with the
    built-in default policy (to review a change to platform files alone)."""
    where = Path(path)
    if where.is_dir():
        inside = where / CONFIG_IN_DIRECTORY
        if inside.is_file():
            config = load_config(inside)
        else:
            config = load_config(None)
            config = replace(config, policy=replace(config.policy, blocklists_dir=where))
    elif where.is_file():
        config = load_config(where)
    else:
        raise ConfigError(path, "no such config file or directory")
    return config, load_policy(config)


def render(old_name: str, new_name: str, old: Loaded, new: Loaded, outcome: Review) -> str:
    """What ``resolver diff`` prints: per group, what becomes allowed and what becomes blocked (and, for every
    group, a sinkhole that changed); then the exemptions; then the verdict a CI job gates on."""
    lines = [f"old: {old_name} (policy {old.policy.version})", f"new: {new_name} (policy {new.policy.version})"]
    refused = {id(c) for c in outcome.refused}
    by_group: dict[str, list[Change]] = {}
    for change in outcome.changes:
        if change.kind != "exemption":
            by_group.setdefault(change.group, []).append(change)
    for group in sorted(by_group, key=lambda g: (g == "", not g.startswith("default"), g)):
        lines.append(f"group {group}:" if group else "every group concerned:")
        for effect, title in (("allowed", "becomes allowed"), ("blocked", "becomes blocked"), ("changed", "changed")):
            items = [c for c in by_group[group] if c.effect == effect]
            if items:
                lines.append(f"  {title}:")
                lines += [f"    {c.kind} {c.subject}: {c.detail}{_mark(c, id(c) in refused)}" for c in items]
    exemptions = [c for c in outcome.changes if c.kind == "exemption"]
    if exemptions:
        lines.append("exemptions:")
        lines += [f"  {c.effect} {c.subject}: {c.detail}{_mark(c, id(c) in refused)}" for c in exemptions]
    if not outcome.changes:
        lines.append("no change in what any group blocks, in the sinkhole or in the exemptions")
    reductions = len(outcome.reductions)
    if outcome.refused:
        lines.append(f"result: {reductions} reduction(s), {len(outcome.refused)} not approved: NEW must approve "
                     "them in policy.approved_changes")
    else:
        approved = ", ".join(a.reference for a in outcome.approvals)
        lines.append(f"result: {reductions} reduction(s)" + (f", all approved ({approved})" if approved else ""))
    return "\n".join(lines) + "\n"


def _mark(change: Change, refused: bool) -> str:
    if not change.reduction:
        return ""
    return "  [reduction: NOT APPROVED]" if refused else "  [reduction: approved]"

