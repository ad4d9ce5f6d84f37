"""SMOCf: Manders overlap of experimental and simulated map over a residue window. Pure numerics.

For residue r with window atoms W(r) (up to ``window // 2`` residues either side, see
:mod:`.residues`), the fragment mask is every voxel within ``radius`` (A) of an atom of
W(r), and

    SMOCf(r) = sum(a * b) / sqrt(sum(a^2) * sum(b^2))   over voxels in the mask,

a = experimental map, b = simulated map (Gaussians of uniform width from the resolution),
both as they are (no mean subtraction: Manders, not Pearson), as in TEMPy's SMOC.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Mask radius per residue window: ``SIGMA_THRESHOLD * max(0.225 * resolution, 1 A)``.
SIGMA_THRESHOLD = 2.5


def mask_radius(resolution: float, sigma_coeff: float = 0.225) -> float:
    """Radius (A) around each window atom of the SMOCf fragment mask."""
    return SIGMA_THRESHOLD * max(sigma_coeff * resolution, 1.0)


@numba.njit(cache=True, nogil=True)
def mark_spheres(shape, start, origin, voxel, xyz, radius, out):
    """Set ``out`` (uint8 [z, y, x] block starting at global index ``start``) to 1 within ``radius`` (A) of each atom."""
    nz, ny, nx = shape
    r2 = radius * radius
    for a in range(xyz.shape[0]):
        ax, ay, az = xyz[a, 0], xyz[a, 1], xyz[a, 2]
        ilo = max(int(math.ceil((ax - radius - origin[0]) / voxel[0])) - start[2], 0)
        ihi = min(int(math.floor((ax + radius - origin[0]) / voxel[0])) - start[2], nx - 1)
        jlo = max(int(math.ceil((ay - radius - origin[1]) / voxel[1])) - start[1], 0)
        jhi = min(int(math.floor((ay + radius - origin[1]) / voxel[1])) - start[1], ny - 1)
        klo = max(int(math.ceil((az - radius - origin[2]) / voxel[2])) - start[0], 0)
        khi = min(int(math.floor((az + radius - origin[2]) / voxel[2])) - start[0], nz - 1)
        for k in range(klo, khi + 1):
            dz = origin[2] + (start[0] + k) * voxel[2] - az
            for j in range(jlo, jhi + 1):
                dy = origin[1] + (start[1] + j) * voxel[1] - ay
                dzy2 = dz * dz + dy * dy
                if dzy2 > r2:
                    continue
                for i in range(ilo, ihi + 1):
                    dx = origin[0] + (start[2] + i) * voxel[0] - ax
                    if dzy2 + dx * dx <= r2:
                        out[k, j, i] = 1


def manders(a: np.ndarray, b: np.ndarray) -> float:
    """Manders overlap coefficient sum(ab) / sqrt(sum(a^2) sum(b^2)); NaN for an empty or all-zero selection."""
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def smoc_window(exp: np.ndarray, sim: np.ndarray, start, origin, voxel, window_xyz: np.ndarray,
                radius: float) -> float:
    """SMOCf of one residue: Manders overlap of ``exp`` and ``sim`` (same block, global start
    index ``start`` [z, y, x]) over voxels within ``radius`` (A) of the window atoms ``window_xyz`` (A).

    Only the sub-box around the window is touched, so the cost does not grow with the block.
    """
    origin = np.asarray(origin, np.float64)
    voxel = np.asarray(voxel, np.float64)
    start = np.asarray(start, np.int64)
    xyz = np.ascontiguousarray(window_xyz, dtype=np.float64)
    lo = np.ceil((xyz.min(axis=0) - radius - origin) / voxel).astype(np.int64)[::-1] - start
    hi = np.floor((xyz.max(axis=0) + radius - origin) / voxel).astype(np.int64)[::-1] - start + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, exp.shape)
    if np.any(hi <= lo):
        return float("nan")
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    mask = np.zeros(sub_shape, dtype=np.uint8)
    mark_spheres(sub_shape, start + lo, origin, voxel, xyz, float(radius), mask)
    sel = mask.view(bool)
    return manders(exp[sl][sel], sim[sl][sel])
