"""Automatic rigid domains: each chain split into compact groups of residues by its own contacts.

A chain's residues (one point each: CA, else P, else the first atom) are the nodes of a graph
whose edges join residues closer than ``CONTACT_A``. Residues are ordered along the graph
Laplacian's Fiedler vector and the chain is cut at the point of that order where the fewest
contacts cross the cut for the contacts inside the smaller part (a spectral sweep cut, the
partition Cheeger's inequality bounds; both parts at least ``MIN_RESIDUES``), when that
cut is weak: the crossing contacts are fewer than ``MAX_CUT_RATIO`` of the smaller part's
internal ones. Parts are cut again the same way. Runs shorter than ``MIN_RUN`` residues along
the sequence join the domain of their neighbours, so a domain is a few long segments (GroEL's
subunit: equatorial, intermediate and apical domains). Pure numpy on coordinates; no map.
"""

from __future__ import annotations

import numpy as np

CONTACT_A = 8.0
MAX_CUT_RATIO = 0.10  # measured: globin chains 0.12-0.16 (one domain), GroEL hinges 0.02 and 0.06
MIN_RESIDUES = 40
MIN_RUN = 10


def _fiedler(adj: np.ndarray) -> np.ndarray:
    lap = np.diag(adj.sum(axis=1)) - adj
    _w, v = np.linalg.eigh(lap)
    return v[:, 1]


def sweep_cut(adj: np.ndarray, score: np.ndarray) -> tuple[int | None, float]:
    """Best split of the nodes ordered by ``score``: the first ``t`` against the rest, ``t`` in
    [MIN_RESIDUES, n - MIN_RESIDUES], minimising crossing contacts / the smaller part's internal
    contacts. Returns (t, ratio), or (None, inf) when no split leaves both parts big enough."""
    n = len(score)
    if n < 2 * MIN_RESIDUES:
        return None, float("inf")
    order = np.argsort(score, kind="stable")
    p = adj[np.ix_(order, order)]
    rows = np.cumsum(p.sum(axis=1))                 # contacts of the first t nodes, counted per node
    inner_a = np.diag(p.cumsum(axis=0).cumsum(axis=1))  # 2 x contacts inside the first t (t = 1..n)
    total = p.sum()
    cut = rows - inner_a                             # contacts crossing, first t vs the rest
    inner_b = total - inner_a - 2 * cut              # 2 x contacts inside the rest
    t = np.arange(1, n + 1)
    ok = (t >= MIN_RESIDUES) & (t <= n - MIN_RESIDUES)
    inner = np.minimum(inner_a, inner_b) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok & (inner > 0), cut / inner, np.inf)
    k = int(np.argmin(ratio))
    return (k + 1, float(ratio[k])) if np.isfinite(ratio[k]) else (None, float("inf"))


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
        fiedler = _fiedler(sub)
        t, ratio = sweep_cut(sub, fiedler)
        if t is None or ratio > MAX_CUT_RATIO:
            continue
        order = np.argsort(fiedler, kind="stable")
        a, b = idx[np.sort(order[:t])], idx[np.sort(order[t:])]
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
