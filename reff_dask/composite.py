"""Responsibility-weighted composite of pre-aligned focused maps (paper Eq. 11-13).

Each focused map c has its own Gaussian mixture fit of the consensus model: per-atom
widths sigma_{c,i} (Angstrom; B = 8 pi^2 sigma^2), mass scale s_c and noise E_c. Atom i
counts in component c only where c has its lowest width (ties share the weight evenly),
so each component keeps the region its map resolves best. On the output grid,

    M_c(v)    = sum_{i in c} w_i G(v; x_{c,i}, sigma_{c,i}) + E_c / (s_c V_c)   inside map c's box, else 0
    gamma_c   = M_c / sum_c M_c
    composite = sum_c gamma_c M_e,c

with G a normalised Gaussian (per A^3) and V_c map c's voxel volume (A^3): each M_c is map c's
fitted model divided by its own mass scale, so responsibilities depend on the widths and
the noise-to-signal level, not on the maps' arbitrary intensity units. Blockwise: per output
block, one task per component adds gamma-weighted terms into a running (numerator,
denominator) pair, so memory per task is a few blocks however many maps there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask import delayed

from . import resample
from .bfactor import BFactorSettings, refine_bfactors
from .errors import InputError
from .gmm import kernels as K
from .gmm.blocks import Block, assemble, graph_key, grid_blocks, plan_blocks
from .gmm.blockwise import estep
from .gmm.fit import initial_state
from .io.maps import Map, MapGrid
from .io.models import SIGMA_FLOOR

#: Widths within this relative difference count as a tie between components.
TIE_RTOL = 1e-6


@dataclass
class ComponentFit:
    """One focused map's mixture: xyz (N, 3) A; sigma (N,) A, ``inf`` for atoms outside the
    map's box; mass scale (map units per unit Z per voxel); noise E (map units); the map's grid."""

    xyz: np.ndarray
    sigma: np.ndarray
    scale: float
    noise: float
    grid: MapGrid
    history: list | None = None

    @property
    def inside(self) -> np.ndarray:
        return np.isfinite(self.sigma)


def atoms_inside(grid: MapGrid, xyz: np.ndarray) -> np.ndarray:
    """Bool (N,): atoms whose centre lies inside the map box (first to last voxel centre)."""
    lo = np.asarray(grid.origin) - 1e-6
    return np.all((xyz >= lo) & (xyz <= grid.upper + 1e-6), axis=1)


def fit_component(m: Map, xyz: np.ndarray, weight: np.ndarray, residue: np.ndarray,
                  settings: BFactorSettings | None = None, sigma: np.ndarray | None = None) -> ComponentFit:
    """Fit the mixture of one focused map with the atoms inside its box.

    With ``settings``: the B-only stage (:func:`refine_bfactors`). With ``sigma`` (A, per
    atom, e.g. from a model's refined B column): widths as given (floored at :data:`~reff_dask.io.models.SIGMA_FLOOR`) and
    only scale and noise fitted. Raises :class:`InputError` naming the map when no atom
    lies inside its box.
    """
    inside = atoms_inside(m.grid, xyz)
    if not inside.any():
        raise InputError(m.path, f"no atom of the model lies inside this map's box "
                                 f"({np.round(m.grid.origin, 1).tolist()} to {np.round(m.grid.upper, 1).tolist()} A); "
                                 "are the maps and model aligned?")
    xi, wi = xyz[inside], weight[inside]
    history = None
    if sigma is not None:
        state = initial_state(m, xi, wi, np.maximum(np.asarray(sigma, float)[inside], SIGMA_FLOOR))
    else:
        if settings is None:
            raise ValueError("give settings (refine B) or sigma (use the model's B)")
        res = refine_bfactors(m, xi, wi, settings, residue=residue[inside])
        state, history = res.state, res.history
    full = np.full(len(xyz), np.inf)
    full[inside] = state.sigma
    return ComponentFit(np.asarray(xyz, float), full, float(state.scale), float(state.noise), m.grid, history)


def assign_atoms(sigmas: np.ndarray, rtol: float = TIE_RTOL) -> np.ndarray:
    """Share (C, N) of each atom's weight in each component: 1 where the component has the
    atom's lowest width, split evenly among ties, 0 elsewhere (and 0 for an atom outside
    every map: all widths ``inf``)."""
    sigmas = np.asarray(sigmas, dtype=float)
    best = sigmas.min(axis=0)
    win = np.isfinite(sigmas) & (sigmas <= best * (1 + rtol))
    count = win.sum(axis=0)
    return np.where(win, 1.0 / np.maximum(count, 1), 0.0)


def check_grids(maps: list[Map], grid: MapGrid, allow_resample: bool = True) -> None:
    """Refuse maps that do not overlap ``grid`` or that need resampling when it is off."""
    for m in maps:
        if not resample.overlaps(m.grid, grid):
            raise InputError(m.path, f"map box {np.round(m.grid.origin, 2).tolist()} to "
                                     f"{np.round(m.grid.upper, 2).tolist()} A does not overlap the output grid "
                                     f"({np.round(grid.origin, 2).tolist()} to {np.round(grid.upper, 2).tolist()} A)")
        if not allow_resample and not m.grid.same_as(grid):
            raise InputError(m.path, f"grid (shape {m.grid.shape}, voxel {np.round(m.grid.voxel_size, 4).tolist()} A, "
                                     f"origin {np.round(m.grid.origin, 3).tolist()} A) differs from the output grid "
                                     f"(shape {grid.shape}, voxel {np.round(grid.voxel_size, 4).tolist()} A, origin "
                                     f"{np.round(grid.origin, 3).tolist()} A) and resampling is off")


def focus_scales(maps: list[Map], fits: list[ComponentFit], weight: np.ndarray) -> list[float]:
    """Mass scale of each map measured on the atoms it resolves best (its share of the model).

    The whole-model scale of a fit is low when part of the model sits in masked-out or
    missing density; restricted to the atoms a map wins, the scale measures the map's
    intensity units where it has signal. One E-step per map; falls back to the fit's scale
    for a map that wins no atom.
    """
    share = assign_atoms(np.stack([f.sigma for f in fits]))
    out = []
    for c, (m, f) in enumerate(zip(maps, fits)):
        inside = f.inside
        amp = K.amplitudes(weight[inside], f.sigma[inside], m.grid.voxel_size, f.scale)
        mom = estep(m, f.xyz[inside], f.sigma[inside], amp, f.noise).moments
        w = share[c, inside]
        model = (w * mom[:, K.M_MASS]).sum()
        out.append(float(f.scale * (w * mom[:, K.M_W]).sum() / model) if model > 0 else f.scale)
    return out


def composite(maps: list[Map], fits: list[ComponentFit], weight: np.ndarray, grid: MapGrid, chunks,
              match_scale: bool = False, scales: list[float] | None = None, kcut: float = K.KCUT) -> da.Array:
    """Lazy float32 composite on ``grid`` (Eq. 13). ``weight`` (N,): atomic number x occupancy.

    ``scales``: mass scale s_c of each map (default: each fit's own; :func:`focus_scales` is
    the robust choice). ``match_scale`` multiplies map c by (s_0 V_0) / (s_c V_c), bringing
    every map to the first map's intensity units before mixing (the paper sums the maps
    as they are).
    """
    if len(maps) != len(fits) or not maps:
        raise ValueError("one fit per map, at least one map")
    chunks = da.core.normalize_chunks(chunks, grid.shape)
    share = assign_atoms(np.stack([f.sigma for f in fits]))
    scales = [f.scale for f in fits] if scales is None else list(scales)
    unit = [s * float(np.prod(f.grid.voxel_size)) for s, f in zip(scales, fits)]
    rows, plans, noises, factors, me_blocks = [], [], [], [], []
    offset = 0
    for c, (m, f) in enumerate(zip(maps, fits)):
        sel = np.nonzero(share[c] > 0)[0]
        sigma = f.sigma[sel]
        amp = K.amplitudes(weight[sel] * share[c, sel], sigma, (1.0, 1.0, 1.0), 1.0)
        rows.append(np.column_stack([f.xyz[sel], sigma, amp]))
        plans.append([p + offset for p in plan_blocks(grid, chunks, f.xyz[sel], kcut * sigma)])
        offset += len(sel)
        noises.append(f.noise / unit[c])
        factors.append(unit[0] / unit[c] if match_scale else 1.0)
        me_blocks.append(resample.resampled(m, grid, chunks).to_delayed().ravel())
    table = graph_key(np.concatenate(rows).astype(np.float64))
    out = []
    for blk in grid_blocks(grid, chunks):
        acc = None
        for c, m in enumerate(maps):
            if resample.source_window(m.grid, grid, blk.start, blk.shape) is None:
                continue  # map c does not reach this block
            acc = delayed(_accumulate, pure=True)(acc, me_blocks[c][blk.number], table, plans[c][blk.number], blk,
                                                  grid, m.grid, noises[c], factors[c], kcut)
        if acc is None:
            out.append(da.zeros(blk.shape, dtype=np.float32, chunks=blk.shape))
        else:
            out.append(delayed(_finish, pure=True)(acc))
    return assemble(out, chunks, np.float32)


def _accumulate(acc, me, table, idx, blk: Block, grid: MapGrid, src: MapGrid, noise, factor, kcut):
    """Add component c's gamma-weighted terms: numerator += M_c Me_c, denominator += M_c."""
    shape = blk.shape
    cover = resample.coverage(src, grid, blk.start, shape)
    mc = K.density_block(shape, blk.start, blk.origin, blk.voxel, table[idx], kcut).astype(np.float64)
    mc += noise
    mc *= cover
    if acc is None:
        num, den = np.zeros(shape), np.zeros(shape)
    else:
        num, den = acc
    num += mc * (np.asarray(me, dtype=np.float64) * factor)
    den += mc
    return num, den


