"""The pre-training mixture (MM1: 45% interleaved, 45% captions, 10% text) as a deterministic sample plan.

The mixture is a share of *samples*: the pre-training shards hold `total` samples (default: as many as all
weighted sources hold together), of which round(weight x total) come from each source (largest remainder, so
shares are exact to 1/total). A source with fewer samples than its quota is repeated in whole reshuffled
epochs, one with more is subsampled; every sample's output position is a seeded permutation, so the shard
order interleaves the sources and is the same for the same seed whatever Ray's scheduling did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MixturePlan:
    declared: dict[str, float]  # weights as written in the workflow
    weights: dict[str, float]  # normalized over the sources that have data
    available: dict[str, int]
    counts: dict[str, int]  # samples drawn per source
    total: int
    # Per source: (index into the source's key-sorted samples, output position), one pair per drawn copy.
    draws: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False, default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def realized(self) -> dict[str, float]:
        return {s: (self.counts.get(s, 0) / self.total if self.total else 0.0) for s in self.declared}

    def epochs(self) -> dict[str, float]:
        return {s: round(self.counts[s] / self.available[s], 3) for s in self.counts if self.available[s]}


def quotas(weights: dict[str, float], total: int) -> dict[str, int]:
    """round(w x total) per source with the largest-remainder rule, so the quotas sum to `total` exactly."""
    raw = {s: w * total for s, w in weights.items()}
    counts = {s: int(np.floor(v)) for s, v in raw.items()}
    short = total - sum(counts.values())
    for s in sorted(raw, key=lambda s: (-(raw[s] - counts[s]), s))[:short]:
        counts[s] += 1
    return counts


def plan_mixture(
    available: dict[str, int], declared: dict[str, float], seed: int, total: int | None = None
) -> MixturePlan:
    notes = []
    active = {s: w for s, w in declared.items() if w > 0 and available.get(s, 0) > 0}
    for s, w in declared.items():
        if w > 0 and not available.get(s, 0):
            notes.append(f"source '{s}' has weight {w} but no samples; its share goes to the others")
    if not active:
        raise ValueError(f"no pre-training samples for any weighted source (available: {available})")
    norm = sum(active.values())
    weights = {s: w / norm for s, w in active.items()}
    total = sum(available[s] for s in active) if total is None else total
    counts = quotas(weights, total)
    rng = np.random.default_rng([seed, 7])
    positions = rng.permutation(total)
    draws, start = {}, 0
    for s in sorted(counts):
        n, have = counts[s], available[s]
        epochs = -(-n // have)  # whole reshuffled passes, cut at the quota
        order = np.concatenate([rng.permutation(have) for _ in range(epochs)])[:n] if n else np.zeros(0, int)
        draws[s] = (order.astype(np.int64), positions[start : start + n].astype(np.int64))
        start += n
    return MixturePlan(dict(declared), weights, dict(available), counts, total, draws, notes)
