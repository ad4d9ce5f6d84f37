"""`reff-dask ensemble`: sample models from refined B-factors, minimise each with the ensemble and
density forces as independent tasks, average their simulated maps, grow until the CCC stops improving."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import gemmi
import numpy as np

from ..ensemble import (
    EnsembleSettings,
    ccc_box_mask,
    fit_to_map,
    grow_ensemble,
    make_member_inputs,
    member_map,
    relaxed_single,
    rmsf,
)
from ..errors import InputError
from ..gmm.mstep import uniform_sigma
from ..io.atomic import write_text
from ..io.maps import write_mrc
from ..io.models import updated_structure, widths_from_b, write_structure
from ..md.prepare import prepare_model
from .ensemble_plots import ensemble_plot
from .inputs import check_md_options, load_inputs
from .common import progress, write_json


_say = progress("ensemble")


def _progress(row: dict) -> None:
    _say(f"member {row['member'] + 1:3d}  CCC member {row['ccc_member']:.4f}  ensemble of {row['size']:3d} "
         f"{row['ccc_ensemble']:.4f}  ({row['member_seconds']:.1f} s, {row['rms_from_refined_A']:.2f} A from refined)")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and np.std(a) > 0 and np.std(b) > 0 else float("nan")


def residue_rmsf(st: gemmi.Structure, per_atom: np.ndarray, b: np.ndarray) -> list[dict]:
    """One row per residue with a CA atom: RMSF of the CA (A) and its refined B (A^2)."""
    rows = []
    i = 0
    for ch in st[0]:
        for res in ch:
            ca = None
            for at in res:
                if at.name == "CA" and at.element.name == "C" and ca is None:
                    ca = i
                i += 1
            if ca is not None:
                rows.append({"chain": ch.name, "seqnum": res.seqid.num, "icode": res.seqid.icode.strip(),
                             "resname": res.name, "rmsf_A": float(per_atom[ca]), "b_A2": float(b[ca])})
    return rows


def ensemble_structure(st: gemmi.Structure, xyz: np.ndarray) -> gemmi.Structure:
    """A multi-model structure: model k+1 is ``st``'s first model at positions ``xyz[k]``."""
    out = st.clone()
    while len(out) > 1:
        del out[len(out) - 1]
    models = [updated_structure(st, xyz=x)[0].clone() for x in xyz]
    del out[0]
    for k, mdl in enumerate(models):
        mdl.num = k + 1
        out.add_model(mdl)
    out.setup_entities()
    return out


