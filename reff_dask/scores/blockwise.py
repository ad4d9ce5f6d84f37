"""Per-residue SMOCf and LoQFit over a chunked map with Dask, one task per map chunk.

Residues (of every model scored) are grouped by the map chunk that holds their centre
atom. Each group reads one slice of the map: the chunk grown by the halo its residues
need (the SMOCf fragment mask around the window atoms, and the LoQFit box around the
centre atom), clipped to the map. That slice is the only map data the task sees, so a
large map is never loaded whole. The task simulates the model map on the slice from every
atom whose Gaussian support reaches it (atoms found with
:func:`reff_dask.gmm.blocks.plan_blocks` on a radius of support + halo, then the
kernel skips those that miss), and scores each residue of the group. Every number
depends only on global voxel indices, so results do not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import dask
import numpy as np
from dask import delayed

from ..gmm import kernels as K
from ..gmm.blocks import block_starts, graph_key, plan_blocks
from ..io.maps import Map
from .loqfit import LoQFitGeometry, loqfit_box, loqfit_geometry
from .residues import ResidueTable
from .smoc import smoc_window


@dataclass(frozen=True)
class LocalParams:
    """Parameters of the local scores. Lengths in Angstrom."""

    resolution: float
    smoc_radius: float
    loqfit_diameter_factor: float = 5.0
    loqfit_cap: float = 18.0
    fsc_threshold: float = 0.5


@dataclass
class ModelSpec:
    """One model to score: atom table rows (x, y, z, sigma, amplitude) and its residues."""

    table: np.ndarray
    residues: ResidueTable


@dataclass
class LocalScores:
    """Per-residue SMOCf, LoQFit (A) and note, in the order of the model's ResidueTable."""

    smoc: np.ndarray
    loqfit: np.ndarray
    note: list[str]


@lru_cache(maxsize=8)
def _geometry(resolution: float, voxel: tuple, factor: float) -> LoQFitGeometry:
    return loqfit_geometry(resolution, voxel, factor)


