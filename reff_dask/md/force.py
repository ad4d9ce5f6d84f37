"""The GMM target force (paper Eq. 10 with a dimensionally sound width).

    E_i = k_gmm * (1 - exp(-|x_i - x'_i|^2 / (2 w_i^2)))

x'_i is the atom's target from the M-step and w_i its Gaussian width sigma_i
(the paper writes B_i^3 in the denominator, which is not a squared length;
using sigma_i^2 keeps the well as wide as the atom's density blob).  k_gmm is
the well depth in kJ/mol per atom; the largest pull, at |x - x'| = w, is
k_gmm * exp(-1/2) / w.  Public arguments are in Angstrom; the OpenMM force
stores nm.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import openmm

__all__ = [
    "DEFAULT_K_GMM",
    "default_k_gmm",
    "MIN_WIDTH_A",
    "GMM_ENERGY",
    "make_gmm_force",
    "set_gmm_targets",
    "set_k_gmm",
]

#: Default well depth, kJ/mol per atom.  Sweep on a 30-residue piece of 5NI1
#: chain A (w = 1 A, one 0.2 ps segment, `fast` and `paper` presets agree):
#: targets shifted rigidly by 1 A are followed to 0.2 A RMS for k >= 300
#: (k = 100 over-shoots to 1.25 A); with 0.5 A random noise on the targets the
#: heavy-atom bond-length RMS deviation is 0.026 A (k = 0), 0.03 (100),
#: 0.045 (300), 0.10 (1000) and k = 3000 blows up with 2 fs steps.  300 is the
#: largest value that keeps geometry sane: the well's stiffness at its centre,
#: k/w^2 = 3e4 kJ/mol/nm^2 at w = 1 A, is ~1/9 of a C-C bond's (2.6e5).
#: The paper's k = 1e5 belongs to its B^3 form and does not carry over.
DEFAULT_K_GMM: float = 300.0

def default_k_gmm(resolution_A: float | None) -> float:
    """Well depth (kJ/mol) for a map of ``resolution_A``: :data:`DEFAULT_K_GMM` at 3.5 A or better,
    falling as 3.5 / resolution beyond, where targets from blurred density are less sure and full
    depth wells bend the model. GroEL chains A+B at 7 A (x 1/2, 150): angle RMSD 1.79 deg (input
    1.47) -> 1.35, CCC 0.299 -> 0.293 (start 0.261, servalcat 0.292), no twisted peptide or
    clash either way (BENCHMARKS.md)."""
    if resolution_A is None:
        return DEFAULT_K_GMM
    return DEFAULT_K_GMM * min(1.0, 3.5 / float(resolution_A))


#: Widths are clipped below at this value (A) so a tiny sigma cannot make the
#: well arbitrarily stiff.
MIN_WIDTH_A: float = 0.3

#: Widths for atoms without a target (NaN): the well is so wide the force is ~0.
_OFF_WIDTH_NM = 1.0e3

GMM_ENERGY = "k_gmm*(1-exp(-((x-x0)^2+(y-y0)^2+(z-z0)^2)/(2*w^2)))"


def _params_nm(targets_A: np.ndarray, widths_A: np.ndarray) -> np.ndarray:
    """(n, 4) per-particle parameters x0, y0, z0, w in nm; NaN targets -> force off."""
    t = np.asarray(targets_A, dtype=float).reshape(-1, 3)
    w = np.broadcast_to(np.asarray(widths_A, dtype=float), (len(t),))
    out = np.empty((len(t), 4))
    out[:, :3] = t / 10.0
    out[:, 3] = np.maximum(w, MIN_WIDTH_A) / 10.0
    off = ~np.isfinite(t).all(axis=1) | ~np.isfinite(w)
    out[off, :3] = 0.0
    out[off, 3] = _OFF_WIDTH_NM
    return out


def make_gmm_force(
    particles: Sequence[int],
    targets_A: np.ndarray,
    widths_A: np.ndarray | float,
    k_gmm: float = DEFAULT_K_GMM,
    force_group: int = 0,
) -> openmm.CustomExternalForce:
    """A CustomExternalForce pulling ``particles`` towards ``targets_A``.

    Term ``j`` of the force acts on particle ``particles[j]`` with target
    ``targets_A[j]`` (A) and width ``widths_A[j]`` (A, clipped to
    :data:`MIN_WIDTH_A`).  ``k_gmm`` (kJ/mol) is the global parameter ``k_gmm``,
    changeable later with :func:`set_k_gmm`.
    """
    f = openmm.CustomExternalForce(GMM_ENERGY)
    f.addGlobalParameter("k_gmm", float(k_gmm))
    for name in ("x0", "y0", "z0", "w"):
        f.addPerParticleParameter(name)
    params = _params_nm(targets_A, widths_A)
    if len(params) != len(particles):
        raise ValueError("need one target per particle")
    for p, row in zip(particles, params):
        f.addParticle(int(p), [float(v) for v in row])
    f.setForceGroup(force_group)
    f.setName("GMMTargetForce")
    return f


def set_gmm_targets(
    force: openmm.CustomExternalForce,
    targets_A: np.ndarray,
    widths_A: np.ndarray | float,
    context: openmm.Context | None = None,
) -> None:
    """Replace every term's target (A) and width (A); push to ``context`` if given.

    Targets are in term order (the ``particles`` order given to
    :func:`make_gmm_force`).  NaN targets switch the term off.
    """
    params = _params_nm(targets_A, widths_A)
    if len(params) != force.getNumParticles():
        raise ValueError(f"{len(params)} targets for {force.getNumParticles()} terms")
    for j, row in enumerate(params):
        p, _ = force.getParticleParameters(j)
        force.setParticleParameters(j, p, [float(v) for v in row])
    if context is not None:
        force.updateParametersInContext(context)


def set_k_gmm(context: openmm.Context, k_gmm: float) -> None:
    """Change the well depth (kJ/mol) in a live Context."""
    context.setParameter("k_gmm", float(k_gmm))
