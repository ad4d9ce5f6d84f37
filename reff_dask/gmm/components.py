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

import numpy as np

from .kernels import KCUT, density


def component_block(shape, start, origin, voxel, atoms: np.ndarray, comp: np.ndarray, n_comp: int,
                    kcut: float = KCUT) -> np.ndarray:
    """Densities of ``n_comp`` components on one block: float32 ``[n_comp, z, y, x]``.

    ``atoms`` is an (n, 5) table x, y, z (A), sigma (A), amplitude (map units per voxel);
    ``comp`` (n,) the component index 0..n_comp-1 of each row.
    """
    shape = tuple(int(s) for s in shape)
    out = np.zeros((int(n_comp),) + shape, dtype=np.float32)
    scratch = np.empty(shape, dtype=np.float64)
    mask = np.empty(shape, dtype=np.uint8)
    start = np.asarray(start, dtype=np.int64)
    origin, voxel = np.asarray(origin, np.float64), np.asarray(voxel, np.float64)
    comp = np.asarray(comp)
    for c in range(int(n_comp)):
        rows = atoms[comp == c]  # atoms added in the order given (kernels.density)
        if not len(rows):
            continue
        scratch[:] = 0.0
        density(shape, start, origin, voxel, np.ascontiguousarray(rows[:, :3], dtype=np.float64),
                np.ascontiguousarray(rows[:, 3], dtype=np.float64),
                np.ascontiguousarray(rows[:, 4], dtype=np.float64), kcut, scratch, mask)
        out[c] = scratch
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