def _window_bounds(xyz: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max (A) of the atom coordinates over each [start, stop) range of ``window``."""
    if len(window) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    padded = np.vstack([xyz, xyz[-1:]])  # lets stop == len(xyz) be a valid reduceat index
    idx = window.ravel()
    return np.minimum.reduceat(padded, idx)[::2], np.maximum.reduceat(padded, idx)[::2]


def residue_regions(m: Map, spec: ModelSpec, params: LocalParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre voxel [z, y, x], and [lo, hi) voxel bounds (clipped to the map) each residue needs."""
    g = m.grid
    o, h = np.asarray(g.origin), np.asarray(g.voxel_size)
    shape = np.asarray(g.shape)
    geom = _geometry(params.resolution, tuple(g.voxel_size), params.loqfit_diameter_factor)
    res = spec.residues
    centre = np.rint((res.centre - o) / h).astype(np.int64)[:, ::-1]
    lo = centre - geom.half_extent
    hi = lo + geom.box
    wmin, wmax = _window_bounds(spec.table[:, :3], res.window)
    r = params.smoc_radius
    lo = np.minimum(lo, np.ceil((wmin - r - o) / h).astype(np.int64)[:, ::-1])
    hi = np.maximum(hi, np.floor((wmax + r - o) / h).astype(np.int64)[:, ::-1] + 1)
    return centre, np.clip(lo, 0, shape), np.clip(hi, 0, shape)


def _score_group(exp, start, origin, voxel, params: LocalParams, models) -> list:
    """Score the residues of one group on one map slice ``exp`` starting at global voxel ``start``."""
    exp = np.ascontiguousarray(exp, dtype=np.float32)
    start = np.asarray(start, np.int64)
    origin_a, voxel_a = np.asarray(origin, float), np.asarray(voxel, float)
    geom = _geometry(params.resolution, tuple(voxel), params.loqfit_diameter_factor)
    stop = start + np.array(exp.shape)
    out = []
    for table, atom_idx, res_ids, centre_vox, windows in models:
        sim = K.density_block(exp.shape, start, origin, voxel, table[atom_idx])
        smoc = np.full(len(res_ids), np.nan)
        loq = np.full(len(res_ids), np.nan)
        notes = [""] * len(res_ids)
        for n in range(len(res_ids)):
            w0, w1 = windows[n]
            smoc[n] = smoc_window(exp, sim, start, origin_a, voxel_a, table[w0:w1, :3], params.smoc_radius)
            b0 = centre_vox[n] - geom.half_extent  # global [z, y, x] of box voxel 0
            lo, hi = np.maximum(b0, start), np.minimum(b0 + geom.box, stop)
            if np.any(hi <= lo):
                notes[n] = "outside_map"
                continue
            src = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
            dst = tuple(slice(int(a - c), int(b - c)) for a, b, c in zip(lo, hi, b0))
            if np.all(lo == b0) and np.all(hi == b0 + geom.box):
                ebox, sbox, inside = exp[src], sim[src], None
            else:  # box runs off the map: pad, and weight only voxels inside
                ebox = np.zeros((geom.box,) * 3, np.float32)
                sbox = np.zeros((geom.box,) * 3, np.float32)
                inside = np.zeros((geom.box,) * 3, bool)
                ebox[dst], sbox[dst], inside[dst] = exp[src], sim[src], True
            loq[n], notes[n] = loqfit_box(ebox, sbox, inside, geom, params.fsc_threshold, params.loqfit_cap)
        out.append((res_ids, smoc, loq, notes))
    return out


def score_local(m: Map, specs: list[ModelSpec], params: LocalParams) -> list[LocalScores]:
    """SMOCf and LoQFit of every residue of every model in ``specs``, blockwise over ``m``'s chunks."""
    g = m.grid
    chunks = m.data.chunks
    starts = block_starts(chunks)
    nb = [len(c) for c in chunks]
    ends = [s + np.array(c) for s, c in zip(starts, chunks)]
    per_model = []
    groups: dict[int, list] = {}
    for mi, spec in enumerate(specs):
        centre, lo, hi = residue_regions(m, spec, params)
        cv = np.clip(centre, 0, np.asarray(g.shape) - 1)
        bidx = np.column_stack([np.searchsorted(starts[a], cv[:, a], side="right") - 1 for a in range(3)])
        block = (bidx[:, 0] * nb[1] + bidx[:, 1]) * nb[2] + bidx[:, 2]
        per_model.append((centre, lo, hi, bidx, block))
        for b in np.unique(block):
            groups.setdefault(int(b), [])
    # halo (A) beyond a chunk that any group needs: sets the atom search radius
    halo_vox = 0
    for centre, lo, hi, bidx, block in per_model:
        cs = np.column_stack([starts[a][bidx[:, a]] for a in range(3)])
        ce = np.column_stack([ends[a][bidx[:, a]] for a in range(3)])
        if len(cs):
            halo_vox = max(halo_vox, int(np.max(np.maximum(cs - lo, hi - ce))))
    halo = (halo_vox + 1) * max(g.voxel_size)
    shared, plans = [], []
    for spec in specs:
        shared.append(graph_key(np.ascontiguousarray(spec.table)))
        plans.append(plan_blocks(g, chunks, spec.table[:, :3], K.KCUT * spec.table[:, 3] + halo))
    tasks, keys = [], []
    for b in sorted(groups):
        region_lo = np.asarray(g.shape, dtype=np.int64)
        region_hi = np.zeros(3, dtype=np.int64)
        models = []
        for mi, spec in enumerate(specs):
            centre, lo, hi, bidx, block = per_model[mi]
            ids = np.nonzero(block == b)[0]
            if len(ids):
                region_lo = np.minimum(region_lo, lo[ids].min(axis=0))
                region_hi = np.maximum(region_hi, hi[ids].max(axis=0))
            models.append((shared[mi], plans[mi][b], ids, centre[ids], spec.residues.window[ids]))
        region_lo = np.minimum(region_lo, np.asarray(g.shape) - 1)
        region_hi = np.maximum(region_hi, region_lo + 1)  # residues wholly outside the map: a 1-voxel slice
        sl = tuple(slice(int(a), int(c)) for a, c in zip(region_lo, region_hi))
        tasks.append(delayed(_score_group, pure=True)(m.data[sl], region_lo, g.origin, g.voxel_size, params,
                                                      models))
        keys.append(b)
    results = dask.compute(*tasks)
    out = [LocalScores(np.full(len(s.residues), np.nan), np.full(len(s.residues), np.nan),
                       [""] * len(s.residues)) for s in specs]
    for res in results:
        for mi, (ids, smoc, loq, notes) in enumerate(res):
            out[mi].smoc[ids] = smoc
            out[mi].loqfit[ids] = loq
            for i, note in zip(ids, notes):
                out[mi].note[i] = note
    return out
