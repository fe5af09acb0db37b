"""An ``approved_changes`` record as a config carries it: who signed off a reduction, why, and until when.

Reloads that stop blocking something are refused without one (README "Changes that unblock need an approval").
"""

from __future__ import annotations

import datetime as dt


def approval(days: float = 30, **kinds: list[str]) -> dict[str, object]:
    """``kinds``: platforms=, lists=, domains=, bypass=, sinkhole= (addresses), groups= (lists of names)."""
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return {**kinds, "approved_by": "J. Smith (CISO)", "reason": "test: reduction signed off",
            "reference": "CHG-TEST-1", "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
