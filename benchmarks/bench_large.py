"""Very large maps: E+M step, scoring and composite on N^3 maps (default 512^3 and 1024^3) with
bounded memory per worker.

The map is the real EMD-3488 map (100^3, 1.05 A) tiled periodically to fill an N^3 box and
written as a Zarr store under ``--tmp`` (chunk by chunk, never whole in memory); the model is
PDB 5NI1 translated by the same period (105 A) into every tile, atoms outside the box dropped
(chains renamed per copy so residues stay distinct). Maps over 2 GiB are not persisted by the
jobs (``jobs.inputs.PERSIST_BYTES``): the workers stream chunks from the store every pass,
which is what is measured here for every size.

Per size, on a fresh LocalCluster (``reff_dask.cluster.dask_client``, ``--workers`` x 1 thread,
``--memory-limit`` each):
  em         one ``bfactor.em_iteration`` (E-step over all chunks, tree-summed moments, M-step)
  score      ``scores.score_models`` (global CCC, per-residue SMOCf and LoQFit) on ``--score-frac``
             of the copies (the per-residue work is per residue, so a fraction is enough to
             show memory and rate), and ``scores.ccc.global_ccc`` on the whole model
  composite  ``composite.composite`` of two maps (the store twice, the second read as a x1.5
             "focused" map) written to a Zarr store with ``jobs.outputs.write_maps``
Memory: each worker's RSS sampled every 20 ms from a thread in the worker (``/proc/self/statm``),
reset before each step; the largest value during the step is reported, with the worker's RSS
before it. Kernels are compiled in the workers on the real map first (not timed).

    python benchmarks/bench_large.py --sizes 512,1024          # about 20-40 min on 2 cores
    python benchmarks/bench_large.py --sizes 256 --steps em    # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import dask.array as da
import gemmi
import numpy as np

from reff_dask.gmm.fit import GMMState, em_iteration, initial_state
from reff_dask.cluster import dask_client
from reff_dask.composite import ComponentFit, composite
from reff_dask.io.maps import Map, MapGrid, read_map, write_zarr
from reff_dask.io.models import atom_table, b_to_sigma, read_structure
from reff_dask.jobs.outputs import write_maps

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REFF_DATA", ROOT.parent / "shared" / "data")) / "emd_3488"
MAP, MODEL = DATA / "emd_3488.map.gz", DATA / "5ni1.pdb"
RES = 3.2


# ----------------------------------------------------------------------------- worker memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sampler_start(dask_worker=None) -> int:
    """Start (once) a thread in the worker keeping the largest RSS seen since the last reset."""
    w = dask_worker
    if not getattr(w, "_reff_sampler", None):
        w._reff_peak = _rss()

        def loop():
            while True:
                w._reff_peak = max(w._reff_peak, _rss())
                time.sleep(0.02)

        w._reff_sampler = threading.Thread(target=loop, daemon=True)
        w._reff_sampler.start()
    w._reff_peak = _rss()
    return w._reff_peak


def _sampler_read(dask_worker=None) -> int:
    return dask_worker._reff_peak


def measured(client, fn):
    """Run ``fn()``; return (result, seconds, worker RSS before [MiB], worker peak RSS during [MiB])."""
    before = client.run(_sampler_start)
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = client.run(_sampler_read)
    mib = lambda d: sorted(round(v / 2**20) for v in d.values())  # noqa: E731
    return out, dt, mib(before), mib(peak)


# ----------------------------------------------------------------------------- synthetic case


def tiled_store(real: Map, size: int, chunks: int, path: Path) -> Map:
    """The real map repeated with its own period to fill size^3, written as Zarr, read back."""
    small = real.data.compute()
    period = np.array(small.shape)
    grid = MapGrid((size,) * 3, real.grid.voxel_size, real.grid.origin)

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        idx = np.ix_(*[np.arange(a, b) % p for (a, b), p in zip(loc, period)])
        return small[idx]

    lazy = da.map_blocks(block, dtype=np.float32, chunks=da.core.normalize_chunks(chunks, grid.shape))
    write_zarr(Map(lazy, grid, "emd_3488 tiled"), path, chunks)
    return read_map(path, chunks)


def st0_model_clone(model: gemmi.Model) -> gemmi.Model:
    return model.clone()


def tiled_model(st: gemmi.Structure, real_grid: MapGrid, size: int, frac: float = 1.0) -> gemmi.Structure:
    """5NI1 copied into every tile (offset = real box edge), chains renamed per copy; atoms outside dropped."""
    period = np.array(real_grid.shape[::-1]) * np.array(real_grid.voxel_size)
    n = int(np.ceil(size / real_grid.shape[0]))
    upper = np.array(real_grid.origin) + (size - 1) * np.array(real_grid.voxel_size)
    offsets = [np.array(o) * period for o in np.ndindex(n, n, n)]
    if frac < 1:
        offsets = offsets[:max(1, int(round(frac * len(offsets))))]
    out = gemmi.Structure()
    out.cell = gemmi.UnitCell()
    out.spacegroup_hm = "P 1"
    model = gemmi.Model("1")
    tile_edge = np.array(real_grid.shape[::-1]) * np.array(real_grid.voxel_size)
    for k, off in enumerate(offsets):
        copy = st0_model_clone(st[0])
        copy.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*off)))
        border = np.any(off + tile_edge > upper)
        for ch in copy:
            ch.name = f"{ch.name}{k}"
            if border:
                for r in reversed(range(len(ch))):
                    res = ch[r]
                    for i in reversed(range(len(res))):
                        p = res[i].pos
                        if p.x > upper[0] or p.y > upper[1] or p.z > upper[2]:
                            del res[i]
                    if not len(res):
                        del ch[r]
            if len(ch):
                model.add_chain(ch)
    out.add_model(model)
    out.setup_entities()
    return out


# ----------------------------------------------------------------------------- steps


def warm_up(client, real: Map, atoms) -> None:
    """Compile the numba kernels in every worker (E-step, scores, composite) on the real map."""
    sigma = np.clip(b_to_sigma(atoms.b_input), 0.525, 2.5)
    st = initial_state(real, atoms.xyz, atoms.weight, sigma)
    em_iteration(real, atoms.xyz, atoms.weight, st, 0.525, 2.5)
    client.run(lambda: None)


def run_size(size: int, args, real: Map, st0: gemmi.Structure, atoms0, tmp: Path) -> dict:
    from reff_dask.scores import ScoreSettings, score_models
    from reff_dask.scores.ccc import global_ccc

    rec: dict = {"size": size, "voxels": size**3, "chunks": args.chunks}
    store = tmp / f"tiled_{size}.zarr"
    with dask_client(workers=args.workers, memory_limit=args.memory_limit) as client:
        t0 = time.perf_counter()
        if not store.exists():
            _, dt, b, p = measured(client, lambda: tiled_store(real, size, args.chunks, store))
            rec["make_store"] = {"seconds": dt, "rss_before_mib": b, "rss_peak_mib": p}
        m = read_map(store, args.chunks)
        rec["store_gib"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30
        rec["n_chunks"] = m.data.npartitions
        st = tiled_model(st0, real.grid, size)
        atoms = atom_table(st, "tiled")
        rec["atoms"] = len(atoms)
        rec["residues"] = int(atoms.residue.max() + 1)
        rec["model_build_s"] = time.perf_counter() - t0
        print(f"[large] {size}^3: {m.data.npartitions} chunks, {len(atoms):,} atoms", file=sys.stderr, flush=True)
        warm_up(client, real, atoms0)
        sigma = np.clip(b_to_sigma(atoms.b_input), 0.525, 2.5)
        if "em" in args.steps:
            # scale and noise from the real map: the tiled map has the same density per atom
            s0 = initial_state(real, atoms0.xyz, atoms0.weight, np.clip(b_to_sigma(atoms0.b_input), 0.525, 2.5))
            state = GMMState(sigma, s0.scale, s0.noise)
            rows = []
            for _ in range(args.reps):
                (new, es, _), dt, b, p = measured(
                    client, lambda: em_iteration(m, atoms.xyz, atoms.weight, state, 0.525, 2.5))
                rows.append({"seconds": dt, "rss_before_mib": b, "rss_peak_mib": p, "ccc": es.ccc})
                print(f"[large]   E+M {dt:.1f} s, worker peak RSS {p} MiB, CCC {es.ccc:.4f}", file=sys.stderr,
                      flush=True)
            rec["em"] = rows
        if "score" in args.steps:
            ccc, dt, b, p = measured(client, lambda: global_ccc(m, atoms.xyz, atoms.weight, RES))
            rec["global_ccc"] = {"seconds": dt, "rss_before_mib": b, "rss_peak_mib": p, **ccc}
            print(f"[large]   global CCC {dt:.1f} s, peak {p} MiB", file=sys.stderr, flush=True)
            part = tiled_model(st0, real.grid, size, args.score_frac)
            n_res = sum(len(c) for c in part[0])
            table, dt, b, p = measured(client, lambda: score_models(m, {"tiled": part}, RES, ScoreSettings()))
            rec["score_models"] = {"seconds": dt, "rss_before_mib": b, "rss_peak_mib": p, "residues": n_res,
                                   "copies_fraction": args.score_frac,
                                   "residues_per_s": n_res / dt, "summary": table.summary()}
            print(f"[large]   score_models {n_res} residues {dt:.1f} s, peak {p} MiB", file=sys.stderr, flush=True)
        if "composite" in args.steps:
            m2 = read_map(store, args.chunks)
            m2 = Map(m2.data * np.float32(1.5), m2.grid, "x1.5")
            s0 = initial_state(real, atoms0.xyz, atoms0.weight, np.clip(b_to_sigma(atoms0.b_input), 0.525, 2.5))
            sig2 = sigma.copy()
            sig2[::2] *= 1.2  # the second map resolves every other atom less well
            fits = [ComponentFit(atoms.xyz, sigma, s0.scale, s0.noise, m.grid),
                    ComponentFit(atoms.xyz, sig2, 1.5 * s0.scale, 1.5 * s0.noise, m.grid)]
            out = tmp / f"composite_{size}.zarr"

            def comp():
                c = composite([m, m2], fits, atoms.weight, m.grid, m.data.chunks)
                write_maps({out: c}, m.grid, source="bench")

            _, dt, b, p = measured(client, comp)
            rec["composite"] = {"seconds": dt, "rss_before_mib": b, "rss_peak_mib": p}
            print(f"[large]   composite {dt:.1f} s, peak {p} MiB", file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(store, ignore_errors=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB", help="per worker (Dask spills/pauses above it)")
    ap.add_argument("--steps", default="em,score,composite")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--score-frac", type=float, default=0.05, help="fraction of model copies scored per residue")
    ap.add_argument("--tmp", default="/tmp/reff_large")
    ap.add_argument("--keep", action="store_true", help="keep the Zarr stores")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.steps = args.steps.split(",")
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(tmp).free / 2**30
    need = max(int(s) for s in args.sizes.split(",")) ** 3 * 4 * 2.2 / 2**30
    if free < need:
        sys.exit(f"{tmp}: {free:.0f} GiB free, need about {need:.0f} GiB")
    real = read_map(MAP, 100)
    real.data = real.data.persist(scheduler="sync")
    st0 = read_structure(MODEL)
    atoms0 = atom_table(st0, str(MODEL))
    results = {"machine": {"cores": os.cpu_count(), "load_start": os.getloadavg()}, "args": vars(args), "sizes": []}
    t = time.perf_counter()
    for size in (int(s) for s in args.sizes.split(",")):
        results["sizes"].append(run_size(size, args, real, st0, atoms0, tmp))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    results["machine"]["load_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t
    print(json.dumps(results, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
