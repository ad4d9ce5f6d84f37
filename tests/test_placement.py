"""Chains into MD tasks: balanced groups whatever the chain sizes (reff_dask.md.placement)."""

from __future__ import annotations

import numpy as np

from reff_dask.md.placement import contiguous_groups, group_chains, makespan, axis_order


def _labels(groups, n_chains):
    label = np.full(n_chains, -1)
    for k, g in enumerate(groups):
        label[g] = k
    return label


def test_unequal_chains_within_ten_percent_of_ideal():
    """A ribosome-like assembly: one 30k-particle chain amid many small ones, a few large; for
    2-6 MD tasks the largest costs at most 10% more than the ideal (total / tasks, or the
    largest chain where that is larger). Cutting the row into runs alone fails where one large
    chain sits amid small ones: 21 chains, the middle one 30k, the others 1k, two tasks."""
    rng = np.random.default_rng(7)
    small = rng.integers(800, 4000, 40)
    sizes = np.concatenate([small[:20], [30000, 12000, 9000, 7000], small[20:]]).astype(float)
    centres = np.column_stack([np.arange(len(sizes)) * 20.0, rng.normal(size=len(sizes)),
                               rng.normal(size=len(sizes))])
    for n in (2, 3, 4, 6):
        groups = group_chains(centres, sizes, n)
        assert len(groups) == n and sorted(i for g in groups for i in g) == list(range(len(sizes)))
        ideal = max(sizes.sum() / n, sizes.max())
        assert makespan(sizes, _labels(groups, len(sizes))) <= 1.10 * ideal, n
    sizes = np.array([1000.0] * 10 + [30000.0] + [1000.0] * 10)
    centres = np.column_stack([np.arange(21) * 20.0, np.zeros(21), np.zeros(21)])
    assert makespan(sizes, contiguous_groups(axis_order(centres), sizes, 2)) == 40000.0
    assert makespan(sizes, _labels(group_chains(centres, sizes, 2), 21)) == 30000.0


def test_equal_chains_stay_contiguous_runs():
    """14 equal chains in two stacked rings (GroEL): the groups are the runs along the axis."""
    angles = np.arange(7) * 2 * np.pi / 7
    ring = np.column_stack([30 * np.cos(angles), 30 * np.sin(angles), np.zeros(7)])
    centres = np.vstack([ring + [0, 0, -50], ring + [0, 0, 50]])
    groups = group_chains(centres, np.full(14, 7800.0), 2)
    assert sorted(map(sorted, groups)) == [list(range(7)), list(range(7, 14))]
