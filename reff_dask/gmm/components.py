"""Per-component densities and responsibilities on one block (numba + numpy; no Dask, no I/O).

A *component* is a group of atoms (a chain for segmentation, a focused map's share of the
model for composite maps). With the convention of :mod:`reff_dask.gmm.kernels` (atom i is
a normalised isotropic Gaussian of per-axis width sigma_i, Angstrom, cut at ``KCUT``
sigma), the density of component c on a voxel is ``M_c(v) = sum_{i in c} P_i(v)`` and its
responsibility is ``gamma_c(v) = M_c(v) / (sum_c M_c(v) + E)`` with E the uniform noise
term (map units). The noise share ``E / Ms`` makes up the rest, so the gammas of a voxel
sum to at most 1.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .kernels import KCUT, _span


@numba.njit(cache=True, nogil=True)
def component_density(shape, start, origin, voxel, xyz, sigma, amp, comp, kcut, out):
    """Add atom a's truncated Gaussian into ``out[comp[a]]`` (float32 ``[c, z, y, x]``).

    Same geometry as :func:`reff_dask.gmm.kernels.density`: ``start`` is the block's global
    (z, y, x) index, ``origin``/``voxel`` are (x, y, z) in Angstrom; ``amp`` is the peak
    density per voxel (map units); atoms are added in the order given, so every chunking
    that passes atoms in ascending index order gives bitwise the same sums.
    """
    nz, ny, nx = shape
    for a in range(xyz.shape[0]):
        c = comp[a]
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
                        out[c, k, j, i] += am * math.exp(-d2 * inv)


def component_block(shape, start, origin, voxel, atoms: np.ndarray, comp: np.ndarray, n_comp: int,
                    kcut: float = KCUT) -> np.ndarray:
    """Densities of ``n_comp`` components on one block: float32 ``[n_comp, z, y, x]``.

    ``atoms`` is an (n, 5) table x, y, z (A), sigma (A), amplitude (map units per voxel);
    ``comp`` (n,) the component index 0..n_comp-1 of each row.
    """
    shape = tuple(int(s) for s in shape)
    out = np.zeros((int(n_comp),) + shape, dtype=np.float32)
    if len(atoms):
        component_density(shape, np.asarray(start, dtype=np.int64), np.asarray(origin, np.float64),
                          np.asarray(voxel, np.float64), np.ascontiguousarray(atoms[:, :3], dtype=np.float64),
                          np.ascontiguousarray(atoms[:, 3], dtype=np.float64),
                          np.ascontiguousarray(atoms[:, 4], dtype=np.float64),
                          np.ascontiguousarray(comp, dtype=np.int64), kcut, out)
    return out


def responsibilities(dens: np.ndarray, noise: float) -> np.ndarray:
    """Responsibilities ``[n_comp + 1, z, y, x]`` (float32) from component densities ``[n_comp, z, y, x]``.

    Row c < n_comp is gamma_c = M_c / (sum M + E); the last row is the noise share E / Ms.
    A voxel with no density and E = 0 is all noise (share 1), so every voxel's rows sum to 1.
    """
    dens = np.asarray(dens, dtype=np.float32)
    ms = dens.sum(axis=0, dtype=np.float64) + float(noise)
    out = np.empty((dens.shape[0] + 1,) + dens.shape[1:], dtype=np.float32)
    empty = ms <= 0
    inv = 1.0 / np.where(empty, 1.0, ms)
    out[:-1] = dens * inv
    out[-1] = np.where(empty, 1.0, float(noise) * inv)
    return out


def labels(gamma: np.ndarray, threshold: float) -> np.ndarray:
    """Label per voxel: 1 + index of the component with the largest responsibility when that
    responsibility exceeds ``threshold``, else 0 (background / noise). ``gamma`` is
    ``[n_comp (+ noise row), z, y, x]``; pass only the component rows."""
    if gamma.shape[0] == 0:
        return np.zeros(gamma.shape[1:], dtype=np.int32)
    best = np.argmax(gamma, axis=0)
    top = np.take_along_axis(gamma, best[None], axis=0)[0]
    return np.where(top > threshold, best + 1, 0).astype(np.int32)
