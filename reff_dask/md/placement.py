"""Which chains share an MD task: groups of chains of about equal cost (pure; no OpenMM, no Dask).

An MD task's cost grows with its particles (every group also simulates a shell of fixed
neighbours, so fewer, contiguous groups cost less in all). The groups are cut from the chains
ordered along the longest axis of their centres, so a group's chains touch; where chains are of
very unequal size that cut can leave one group far above the others, and then the chains are
dealt longest first onto the least loaded group (LPT: within 4/3 of the best makespan).
"""

from __future__ import annotations

import numpy as np

#: A contiguous cut is kept while its largest group costs at most this much more than LPT's.
CONTIGUOUS_SLACK = 1.10


def axis_order(centres: np.ndarray) -> np.ndarray:
    """Chain indices in order along the principal axis of their ``centres`` (A)."""
    centred = centres - centres.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0] if len(centres) > 1 else np.zeros(3)
    return np.argsort(centred @ axis, kind="stable")


def contiguous_groups(order: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """Group label (0..n-1) per chain: the chains in ``order`` cut into ``n`` runs of about equal
    total ``sizes``."""
    mid = np.cumsum(sizes[order]) - sizes[order] / 2
    label = np.empty(len(sizes), dtype=np.int64)
    label[order] = np.minimum((mid / sizes.sum() * n).astype(int), n - 1)
    return label


def lpt_groups(sizes: np.ndarray, n: int) -> np.ndarray:
    """Group label per chain: longest first onto the least loaded of ``n`` groups."""
    load = np.zeros(n)
    label = np.empty(len(sizes), dtype=np.int64)
    for i in np.argsort(-sizes, kind="stable"):
        g = int(np.argmin(load))
        label[i] = g
        load[g] += sizes[i]
    return label


def makespan(sizes: np.ndarray, label: np.ndarray) -> float:
    """Cost of the largest group."""
    return float(np.bincount(label, weights=sizes).max())


def group_chains(centres: np.ndarray, sizes: np.ndarray, n: int) -> list[list[int]]:
    """``n`` groups (``n`` <= chains) of chain indices for the MD tasks: the contiguous cut,
    unless its largest group exceeds LPT's by more than :data:`CONTIGUOUS_SLACK`. Chains within
    a group, and the groups by their first chain, in order along the axis."""
    sizes = np.asarray(sizes, dtype=float)
    order = axis_order(np.asarray(centres, dtype=float))
    label = contiguous_groups(order, sizes, n)
    lpt = lpt_groups(sizes, n)
    if makespan(sizes, label) > CONTIGUOUS_SLACK * makespan(sizes, lpt):
        label = lpt
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(int(label[i]), []).append(int(i))
    return list(groups.values())
