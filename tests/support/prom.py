"""Read a Prometheus text exposition the way a dashboard would: samples by name and labels.

Tests compare two scrapes (``delta``) so that a server shared by several tests can still be checked exactly.
"""

from __future__ import annotations

from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def parse_samples(text: str) -> list[Sample]:
    """(sample name, labels, value) for every sample in a Prometheus text exposition."""
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def by_labels(samples: list[Sample], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name``, keyed by the values of ``labels`` (summing over any other label)."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for sname, sample_labels, value in samples:
        if sname == name:
            out[tuple(sample_labels.get(label, "") for label in labels)] += value
    return dict(out)


def delta(
    before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    """What changed between two ``by_labels`` results; keys that did not move are left out."""
    keys = set(before) | set(after)
    moved = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}
    return {key: value for key, value in moved.items() if value}
