"""`reff-dask bfactor`: per-atom B-factor refinement at fixed positions."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..bfactor import BFactorSettings, refine_bfactors
from ..gmm import kernels as K
from ..gmm.blockwise import simulate
from ..gmm.fit import model_ccc
from ..gmm.mstep import uniform_sigma
from ..io.maps import write_mrc
from ..io.models import sigma_to_b, updated_structure, write_structure
from ..plots import bfactor_plot
from .inputs import atoms_at_cap, b_cap_warning, load_inputs
from .view import enclosing_level, write_view
from .common import grid_dict, progress, write_json


_say = progress("bfactor")


def _progress_of(settings: BFactorSettings):
    """Per-iteration progress: a bar with an ETA (an upper bound: a phase may end early) on a
    terminal, one line per iteration elsewhere."""
    total = settings.residue_iterations + settings.iterations

    def show(row: dict) -> None:
        detail = (f"({row['phase']:7s})  CCC {row['ccc']:.4f}  E {row['noise']:.4g}  median B {row['median_b']:6.1f} A^2")
        _say.bar("iteration", row["iteration"], total, detail, (total - row["iteration"]) * row["seconds"], "<=",
                 line=f"iteration {row['iteration']:3d} {detail}  ({row['seconds']:.2f} s)")

    return show


def run(map_path: str, model_path: str, resolution: float, outdir: str, settings: BFactorSettings,
        chunks=64) -> dict:
    """Run the B-only stage and write model (.pdb/.cif), simulated map, report.json and a plot into ``outdir``."""
    t0 = time.perf_counter()
    inp = load_inputs(map_path, model_path, chunks, resolution)
    m, atoms = inp.map, inp.atoms
    print(f"[bfactor] map {m.grid.shape[::-1]} voxels of {np.round(m.grid.voxel_size, 3).tolist()} A in "
          f"{m.data.npartitions} chunks; model {len(atoms)} atoms in {len(atoms.chain_names)} chains",
          file=sys.stderr, flush=True)
    s_uniform = uniform_sigma(resolution)
    ccc0, ccc0_mask = model_ccc(m, atoms.xyz, atoms.weight, s_uniform)
    result = refine_bfactors(m, atoms.xyz, atoms.weight, settings, residue=atoms.residue, progress=_progress_of(settings))
    sigma = result.state.sigma
    b = sigma_to_b(sigma)
    inside = np.all((atoms.xyz >= m.grid.origin) & (atoms.xyz <= m.grid.upper), axis=1)
    b_out = np.where(inside, b, atoms.b_input)  # atoms outside the map keep their input B
    cap = b_cap_warning(sigma, settings.sigma_max, inside)
    if cap:
        print(f"warning: {cap}", file=sys.stderr, flush=True)

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    models = write_structure(updated_structure(inp.structure, b_iso=b_out), out / "model_bfactor")
    sim = simulate(m.grid, m.data.chunks, atoms.xyz, sigma,
                   K.amplitudes(atoms.weight, sigma, m.grid.voxel_size, result.state.scale), result.state.noise)
    write_mrc(out / "simulated.mrc", sim, m.grid)
    bfactor_plot(result.history, b, out / "bfactor.png")
    view = write_view(out, map_path, enclosing_level(m, int(np.sum(~atoms.hydrogen))),
                      {"input": model_path, "bfactor": models[0]}, job="reff-dask bfactor")
    report = {
        "command": "bfactor",
        "map": str(map_path), "model": str(model_path), "resolution": resolution,
        "map_grid": grid_dict(m.grid),
        "map_stats": inp.map_stats,
        "atoms": len(atoms), "atoms_outside_map": inp.atoms_outside,
        "ccc_uniform_b": ccc0, "ccc_uniform_b_mask": ccc0_mask,
        "uniform_sigma_A": s_uniform, "uniform_b_A2": float(sigma_to_b(s_uniform)),
        "atoms_at_b_cap": atoms_at_cap(sigma, settings.sigma_max, inside),
        "ccc_refined_b": result.ccc, "ccc_refined_b_mask": result.ccc_mask,
        "scale": result.state.scale, "noise": result.state.noise,
        "b_percentiles_A2": dict(zip(["p5", "p25", "p50", "p75", "p95"],
                                     np.percentile(b, [5, 25, 50, 75, 95]).round(2).tolist())),
        "settings": settings.__dict__,
        "iterations": result.history,
        "outputs": [p.name for p in models] + ["simulated.mrc", "bfactor.png", "report.json"] + view,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(out / "report.json", report)
    print(f"[bfactor] CCC uniform B {ccc0:.4f} -> refined B {result.ccc:.4f}; wrote {out}/",
          file=sys.stderr, flush=True)
    return report
