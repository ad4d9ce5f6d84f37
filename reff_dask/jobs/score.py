"""`reff-dask score`: global CCC, per-residue SMOCf and LoQFit of one or more models against a map."""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..io.atomic import write_text
from ..io.models import atom_table, check_in_box, model_labels, read_structure
from ..precheck import check_contour
from ..io.maps import read_map
from ..scores import ScoreSettings, ScoreTable, score_models
from ..scores.fsc import model_fsc
from .inputs import load_inputs
from .score_plots import chain_plot, fsc_plot
from .common import grid_dict, progress, write_json
from .view import enclosing_level, write_view


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _chain_rows(table: ScoreTable) -> list[dict]:
    rows = []
    for chain, per_model in table.chain_means().items():
        row: dict = {"chain": chain}
        for label, v in per_model.items():
            row[f"smocf_mean_{label}"] = v["smocf"] if np.isfinite(v["smocf"]) else None
            row[f"loqfit_mean_{label}"] = v["loqfit"] if np.isfinite(v["loqfit"]) else None
            row[f"residues_{label}"] = v["residues"]
        rows.append(row)
    return rows


def write_outputs(table: ScoreTable, outdir: str | Path) -> list[str]:
    """Write scores.csv, scores.json, chain_means.csv and one PNG per chain; return the file names."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "scores.csv", _csv(table.rows()))
    residues = [{"chain": c, "resnum": int(n), "icode": i, "resname": nm,
                 "scores": {label: {"smocf": _num(table.smoc[k, j]), "loqfit": _num(table.loqfit[k, j]),
                                    **({"qscore": _num(table.qscore[k, j])} if table.qscore is not None else {}),
                                    "note": table.note[k][j]} for j, label in enumerate(table.models)}}
                for k, (c, n, i, nm) in enumerate(zip(table.chain, table.seqnum, table.icode, table.name))]
    write_json(out / "scores.json", {"models": table.models, "resolution": table.resolution, "residues": residues})
    write_text(out / "chain_means.csv", _csv(_chain_rows(table)))
    names = ["scores.csv", "scores.json", "chain_means.csv"]
    for chain in table.chains():
        name = f"scores_chain_{re.sub(r'[^A-Za-z0-9_-]', '_', chain)}.png"
        if chain_plot(table, chain, out / name):
            names.append(name)
    return names


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def run(map_path: str, model_paths: list[str], resolution: float, outdir: str,
        settings: ScoreSettings | None = None, chunks=64, half_maps: list[str] | None = None) -> dict:
    """Score every model in ``model_paths`` against the map and write tables, plots and report.json to
    ``outdir``; with ``half_maps`` (two paths) the map-model FSC of each half too."""
    t0 = time.perf_counter()
    settings = settings or ScoreSettings()
    inp = load_inputs(map_path, model_paths[0], chunks, resolution)
    m = inp.map
    check_contour(m, inp.map_stats, settings.contour)
    structures = {}
    labels = model_labels(model_paths)
    atoms_outside = {}
    for label, path in zip(labels, model_paths):
        st = inp.structure if path == model_paths[0] else read_structure(path)
        atoms = inp.atoms if path == model_paths[0] else atom_table(st, path)
        atoms_outside[label] = check_in_box(atoms, np.asarray(m.grid.origin), m.grid.upper, path, map_path)
        structures[label] = st
    print(f"[score] map {m.grid.shape[::-1]} voxels in {m.data.npartitions} chunks; "
          f"{len(structures)} model(s): {', '.join(labels)}", file=sys.stderr, flush=True)
    table = score_models(m, structures, resolution, settings)
    files = write_outputs(table, outdir)
    halves = [read_map(p, chunks) for p in (half_maps or [])]
    fsc = {}
    for label, st in structures.items():
        atoms = atom_table(st, label)
        fsc[label] = model_fsc(m, atoms.xyz, atoms.weight, resolution, halves)
        line = ", ".join(f"{name} {c.resolution_at(0.5):.2f} A" for name, c in fsc[label].items()
                         if name != "half1_half2")
        progress("score")(f"{label}: map-model FSC = 0.5 at {line}")
    if "half1_half2" in fsc[labels[0]]:
        progress("score")(f"half maps: FSC = 0.143 at {fsc[labels[0]]['half1_half2'].resolution_at(0.143):.2f} A")
    fsc_plot(fsc, resolution, Path(outdir) / "fsc.png")
    files.append("fsc.png")
    heavy = int(np.sum(~inp.atoms.hydrogen))
    files += write_view(outdir, map_path, enclosing_level(m, heavy), dict(zip(labels, model_paths)), table,
                        job="reff-dask score")
    summary = table.summary()
    for label in labels:
        mm = summary["model_means"][label]
        cc = summary["ccc"][label]
        mask = f" (mask {cc['ccc_mask']:.4f})" if "ccc_mask" in cc else ""
        smoc = "SMOC (TEMPy)" if settings.convention == "tempy" else "SMOCf"
        print(f"[score] {label}: CCC {cc['ccc_box']:.4f}{mask}; {smoc} mean {mm['smocf_mean']:.3f}; "
              f"LoQFit median {mm['loqfit_median']:.2f} A ({mm['loqfit_at_cap']} at the "
              f"{settings.loqfit_cap:g} A cap, {mm['loqfit_at_nyquist']} at Nyquist)"
              + (f"; Q-score mean {mm['qscore_mean']:.3f} (sigma {settings.qscore_sigma:g} A)"
                 if "qscore_mean" in mm else ""), file=sys.stderr, flush=True)
    report = {
        "command": "score",
        "map": str(map_path), "model_files": dict(zip(labels, map(str, model_paths))),
        "map_grid": grid_dict(m.grid),
        "map_stats": inp.map_stats, "atoms_outside_map": atoms_outside,
        **summary,
        "fsc": {label: {name: c.as_dict() for name, c in per.items()} for label, per in fsc.items()},
        "half_maps": [str(p) for p in (half_maps or [])],
        "notes": {"loqfit_cap": f"LoQFit clamped at the upper limit {settings.loqfit_cap:g} A "
                                "(FSC never reaches 0.5 above it)",
                  "loqfit_nyquist": "LoQFit clamped at Nyquist (2 x voxel): FSC stays above 0.5 to the last shell",
                  "outside_map": "centre atom outside the map: no LoQFit"},
        "outputs": files + ["report.json"],
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(Path(outdir) / "report.json", report)
    progress("score")(f"wrote {outdir}/")
    return report
