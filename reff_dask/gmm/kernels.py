"""Per-block Gaussian-mixture kernels (numba). Pure numerics: no Dask, no I/O.

Convention (fixed here, used everywhere): atom i is an isotropic Gaussian of per-axis
width sigma_i (Angstrom) carrying mass ``scale * w_i`` (w_i = Z_i x occupancy), so its
density per voxel is

    P_i(v) = scale * w_i * V / (2 pi sigma_i^2)^(3/2) * exp(-|v - x_i|^2 / (2 sigma_i^2))

with V the voxel volume (A^3); the sum of P_i over voxels is ``scale * w_i``. Standard
B = 8 pi^2 sigma^2. The Gaussian is cut at ``kcut * sigma_i`` (support); the width update
divides by the truncated-Gaussian factor :func:`truncation_factor` so that a map made of
such Gaussians is a fixed point of the E/M step.

Voxel ``[k, j, i]`` of a block starting at global index ``start = (k0, j0, i0)`` is at
``origin + ((i0 + i) * vx, (j0 + j) * vy, (k0 + k) * vz)``: positions are computed from
global indices so that every chunking gives the same numbers.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Support radius of each Gaussian, in units of its sigma. Also the "within 4 sigma of
#: atoms" mask of the noise update (paper, Eq. 9).
KCUT = 4.0

# columns of the per-atom moment table
M_MASS, M_W, M_WX, M_WY, M_WZ, M_WR2 = range(6)
N_MOMENTS = 6

# scalar sums returned by a block: background numerator and mask count, then
# (n, sum x, sum y, sum x^2, sum y^2, sum xy) over the whole block and over the mask,
# x = experimental map, y = model density; then the positive-part sums for the initial fit.
S_BG, S_MASKN = 0, 1
S_ALL = slice(2, 8)
S_MASK = slice(8, 14)
S_POS, S_POSY = 14, 15
N_SUMS = 16


def truncation_factor(k: float = KCUT) -> float:
    """E[r^2 | r < k] / 3 for a 3-D standard normal: the second moment kept by a cut at k sigma."""
    p3 = math.erf(k / math.sqrt(2)) - math.sqrt(2 / math.pi) * k * math.exp(-k * k / 2)
    p5 = math.erf(k / math.sqrt(2)) - math.sqrt(2 / math.pi) * math.exp(-k * k / 2) * (k + k**3 / 3)
    return p5 / p3


def amplitudes(weight: np.ndarray, sigma: np.ndarray, voxel_size, scale: float) -> np.ndarray:
    """Peak density per voxel of each atom's Gaussian (map units) for mass ``scale * weight``."""
    vol = float(np.prod(voxel_size))
    return scale * weight * vol / (2.0 * np.pi * sigma**2) ** 1.5


@numba.njit(cache=True, inline="always")
def _span(c, r, o, h, start, n):
    lo = int(math.ceil((c - r - o) / h)) - start
    hi = int(math.floor((c + r - o) / h)) - start
    if lo < 0:
        lo = 0
    if hi > n - 1:
        hi = n - 1
    return lo, hi


@numba.njit(cache=True, nogil=True)
def density(shape, start, origin, voxel, xyz, sigma, amp, kcut, out, mask):
    """Add each atom's truncated Gaussian into ``out`` (float64 [z,y,x]); set ``mask`` (uint8) on its support."""
    nz, ny, nx = shape
    for a in range(xyz.shape[0]):
        s = sigma[a]
        r = kcut * s
        r2 = r * r
        inv = 0.5 / (s * s)
        am = amp[a]
        ax, ay, az = xyz[a, 0], xyz[a, 1], xyz[a, 2]
        ilo, ihi = _span(ax, r, origin[0], voxel[0], start[2], nx)
        jlo, jhi = _span(ay, r, origin[1], voxel[1], start[1], ny)
        klo, khi = _span(az, r, origin[2], voxel[2], start[0], nz)
        for k in range(klo, khi + 1):
            dz = origin[2] + (start[0] + k) * voxel[2] - az
            dz2 = dz * dz
            for j in range(jlo, jhi + 1):
                dy = origin[1] + (start[1] + j) * voxel[1] - ay
                dzy2 = dz2 + dy * dy
                if dzy2 > r2:
                    continue
                for i in range(ilo, ihi + 1):
                    dx = origin[0] + (start[2] + i) * voxel[0] - ax
                    d2 = dzy2 + dx * dx
                    if d2 <= r2:
                        out[k, j, i] += am * math.exp(-d2 * inv)
                        mask[k, j, i] = 1


