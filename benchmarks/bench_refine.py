"""Benchmark of position refinement (`reff-dask refine`): MD presets and per-chain parallelism.

Case: the real start/final pair of ../shared/data (cases.json "emd_3488_start_5me2"): PDB 5ME2,
an earlier model of the EMD-3488 haemoglobin data, refined into the map (3.2 A); the deposited
final model 5NI1 is the reference. Waters are dropped; the four haems are kept fixed.

For each preset (paper: 0.1 fs x 2000 steps; fast: 2 fs x 100 steps, H bonds constrained;
minimise: L-BFGS only) the whole job runs (`reff_dask.jobs.refine.run`: B-only stage, EM/MD loop
to convergence, final minimisation) on an embedded cluster of ``--workers`` processes, and the
script records: iterations to convergence, wall time, the split of the EM loop into GMM / MD /
overhead, CCC start -> best MD -> final, clashes, CA RMSD to 5NI1 before/after.

Scaling: the fast preset, ``--scaling-iterations`` EM iterations (no convergence test), with 1 and
with 2 workers, same process; MD seconds per iteration and their ratio.

    python benchmarks/bench_refine.py --presets fast minimise paper --workers 2
    python benchmarks/bench_refine.py --chains A B --presets fast     # a smaller case

Writes a JSON file of all figures (``--json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import gemmi
import numpy as np

from reff_dask.bfactor import BFactorSettings
from reff_dask.cluster import dask_client
from reff_dask.jobs import refine as refine_job
from reff_dask.refine import RefineSettings

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REFF_DATA", ROOT.parent / "shared" / "data")) / "emd_3488"


def _load(path: Path, chains: list[str] | None) -> gemmi.Structure:
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_waters()
    st.remove_alternative_conformations()
    if chains:
        for name in [c.name for c in st[0] if c.name not in chains]:
            st[0].remove_chain(name)
    return st


def _ca(st: gemmi.Structure) -> dict[tuple[str, int], np.ndarray]:
    return {(ch.name, r.seqid.num): np.array(r["CA"][0].pos.tolist())
            for ch in st[0] for r in ch if r.find_atom("CA", "*")}


def ca_rmsd(a: gemmi.Structure, b: gemmi.Structure) -> float:
    """CA RMSD (A) over residues present in both (no superposition: both sit in the same map)."""
    ca, cb = _ca(a), _ca(b)
    keys = sorted(set(ca) & set(cb))
    d = np.array([ca[k] - cb[k] for k in keys])
    return float(np.sqrt(np.mean(np.sum(d ** 2, axis=1))))


def run_preset(preset: str, start_pdb: Path, ref: gemmi.Structure, workers: int, outdir: Path,
               max_iterations: int, implicit: str | None) -> dict:
    settings = RefineSettings(3.2, max_iterations=max_iterations, preset=preset, threads=1)
    bset = BFactorSettings(3.2)
    t0 = time.perf_counter()
    with dask_client(workers=workers):
        rep = refine_job.run(str(DATA / "emd_3488.map.gz"), str(start_pdb), 3.2, str(outdir), settings, bset,
                             implicit=implicit)
    wall = time.perf_counter() - t0
    it = rep["iterations"]
    refined = gemmi.read_structure(str(outdir / "model_refined.pdb"))
    start = gemmi.read_structure(str(start_pdb))
    return {
        "preset": preset, "workers": workers, "wall_seconds": wall, "iterations": len(it),
        "best_iteration": rep["best_iteration"], "ccc_start": rep["ccc_start"], "ccc_best_md": rep["ccc_best_md"],
        "ccc_final": rep["ccc_final"], "clashes_before": rep["clashes_before"], "clashes_after": rep["clashes_after"],
        "ca_rmsd_to_5ni1_before": ca_rmsd(start, ref), "ca_rmsd_to_5ni1_after": ca_rmsd(refined, ref),
        "median_gmm_s_per_iteration": statistics.median(r["gmm_seconds"] for r in it),
        "median_md_s_per_iteration": statistics.median(r["md_seconds"] for r in it),
        "wall_split": rep["wall_seconds"],
    }


def run_scaling(start_pdb: Path, workers: int, iterations: int, implicit: str | None, outdir: Path) -> dict:
    """Fast preset, a fixed number of EM iterations (patience off), on ``workers`` processes."""
    settings = RefineSettings(3.2, max_iterations=iterations, patience=10 ** 6, preset="fast", threads=1)
    bset = BFactorSettings(3.2, iterations=5, residue_iterations=10)
    with dask_client(workers=workers):
        rep = refine_job.run(str(DATA / "emd_3488.map.gz"), str(start_pdb), 3.2, str(outdir), settings, bset,
                             implicit=implicit)
    it = rep["iterations"]
    return {"workers": workers, "iterations": len(it),
            "md_s_per_iteration": statistics.median(r["md_seconds"] for r in it[1:] or it),
            "gmm_s_per_iteration": statistics.median(r["gmm_seconds"] for r in it),
            "loop_seconds": rep["wall_seconds"]["md_seconds"] + rep["wall_seconds"]["gmm_seconds"]
            + rep["wall_seconds"]["overhead_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=["fast", "minimise", "paper"])
    ap.add_argument("--chains", nargs="*", help="chains to keep (default: all four)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-iterations", type=int, default=300)
    ap.add_argument("--implicit", default="default", help="'default' (GBn2) or 'none' (vacuum)")
    ap.add_argument("--scaling-iterations", type=int, default=4, help="0: skip the 1 vs 2 worker run")
    ap.add_argument("--json", default="bench_refine.json")
    a = ap.parse_args()
    implicit = None if a.implicit == "none" else a.implicit
    tmp = Path(tempfile.mkdtemp(prefix="bench_refine_"))
    start = _load(DATA / "5me2.pdb", a.chains)
    ref = _load(DATA / "5ni1.pdb", a.chains)
    start_pdb = tmp / "start.pdb"
    start.write_pdb(str(start_pdb))
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_start": os.getloadavg()},
           "case": {"start": "5ME2", "reference": "5NI1", "chains": a.chains or "all", "implicit": a.implicit},
           "presets": [], "scaling": []}
    for p in a.presets:
        r = run_preset(p, start_pdb, ref, a.workers, tmp / p, a.max_iterations, implicit)
        r["load_after"] = os.getloadavg()
        out["presets"].append(r)
        print(json.dumps(r, default=float), flush=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    if a.scaling_iterations:
        for w in (1, 2):
            r = run_scaling(start_pdb, w, a.scaling_iterations, implicit, tmp / f"scale{w}")
            r["load_after"] = os.getloadavg()
            out["scaling"].append(r)
            print(json.dumps(r, default=float), flush=True)
            Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    print("\n| preset | iterations | wall s | GMM s/it | MD s/it | CCC start | best MD | final | clashes | "
          "CA RMSD to 5NI1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out["presets"]:
        print(f"| {r['preset']} | {r['iterations']} | {r['wall_seconds']:.0f} | {r['median_gmm_s_per_iteration']:.2f} "
              f"| {r['median_md_s_per_iteration']:.2f} | {r['ccc_start']:.4f} | {r['ccc_best_md']:.4f} | "
              f"{r['ccc_final']:.4f} | {r['clashes_before']} -> {r['clashes_after']} | "
              f"{r['ca_rmsd_to_5ni1_before']:.2f} -> {r['ca_rmsd_to_5ni1_after']:.2f} |")
    if out["scaling"]:
        base = out["scaling"][0]["md_s_per_iteration"]
        for r in out["scaling"]:
            print(f"workers {r['workers']}: MD {r['md_s_per_iteration']:.2f} s/iteration "
                  f"(speed-up {base / r['md_s_per_iteration']:.2f}x)")


if __name__ == "__main__":
    main()
