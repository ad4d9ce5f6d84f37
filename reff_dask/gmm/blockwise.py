"""Dask orchestration of the Gaussian-mixture E/M step over a chunked map.

Each map chunk is one task. A chunk's simulated density depends on every atom whose
support (``KCUT * sigma``) reaches it: that is the halo, taken on the atom side, so no
voxel overlap between chunks is needed. The atom table goes to the workers once per
call (one graph key, fetched once per worker); each chunk task gets only the
indices of its atoms. Per-atom partial moments are summed over chunks in a tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask import delayed

from ..io.maps import Map, MapGrid
from . import kernels as K

TREE_FAN_IN = 8


@dataclass
class EStep:
    """Result of one E-step over the whole map.

    moments: (N, 6) per-atom sums (see ``kernels.M_*``); sums: scalar sums (``kernels.S_*``).
    """

    moments: np.ndarray
    sums: np.ndarray

    @property
    def noise(self) -> float:
        """Updated noise term E' (Eq. 9): Me-weighted noise responsibility over the 4-sigma mask."""
        n = self.sums[K.S_MASKN]
        return float(self.sums[K.S_BG] / n) if n else 0.0

    @property
    def ccc(self) -> float:
        """Pearson CCC of map and model density over the whole box."""
        return K.pearson(self.sums[K.S_ALL])

    @property
    def ccc_mask(self) -> float:
        """Pearson CCC over voxels within the atoms' support (4 sigma)."""
        return K.pearson(self.sums[K.S_MASK])


def block_starts(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """Global start index of each chunk, per axis."""
    return [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64) for c in chunks]


