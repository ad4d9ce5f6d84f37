"""Automatic rigid domains: each chain split into compact groups of residues by its own contacts.

A chain's residues (one point each: CA, else P, else the first atom) are the nodes of a graph
whose edges join residues closer than ``CONTACT_A``. The chain is cut in two along the sign of
the graph Laplacian's Fiedler vector (spectral bisection, the classic partition of a contact
network) when the cut is weak: fewer than ``MAX_CUT_RATIO`` of the smaller part's internal
contacts cross it, and both parts have at least ``MIN_RESIDUES``. Parts are cut again the same
way. Runs shorter than ``MIN_RUN`` residues along the sequence join the domain of their
neighbours, so a domain is a few long segments (GroEL's subunit: equatorial, intermediate and
apical domains). Pure numpy on coordinates; no map.
"""

from __future__ import annotations

import numpy as np

CONTACT_A = 8.0
MAX_CUT_RATIO = 0.15
MIN_RESIDUES = 40
MIN_RUN = 10


def _fiedler(adj: np.ndarray) -> np.ndarray:
    lap = np.diag(adj.sum(axis=1)) - adj
    _w, v = np.linalg.eigh(lap)
    return v[:, 1]


def split_residues(points: np.ndarray) -> np.ndarray:
    """Domain label (0, 1, ...) per residue of one chain from one point per residue (A)."""
    n = len(points)
    label = np.zeros(n, dtype=np.int64)
    if n < 2 * MIN_RESIDUES:
        return label
    d = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    adj = ((d < CONTACT_A) & ~np.eye(n, dtype=bool)).astype(float)
    todo, next_label = [np.arange(n)], 1
    while todo:
        idx = todo.pop()
        if len(idx) < 2 * MIN_RESIDUES:
            continue
        sub = adj[np.ix_(idx, idx)]
        if np.any(sub.sum(axis=1) == 0):
            sub = sub + 1e-6  # isolated residues: keep the Laplacian connected
        side = _fiedler(sub) >= 0
        a, b = idx[side], idx[~side]
        if min(len(a), len(b)) < MIN_RESIDUES:
            continue
        cut = adj[np.ix_(a, b)].sum()
        inner = min(adj[np.ix_(a, a)].sum(), adj[np.ix_(b, b)].sum()) / 2
        if inner <= 0 or cut / inner > MAX_CUT_RATIO:
            continue
        label[b] = next_label
        next_label += 1
        todo += [a, b]
    return _smooth(label)


def _smooth(label: np.ndarray) -> np.ndarray:
    """Runs shorter than MIN_RUN along the sequence take the label of the longer neighbour run."""
    label = label.copy()
    for _ in range(3):
        starts = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
        ends = np.r_[starts[1:], len(label)]
        changed = False
        for s, e in zip(starts, ends):
            if e - s >= MIN_RUN:
                continue
            left = label[s - 1] if s > 0 else None
            right = label[e] if e < len(label) else None
            new = left if right is None or (left is not None and s > 0) else right
            if new is not None and new != label[s]:
                label[s:e] = new
                changed = True
        if not changed:
            break
    _, label = np.unique(label, return_inverse=True)
    return label


def auto_domains(structure) -> tuple[np.ndarray, list[str]]:
    """Group per atom (package atom order, -1 for atoms of no polymer residue) and group names
    (``A:1-135,410-525``-style, chain and residue ranges) from :func:`split_residues` per chain."""
    groups: list[int] = []
    names: list[str] = []
    for ch in structure[0]:
        pts, res_atoms, nums = [], [], []
        for res in ch:
            a = res.find_atom("CA", "*") or res.find_atom("P", "*")
            if a is None or res.is_water():
                res_atoms.append((len(res), None))
                continue
            res_atoms.append((len(res), len(pts)))
            pts.append((a.pos.x, a.pos.y, a.pos.z))
            nums.append(res.seqid.num)
        label = split_residues(np.array(pts, dtype=float).reshape(-1, 3)) if pts else np.zeros(0, np.int64)
        base = len(names)
        for k in range(int(label.max()) + 1 if len(label) else 0):
            sel = np.array(nums)[label == k]
            names.append(f"{ch.name}:{_ranges(sel)}")
        for n_atoms, r in res_atoms:
            groups += [base + int(label[r]) if r is not None else -1] * n_atoms
    return np.array(groups, dtype=np.int64), names


def _ranges(nums: np.ndarray) -> str:
    nums = np.sort(nums)
    if len(nums) == 0:
        return ""
    cut = np.flatnonzero(np.diff(nums) > 1)
    starts, ends = np.r_[nums[0], nums[cut + 1]], np.r_[nums[cut], nums[-1]]
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in zip(starts, ends))
