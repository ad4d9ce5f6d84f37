"""Map-model FSC over the whole box, computed on chunked maps.

The 3-D Fourier transform of a chunked map is done as three 1-D transforms, rechunking between
them so each transformed axis is whole in every chunk (the usual transpose scheme of a
distributed FFT): a task holds one slab, never the whole map. Each chunk of the two transforms
then adds its coefficients' cross- and auto-power to shells of width 1 / (box edge) (A^-1;
the longest edge of the box sets the shell width), and the FSC is their ratio per shell:

    FSC(s) = sum Re(F1 conj F2) / sqrt(sum |F1|^2 sum |F2|^2)  over coefficients in shell s

The real-to-complex transform along x stores half the spectrum: coefficients strictly between
0 and the x Nyquist count twice (their Hermitian mirror). Shells run from 0 to the Nyquist of
the coarsest axis. Crossings (resolution in A where the FSC last falls below a threshold) use
:func:`reff_dask.scores.loqfit.crossing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from .loqfit import crossing

#: Thresholds reported: 0.5 (map vs model) and 0.143 (the half-map criterion).
THRESHOLDS = (0.5, 0.143)


@dataclass(frozen=True)
class FSCCurve:
    """FSC per shell; ``freq``: shell centres (1/A); ``n_coeff``: Fourier coefficients per shell."""

    freq: np.ndarray
    fsc: np.ndarray
    n_coeff: np.ndarray

    def resolution_at(self, threshold: float, cap: float = 50.0) -> float:
        """Resolution (A) where the FSC last falls below ``threshold`` (clamped to Nyquist / ``cap``)."""
        return crossing(self.fsc, self.freq, threshold, cap)[0]

    def as_dict(self) -> dict:
        return {"freq_per_A": self.freq.round(6).tolist(),
                "fsc": [None if not np.isfinite(v) else round(float(v), 5) for v in self.fsc],
                "coefficients": self.n_coeff.tolist(),
                **{f"resolution_at_{t:g}_A": self.resolution_at(t) for t in THRESHOLDS}}


def shells(shape: tuple[int, int, int], voxel_size) -> tuple[float, int]:
    """Shell width (1/A) and number of shells for a (z, y, x) box with voxel (x, y, z) A."""
    edges = np.asarray(shape[::-1], dtype=float) * np.asarray(voxel_size, dtype=float)
    width = 1.0 / float(edges.max())
    nyquist = float(min(0.5 / v for v in voxel_size))
    return width, int(np.floor(nyquist / width)) + 1


def _shell_sums(f1: np.ndarray, f2: np.ndarray, start: tuple[int, int, int], shape: tuple[int, int, int],
                voxel_size, width: float, n: int) -> np.ndarray:
    """(4, n) sums of one chunk of the transforms: Re(F1 conj F2), |F1|^2, |F2|^2, coefficients."""
    nz, ny, nx = shape
    kz = np.fft.fftfreq(nz)[start[0]:start[0] + f1.shape[0]] / voxel_size[2]
    ky = np.fft.fftfreq(ny)[start[1]:start[1] + f1.shape[1]] / voxel_size[1]
    ix = np.arange(start[2], start[2] + f1.shape[2])
    kx = ix / nx / voxel_size[0]
    k = np.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
    s = np.rint(k / width).astype(np.int64).ravel()
    mirror = np.where((ix > 0) & (2 * ix < nx), 2.0, 1.0)  # Hermitian pairs of the half spectrum
    w = np.broadcast_to(mirror, f1.shape).ravel()
    a, b = f1.ravel(), f2.ravel()
    out = np.zeros((4, n))
    keep = s < n
    s, w, a, b = s[keep], w[keep], a[keep], b[keep]
    out[0] = np.bincount(s, weights=w * (a.real * b.real + a.imag * b.imag), minlength=n)
    out[1] = np.bincount(s, weights=w * (a.real**2 + a.imag**2), minlength=n)
    out[2] = np.bincount(s, weights=w * (b.real**2 + b.imag**2), minlength=n)
    out[3] = np.bincount(s, weights=w, minlength=n)
    return out


def _fft3(x: da.Array) -> da.Array:
    """rfft along x, then fft along y and z, rechunking so each axis is whole when transformed."""
    f = da.fft.rfft(x.rechunk({2: -1}), axis=2)
    f = da.fft.fft(f.rechunk({1: -1}), axis=1)
    return da.fft.fft(f.rechunk({0: -1}), axis=0)


def map_fsc(a: da.Array | np.ndarray, b: da.Array | np.ndarray, voxel_size) -> FSCCurve:
    """FSC of two maps on the same (z, y, x) grid, voxel ``voxel_size`` (x, y, z) A; chunked
    (Dask) or not. Each map's mean is removed first (the box's DC term carries no shape; its
    shell is NaN)."""
    a, b = da.asarray(a).astype(np.float64), da.asarray(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"FSC of maps of different shapes {a.shape} and {b.shape}")
    shape = a.shape
    width, n = shells(shape, voxel_size)
    fa, fb = _fft3(a - a.mean()), _fft3(b - b.mean())
    fb = fb.rechunk(fa.chunks)
    parts = []
    offsets = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in fa.chunks]
    for idx in np.ndindex(*fa.numblocks):
        start = tuple(int(offsets[d][idx[d]]) for d in range(3))
        parts.append(dask.delayed(_shell_sums)(fa.blocks[idx], fb.blocks[idx], start, shape,
                                               tuple(voxel_size), width, n))
    total = np.sum(dask.compute(*parts), axis=0)
    den = np.sqrt(total[1] * total[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(den > 0, total[0] / den, np.nan)
    fsc[0] = np.nan  # the box mean, removed from both
    freq = np.arange(n) * width
    freq[0] = width / 2  # the DC shell: a finite "resolution" for crossing's bookkeeping
    return FSCCurve(freq, fsc, total[3].astype(np.int64))


def model_fsc(m, xyz: np.ndarray, weight: np.ndarray, resolution: float, half_maps: list | None = None
              ) -> dict[str, FSCCurve]:
    """FSC of the map (``"map"``) and of each half map (``"half1"``, ``"half2"``) with a model map of
    Gaussians of one width (0.225 x ``resolution`` A, mass ``weight``: the model map of the global
    CCC), and of the two half maps with each other (``"half1_half2"``). Half maps must be on the
    map's grid. ``m`` and the half maps are :class:`reff_dask.io.maps.Map`."""
    from ..errors import InputError
    from ..gmm import kernels as K
    from ..gmm.blockwise import simulate
    from ..gmm.mstep import uniform_sigma

    sig = np.full(len(xyz), uniform_sigma(resolution))
    model = simulate(m.grid, m.data.chunks, xyz, sig, K.amplitudes(weight, sig, m.grid.voxel_size, 1.0))
    out = {"map": map_fsc(m.data, model, m.grid.voxel_size)}
    halves = list(half_maps or [])
    for k, h in enumerate(halves):
        if not h.grid.same_as(m.grid):
            raise InputError(h.path, f"half map grid (shape {h.grid.shape}, voxel {h.grid.voxel_size} A, origin "
                                     f"{h.grid.origin} A) differs from the map's ({m.grid.shape}, "
                                     f"{m.grid.voxel_size} A, {m.grid.origin} A)")
        out[f"half{k + 1}"] = map_fsc(h.data, model, m.grid.voxel_size)
    if len(halves) == 2:
        out["half1_half2"] = map_fsc(halves[0].data, halves[1].data, m.grid.voxel_size)
    return out
