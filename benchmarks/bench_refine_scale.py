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
from pathlib import Path

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


def tiled_assembly(st, copies: int, noise_frac: float = 0.05, resolution: float = 7.0, chunks: int = 64):
    """``copies`` (2 or 8) copies of the 14-mer side by side (along x, or 2 x 2 x 2) with chain
    names ``A0`` ... (mmCIF-only names), and a map of their density on a grid of the shared map's
    voxel size, large enough to hold them: one Gaussian per heavy atom at the resolution's
    width, plus Gaussian noise of ``noise_frac`` x the density's maximum, as a Dask array.
    Returns (structure, Map)."""
    import dask.array as da
    import gemmi

    from reff_dask.gmm import kernels as K
    from reff_dask.gmm.blockwise import simulate
    from reff_dask.io.maps import Map, MapGrid

    xyz = atom_table(st).xyz
    lo, hi = xyz.min(0), xyz.max(0)
    step = (hi - lo).max() + 12.0
    offsets = [np.array(o) * step for o in ([(i, 0, 0) for i in range(copies)] if copies <= 2 else
                                            [(i, j, k) for i in range(2) for j in range(2) for k in range(2)])]
    out = gemmi.Structure()
    out.cell, out.spacegroup_hm = st.cell, st.spacegroup_hm
    model = gemmi.Model("1")
    for c, off in enumerate(offsets):
        for ch in st[0]:
            new = ch.clone()
            new.name = f"{ch.name}{c}"
            for res in new:
                for at in res:
                    at.pos = gemmi.Position(at.pos.x + off[0], at.pos.y + off[1], at.pos.z + off[2])
            model.add_chain(new)
    out.add_model(model)
    out.setup_entities()
    at = atom_table(out)
    voxel = 2.02
    origin = at.xyz.min(0) - 10.0
    need = (at.xyz.max(0) + 10.0 - origin) / voxel
    shape = tuple(max(int(np.ceil(need[i])), 200 if copies == 8 else 0) for i in (2, 1, 0))  # z, y, x; 200^3 for 8
    grid = MapGrid(shape, (voxel, voxel, voxel), tuple(origin))
    sigma = np.full(len(at), uniform_sigma(resolution))
    dens = simulate(grid, chunks, at.xyz, sigma, K.amplitudes(at.weight, sigma, grid.voxel_size, 1.0))
    peak = float(dens.max().compute())
    noise = da.random.default_rng(7).normal(0.0, noise_frac * peak, size=shape, chunks=dens.chunks)
    return out, Map((dens + noise).astype(np.float32), grid, f"tiled GroEL x{copies}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--final-rounds", type=int, default=2)
    ap.add_argument("--copies", type=int, default=1, choices=[1, 2, 8],
                    help="GroEL 14-mers side by side (2) or 2 x 2 x 2 (8, 112 chains) in a simulated map")
    ap.add_argument("--json")
    a = ap.parse_args()
    out: dict = {"machine": machine(), "runs": []}
    print(out["machine"], flush=True)

    if a.copies == 1:
        hb = read_structure(str(MODEL))
        t0 = time.perf_counter()
        hb_prep = prepare_model(hb, implicit=None)
        out["hb"] = {"prepare_s": time.perf_counter() - t0, "particles": hb_prep.n_particles,
                     "build": build_times(hb_prep, hb_prep.chains[:3])}
        print("haemoglobin", out["hb"], flush=True)

    m = read_map(str(GROEL / "emd_1997.map.gz"), 64)
    st = read_structure(str(GROEL / "1oel_14mer_fit_emd1997.pdb.gz"))
    if a.copies > 1:
        import tempfile

        from reff_dask.io.maps import write_zarr

        st, tiled = tiled_assembly(st, a.copies)
        store = Path(tempfile.mkdtemp(prefix="reff_scale_")) / "tiled.zarr"
        t0 = time.perf_counter()
        write_zarr(tiled, store, 64)
        m = read_map(str(store), 64)
        out["map"] = {"shape_zyx": m.grid.shape, "zarr": str(store), "write_s": time.perf_counter() - t0}
        print("map", out["map"], flush=True)
    atoms = atom_table(st)
    t0, c0 = time.perf_counter(), time.process_time()
    prep = prepare_model(st, implicit=None)
    key = "groel" if a.copies == 1 else f"groel_x{a.copies}"
    out[key] = {"atoms": len(atoms), "particles": prep.n_particles, "chains": len(prep.chains),
                "prepare_s": time.perf_counter() - t0, "prepare_cpu_s": time.process_time() - c0}
    out[key]["build"] = build_times(prep, prep.chains[:3])
    print(key, out[key], flush=True)
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
    for name in [k for k in out if k == "hb" or k.startswith("groel")]:
        b = out[name]["build"]
        print(f"{name}: one chain's sub-system built in "
              + ", ".join(f"{c} {v['seconds']:.2f} s ({v['mobile']} + {v['fixed']} fixed)" for c, v in b.items()))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
