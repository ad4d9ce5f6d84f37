"""B-factor refinement with positions fixed (the paper's B-only stage), and blockwise CCC."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .gmm import kernels as K
from .gmm import mstep
from .gmm.blockwise import estep
from .io.maps import Map


@dataclass
class BFactorSettings:
    """Settings of the B-only stage. Widths are per-axis Gaussian sigma in Angstrom (B = 8 pi^2 sigma^2).

    The stage runs ``residue_iterations`` with moments pooled per residue (the paper's
    residue-averaged B; unique answer whatever the start), then ``iterations`` per atom
    from there, unless ``residue_average`` keeps the pooling to the end. Per-atom EM
    from an arbitrary start has several optima (see DESIGN notes in README), which the
    pooled phase removes.

    sigma_max: cap on sigma (paper: 2.5, 1.5 for membrane proteins).
    sigma_min: floor on sigma; None means half the largest voxel edge (narrower
      Gaussians are not resolved by the grid).
    tol: a phase ends early when 99% of widths change by less than this fraction.
    """

    resolution: float
    iterations: int = 25
    residue_iterations: int = 100
    sigma_max: float = 2.5
    sigma_min: float | None = None
    residue_average: bool = False
    tol: float = 1e-3


@dataclass
class GMMState:
    """Mixture parameters: widths (A), mass scale (map units per unit Z) and noise term E (map units)."""

    sigma: np.ndarray
    scale: float
    noise: float


@dataclass
class BFactorResult:
    state: GMMState
    history: list[dict] = field(default_factory=list)
    ccc: float = float("nan")
    ccc_mask: float = float("nan")


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


def refine_bfactors(m: Map, xyz: np.ndarray, weight: np.ndarray, settings: BFactorSettings,
                    residue: np.ndarray, state: GMMState | None = None,
                    progress: Callable[[dict], None] | None = None) -> BFactorResult:
    """Refine per-atom widths at fixed positions by the E/M updates (Eq. 1-9).

    ``residue`` is the residue index per atom (for the pooled phase). ``state``
    overrides the start (default: uniform width from the resolution, fitted scale and
    noise). ``progress`` gets one dict per iteration.
    """
    sigma_min = settings.sigma_min if settings.sigma_min is not None else 0.5 * max(m.grid.voxel_size)
    if state is None:
        s0 = np.full(len(xyz), np.clip(mstep.uniform_sigma(settings.resolution), sigma_min, settings.sigma_max))
        state = initial_state(m, xyz, weight, s0)
    phases = [("residue", settings.residue_iterations, residue),
              ("residue" if settings.residue_average else "atom", settings.iterations,
               residue if settings.residue_average else None)]
    history = []
    for phase, n_iter, pool in phases:
        for _ in range(n_iter):
            t0 = time.perf_counter()
            new, es, _ = em_iteration(m, xyz, weight, state, sigma_min, settings.sigma_max, pool)
            change = float(np.percentile(np.abs(new.sigma - state.sigma) / state.sigma, 99))
            row = {"iteration": len(history) + 1, "phase": phase, "ccc": es.ccc, "ccc_mask": es.ccc_mask,
                   "noise": state.noise, "scale": state.scale,
                   "median_b": float(np.median(8 * np.pi**2 * state.sigma**2)),
                   "p99_rel_change": change, "seconds": time.perf_counter() - t0}
            history.append(row)
            if progress:
                progress(row)
            state = new
            if change < settings.tol:
                break
    ccc, ccc_mask = model_ccc(m, xyz, weight, state.sigma)
    return BFactorResult(state, history, ccc, ccc_mask)
