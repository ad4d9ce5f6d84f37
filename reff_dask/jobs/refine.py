"""`reff-dask refine`: B-only stage, then GMM-guided MD position refinement, final minimisation."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import checkpoint
from ..bfactor import BFactorSettings, refine_bfactors
from ..gmm.fit import GMMState, model_ccc
from ..gmm.mstep import uniform_sigma
from ..io.models import atom_table, sigma_to_b, updated_structure, write_structure
from ..md.prepare import prepare_model
from ..md.simulate import choose_platform
from ..plots import refine_plot
from ..refine import RefineSettings, md_groups, minimise, refine_positions
from ..scores import ScoreSettings, score_models
from ..validation import geometry_changes, validate_geometry
from .inputs import b_cap_warning, check_md_options, load_inputs
from .score import write_outputs
from .common import progress, write_json
from .rigid import bond_lengths, run_rigid
from .view import enclosing_level, write_view


_say = progress("refine")


class _StageProgress:
    """Per-step progress of the refine job's stages with an ETA from the step times so far.

    B stage and final stage: at most a known number of steps (ETA an upper bound). MD stage: it
    stops ``patience`` iterations after the last CCC gain of ``min_improvement``, so what is left
    is at least those iterations (ETA a lower bound)."""

    def __init__(self, settings: RefineSettings, b_steps: int):
        self.s, self.b_steps = settings, b_steps
        self.md_seconds: list[float] = []

    def bstage(self, r: dict) -> None:
        left = (self.b_steps - r["iteration"]) * r["seconds"]
        _say.bar("B stage", r["iteration"], self.b_steps, f"CCC {r['ccc']:.4f}", left, "<=",
                 line=f"B stage iteration {r['iteration']:3d}  CCC {r['ccc']:.4f}")

    def md(self, row: dict) -> None:
        it, s, best_it = row["iteration"], self.s, row["best_iteration"]
        self.md_seconds.append(row["gmm_seconds"] + row["md_seconds"])
        left = max(min(best_it + s.patience, s.max_iterations) - it, 0) * float(np.mean(self.md_seconds))
        _say.bar("MD stage, EM iteration", it, None,
                 f"CCC {row['ccc']:.4f} (best {row['best_ccc']:.4f} at {best_it})  moved {row['shift_rms_A']:.2f} A rms",
                 left, ">=",
                 line=f"iteration {it:3d}  CCC {row['ccc']:.4f}  moved {row['shift_rms_A']:.2f} A rms  "
                      f"(GMM {row['gmm_seconds']:.1f} s, MD {row['md_seconds']:.1f} s)")
        for note in row.get("recoveries", []):
            _say(f"  MD recovered: {note}")

    def final(self, r: dict) -> None:
        left = (self.s.final_rounds - r["round"]) * r["seconds"]
        _say.bar("final stage, round", r["round"], self.s.final_rounds, f"moved {r['shift_rms_A']:.3f} A rms",
                 left, "<=", line=f"final round {r['round']:2d}: moved {r['shift_rms_A']:.3f} A rms "
                                  f"({r['seconds']:.1f} s)")


def _say_geometry(before, after) -> None:
    """Console lines: geometry of the start and refined model, overall and per chain."""
    cols = [("bond_rmsd_A", "bond RMSD", "%.4f"), ("angle_rmsd_deg", "angle RMSD", "%.2f"),
            ("twisted_peptides", "twisted peptides", "%d"), ("plane_outliers", "plane outliers", "%d"),
            ("chiral_outliers", "chirality", "%d"), ("clashes", "clashes", "%d")]
    _say("geometry against the CCP4 library (heavy atoms), start -> refined:")
    rows = [("all", before.overall, after.overall)]
    rows += [(c, b, after.per_chain[c]) for c, b in before.per_chain.items() if c in after.per_chain]
    for name, b, a in rows:
        _say(f"  {name:>4}: " + ", ".join(f"{label} {fmt % b[k]} -> {fmt % a[k]}" for k, label, fmt in cols))


def _n_workers() -> int:
    """Workers of the active Dask client; 1 without one (in-process, one MD task)."""
    try:
        from distributed import get_client

        return max(len(get_client().scheduler_info()["workers"]), 1)
    except (ImportError, ValueError):
        return 1


def _per_chain_rmsd(atoms, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d2 = np.sum((a - b) ** 2, axis=1)
    return {name: float(np.sqrt(d2[atoms.chain == i].mean())) for i, name in enumerate(atoms.chain_names)}


def run(map_path: str, model_path: str, resolution: float, outdir: str, settings: RefineSettings,
        bfactor_settings: BFactorSettings, forcefield: str = "amber14", implicit: str | None = "default",
        chunks=64, resume: bool = False, monlib: str | None = None, rigid: list[str] | None = None,
        convention: str = "reff") -> dict:
    """Refine ``model_path`` into ``map_path``; write the best-CCC model, report, plot, checkpoint.
    ``rigid``: first fit rigid bodies (["chains"], ["auto"] domains, or ``NAME=SELECTION`` groups;
    see :mod:`.rigid`). ``convention``: of the scores in the report ("reff" or "tempy", see
    :class:`reff_dask.scores.ScoreSettings`)."""
    t_start = time.perf_counter()
    out = Path(outdir)
    check_md_options(forcefield, implicit, settings.platform)
    if resume and not (out / checkpoint.NAME).exists():
        checkpoint.load(out, {})  # raises the clear "no checkpoint" error
    inp = load_inputs(map_path, model_path, chunks, resolution)
    m, atoms, st = inp.map, inp.atoms, inp.structure
    st_input, rigid_rows, hinges, t_rigid = st, [], [], 0.0
    if rigid:
        t0 = time.perf_counter()
        xyz, rigid_rows, _, hinges = run_rigid(m, st, atoms, resolution, rigid, model_path)
        st = updated_structure(st, xyz=xyz)
        atoms = atom_table(st, model_path)
        t_rigid = time.perf_counter() - t0
    _say(f"map {m.grid.shape[::-1]} voxels in {m.data.npartitions} chunks; model {len(atoms)} atoms, "
         f"chains {atoms.chain_names}")
    t0 = time.perf_counter()
    prepared = prepare_model(st, forcefield, implicit, monlib=monlib, resolution_A=resolution,
                             links_from=st_input if rigid else None)
    t_prepare = time.perf_counter() - t0
    if prepared.n_riders:
        _say(f"{prepared.n_riders} input atoms of simulated residues have no MD particle (5' phosphates, "
             "alternate conformations, atoms the templates lack): each follows its residue rigidly")
    if prepared.excluded:
        _say(f"kept fixed (no force-field parameters): {len(prepared.excluded)} residues, e.g. "
             + ", ".join(f"{e.chain}/{e.resname}{e.resnum}" for e in prepared.excluded[:6]))
    platform = choose_platform(settings.platform)[0].getName()
    groups = md_groups(prepared, settings.md_groups or _n_workers())
    _say(f"MD system: {prepared.n_particles} particles, chains {prepared.chains} ({t_prepare:.1f} s); "
         f"OpenMM platform {platform}; {len(groups)} MD task(s) per iteration: "
         + ", ".join("+".join((g,) if isinstance(g, str) else g) for g in groups))
    if implicit and platform == "CPU":
        _say("note: implicit solvent on the CPU platform costs ~50x the steps of vacuum (BENCHMARKS.md); "
             "on a machine without a GPU consider --implicit none or --preset fast")
    run_meta = {"map": str(Path(map_path).resolve()), "model": str(Path(model_path).resolve()),
                "forcefield": forcefield, "implicit": str(implicit)}
    b_hist: list[dict] = []
    stages = _StageProgress(settings, bfactor_settings.residue_iterations + bfactor_settings.iterations)
    t0 = time.perf_counter()
    if resume:
        state = GMMState(np.zeros(len(atoms)), 1.0, 1.0)  # replaced by the checkpoint's
        _say(f"resuming from {out / checkpoint.NAME}")
    else:
        b = refine_bfactors(m, atoms.xyz, atoms.weight, bfactor_settings, residue=atoms.residue,
                            progress=stages.bstage)
        state, b_hist = b.state, b.history
        inside = np.all((atoms.xyz >= m.grid.origin) & (atoms.xyz <= m.grid.upper), axis=1)
        cap = b_cap_warning(state.sigma, bfactor_settings.sigma_max, inside)
        if cap:
            _say(f"warning: {cap}")
    t_bstage = time.perf_counter() - t0
    result = refine_positions(m, atoms.xyz, atoms.weight, state, prepared, settings, outdir=out,
                              run_meta=run_meta, resume=resume, progress=stages.md)
    t0 = time.perf_counter()
    final_rounds: list[dict] = []
    what = (f"the whole model ({prepared.n_particles} particles)" if len(groups) == 1 else
            f"each of the {len(groups)} groups of chains, its neighbours fixed")
    _say(f"final stage: rounds of targets + minimisation of {what}, "
         f"until a round moves less than {settings.final_shift_A:g} A rms (at most {settings.final_rounds})")
    xyz_min = minimise(m, result, atoms.weight, prepared, settings, rounds=final_rounds,
                       progress=stages.final)
    ccc_min, _ = model_ccc(m, xyz_min, atoms.weight, uniform_sigma(resolution))
    t_min = time.perf_counter() - t0
    final_xyz, final_label, ccc_final = xyz_min, "best MD, minimised", ccc_min
    _say(f"CCC {result.ccc_start:.4f} -> {result.ccc_best:.4f} (best MD, iteration {result.best_iteration}), "
         f"{ccc_min:.4f} after the final stage ({len(final_rounds)} rounds of targets + "
         f"minimisation, last moved {final_rounds[-1]['shift_rms_A']:.3f} A rms)")

    # per-atom widths (B) at the final positions: the per-atom phase of the B stage from its widths
    b_settings = replace(bfactor_settings, residue_iterations=0)
    b_end = refine_bfactors(m, final_xyz, atoms.weight, b_settings, residue=atoms.residue, state=result.state)
    b_final = sigma_to_b(b_end.state.sigma)
    refined = updated_structure(st, xyz=final_xyz, b_iso=b_final)
    for h, d in zip(hinges, bond_lengths(hinges, final_xyz)):
        h["refined_A"] = d
    if hinges:
        worst = max(hinges, key=lambda h: h["refined_A"])
        _say(f"backbone links between rigid groups: longest {max(h['rigid_A'] for h in hinges):.2f} A after the "
             f"rigid stage, {worst['refined_A']:.2f} A refined ({worst['bond']})")
    geo_before, geo_after = validate_geometry(st_input, monlib), validate_geometry(refined, monlib)
    clashes_before, clashes_after = geo_before.overall["clashes"], geo_after.overall["clashes"]
    _say_geometry(geo_before, geo_after)
    models = write_structure(refined, out / "model_refined")
    t0 = time.perf_counter()
    table = score_models(m, {"start": st_input, "refined": refined}, resolution,
                         ScoreSettings(convention=convention))
    score_files = write_outputs(table, out)
    score_files += write_view(out, map_path, enclosing_level(m, int(np.sum(~atoms.hydrogen))),
                              {"start": model_path, "refined": models[0]}, table, job="reff-dask refine")
    scores = table.summary()
    t_scores = time.perf_counter() - t0
    for c, v in scores["chain_means"].items():
        _say(f"chain {c}: SMOCf {v['start']['smocf']:.3f} -> {v['refined']['smocf']:.3f}, "
             f"LoQFit {v['start']['loqfit']:.2f} -> {v['refined']['loqfit']:.2f} A (mean)")
    refine_plot(result.history, b_hist, out / "refine.png", result.ccc_start, ccc_final)
    report = {
        "command": "refine", "map": str(map_path), "model": str(model_path), "resolution": resolution,
        "atoms": len(atoms), "md_particles": prepared.n_particles, "chains_simulated": prepared.chains,
        "kept_fixed": [e._asdict() for e in prepared.excluded], "rigid_groups": rigid_rows,
        "rigid_hinges": hinges,
        "ccc_start": result.ccc_start, "ccc_best_md": result.ccc_best, "best_iteration": result.best_iteration,
        "ccc_minimised": ccc_min, "ccc_final": ccc_final, "final_model": final_label,
        "clashes_before": clashes_before, "clashes_after": clashes_after,
        "geometry": {"start": geo_before.as_dict(), "refined": geo_after.as_dict(),
                     "worse": geometry_changes(geo_before.overall, geo_after.overall)},
        "md_recoveries": [n for row in result.history for n in row.get("recoveries", [])],
        "riders": prepared.n_riders, "library_terms": prepared.library_terms,
        "rmsd_moved_per_chain_A": _per_chain_rmsd(atoms, inp.atoms.xyz, final_xyz),
        "scores_per_chain": scores["chain_means"], "scores": scores["model_means"],
        "bfactor_stage": b_hist, "iterations": result.history, "final_rounds": final_rounds,
        "openmm_platform": platform,
        "settings": {"refine": settings.__dict__, "bfactor": bfactor_settings.__dict__,
                     "forcefield": forcefield, "implicit": str(implicit)},
        "wall_seconds": {"total": time.perf_counter() - t_start, "rigid": t_rigid, "prepare": t_prepare,
                         "bfactor_stage": t_bstage,
                         "minimise": t_min, "scores": t_scores, **result.timing},
        "outputs": [p.name for p in models] + score_files + ["refine.png", "report.json", checkpoint.NAME],
    }
    write_json(out / "report.json", report)
    _say(f"wrote {out}/")
    return report

