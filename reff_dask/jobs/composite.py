"""`reff-dask composite`: responsibility-weighted composite of pre-aligned focused maps."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..bfactor import BFactorSettings
from ..composite import ComponentFit, assign_atoms, check_grids, composite, fit_component, focus_scales
from ..errors import InputError
from ..gmm.fit import model_ccc
from ..gmm.mstep import uniform_sigma
from ..io.maps import Map, check_map_values, check_resolution, is_url, local_path, map_stats, read_map
from ..io.models import atom_table, read_structure, sigma_to_b, widths_from_b
from .inputs import PERSIST_BYTES
from .outputs import write_maps
from .common import grid_dict, progress, write_json


_log = progress("composite")


def _expand(values: list, n: int, what: str) -> list:
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"give one {what} or one per map ({n}); got {len(values)}")
    return list(values)


def report_path(out: str | Path) -> Path:
    """The JSON report written beside the composite: ``OUT.json`` (a URL for a URL output)."""
    if is_url(out):
        s = str(out).rstrip("/")
        return s[:-len(".zarr")] + ".json" if s.endswith(".zarr") else s + ".json"
    return Path(local_path(out)).with_suffix(".json")


def check_model_b(model_paths: list[str], n_maps: int, use_model_b: bool) -> None:
    """``use_model_b`` takes each map's widths from its own model's B column: one model per map."""
    if use_model_b and len(set(model_paths)) == 1 and n_maps > 1:
        raise InputError(model_paths[0], "--use-model-b needs one model per map (-p once per -m), each with "
                                         "its B column refined against its own map")


def run(map_paths: list[str], model_paths: list[str], resolutions: list[float], out: str,
        settings: BFactorSettings, use_model_b: bool = False, allow_resample: bool = True,
        match_scale: bool = False, chunks=64) -> dict:
    """Build the composite of ``map_paths`` on the first map's grid and write it to ``out``
    (MRC, or a Zarr store when ``out`` ends in ``.zarr``) with a JSON report beside it.

    ``model_paths``: one consensus model, or one per map; ``resolutions``: one, or one per map.
    Per-atom widths per map come from the B-only stage (``settings``; resolution replaced per
    map) or, with ``use_model_b``, from each map's own model's B column.
    """
    t0 = time.perf_counter()
    n = len(map_paths)
    if n < 1:
        raise ValueError("give at least one map")
    model_paths = _expand(list(model_paths), n, "model")
    resolutions = _expand(list(resolutions), n, "resolution")
    for path, r in zip(map_paths, resolutions):
        check_resolution(r, path)
    check_model_b(model_paths, n, use_model_b)
    maps: list[Map] = []
    for path in map_paths:
        m = read_map(path, chunks)
        check_map_values(m, map_stats(m))
        if m.data.nbytes <= PERSIST_BYTES // max(n, 1):
            m.data = m.data.persist()
        maps.append(m)
    grid = maps[0].grid
    check_grids(maps, grid, allow_resample)

    cache: dict[str, tuple] = {}
    atoms = []
    for path in model_paths:
        if path not in cache:
            st = read_structure(path)
            cache[path] = (st, atom_table(st, path))
        atoms.append(cache[path][1])
    for path, a in zip(model_paths, atoms):
        if len(a) != len(atoms[0]):
            raise InputError(path, f"has {len(a)} atoms but {model_paths[0]} has {len(atoms[0])}; per-map "
                                   "models must be the same model (same atoms, in the same order)")
    weight = atoms[0].weight

    fits: list[ComponentFit] = []
    for c, (m, a, r) in enumerate(zip(maps, atoms, resolutions)):
        if use_model_b:
            fit = fit_component(m, a.xyz, a.weight, a.residue, sigma=widths_from_b(a.b_input, model_paths[c]))
        else:
            fit = fit_component(m, a.xyz, a.weight, a.residue, settings=replace(settings, resolution=r))
        fits.append(fit)
        _log(f"map {c + 1}/{n} {Path(m.path).name}: {int(fit.inside.sum())} atoms inside, "
             f"median B {float(np.median(sigma_to_b(fit.sigma[fit.inside]))):.1f} A^2")
    share = assign_atoms(np.stack([f.sigma for f in fits]))
    if not share.any():
        raise InputError(model_paths[0], "no atom lies inside any map")
    scales = focus_scales(maps, fits, weight)
    comp = composite(maps, fits, weight, grid, maps[0].data.chunks, match_scale=match_scale, scales=scales)
    out = out if is_url(out) else Path(local_path(out))
    write_maps({out: comp}, grid, source="composite of " + ", ".join(Path(p).name for p in map_paths))

    xyz0 = atoms[0].xyz
    s_uniform = uniform_sigma(resolutions[0])
    result = read_map(out, chunks)
    inside0 = np.isfinite(fits[0].sigma)
    ccc_comp = model_ccc(result, xyz0, weight, s_uniform)[0]
    per_map = []
    unit0 = scales[0] * float(np.prod(grid.voxel_size))
    for c, (m, f) in enumerate(zip(maps, fits)):
        b_in = sigma_to_b(f.sigma[f.inside])
        won = share[c] > 0
        unit = scales[c] * float(np.prod(m.grid.voxel_size))
        per_map.append({
            "map": str(m.path), "model": str(model_paths[c]), "resolution": resolutions[c],
            "grid": grid_dict(m.grid),
            "resampled": not m.grid.same_as(grid),
            "atoms_inside": int(f.inside.sum()), "atoms_won": float(share[c].sum()),
            "median_b_inside_A2": float(np.median(b_in)),
            "median_b_won_A2": float(np.median(sigma_to_b(f.sigma[won]))) if won.any() else None,
            "scale": f.scale, "focus_scale": scales[c], "noise": f.noise,
            "intensity_factor": unit0 / unit if match_scale else 1.0,
            "model_ccc_uniform_b": model_ccc(m, f.xyz[f.inside], weight[f.inside], s_uniform)[0],
            "b_iterations": len(f.history or []),
        })
    report = {
        "command": "composite", "output": str(out), "maps": per_map,
        "grid": grid_dict(grid),
        "widths": "model B columns" if use_model_b else "B-only stage per map",
        "match_scale": match_scale,
        "atoms": len(weight), "atoms_in_no_map": int((share.sum(axis=0) == 0).sum()),
        "atoms_in_first_map": int(inside0.sum()),
        "model_ccc_uniform_b": ccc_comp, "uniform_sigma_A": s_uniform,
        "settings": None if use_model_b else settings.__dict__,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(report_path(out), report)
    _log(f"model CCC (uniform B): composite {ccc_comp:.4f}; maps "
         + ", ".join(f"{p['model_ccc_uniform_b']:.4f}" for p in per_map) + f"; wrote {out}")
    return report
