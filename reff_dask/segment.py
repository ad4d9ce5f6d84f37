"""Map segmentation by component responsibilities (lazy Dask arrays over the map's chunks).

gamma_c(v) = sum_{i in c} P_i(v) / Ms(v), Ms = sum_i P_i + E, with the Gaussian mixture of
:mod:`reff_dask.gmm` (normalised Gaussians of per-axis width sigma, Angstrom). Each map
chunk is one task; the halo is taken on the atom side (:func:`plan_blocks`), so results do
not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask import delayed

from .gmm import components as C
from .gmm.blockwise import _share, block_starts, plan_blocks
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
    table = np.column_stack([xyz, sigma, amp, comp]).astype(np.float64)
    plan = plan_blocks(grid, chunks, xyz, kcut * np.asarray(sigma))
    shared = _share(table)
    starts = block_starts(chunks)
    nb = [len(c) for c in chunks]
    blocks = []
    for b, index in enumerate(np.ndindex(*nb)):
        shape = tuple(chunks[a][index[a]] for a in range(3))
        start = np.array([starts[a][index[a]] for a in range(3)])
        d = delayed(_gamma_block, pure=True)(shape, start, grid.origin, grid.voxel_size, shared, plan[b],
                                             n_comp, noise, kcut)
        blocks.append(da.from_delayed(d, shape=(n_comp + 1,) + shape, dtype=np.float32))
    nested = [[[[blocks[(z * nb[1] + y) * nb[2] + x] for x in range(nb[2])] for y in range(nb[1])]
               for z in range(nb[0])]]
    return da.block(nested)


def _gamma_block(shape, start, origin, voxel, table, idx, n_comp, noise, kcut):
    rows = table[idx]
    dens = C.component_block(shape, start, origin, voxel, rows[:, :5], rows[:, 5].astype(np.int64), n_comp, kcut)
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
