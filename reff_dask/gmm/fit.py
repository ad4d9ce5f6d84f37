"""The Gaussian-mixture EM engine (paper Eq. 1-9) at fixed positions: state, start, one E+M
step, and the model-map CCC. The B-only stage, position refinement, composites and scores
are built on it.

Widths are per-axis Gaussian sigma in Angstrom (B = 8 pi^2 sigma^2, :func:`reff_dask.io.models.sigma_to_b`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.maps import Map, MapGrid
from . import kernels as K
from . import mstep
from .blockwise import estep

__all__ = ["GMMState", "default_sigma_min", "em_iteration", "initial_state", "model_ccc"]


def default_sigma_min(grid: MapGrid) -> float:
    """The width floor (A) when none is given: half the largest voxel edge (narrower Gaussians are
    not resolved by the grid)."""
    return 0.5 * max(grid.voxel_size)


@dataclass
class GMMState:
    """Mixture parameters: widths (A), mass scale (map units per unit Z) and noise term E (map units)."""

    sigma: np.ndarray
    scale: float
    noise: float


def model_ccc(m: Map, xyz: np.ndarray, weight: np.ndarray, sigma: np.ndarray | float) -> tuple[float, float]:
    """CCC of the map with a model map of Gaussians of width ``sigma`` (A): over the box, and over the 4-sigma mask."""
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (len(xyz),)).copy()
    es = estep(m, xyz, sigma, K.amplitudes(weight, sigma, m.grid.voxel_size, 1.0), 0.0, with_moments=False)
    return es.ccc, es.ccc_mask


def initial_state(m: Map, xyz: np.ndarray, weight: np.ndarray, sigma: np.ndarray) -> GMMState:
    """Start the mixture at widths ``sigma`` with scale and noise fitted by least squares."""
    es = estep(m, xyz, sigma, K.amplitudes(weight, sigma, m.grid.voxel_size, 1.0), 0.0, with_moments=False)
    scale, noise = mstep.initial_scale_noise(es.sums)
    return GMMState(sigma.copy(), scale, noise)


def em_iteration(m: Map, xyz: np.ndarray, weight: np.ndarray, state: GMMState, sigma_min: float,
                 sigma_max: float, residue: np.ndarray | None = None):
    """One E+M step at fixed positions. Returns the new state, the E-step and the targets x' (A)."""
    amp = K.amplitudes(weight, state.sigma, m.grid.voxel_size, state.scale)
    es = estep(m, xyz, state.sigma, amp, state.noise)
    sigma = mstep.widths(es.moments, state.sigma, sigma_min, sigma_max, residue)
    new = GMMState(sigma, mstep.scale(es.moments, state.scale), max(es.noise, 1e-12 * state.scale))
    return new, es, mstep.targets(es.moments, xyz)


