"""Trilinear resampling of a map onto another axis-aligned grid, block by block.

Both grids are orthogonal and axis-aligned (what :func:`reff_dask.io.maps.read_map`
accepts); they may differ in voxel size (Angstrom, per axis), origin and shape. A target
voxel is *covered* by a source map when its position lies inside the source box (from the
first to the last voxel centre); uncovered voxels read 0. Each target block reads only
the source window around it, so memory per task is bounded by the block size.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask import delayed

from .gmm.blocks import assemble, grid_blocks
from .io.maps import Map, MapGrid

#: A target voxel within this fraction of a source voxel outside the source box still counts as inside.
EDGE_TOL = 1e-4


def _fractional(src: MapGrid, dst: MapGrid, start, shape, axis_xyz: int) -> np.ndarray:
    """Source fractional index of the target voxels of a block along one axis (0 = x)."""
    zyx = 2 - axis_xyz
    n = int(start[zyx]) + np.arange(int(shape[zyx]))
    pos = dst.origin[axis_xyz] + n * dst.voxel_size[axis_xyz]
    return (pos - src.origin[axis_xyz]) / src.voxel_size[axis_xyz]


def _inside(f: np.ndarray, n: int) -> np.ndarray:
    return (f >= -EDGE_TOL) & (f <= n - 1 + EDGE_TOL)


def coverage(src: MapGrid, dst: MapGrid, start=(0, 0, 0), shape=None) -> np.ndarray:
    """Bool ``[z, y, x]`` mask of the target block's voxels that lie inside the source box."""
    shape = dst.shape if shape is None else shape
    ax = [_inside(_fractional(src, dst, start, shape, a), src.shape[2 - a]) for a in range(3)]
    return ax[2][:, None, None] & ax[1][None, :, None] & ax[0][None, None, :]


def overlaps(src: MapGrid, dst: MapGrid) -> bool:
    """Whether any voxel of ``dst`` lies inside the box of ``src``."""
    return all(_inside(_fractional(src, dst, (0, 0, 0), dst.shape, a), src.shape[2 - a]).any() for a in range(3))


def source_window(src: MapGrid, dst: MapGrid, start, shape) -> tuple[tuple[int, int], ...] | None:
    """Source index ranges ``((z0, z1), (y0, y1), (x0, x1))`` (end exclusive) that a target block
    needs for trilinear interpolation, or None when the block lies outside the source box."""
    out = []
    for zyx in range(3):
        a = 2 - zyx
        f = _fractional(src, dst, start, shape, a)
        n = src.shape[zyx]
        f = f[_inside(f, n)]
        if f.size == 0:
            return None
        lo = int(np.clip(np.floor(f.min()), 0, n - 1))
        hi = int(np.clip(np.ceil(f.max()), 0, n - 1))
        out.append((lo, hi + 1))
    return tuple(out)


def trilinear_block(window: np.ndarray, window_start, src: MapGrid, dst: MapGrid, start, shape) -> np.ndarray:
    """Trilinear interpolation of a source ``window`` (starting at source index ``window_start``,
    z y x) at the voxels of a target block; voxels outside the source box are 0. float32."""
    vals = np.asarray(window, dtype=np.float64)
    masks = []
    for zyx in (2, 1, 0):  # x, then y, then z: separable linear interpolation
        a = 2 - zyx
        f = _fractional(src, dst, start, shape, a) - window_start[zyx]
        masks.append(_inside(f + window_start[zyx], src.shape[zyx]))
        m = vals.shape[zyx]
        i0 = np.clip(np.floor(f), 0, max(m - 2, 0)).astype(np.int64)
        i1 = np.minimum(i0 + 1, m - 1)
        t = np.clip(f - i0, 0.0, 1.0)
        shp = [1, 1, 1]
        shp[zyx] = -1
        t = t.reshape(shp)
        vals = np.take(vals, i0, axis=zyx) * (1.0 - t) + np.take(vals, i1, axis=zyx) * t
    mx, my, mz = masks
    vals *= mz[:, None, None] & my[None, :, None] & mx[None, None, :]
    return vals.astype(np.float32)


def resampled(m: Map, grid: MapGrid, chunks) -> da.Array:
    """Lazy float32 ``[z, y, x]`` map ``m`` on ``grid`` (trilinear; 0 outside ``m``'s box)."""
    chunks = da.core.normalize_chunks(chunks, grid.shape)
    if m.grid.same_as(grid):
        return m.data.astype(np.float32).rechunk(chunks)
    parts = []
    for blk in grid_blocks(grid, chunks):
        win = source_window(m.grid, grid, blk.start, blk.shape)
        if win is None:
            parts.append(da.zeros(blk.shape, dtype=np.float32, chunks=blk.shape))
            continue
        src = m.data[tuple(slice(lo, hi) for lo, hi in win)]
        parts.append(delayed(trilinear_block, pure=True)(src, tuple(lo for lo, _ in win), m.grid, grid,
                                                         blk.start, blk.shape))
    return assemble(parts, chunks, np.float32)
