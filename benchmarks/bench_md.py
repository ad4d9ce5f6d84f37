"""MD cost per EM iteration for each solvent model and preset (OpenMM, one chain, in this process).

Chain A of 5NI1 (EMD-3488 case; haem and waters left out), AMBER14 with no solvent model
(vacuum), OBC2 (``implicit/obc2.xml``, OpenMM's built-in GBSAOBCForce) and GBn2
(``implicit/gbn2.xml``, the default, a CustomGBForce). For each: Context creation time (a
seeded segment builds a fresh Context), steps per second of the ``fast`` (2 fs, H bonds
constrained) and ``paper`` (0.1 fs, flexible) integrators, and the MD seconds one EM
iteration costs with each preset (fast: 100 steps; paper: 2000 steps).

    python benchmarks/bench_md.py [--threads 1] [--platform CPU] [--json bench_md.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import statistics
import time
from pathlib import Path

import gemmi

from reff_dask.md.prepare import prepare_model
from reff_dask.md.simulate import ChainSimulation

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REFF_DATA", ROOT.parent / "shared" / "data")) / "emd_3488"


def chain_a() -> gemmi.Structure:
    st = gemmi.read_structure(str(DATA / "5ni1.pdb"))
    st.setup_entities()
    st.remove_ligands_and_waters()
    for name in [c.name for c in st[0] if c.name != "A"]:
        st[0].remove_chain(name)
    return st


def measure(prepared, preset: str, steps: int, reps: int, platform: str | None, threads: int | None) -> dict:
    t0 = time.perf_counter()
    sim = ChainSimulation(prepared, "A", preset=preset, platform=platform, threads=threads)
    xyz = sim.positions
    sim.set_targets(xyz, 1.0)
    sim.context  # build
    t_build = time.perf_counter() - t0
    sim.run(steps=10)  # warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sim.run(steps=steps)
        times.append(time.perf_counter() - t0)
    t_ctx = []
    for k in range(3):
        t0 = time.perf_counter()
        sim._new_context(k + 1)
        t_ctx.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"build_s": t_build, "context_s": statistics.median(t_ctx), "steps": steps,
            "steps_per_s": steps / med, "platform": sim._platform.getName()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--platform", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default="bench_md.json")
    a = ap.parse_args()
    st = chain_a()
    out = {"machine": {"cpus": os.cpu_count(), "platform": pyplatform.platform(), "load_start": os.getloadavg()},
           "threads": a.threads, "rows": []}
    for label, implicit in (("vacuum", None), ("OBC2", "implicit/obc2.xml"), ("GBn2", "default")):
        prepared = prepare_model(st, implicit=implicit)
        for preset in ("fast", "paper"):
            r = measure(prepared, preset, a.steps, a.reps, a.platform, a.threads)
            per_iter = (100 if preset == "fast" else 2000) / r["steps_per_s"] + r["context_s"]
            r.update(solvent=label, preset=preset, particles=prepared.n_particles, md_s_per_iteration=per_iter,
                     load=os.getloadavg())
            out["rows"].append(r)
            print(json.dumps(r), flush=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print("\n| solvent | preset | particles | steps/s | context s | MD s per EM iteration |")
    print("|---|---|---|---|---|---|")
    for r in out["rows"]:
        print(f"| {r['solvent']} | {r['preset']} | {r['particles']} | {r['steps_per_s']:.0f} | {r['context_s']:.2f} "
              f"| {r['md_s_per_iteration']:.1f} |")


if __name__ == "__main__":
    main()
