"""Map segmentation by component responsibilities (lazy Dask arrays over the map's chunks).

gamma_c(v) = sum_{i in c} P_i(v) / Ms(v), Ms = sum_i P_i + E, with the Gaussian mixture of
:mod:`reff_dask.gmm` (normalised Gaussians of per-axis width sigma, Angstrom). Each map
chunk is one task of the block graph (:mod:`.gmm.blocks`), so results do not depend on the
chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from .gmm import components as C
from .gmm.blocks import Block, assemble, per_block
from .gmm.kernels import KCUT
from .io.maps import Map, MapGrid


@dataclass
class Segmentation:
    """Lazy results on the map's grid.

    gamma: float32 ``[n + 1, z, y, x]``: responsibility of each component, then the noise share.
    masked: float32 ``[n, z, y, x]``: experimental map x gamma_c.
    labels: int32 ``[z, y, x]``: 1 + component with the largest responsibility above the
      threshold, 0 = background/noise.
    names: component names (label k is ``names[k - 1]``).
    """

    gamma: da.Array
    masked: da.Array
    labels: da.Array
    names: list[str]
    threshold: float


def responsibility_maps(grid: MapGrid, chunks, xyz: np.ndarray, sigma: np.ndarray, amp: np.ndarray,
                        comp: np.ndarray, n_comp: int, noise: float, kcut: float = KCUT) -> da.Array:
    """Lazy ``[n_comp + 1, z, y, x]`` float32 responsibilities (components, then noise) on ``grid``.

    xyz (N, 3) and sigma (N,) in Angstrom; amp (N,) peak density per voxel (map units);
    comp (N,) component index 0..n_comp-1 per atom; noise: the uniform term E (map units).
    """
    chunks = da.core.normalize_chunks(chunks, grid.shape)
    comp = np.asarray(comp, dtype=np.int64)
    if len(comp) and (comp.min() < 0 or comp.max() >= n_comp):
        raise ValueError(f"component indices must lie in 0..{n_comp - 1}")
    parts = per_block(_gamma_block, grid, chunks, n_comp, noise, kcut,
                      atoms=(np.column_stack([xyz, sigma, amp, comp]), kcut * np.asarray(sigma)))
    return assemble(parts, chunks, np.float32, lead=(n_comp + 1,))


def _gamma_block(blk: Block, table, idx, n_comp, noise, kcut):
    rows = table[idx]
    dens = C.component_block(blk.shape, blk.start, blk.origin, blk.voxel, rows[:, :5], rows[:, 5].astype(np.int64),
                             n_comp, kcut)
    return C.responsibilities(dens, noise)


def segment(m: Map, xyz: np.ndarray, sigma: np.ndarray, amp: np.ndarray, comp: np.ndarray,
            names: list[str], noise: float, threshold: float = 0.5) -> Segmentation:
    """Segment map ``m`` into ``len(names)`` components by responsibility (all lazy)."""
    n = len(names)
    gamma = responsibility_maps(m.grid, m.data.chunks, xyz, sigma, amp, comp, n, noise)
    masked = m.data[None].astype(np.float32) * gamma[:n]
    lab = gamma[:n].map_blocks(C.labels, threshold, drop_axis=0, dtype=np.int32)
    return Segmentation(gamma, masked, lab, list(names), threshold)


def segment_stats(seg: Segmentation, m: Map) -> dict[str, da.Array]:
    """Lazy figures of a segmentation: voxels per label (0 = background first), map mass per
    component and noise (positive part of the map x gamma), and the map's total positive mass."""
    n = len(seg.names)
    pos = da.maximum(m.data, 0).astype(np.float64)
    voxels = da.stack([(seg.labels == k).sum() for k in range(n + 1)])
    mass = (pos[None] * seg.gamma.astype(np.float64)).sum(axis=(1, 2, 3))
    return {"voxels": voxels, "mass": mass, "total_mass": pos.sum()}
