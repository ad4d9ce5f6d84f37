"""Rigid-body fitting of groups of atoms by the same mixture model (EM with a rigid M-step).

The E-step is the blockwise one of the refinement (one Gaussian width for every atom); the
M-step for a rigid group is the responsibility-weighted superposition (Kabsch) of the group's
atoms onto their targets x' (each atom weighted by the density it is responsible for), so a
group moves as a whole where a per-atom well could only drag single atoms. Coarse to fine: the
width starts at that of a map of ``capture`` x the resolution (a wide basin that reaches a
group several A and tens of degrees away) and steps down to the resolution's own. Groups:
whole chains, or any labelling of the atoms (-1: held fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .gmm import kernels as K
from .gmm import mstep
from .gmm.blockwise import estep
from .gmm.fit import GMMState, initial_state
from .gmm.mstep import uniform_sigma
from .io.maps import Map


@dataclass
class RigidSettings:
    """resolution: of the map (A); capture: the first width is that of a map this many times
    coarser; levels: widths from there down to the resolution's, evenly spaced; iterations:
    at most this many E/M steps per level; tol_A: a level ends when no group moves more than
    this (rms over its atoms, A) in one step."""

    resolution: float
    capture: float = 3.0
    levels: int = 4
    iterations: int = 40
    tol_A: float = 0.01


@dataclass
class RigidResult:
    xyz: np.ndarray                       # moved positions of all atoms (A)
    rotation: dict[int, np.ndarray]       # group -> 3x3 rotation applied about the origin
    translation: dict[int, np.ndarray]    # group -> translation (A): x' = R x + t
    history: list[dict] = field(default_factory=list)


def weighted_kabsch(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising sum w |R x + t - y|^2 (x, y: (n, 3) A)."""
    w = np.asarray(w, float)
    ws = w.sum()
    if ws <= 0 or len(x) < 3:
        return np.eye(3), np.zeros(3)
    cx, cy = (w @ x) / ws, (w @ y) / ws
    h = ((x - cx) * w[:, None]).T @ (y - cy)
    u, _s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cy - r @ cx


def rotation_angle_deg(r: np.ndarray) -> float:
    """Angle (degrees) of a rotation matrix."""
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def _estep(m: Map, xyz: np.ndarray, weight: np.ndarray, state: GMMState):
    """E-step at the state's widths, and the scale and noise it implies updated in ``state``
    (widths held: a rigid M-step moves positions only). Returns the E-step and the targets (A)."""
    es = estep(m, xyz, state.sigma, K.amplitudes(weight, state.sigma, m.grid.voxel_size, state.scale), state.noise)
    state.scale = mstep.scale(es.moments, state.scale)
    state.noise = max(es.noise, 1e-12 * state.scale)
    return es, mstep.targets(es.moments, xyz)


def rigid_fit(m: Map, xyz: np.ndarray, weight: np.ndarray, groups: np.ndarray, settings: RigidSettings,
              progress=None) -> RigidResult:
    """Move each group of atoms (``groups``: label per atom, -1 = fixed) as a rigid body into map
    ``m`` by EM, coarse to fine (see the module doc). Atoms of every group and the fixed ones
    all take part in the E-step, so groups compete for density as in the refinement."""
    s = settings
    xyz = np.asarray(xyz, float).copy()
    labels = [int(g) for g in np.unique(groups) if g >= 0]
    rot = {g: np.eye(3) for g in labels}
    trans = {g: np.zeros(3) for g in labels}
    fine = uniform_sigma(s.resolution)
    widths = np.linspace(uniform_sigma(s.capture * s.resolution), fine, max(s.levels, 1))
    history = []
    for level, width in enumerate(widths):
        state = initial_state(m, xyz, weight, np.full(len(xyz), width))
        for it in range(s.iterations):
            es, targets = _estep(m, xyz, weight, state)
            w = es.moments[:, K.M_W]
            moved = {}
            for g in labels:
                sel = groups == g
                r, t = weighted_kabsch(xyz[sel], targets[sel], w[sel])
                new = xyz[sel] @ r.T + t
                moved[g] = float(np.sqrt(np.mean(np.sum((new - xyz[sel]) ** 2, axis=1))))
                xyz[sel] = new
                rot[g], trans[g] = r @ rot[g], r @ trans[g] + t
            row = {"level": level, "sigma_A": float(width), "iteration": it + 1, "ccc": float(es.ccc),
                   "max_group_move_A": max(moved.values(), default=0.0)}
            history.append(row)
            if progress:
                progress(row)
            if row["max_group_move_A"] < s.tol_A:
                break
    return RigidResult(xyz, rot, trans, history)