def run(map_path: str, model_path: str, resolution: float, outdir: str, settings: EnsembleSettings,
        forcefield: str = "amber14", implicit: str | None = "default", chunks=64) -> dict:
    """Build the ensemble of ``model_path`` (a refined model: widths from its B column) in ``map_path``."""
    t_start = time.perf_counter()
    try:
        settings.check()
    except ValueError as e:
        raise InputError(model_path, f"bad ensemble settings: {e}") from None
    check_md_options(forcefield, implicit, settings.platform)
    inp = load_inputs(map_path, model_path, chunks, resolution)
    m, atoms, st = inp.map, inp.atoms, inp.structure
    sigma = widths_from_b(atoms.b_input, model_path)
    _say(f"map {m.grid.shape[::-1]} voxels in {m.data.npartitions} chunks; model {len(atoms)} atoms, "
         f"chains {atoms.chain_names}; model B {np.percentile(atoms.b_input, 5):.0f}-"
         f"{np.percentile(atoms.b_input, 95):.0f} A^2 (5-95%)")
    t0 = time.perf_counter()
    try:
        prepared = prepare_model(st, forcefield, implicit, resolution_A=resolution)
    except ValueError as e:
        raise InputError(model_path, f"cannot build the MD system ({e})") from None
    t_prepare = time.perf_counter() - t0
    _say(f"MD system: {prepared.n_particles} particles ({t_prepare:.1f} s); "
         f"{len(prepared.excluded)} residues kept fixed")
    member_inputs = make_member_inputs(prepared, m, atoms.xyz, sigma, settings,
                                       inp.map_stats["mean"], inp.map_stats["std"])
    s_u = uniform_sigma(resolution)
    single_u = member_map(m, atoms.xyz, atoms.weight, s_u)
    mask = (single_u > 0).persist()
    ccc_single_u = ccc_box_mask(m, single_u, mask)
    ccc_single_b = ccc_box_mask(m, member_map(m, atoms.xyz, atoms.weight, sigma), mask)
    _say(f"single model: CCC {ccc_single_u[0]:.4f} (uniform width {s_u:.2f} A), {ccc_single_b[0]:.4f} (its B)")

    control = relaxed_single(member_inputs)
    ccc_relaxed = ccc_box_mask(m, member_map(m, control.xyz, atoms.weight,
                                             s_u if settings.member_width == "resolution" else sigma), mask)
    _say(f"single model relaxed by the same protocol without perturbation: CCC {ccc_relaxed[0]:.4f} "
         f"({control.stats['seconds']:.1f} s)")
    result = grow_ensemble(m, member_inputs, atoms.weight, sigma, mask, progress=_progress)
    n = result.size
    xyz = result.xyz()
    per_atom = rmsf(xyz)
    mean_map = result.ensemble_sum / n
    scale, offset = fit_to_map(m, mean_map)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "ensemble_map.mrc", mean_map * scale + offset, m.grid)
    models = write_structure(ensemble_structure(st, xyz), out / "ensemble")
    rows = residue_rmsf(st, per_atom, atoms.b_input)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["chain", "seqnum", "icode", "resname", "rmsf_A", "b_A2"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(out / "rmsf.csv", buf.getvalue())
    r = np.array([row["rmsf_A"] for row in rows])
    b = np.array([row["b_A2"] for row in rows])
    ensemble_plot(result.history, {"single model, uniform width": ccc_single_u[0],
                                   "single model, its B-factors": ccc_single_b[0],
                                   "single model relaxed (no sampling)": ccc_relaxed[0]}, n, rows,
                  out / "ensemble.png", member_width=settings.member_width)
    report = {
        "command": "ensemble", "map": str(map_path), "model": str(model_path), "resolution": resolution,
        "atoms": len(atoms), "md_particles": prepared.n_particles, "forcefield": forcefield,
        "implicit": str(implicit), "kept_fixed": [e._asdict() for e in prepared.excluded],
        "ensemble_size": n, "members_evaluated": result.evaluated,
        "ccc_ensemble": result.ccc, "ccc_ensemble_mask": result.ccc_mask,
        "ccc_single_uniform": ccc_single_u[0], "ccc_single_uniform_mask": ccc_single_u[1],
        "ccc_single_model_b": ccc_single_b[0], "ccc_single_model_b_mask": ccc_single_b[1],
        "ccc_single_relaxed": ccc_relaxed[0], "ccc_single_relaxed_mask": ccc_relaxed[1],
        "single_relaxed_stats": control.stats,
        "ccc_members": [h["ccc_member"] for h in result.history[:n]],
        "ccc_definition": ("Pearson CCC with the experimental map over the whole box (as model_ccc / score's "
                           "ccc_box); _mask: over voxels within 4 sigma (uniform width) of the refined model's "
                           f"atoms. Member maps use {'the uniform width from the resolution' if settings.member_width == 'resolution' else 'the model B widths'}; "
                           "the ensemble map is their voxel-wise mean."),
        "ensemble_map_scale_offset": [scale, offset],
        "rmsf_vs_b_ca": {"residues": len(rows), "pearson": _pearson(r, b), "spearman": _spearman(r, b),
                         "rmsf_mean_A": float(r.mean()) if len(r) else None},
        "uniform_sigma_A": s_u,
        "history": result.history,
        "member_stats": [dict(member=mr.index, **mr.stats) for mr in result.members],
        "settings": settings.__dict__,
        "wall_seconds": {"total": time.perf_counter() - t_start, "prepare": t_prepare, **result.timing},
        "outputs": [p.name for p in models] + ["ensemble_map.mrc", "rmsf.csv", "ensemble.png", "report.json"],
    }
    write_json(out / "report.json", report)
    _say(f"ensemble of {n} (of {result.evaluated} made): CCC {result.ccc:.4f} vs single model "
         f"{ccc_single_u[0]:.4f} (uniform) / {ccc_single_b[0]:.4f} (its B) / {ccc_relaxed[0]:.4f} (relaxed); "
         "RMSF-B (CA) Pearson "
         f"{report['rmsf_vs_b_ca']['pearson']:.2f}; wrote {out}/")
    return report
