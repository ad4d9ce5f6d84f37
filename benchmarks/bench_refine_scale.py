"""Refinement at scale (issue 13): the MD stage on 1 and 2 workers, the start relaxation and the
final stage on groups of chains, per-chain system build times, worker and client peak memory.

    python benchmarks/bench_refine_scale.py                      # GroEL 14-mer, ~20 min on 2 cores
    python benchmarks/bench_refine_scale.py --workers 2 --iterations 2 --final-rounds 1

Case: the shared GroEL 14-mer fit into EMD-1997 (7 A, 53,858 heavy atoms). The MD system is
prepared once (timed) and the mixture starts at the resolution's uniform width (no B stage: its
cost is in the end-to-end table of BENCHMARKS.md). For each worker count an embedded cluster
(``reff_dask.cluster.dask_client``) runs ``--iterations`` EM iterations without early stop, then
``--final-rounds`` rounds of the final stage, with the tasks the refine job would use: one group
of chains per worker, and on one worker the whole model in one task. Per-chain build time: one
chain's OpenMM sub-system (the chain mobile, neighbours within 10 A fixed) cut from the whole
prepared system, for haemoglobin (4 chains) and GroEL (14). Prints a table; --json writes it.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from reff_dask.cluster import dask_client
from reff_dask.gmm.fit import initial_state
from reff_dask.gmm.mstep import uniform_sigma
from reff_dask.io.maps import read_map
from reff_dask.io.models import atom_table, read_structure
from reff_dask.md.prepare import prepare_model
from reff_dask.md.simulate import ChainSimulation
from reff_dask.refine import RefineSettings, md_groups, minimise, refine_positions

from _machine import DATA, MODEL, machine  # noqa: E402  (benchmarks/ is on sys.path)

GROEL = DATA.parent / "emd_1997_groel"


def vm_hwm_gib() -> float:
    """This process's peak resident memory (GiB), VmHWM (see BENCHMARKS.md, Conventions)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def build_times(prepared, chains, repeats: int = 1) -> dict:
    """Seconds to cut one chain's sub-system (chain mobile, neighbours fixed), per chain."""
    out = {}
    for c in chains:
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sim = ChainSimulation(prepared, c, preset="fast", threads=1)
            t.append(time.perf_counter() - t0)
        out[c] = {"seconds": min(t), "mobile": len(sim.mobile), "fixed": len(sim.fixed)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--final-rounds", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    out: dict = {"machine": machine(), "runs": []}
    print(out["machine"], flush=True)

    hb = read_structure(str(MODEL))
    t0 = time.perf_counter()
    hb_prep = prepare_model(hb, implicit=None)
    out["hb"] = {"prepare_s": time.perf_counter() - t0, "particles": hb_prep.n_particles,
                 "build": build_times(hb_prep, hb_prep.chains[:3])}
    print("haemoglobin", out["hb"], flush=True)

    m = read_map(str(GROEL / "emd_1997.map.gz"), 64)
    st = read_structure(str(GROEL / "1oel_14mer_fit_emd1997.pdb.gz"))
    atoms = atom_table(st)
    t0, c0 = time.perf_counter(), time.process_time()
    prep = prepare_model(st, implicit=None)
    out["groel"] = {"atoms": len(atoms), "particles": prep.n_particles, "chains": len(prep.chains),
                    "prepare_s": time.perf_counter() - t0, "prepare_cpu_s": time.process_time() - c0}
    out["groel"]["build"] = build_times(prep, prep.chains[:3])
    print("groel", out["groel"], flush=True)
    state = initial_state(m, atoms.xyz, atoms.weight, np.full(len(atoms), uniform_sigma(7.0)))

    for w in a.workers:
        s = RefineSettings(7.0, preset="fast", max_iterations=a.iterations, patience=10 * a.iterations,
                           final_rounds=a.final_rounds, final_shift_A=0.0, threads=1)
        with dask_client(workers=w) as client:
            t0 = time.perf_counter()
            res = refine_positions(m, atoms.xyz, atoms.weight, state, prep, s)
            t_stage = time.perf_counter() - t0
            rounds: list[dict] = []
            minimise(m, res, atoms.weight, prep, s, rounds=rounds)
            peak = max(client.run(vm_hwm_gib).values())
        md = [h["md_seconds"] for h in res.history]
        row = {"workers": w, "groups": md_groups(prep, w), "md_s_per_iteration": md,
               "gmm_s_per_iteration": [h["gmm_seconds"] for h in res.history],
               "relaxation_s": res.timing["md_seconds"] - sum(md),
               "client_overhead_s": res.timing["overhead_seconds"], "md_stage_s": t_stage,
               "final_round_s": [r["seconds"] for r in rounds],
               "worker_peak_gib": peak, "client_peak_gib": vm_hwm_gib(),
               "ccc": [h["ccc"] for h in res.history]}
        out["runs"].append(row)
        print(json.dumps(row), flush=True)

    print("\n| workers | MD tasks | relaxation s | MD s per iteration (median) | E/M s per iteration | client overhead s "
          "| final round s (median) | worker peak GiB | client peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        print(f"| {r['workers']} | {len(r['groups'])} | {r['relaxation_s']:.0f} | {np.median(r['md_s_per_iteration']):.1f} "
              f"| {np.median(r['gmm_s_per_iteration']):.2f} | {r['client_overhead_s']:.1f} "
              f"| {np.median(r['final_round_s']):.0f} | {r['worker_peak_gib']:.2f} | {r['client_peak_gib']:.2f} |")
    if len(out["runs"]) > 1:
        base = np.median(out["runs"][0]["md_s_per_iteration"])
        for r in out["runs"][1:]:
            print(f"MD stage speed-up {out['runs'][0]['workers']} -> {r['workers']} workers: "
                  f"{base / np.median(r['md_s_per_iteration']):.2f}x; final round "
                  f"{np.median(out['runs'][0]['final_round_s']) / np.median(r['final_round_s']):.2f}x")
    for name in ("hb", "groel"):
        b = out[name]["build"]
        print(f"{name}: one chain's sub-system built in "
              + ", ".join(f"{c} {v['seconds']:.2f} s ({v['mobile']} + {v['fixed']} fixed)" for c, v in b.items()))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