def plan_blocks(grid: MapGrid, chunks: tuple[tuple[int, ...], ...], xyz: np.ndarray,
                radius: np.ndarray) -> list[np.ndarray]:
    """Indices of the atoms whose sphere (``radius``, A) touches each chunk, chunks in C order.

    Vectorised: each atom is expanded over the chunk ranges it overlaps on each axis.
    """
    starts = block_starts(chunks)
    nblocks = [len(c) for c in chunks]
    o = np.asarray(grid.origin)
    h = np.asarray(grid.voxel_size)
    n = np.asarray(grid.shape[::-1])  # x, y, z counts
    r = radius[:, None] * (1 + 1e-9)
    lo = np.ceil((xyz - r - o) / h).astype(np.int64)
    hi = np.floor((xyz + r - o) / h).astype(np.int64)
    keep = np.all((hi >= 0) & (lo <= n - 1), axis=1)
    lo = np.clip(lo, 0, n - 1)
    hi = np.clip(hi, 0, n - 1)
    # chunk index ranges per axis, axis order x, y, z -> starts[2], starts[1], starts[0]
    blo = np.empty_like(lo)
    bhi = np.empty_like(hi)
    for ax, zyx in ((0, 2), (1, 1), (2, 0)):
        blo[:, ax] = np.searchsorted(starts[zyx], lo[:, ax], side="right") - 1
        bhi[:, ax] = np.searchsorted(starts[zyx], hi[:, ax], side="right") - 1
    atoms = np.nonzero(keep)[0]
    blo, bhi = blo[keep], bhi[keep]
    span = bhi - blo + 1
    count = span.prod(axis=1)
    owner = np.repeat(atoms, count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    sx, sy = np.repeat(span[:, 0], count), np.repeat(span[:, 1], count)
    bx = np.repeat(blo[:, 0], count) + local % sx
    by = np.repeat(blo[:, 1], count) + (local // sx) % sy
    bz = np.repeat(blo[:, 2], count) + local // (sx * sy)
    block_id = (bz * nblocks[1] + by) * nblocks[2] + bx
    order = np.argsort(block_id, kind="stable")
    owner, block_id = owner[order], block_id[order]
    bounds = np.searchsorted(block_id, np.arange(np.prod(nblocks) + 1))
    return [owner[bounds[b]:bounds[b + 1]] for b in range(int(np.prod(nblocks)))]


def _share(arr: np.ndarray):
    """``arr`` as one graph key: computed once per call on one worker and copied from there
    to the workers whose chunk tasks need it (once per worker, not once per chunk). Unlike
    scattered data, a key in the graph can be recomputed, so losing the worker that holds
    it mid-iteration costs a retry, not the run."""
    return delayed(arr, pure=True)


def _block_task(block, start, origin, voxel, table, idx, noise, with_moments):
    mom, sums = K.block_sums(block, start, origin, voxel, table[idx], noise, with_moments=with_moments)
    return idx, mom, sums


def _combine(parts, n_atoms, with_moments):
    """Sum block results into one sparse part: (sorted atom indices, their (n, 6) moments, sums).

    Parts stay sparse up the tree (only the atoms that touch the subtree's chunks), so a
    node's memory follows its chunks' atoms, not the whole model; :func:`estep` densifies
    the root. Contributions are added per atom in part order, starting from 0, as a dense
    accumulator would, so results do not change.
    """
    sums = np.zeros(K.N_SUMS)
    for _, _, s in parts:
        sums += s
    if not with_moments:
        return np.zeros(0, dtype=np.int64), None, sums
    n_rows = sum(len(p[0]) for p in parts)
    if n_rows >= n_atoms // 2:  # near the root: a dense accumulator is smaller than the merge
        mom = np.zeros((n_atoms, K.N_MOMENTS))
        for i, m, _ in parts:  # each part's indices are unique: plain fancy-index add
            mom[i] += m
        return np.arange(n_atoms), mom, sums  # untouched atoms: zero rows, which add nothing
    idx = np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False)
    rows = np.concatenate([p[1] for p in parts]) if len(idx) else np.zeros((0, K.N_MOMENTS))
    uniq, inv = np.unique(idx, return_inverse=True)
    mom = np.zeros((len(uniq), K.N_MOMENTS))
    np.add.at(mom, inv, rows)
    return uniq, mom, sums


def _tree_reduce(parts, n_atoms, with_moments):
    """Sum parts in a tree of fan-in ``TREE_FAN_IN``; always ends in one ``_combine``."""
    while True:
        parts = [delayed(_combine, pure=True)(parts[i:i + TREE_FAN_IN], n_atoms, with_moments)
                 for i in range(0, len(parts), TREE_FAN_IN)]
        if len(parts) == 1:
            return parts[0]


def estep(m: Map, xyz: np.ndarray, sigma: np.ndarray, amp: np.ndarray, noise: float,
          with_moments: bool = True, kcut: float = K.KCUT) -> EStep:
    """One blockwise E-step: per-atom moments and scalar sums over the whole map.

    xyz (N, 3) and sigma (N,) in Angstrom; amp (N,) peak density per voxel (map units);
    noise: the uniform noise term E (map units).
    """
    n_atoms = len(xyz)
    table = np.column_stack([xyz, sigma, amp]).astype(np.float64)
    plan = plan_blocks(m.grid, m.data.chunks, xyz, kcut * sigma)
    shared = _share(table)
    starts = block_starts(m.data.chunks)
    blocks = m.data.to_delayed().ravel()
    parts = []
    for b, (blk, index) in enumerate(zip(blocks, np.ndindex(*m.data.numblocks))):
        start = np.array([starts[a][index[a]] for a in range(3)])
        parts.append(delayed(_block_task, pure=True)(blk, start, m.grid.origin, m.grid.voxel_size,
                                                     shared, plan[b], noise, with_moments))
    total = _tree_reduce(parts, n_atoms, with_moments)
    idx, part, sums = dask.compute(total)[0]
    if not with_moments:
        return EStep(np.zeros((0, K.N_MOMENTS)), sums)
    mom = np.zeros((n_atoms, K.N_MOMENTS))
    mom[idx] = part
    return EStep(mom, sums)


def simulate(grid: MapGrid, chunks, xyz: np.ndarray, sigma: np.ndarray, amp: np.ndarray,
             noise: float = 0.0, kcut: float = K.KCUT) -> da.Array:
    """Lazy simulated map (model density + ``noise``) on ``grid`` with Dask ``chunks``."""
    chunks = da.core.normalize_chunks(chunks, grid.shape)
    table = np.column_stack([xyz, sigma, amp]).astype(np.float64)
    plan = plan_blocks(grid, chunks, xyz, kcut * sigma)
    shared = _share(table)
    starts = block_starts(chunks)
    rows = []
    for b, index in enumerate(np.ndindex(*[len(c) for c in chunks])):
        shape = tuple(chunks[a][index[a]] for a in range(3))
        start = np.array([starts[a][index[a]] for a in range(3)])
        d = delayed(_simulate_block, pure=True)(shape, start, grid.origin, grid.voxel_size, shared,
                                                plan[b], noise)
        rows.append(da.from_delayed(d, shape=shape, dtype=np.float32))
    nb = [len(c) for c in chunks]
    nested = [[[rows[(z * nb[1] + y) * nb[2] + x] for x in range(nb[2])] for y in range(nb[1])]
              for z in range(nb[0])]
    return da.block(nested)


def _simulate_block(shape, start, origin, voxel, table, idx, noise):
    out = K.density_block(shape, start, origin, voxel, table[idx])
    if noise:
        out += np.float32(noise)
    return out