@numba.njit(cache=True, nogil=True)
def moments(block, ms, start, origin, voxel, xyz, sigma, amp, kcut, mom):
    """Accumulate per-atom responsibility-weighted moments over one block.

    ``block`` is the experimental map (negative values count as 0), ``ms`` the full
    simulated map (model + noise term) on the same block. For atom a, with
    W = Me * P_a / Ms and d = v - x_a (Angstrom), adds to ``mom[a]``:
    (sum P_a, sum W, sum W dx, sum W dy, sum W dz, sum W |d|^2).
    """
    nz, ny, nx = block.shape
    for a in range(xyz.shape[0]):
        s = sigma[a]
        r = kcut * s
        r2 = r * r
        inv = 0.5 / (s * s)
        am = amp[a]
        ax, ay, az = xyz[a, 0], xyz[a, 1], xyz[a, 2]
        ilo, ihi = _span(ax, r, origin[0], voxel[0], start[2], nx)
        jlo, jhi = _span(ay, r, origin[1], voxel[1], start[1], ny)
        klo, khi = _span(az, r, origin[2], voxel[2], start[0], nz)
        m0 = 0.0
        m1 = 0.0
        mx = 0.0
        my = 0.0
        mz = 0.0
        mr = 0.0
        for k in range(klo, khi + 1):
            dz = origin[2] + (start[0] + k) * voxel[2] - az
            dz2 = dz * dz
            for j in range(jlo, jhi + 1):
                dy = origin[1] + (start[1] + j) * voxel[1] - ay
                dzy2 = dz2 + dy * dy
                if dzy2 > r2:
                    continue
                for i in range(ilo, ihi + 1):
                    dx = origin[0] + (start[2] + i) * voxel[0] - ax
                    d2 = dzy2 + dx * dx
                    if d2 <= r2:
                        p = am * math.exp(-d2 * inv)
                        m0 += p
                        me = block[k, j, i]
                        if me > 0.0 and ms[k, j, i] > 0.0:  # ms = 0 only with E = 0 and zero-mass atoms
                            w = me * p / ms[k, j, i]
                            m1 += w
                            mx += w * dx
                            my += w * dy
                            mz += w * dz
                            mr += w * d2
        mom[a, 0] += m0
        mom[a, 1] += m1
        mom[a, 2] += mx
        mom[a, 3] += my
        mom[a, 4] += mz
        mom[a, 5] += mr


def pearson_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sums (n, sum x, sum y, sum x^2, sum y^2, sum xy) of paired values, for :func:`pearson`;
    sums of blocks add up to the sums of the whole."""
    return np.array([x.size, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])


def block_sums(block: np.ndarray, start, origin, voxel, atoms: np.ndarray, noise: float,
               kcut: float = KCUT, with_moments: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """E-step of one block: per-atom moments (or None) and the block's scalar sums.

    ``atoms`` is an (n, 5) array of x, y, z (A), sigma (A), amplitude (map units per voxel)
    for the atoms whose support can reach this block.
    """
    block = np.ascontiguousarray(block, dtype=np.float32)
    shape = block.shape
    start = np.asarray(start, dtype=np.int64)
    origin = np.asarray(origin, dtype=np.float64)
    voxel = np.asarray(voxel, dtype=np.float64)
    xyz = np.ascontiguousarray(atoms[:, :3])
    sigma = np.ascontiguousarray(atoms[:, 3])
    amp = np.ascontiguousarray(atoms[:, 4])
    dens = np.zeros(shape, dtype=np.float64)
    mask = np.zeros(shape, dtype=np.uint8)
    if len(atoms):
        density(shape, start, origin, voxel, xyz, sigma, amp, kcut, dens, mask)
    ms = dens + noise
    me = block.astype(np.float64)
    sums = np.zeros(N_SUMS)
    sel = mask.view(bool)
    pos = np.maximum(me[sel], 0.0)
    msel = ms[sel]
    sums[S_BG] = (pos * noise / np.where(msel > 0.0, msel, 1.0)).sum()  # ms = 0 only where E = 0
    sums[S_MASKN] = sel.sum()
    sums[S_ALL] = pearson_sums(me.ravel(), dens.ravel())
    sums[S_MASK] = pearson_sums(me[sel], dens[sel])
    sums[S_POS] = pos.sum()
    sums[S_POSY] = (pos * dens[sel]).sum()
    mom = None
    if with_moments:
        mom = np.zeros((len(atoms), N_MOMENTS))
        if len(atoms):
            moments(block, ms, start, origin, voxel, xyz, sigma, amp, kcut, mom)
    return mom, sums


def density_block(shape, start, origin, voxel, atoms: np.ndarray, kcut: float = KCUT) -> np.ndarray:
    """Model density (no noise term) on one block, float32 [z, y, x]."""
    dens = np.zeros(tuple(shape), dtype=np.float64)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    if len(atoms):
        density(tuple(shape), np.asarray(start, dtype=np.int64), np.asarray(origin, np.float64),
                np.asarray(voxel, np.float64), np.ascontiguousarray(atoms[:, :3]),
                np.ascontiguousarray(atoms[:, 3]), np.ascontiguousarray(atoms[:, 4]), kcut, dens, mask)
    return dens.astype(np.float32)


def pearson(s: np.ndarray) -> float:
    """Pearson correlation from sums (n, sum x, sum y, sum x^2, sum y^2, sum xy)."""
    n, sx, sy, sxx, syy, sxy = s
    if n < 2:
        return float("nan")
    cov = sxy - sx * sy / n
    vx = sxx - sx * sx / n
    vy = syy - sy * sy / n
    if vx <= 0 or vy <= 0:
        return float("nan")
    return float(cov / math.sqrt(vx * vy))
