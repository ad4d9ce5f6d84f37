"""Dask orchestration of the Gaussian-mixture E/M step over a chunked map.

Each map chunk is one task of the block graph (:mod:`.blocks`): its atoms are those whose
support (``KCUT * sigma``) reaches it. Per-atom partial moments are summed over chunks in
a tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask import delayed

from ..io.maps import Map, MapGrid
from . import kernels as K
from .blocks import Block, assemble, per_block

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


def _block_task(blk: Block, data, table, idx, noise, with_moments, kcut):
    mom, sums = K.block_sums(data, blk.start, blk.origin, blk.voxel, table[idx], noise, kcut, with_moments)
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
    table = np.column_stack([xyz, sigma, amp])
    parts = per_block(_block_task, m.grid, m.data.chunks, noise, with_moments, kcut, data=m.data,
                      atoms=(table, kcut * np.asarray(sigma)))
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
    parts = per_block(_simulate_block, grid, chunks, noise, kcut,
                      atoms=(np.column_stack([xyz, sigma, amp]), kcut * np.asarray(sigma)))
    return assemble(parts, chunks, np.float32)


def _simulate_block(blk: Block, table, idx, noise, kcut):
    out = K.density_block(blk.shape, blk.start, blk.origin, blk.voxel, table[idx], kcut)
    if noise:
        out += np.float32(noise)
    return out
