"""M-step: new widths, targets, mass scale and noise from E-step moments. Pure numpy."""

from __future__ import annotations

import numpy as np

from . import kernels as K

#: Width of the Gaussian used for CCC "with a uniform B from the resolution":
#: sigma = 0.225 x resolution (A), the convention of Chimera/ChimeraX molmap.
SIGMA_PER_RESOLUTION = 0.225


def uniform_sigma(resolution: float) -> float:
    """Per-axis Gaussian width (A) equivalent to a map resolution (A)."""
    return SIGMA_PER_RESOLUTION * resolution


def targets(mom: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """New centres x' (Eq. 6): the W-weighted mean voxel position; atoms with no weight stay put."""
    w = mom[:, K.M_W]
    shift = np.zeros_like(xyz)
    ok = w > 0
    shift[ok] = mom[ok, K.M_WX:K.M_WZ + 1] / w[ok, None]
    return xyz + shift


def widths(mom: np.ndarray, sigma: np.ndarray, sigma_min: float, sigma_max: float,
           residue: np.ndarray | None = None, kcut: float = K.KCUT) -> np.ndarray:
    """New per-axis widths sigma' (A) (Eq. 7): W-weighted second moment about the current
    centre, / 3 for three axes, corrected for the cut at ``kcut`` sigma, clipped to
    [sigma_min, sigma_max]. With ``residue`` (index per atom), the moments of a residue's
    atoms are pooled, so all its atoms get the residue's width (the paper's
    residue-averaged B). Atoms that see no density keep their width.
    """
    w = mom[:, K.M_W]
    wr2 = mom[:, K.M_WR2]
    if residue is not None:
        w_res = np.bincount(residue, weights=w)
        wr2_res = np.bincount(residue, weights=wr2)
        w, wr2 = w_res[residue], wr2_res[residue]
    new = sigma.copy()
    ok = w > 0
    new[ok] = np.sqrt(wr2[ok] / (3.0 * w[ok]) / K.truncation_factor(kcut))
    return np.clip(new, sigma_min, sigma_max)


def scale(mom: np.ndarray, current: float) -> float:
    """New mass scale: map mass explained by atoms over model mass (fixed point when Me = Ms)."""
    model_mass = mom[:, K.M_MASS].sum() / current
    return float(mom[:, K.M_W].sum() / model_mass) if model_mass > 0 else current


def initial_scale_noise(sums: np.ndarray) -> tuple[float, float]:
    """Least-squares fit Me+ ~ scale * S + E over the 4-sigma mask, from sums of a unit-scale pass.

    Falls back to E = 10% of the mean positive density when the fit is not positive.
    """
    n = sums[K.S_MASKN]
    s1, s2 = sums[K.S_MASK][2], sums[K.S_MASK][4]
    m1, sm = sums[K.S_POS], sums[K.S_POSY]
    det = n * s2 - s1 * s1
    a = (n * sm - s1 * m1) / det if det > 0 else 0.0
    e = (m1 - a * s1) / n if n else 0.0
    mean_m = m1 / n if n else 1.0
    if not (a > 0 and e > 0):
        e = 0.1 * mean_m
        a = max((m1 - e * n) / s1, 1e-12) if s1 > 0 else 1.0
    return float(a), float(e)