def _finish(acc) -> np.ndarray:
    num, den = acc
    out = np.zeros(num.shape, dtype=np.float32)
    np.divide(num, den, out=out, where=den > 0, casting="unsafe")
    return out


def plain_average(maps: list[Map], grid: MapGrid, chunks) -> da.Array:
    """Lazy average of the maps that cover each voxel of ``grid`` (the naive composite, for comparison)."""
    chunks = da.core.normalize_chunks(chunks, grid.shape)
    total = da.zeros(grid.shape, dtype=np.float32, chunks=chunks)
    count = da.zeros(grid.shape, dtype=np.float32, chunks=chunks)
    for m in maps:
        total = total + resample.resampled(m, grid, chunks)
        count = count + _lazy_coverage(m.grid, grid, chunks)
    return da.where(count > 0, total / da.maximum(count, 1), 0).astype(np.float32)


def _lazy_coverage(src: MapGrid, grid: MapGrid, chunks) -> da.Array:
    """Lazy float32 0/1 map: voxels of ``grid`` inside ``src``'s box."""

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        start = tuple(l0 for l0, _ in loc)
        shape = tuple(l1 - l0 for l0, l1 in loc)
        return resample.coverage(src, grid, start, shape).astype(np.float32)

    return da.map_blocks(block, chunks=chunks, dtype=np.float32)
