"""LoQFit: local map-model FSC around each residue, reported as the resolution (A) where it drops to 0.5.

For a residue with centre atom at x (CA, or C1'/P for nucleotides), a box of ``box``
voxels is cut from the experimental and the simulated map around the voxel nearest x.
Both are multiplied by a soft-edged sphere centred on that voxel: 1 inside radius
R = ``diameter_factor`` x resolution / 2, a raised-cosine fall to 0 over a further width
W = max(2R / 3, 10 voxels) (the geometry of TEMPy's LoQFit), then, before masking,
each has its mask-weighted mean removed (so the mask outline itself carries no
correlation). The FSC is computed in shells of width 1 / (box x voxel) and the score is
the resolution 1/f where it falls below 0.5 after the highest-frequency shell still at or
above 0.5, linearly interpolated between that shell and the next (see :func:`crossing`).
Scores are clamped: at Nyquist (2 x voxel) when the FSC never falls below 0.5, and at
``cap`` (A) when no shell reaches 0.5 or the crossing lies beyond the cap; a note says which. Voxels of the box outside
the map have zero weight. Pure numpy, no Dask, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOTE_NONE, NOTE_NYQUIST, NOTE_CAP, NOTE_EMPTY = "", "loqfit_nyquist", "loqfit_cap", "no_density"

#: Default upper limit (A) on LoQFit scores (as in TEMPy).
DEFAULT_CAP = 18.0
#: Minimum soft-edge width in voxels.
MIN_EDGE_VOXELS = 10


def fft_size(n: int) -> int:
    """Smallest even integer >= n whose only prime factors are 2, 3 and 5."""
    m = max(2, int(n) + (int(n) % 2))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


@dataclass(frozen=True)
class LoQFitGeometry:
    """Box, mask and shells of the local FSC. Lengths in Angstrom; ``box`` in voxels (same on every axis)."""

    box: int
    radius: float
    edge: float
    voxel: tuple[float, float, float]
    shell: np.ndarray  # shell index of each rfftn coefficient, flattened [z, y, x//2+1]; n_shells beyond Nyquist
    n_shells: int      # shells 0 .. n_shells - 1, the last one at Nyquist
    freq: np.ndarray   # frequency (1/A) of each shell
    mask: np.ndarray   # soft sphere [z, y, x] centred on box voxel (box//2, box//2, box//2)

    @property
    def half_extent(self) -> int:
        """Voxels the box reaches either side of its centre voxel (the halo a residue needs)."""
        return self.box // 2

    @property
    def nyquist(self) -> float:
        """Finest resolution (A) the box can report: 2 x the coarsest voxel edge."""
        return 2.0 * max(self.voxel)


def loqfit_geometry(resolution: float, voxel_size, diameter_factor: float = 5.0) -> LoQFitGeometry:
    """Geometry for a map of ``resolution`` (A) with voxels ``voxel_size`` (A, x y z)."""
    voxel = tuple(float(v) for v in voxel_size)
    radius = 0.5 * diameter_factor * resolution
    edge = max(2.0 * radius / 3.0, MIN_EDGE_VOXELS * max(voxel))
    box = fft_size(math.ceil(2.0 * (radius + edge) / min(voxel)))
    hz, hy, hx = voxel[2], voxel[1], voxel[0]
    fz = np.fft.fftfreq(box)[:, None, None] / hz
    fy = np.fft.fftfreq(box)[None, :, None] / hy
    fx = np.fft.rfftfreq(box)[None, None, :] / hx
    df = 1.0 / (box * max(voxel))
    s = np.rint(np.sqrt(fz**2 + fy**2 + fx**2) / df).astype(np.int64)
    n_shells = box // 2 + 1
    s[s >= n_shells] = n_shells  # one spare bin for the corners, dropped
    mask = soft_sphere(box, voxel, radius, edge)
    return LoQFitGeometry(box, radius, edge, voxel, s.ravel(), n_shells, np.arange(n_shells) * df, mask)


def soft_sphere(box: int, voxel, radius: float, edge: float) -> np.ndarray:
    """Soft-edged sphere [z, y, x] on a ``box``^3 grid, centred on voxel box//2: 1 within
    ``radius`` (A), raised cosine to 0 at ``radius + edge``."""
    hx, hy, hz = voxel
    c = box // 2
    z = (np.arange(box)[:, None, None] - c) * hz
    y = (np.arange(box)[None, :, None] - c) * hy
    x = (np.arange(box)[None, None, :] - c) * hx
    r = np.sqrt(z * z + y * y + x * x)
    t = np.clip((r - radius) / edge, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def fsc_curve(a: np.ndarray, b: np.ndarray, geom: LoQFitGeometry) -> np.ndarray:
    """FSC per shell of two (already masked) boxes; NaN where a shell has no power."""
    fa, fb = np.fft.rfftn(a).ravel(), np.fft.rfftn(b).ravel()
    s = geom.shell
    n = geom.n_shells
    num = np.bincount(s, weights=fa.real * fb.real + fa.imag * fb.imag, minlength=n + 1)[:n]
    pa = np.bincount(s, weights=fa.real**2 + fa.imag**2, minlength=n + 1)[:n]
    pb = np.bincount(s, weights=fb.real**2 + fb.imag**2, minlength=n + 1)[:n]
    den = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def crossing(fsc: np.ndarray, freq: np.ndarray, threshold: float = 0.5,
             cap: float = DEFAULT_CAP) -> tuple[float, str]:
    """Resolution (A) where ``fsc`` crosses ``threshold`` for the last time (shells 1 up), with a clamp note.

    The crossing is taken after the highest-frequency shell still at or above the
    threshold (as TEMPy's LoQFit does), linearly interpolated in frequency between that
    shell and the next, so a dip at the lowest shells (the ~box-size envelope, e.g. a
    buried residue where the model map lacks the solvent contrast) does not end the
    search. Clamped to [Nyquist = 1/freq[-1], cap]: Nyquist when every shell is at or
    above the threshold, the cap when none is (or the crossing lies beyond the cap).
    """
    nyquist = 1.0 / freq[-1]
    above = np.nonzero(fsc[1:] >= threshold)[0] + 1  # NaN counts as below
    if len(above) == 0:
        return float(cap), NOTE_CAP
    s = int(above[-1])
    if s == len(fsc) - 1:
        return nyquist, NOTE_NYQUIST
    c0, c1 = fsc[s], fsc[s + 1]
    t = (c0 - threshold) / (c0 - c1) if np.isfinite(c1) and c0 > c1 else 1.0
    f = freq[s] + t * (freq[s + 1] - freq[s])
    if 1.0 / f > cap:
        return float(cap), NOTE_CAP
    return float(max(1.0 / f, nyquist)), NOTE_NONE


def loqfit_box(exp: np.ndarray, sim: np.ndarray, inside: np.ndarray | None, geom: LoQFitGeometry,
               threshold: float = 0.5, cap: float = DEFAULT_CAP) -> tuple[float, str]:
    """LoQFit (A) and note for one residue from ``box``^3 crops of the experimental and simulated
    map centred on the voxel nearest the residue's centre atom.

    ``inside`` (bool box, or None for all) marks voxels inside the map.
    """
    w = geom.mask if inside is None else geom.mask * inside
    sw = w.sum()
    if sw <= 0:
        return float("nan"), NOTE_EMPTY
    out = []
    for x in (exp, sim):
        x = x.astype(np.float64)
        if inside is not None:
            x[~inside] = 0.0
        out.append((x - (w * x).sum() / sw) * w)
    if not (np.any(out[0]) and np.any(out[1])):
        return float("nan"), NOTE_EMPTY
    return crossing(fsc_curve(out[0], out[1], geom), geom.freq, threshold, cap)
