"""B-factor refinement with positions fixed (the paper's B-only stage), on the EM engine of
:mod:`reff_dask.gmm.fit`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .gmm import mstep
from .gmm.fit import GMMState, default_sigma_min, em_iteration, initial_state, model_ccc
from .io.maps import Map
from .io.models import sigma_to_b


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
class BFactorResult:
    state: GMMState
    history: list[dict] = field(default_factory=list)
    ccc: float = float("nan")
    ccc_mask: float = float("nan")


def refine_bfactors(m: Map, xyz: np.ndarray, weight: np.ndarray, settings: BFactorSettings,
                    residue: np.ndarray, state: GMMState | None = None,
                    progress: Callable[[dict], None] | None = None) -> BFactorResult:
    """Refine per-atom widths at fixed positions by the E/M updates (Eq. 1-9).

    ``residue`` is the residue index per atom (for the pooled phase). ``state``
    overrides the start (default: uniform width from the resolution, fitted scale and
    noise). ``progress`` gets one dict per iteration.
    """
    sigma_min = default_sigma_min(m.grid) if settings.sigma_min is None else settings.sigma_min
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
                   "median_b": float(np.median(sigma_to_b(state.sigma))),
                   "p99_rel_change": change, "seconds": time.perf_counter() - t0}
            history.append(row)
            if progress:
                progress(row)
            state = new
            if change < settings.tol:
                break
    ccc, ccc_mask = model_ccc(m, xyz, weight, state.sigma)
    return BFactorResult(state, history, ccc, ccc_mask)
