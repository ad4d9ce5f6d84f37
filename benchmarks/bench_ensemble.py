"""Benchmark of ensemble generation (``reff_dask.ensemble``): members per minute, and fit.

Case: EMD-3488 (100^3, 1.05 A, 3.2 A) with 5NI1 haemoglobin, waters removed; B-factors
refined first by the B-only stage (``refine_bfactors``, 30 residue + 10 atom iterations),
so the input is a "refined model" in the sense of the ensemble job (widths from the B
column). MD system: AMBER14 in vacuum (``--implicit gbn2`` for GBn2), OpenMM CPU, one
thread per member.

Throughput: ``--members`` members made (a) in-process, one after another, (b) as Dask
tasks on a fresh 2-worker LocalCluster (``reff_dask.cluster.dask_client``), growth rule
off (min = max = ``--members``) so every run makes the same members. members/minute =
members / wall time of ``grow_ensemble`` (member tasks + per-member map and CCC passes).

Quality: CCC of the ensemble map (mean of the members' maps at the uniform width from the
resolution) and of the single refined model (same width; its own refined B; and relaxed
by the member protocol without sampling), heavy-atom bond RMSD from the force field's r0,
and the CA RMSF-B Pearson correlation.

    python benchmarks/bench_ensemble.py                  # full 5NI1, 6 members, ~4 min on 2 busy cores
    python benchmarks/bench_ensemble.py --chains A --members 8 --k-dens 30,100,300

Prints a Markdown summary; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reff_dask import ensemble as E  # noqa: E402
from reff_dask.bfactor import BFactorSettings, refine_bfactors  # noqa: E402
from reff_dask.cluster import dask_client  # noqa: E402
from reff_dask.gmm.mstep import uniform_sigma  # noqa: E402
from reff_dask.io.maps import read_map  # noqa: E402
from reff_dask.io.models import atom_table, read_structure, sigma_to_b  # noqa: E402
from reff_dask.md.prepare import prepare_model  # noqa: E402

EX = ROOT / "examples" / "emd_3488"


def load(chains: str):
    m = read_map(EX / "emd_3488.map.gz", chunks=50)
    m.data = m.data.persist()
    st = read_structure(EX / "5ni1.pdb")
    st.remove_waters()
    for name in [c.name for c in st[0] if c.name not in chains]:
        st[0].remove_chain(name)
    st.setup_entities()
    atoms = atom_table(st)
    b = refine_bfactors(m, atoms.xyz, atoms.weight, BFactorSettings(3.2, iterations=10, residue_iterations=30),
                        residue=atoms.residue)
    return m, st, atoms, b.state.sigma


def quality(m, st, atoms, sigma, res, inp, mask):
    s_u = uniform_sigma(3.2)
    single_u = E.ccc_box_mask(m, E.member_map(m, atoms.xyz, atoms.weight, s_u), mask)
    single_b = E.ccc_box_mask(m, E.member_map(m, atoms.xyz, atoms.weight, sigma), mask)
    relaxed = E.relaxed_single(inp)
    single_r = E.ccc_box_mask(m, E.member_map(m, relaxed.xyz, atoms.weight, s_u), mask)
    ca = np.array([a.name == "CA" for ch in st[0] for r in ch for a in r])
    rm = E.rmsf(res.xyz())[ca] if res.size > 1 else np.zeros(ca.sum())
    return {"ensemble_size": res.size, "ccc_ensemble": res.ccc, "ccc_ensemble_mask": res.ccc_mask,
            "ccc_members_mean": float(np.mean([h["ccc_member"] for h in res.history[:res.size]])),
            "ccc_single_uniform": single_u[0], "ccc_single_uniform_mask": single_u[1],
            "ccc_single_model_b": single_b[0], "ccc_single_model_b_mask": single_b[1],
            "ccc_single_relaxed": single_r[0], "ccc_single_relaxed_mask": single_r[1],
            "bond_rmsd_members_A": float(np.mean([r.stats["bond_rmsd_A"] for r in res.members])),
            "bond_rmsd_refined_A": res.members[0].stats["bond_rmsd_refined_A"],
            "rmsf_b_pearson_ca": float(np.corrcoef(rm, sigma_to_b(sigma[ca]))[0, 1]),
            "rmsf_mean_ca_A": float(rm.mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", default="ABCD")
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--k-dens", default="100", help="comma-separated k_dens values (quality sweep)")
    ap.add_argument("--minimise-iterations", type=int, default=200)
    ap.add_argument("--implicit", default="none", help="none (vacuum) or gbn2")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    implicit = None if a.implicit == "none" else "implicit/gbn2.xml"
    load0 = os.getloadavg()
    m, st, atoms, sigma = load(a.chains)
    t0 = time.perf_counter()
    prepared = prepare_model(st, implicit=implicit)
    t_prep = time.perf_counter() - t0
    mask = (E.member_map(m, atoms.xyz, atoms.weight, uniform_sigma(3.2)) > 0).persist()
    rows = []
    for kd in [float(v) for v in a.k_dens.split(",")]:
        s = E.EnsembleSettings(3.2, k_dens=kd, max_members=a.members, min_members=a.members,
                               minimise_iterations=a.minimise_iterations)
        inp = E.make_member_inputs(prepared, m, atoms.xyz, sigma, s)
        E.clear_cache()
        res = E.grow_ensemble(m, inp, atoms.weight, sigma, mask)
        row = {"k_dens": kd, "mode": "in-process, 1 thread", **res.timing, **quality(m, st, atoms, sigma, res, inp, mask)}
        rows.append(row)
        print(json.dumps(row, default=float), flush=True)
        if not a.skip_cluster and kd == float(a.k_dens.split(",")[0]):
            with dask_client(workers=2):
                res2 = E.grow_ensemble(m, inp, atoms.weight, sigma, mask)
                row2 = {"k_dens": kd, "mode": "Dask LocalCluster, 2 workers x 1 thread", **res2.timing,
                        "ensemble_size": res2.size, "ccc_ensemble": res2.ccc,
                        "same_members_as_in_process": bool(all(np.allclose(x.xyz, y.xyz, atol=1e-6)
                                                               for x, y in zip(res.members, res2.members)))}
                rows.append(row2)
                print(json.dumps(row2, default=float), flush=True)
    info = {"chains": a.chains, "atoms": len(atoms), "md_particles": prepared.n_particles,
            "implicit": a.implicit, "prepare_seconds": t_prep, "members": a.members,
            "minimise_iterations": a.minimise_iterations, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg()}
    print(f"\n{a.chains}: {len(atoms)} atoms, {prepared.n_particles} MD particles ({a.implicit}), "
          f"load {load0[0]:.1f} -> {info['load_after'][0]:.1f}\n")
    print("| k_dens | mode | members | members/min | ensemble CCC | single (uniform) | single (its B) | single relaxed | bond RMSD A | RMSF-B r |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k_dens']:g} | {r['mode']} | {r['members_evaluated']} | {r['members_per_minute']:.1f} | "
              f"{r['ccc_ensemble']:.4f} | {r.get('ccc_single_uniform', float('nan')):.4f} | "
              f"{r.get('ccc_single_model_b', float('nan')):.4f} | {r.get('ccc_single_relaxed', float('nan')):.4f} | "
              f"{r.get('bond_rmsd_members_A', float('nan')):.3f} | {r.get('rmsf_b_pearson_ca', float('nan')):.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
