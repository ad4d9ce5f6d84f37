"""`reff-dask segment`: split a map into per-chain (or per-selection) parts by Gaussian-mixture responsibilities."""

from __future__ import annotations

import re
import time
from pathlib import Path

import gemmi
import numpy as np

from ..bfactor import BFactorSettings, refine_bfactors
from ..errors import InputError
from ..gmm import kernels as K
from ..gmm.fit import initial_state
from ..io.models import sigma_to_b, widths_from_b
from ..segment import segment, segment_stats
from .inputs import load_inputs
from .outputs import write_maps
from .common import grid_dict, progress, write_json


_log = progress("segment")


def chain_file_names(names: list[str], prefix: str = "chain") -> list[str]:
    """One MRC file name per chain (or group), safe on case-insensitive file systems."""
    safe = [re.sub(r"[^A-Za-z0-9_-]", "_", n) or "_" for n in names]
    lower = [s.lower() for s in safe]
    return [f"{prefix}_{s}.mrc" if lower.count(s.lower()) == 1 else f"{prefix}_{s}_{k + 1}.mrc"
            for k, s in enumerate(safe)]


def selection_groups(structure: gemmi.Structure, groups: list[str], model_path: str
                     ) -> tuple[np.ndarray, list[str]]:
    """Component index per atom (package atom order) from ``NAME=SELECTION`` strings (gemmi
    selection syntax, e.g. ``alpha=/1/A,C`` or ``domain1=//A/1-80``); atoms no group selects
    form a last group "rest" (they still explain density). The first group that selects an
    atom wins."""
    st = structure.clone()
    n = 0
    for ch in st[0]:
        for res in ch:
            for at in res:
                at.serial = n
                n += 1
    comp = np.full(n, -1, dtype=np.int64)
    names = []
    for k, text in enumerate(groups):
        name, sep, expr = text.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise InputError(model_path, f"group {text!r}: write NAME=SELECTION, e.g. alpha=/1/A,C")
        try:
            sel = gemmi.Selection(expr.strip())
        except Exception as err:  # gemmi raises RuntimeError/ValueError on bad syntax
            raise InputError(model_path, f"group {name}: bad selection {expr!r} ({err})") from None
        hit = [at.serial for ch in sel.chains(st[0]) for res in sel.residues(ch) for at in sel.atoms(res)]
        if not hit:
            raise InputError(model_path, f"group {name}: selection {expr!r} selects no atom")
        hit = np.array(hit)
        comp[hit[comp[hit] < 0]] = k
        names.append(name.strip())
    if np.any(comp < 0):
        comp[comp < 0] = len(names)
        names.append("rest")
    return comp, names


def run(map_path: str, model_path: str, resolution: float, outdir: str, settings: BFactorSettings,
        groups: list[str] | None = None, use_model_b: bool = False, threshold: float = 0.5, chunks=64,
        keep_zarr: bool = False) -> dict:
    """Segment the map by chain, or by ``groups`` (``NAME=SELECTION``, see :func:`selection_groups`);
    write one masked map per component, ``labels.mrc`` and ``segment.json`` into ``outdir``.

    Widths come from the B-only stage (``settings``) or, with ``use_model_b``, from the
    model's B column (sigma = sqrt(B / 8 pi^2)), with scale and noise fitted either way.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold {threshold} must lie in [0, 1)")
    t0 = time.perf_counter()
    inp = load_inputs(map_path, model_path, chunks, resolution)
    m, atoms = inp.map, inp.atoms
    if groups:
        comp, names = selection_groups(inp.structure, groups, model_path)
        key, prefix = "group", "group"
    else:
        comp, names, key, prefix = atoms.chain, list(atoms.chain_names), "chain", "chain"
    _log(f"map {m.grid.shape[::-1]} voxels in {m.data.npartitions} chunks; model {len(atoms)} atoms in "
         f"{len(names)} {key}s")
    history = []
    if use_model_b:
        state = initial_state(m, atoms.xyz, atoms.weight, widths_from_b(atoms.b_input, model_path))
    else:
        res = refine_bfactors(m, atoms.xyz, atoms.weight, settings, residue=atoms.residue)
        state, history = res.state, res.history
        _log(f"B-only stage: {len(history)} iterations, CCC {res.ccc:.4f}")
    amp = K.amplitudes(atoms.weight, state.sigma, m.grid.voxel_size, state.scale)
    seg = segment(m, atoms.xyz, state.sigma, amp, comp, names, state.noise, threshold)

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = chain_file_names(names, prefix)
    targets = {out / f: seg.masked[k] for k, f in enumerate(files)}
    targets[out / "labels.mrc"] = seg.labels
    if keep_zarr:
        targets.update({(out / f).with_suffix(".zarr"): a for f, a in zip(list(files) + ["labels.mrc"],
                                                                          list(targets.values()))})
    stats = write_maps(targets, m.grid, extra=segment_stats(seg, m), source=Path(map_path).name)
    voxels, mass, total = stats["voxels"], stats["mass"], float(stats["total_mass"])
    vox_vol = float(np.prod(m.grid.voxel_size))
    chains = []
    for k, name in enumerate(names):
        sel = comp == k
        chains.append({key: name, "label": k + 1, "file": files[k], "atoms": int(sel.sum()),
                       "voxels_assigned": int(voxels[k + 1]), "volume_A3": float(voxels[k + 1] * vox_vol),
                       "map_mass_fraction": float(mass[k] / total) if total > 0 else 0.0,
                       "median_b_A2": float(np.median(sigma_to_b(state.sigma[sel]))) if sel.any() else None})
    report = {
        "command": "segment", "map": str(map_path), "model": str(model_path), "resolution": resolution,
        "by": key, "selections": groups or None, "threshold": threshold, "widths": "model B column" if use_model_b else "B-only stage",
        "map_grid": grid_dict(m.grid),
        "scale": state.scale, "noise": state.noise,
        f"{key}s": chains,
        "background": {"label": 0, "voxels": int(voxels[0]),
                       "noise_mass_fraction": float(mass[-1] / total) if total > 0 else 0.0},
        "mass_definition": "sum over voxels of max(map, 0) x responsibility, over the sum of max(map, 0)",
        "settings": None if use_model_b else settings.__dict__,
        "iterations": history,
        "outputs": sorted(p.name for p in targets) + ["segment.json"],
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(out / "segment.json", report)
    _log("; ".join(f"{c[key]}: {c['voxels_assigned']} voxels, {100 * c['map_mass_fraction']:.1f}% of mass"
                   for c in chains) + f"; wrote {out}/")
    return report
