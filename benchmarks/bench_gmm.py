"""Benchmark of one GMM E+M iteration (``reff_dask.bfactor.em_iteration``) against gemmi.

Cases
  real   EMD-3488 map (100^3, 1.05 A) with PDB 5NI1 (4579 atoms).
  large  a synthetic ``--size``^3 map (default 512^3) at the same voxel size: whole copies
         of 5NI1 translated by the real box edge (105 A) tile the box, the map is simulated
         with ``reff_dask.gmm.blockwise.simulate`` plus Gaussian noise, written as a Zarr
         store under ``--tmp`` and read back with ``read_map(..., chunks)``.

For each case: median wall time of one E+M iteration on a fresh 2-worker LocalCluster
(``reff_dask.cluster.dask_client``), with each worker's peak RSS (``VmHWM`` of /proc/self/status
read in the worker, ``client.run``; a fresh cluster per measurement, so no reset is needed);
the single-process threaded scheduler for comparison; our density alone (``simulate``)
and gemmi's ``DensityCalculatorE/X.put_model_density_on_grid`` on the same atoms, the
same widths (B = 8 pi^2 sigma^2) and the same grid, in this process.

Widths: sigma from the model's own B-factors, clipped to [half a voxel, 2.5 A] (the
regime of a refined model); scale and noise term fitted on the real map (``initial_state``).

    python benchmarks/bench_gmm.py                    # real + 512^3, about 3-5 min on 2 cores
    python benchmarks/bench_gmm.py --size 768 --chunks 128 --reps 3
    python benchmarks/bench_gmm.py --skip-large       # real case only (about 15 s)

Prints a Markdown summary and writes all figures as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import dask
import dask.array as da
import gemmi
import numpy as np

from reff_dask.gmm.fit import GMMState, em_iteration, initial_state
from reff_dask.cluster import dask_client
from reff_dask.gmm import kernels as K
from reff_dask.gmm.blocks import plan_blocks
from reff_dask.gmm.blockwise import simulate
from reff_dask.io.maps import Map, MapGrid, read_map, write_zarr
from reff_dask.io.models import atom_table, b_to_sigma, read_structure, sigma_to_b

from _machine import MAP, MODEL, machine  # noqa: E402  (benchmarks/ is on sys.path)
SIGMA_MAX = 2.5


# ----------------------------------------------------------------------------- helpers


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss(out: dict, interval: float = 0.005) -> Iterator[None]:
    """Sample this process's RSS while the block runs; ``out['peak_rss_mib']``, ``out['start_rss_mib']``."""
    stop = threading.Event()
    peak = [_rss_bytes()]
    out["start_rss_mib"] = peak[0] / 2**20

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        out["peak_rss_mib"] = max(peak[0], _rss_bytes()) / 2**20


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall times and this process's CPU times (s) of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def summary(tc: tuple[list[float], list[float]], voxels: int) -> dict:
    """Median/min/max wall time, voxels per second of the median, median CPU seconds (all threads)."""
    times, cpu = tc
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times), "n": len(times), "times_s": times,
            "voxels_per_s": voxels / med, "cpu_s": statistics.median(cpu) if cpu else None}


def _worker_rss() -> dict:
    """RSS now, peak RSS and CPU seconds of the calling process (run in each worker).

    ``vmhwm`` (/proc/self/status) is the peak of this process's own address space.
    ``ru_maxrss`` from ``resource.getrusage`` is kept for reference but is NOT usable here:
    a spawned worker is fork+exec'd, and Linux carries the forked child's peak (= the
    parent's RSS at spawn time) into ``ru_maxrss`` across exec.
    """
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return {"rss": _rss_bytes(), "vmhwm": hwm,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cpu_s": time.process_time()}


# ----------------------------------------------------------------------------- inputs


@dataclass
class Case:
    name: str
    grid: MapGrid
    xyz: np.ndarray
    weight: np.ndarray
    sigma: np.ndarray
    structure: gemmi.Structure  # the same atoms, B = 8 pi^2 sigma^2, for gemmi
    open_map: Callable[[], Map]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.grid.shape))


def widths_from_b(b: np.ndarray, voxel_size) -> np.ndarray:
    """Per-axis sigma (A) from B-factors, clipped to [half the largest voxel edge, SIGMA_MAX]."""
    return np.clip(b_to_sigma(b), 0.5 * max(voxel_size), SIGMA_MAX)


def set_b(st: gemmi.Structure, b: np.ndarray) -> None:
    """Write per-atom B (gemmi atom order) into ``st``."""
    i = 0
    for ch in st[0]:
        for res in ch:
            for at in res:
                at.b_iso = float(b[i])
                at.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)
                i += 1
    assert i == len(b)


def real_case(chunks: int) -> Case:
    st = read_structure(MODEL)
    at = atom_table(st, MODEL)
    grid = read_map(MAP, chunks).grid
    sigma = widths_from_b(at.b_input, grid.voxel_size)
    set_b(st, sigma_to_b(sigma))
    return Case("real", grid, at.xyz, at.weight, sigma, st, lambda: read_map(MAP, chunks))


def tile_offsets(real_grid: MapGrid, size: int) -> np.ndarray:
    """Translations (A) by the real box edge that keep whole copies inside a ``size``^3 box."""
    edge = np.array(real_grid.shape[::-1]) * np.asarray(real_grid.voxel_size)
    box = size * np.asarray(real_grid.voxel_size)
    n = np.maximum(np.floor(box / edge).astype(int), 1)
    return np.array([(i * edge[0], j * edge[1], k * edge[2])
                     for k in range(n[2]) for j in range(n[1]) for i in range(n[0])])


def tiled_structure(st: gemmi.Structure, offsets: np.ndarray) -> gemmi.Structure:
    """One model holding a translated copy of ``st[0]`` per offset (chains renamed by copy)."""
    out = gemmi.Structure()
    out.cell = st.cell
    out.spacegroup_hm = "P 1"
    model = gemmi.Model(1)
    for c, off in enumerate(offsets):
        copy = st[0].clone()
        copy.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*off)))
        for ch in copy:
            ch.name = f"{ch.name}{c}"
            model.add_chain(ch)
    out.add_model(model)
    return out


def large_case(real: Case, size: int, chunks: int, tmp: Path, scale: float, noise: float,
               noise_sd: float, keep: bool) -> tuple[Case, dict]:
    """Tile the real model into a ``size``^3 box, simulate + noise, write Zarr, return the case."""
    vox = real.grid.voxel_size
    grid = MapGrid((size, size, size), vox, (0.0, 0.0, 0.0))
    off = tile_offsets(real.grid, size)
    n = len(real.xyz)
    xyz = (real.xyz[None, :, :] + off[:, None, :]).reshape(-1, 3)
    weight = np.tile(real.weight, len(off))
    sigma = np.tile(real.sigma, len(off))
    st = tiled_structure(real.structure, off)
    store = tmp / f"reff_bench_tiled_{size}_c{chunks}.zarr"
    info = {"copies": len(off), "atoms": len(xyz), "store": str(store), "noise_sd": noise_sd,
            "store_chunks": chunks}
    if not (store.exists() and keep):
        t0 = time.perf_counter()
        amp = K.amplitudes(weight, sigma, vox, scale)
        with dask.config.set(scheduler="threads"):
            sim = simulate(grid, chunks, xyz, sigma, amp, noise)
            rng = da.random.default_rng(12345)
            data = sim + rng.normal(0.0, noise_sd, size=grid.shape, chunks=sim.chunks).astype(np.float32)
            write_zarr(Map(data, grid, f"tiled_5ni1_{size}"), store, chunks=chunks)
        info["make_store_s"] = time.perf_counter() - t0
    info["store_mib"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
    assert n * len(off) == len(xyz)
    return Case(f"large{size}", grid, xyz, weight, sigma, st, lambda: read_map(store, chunks)), info


# ----------------------------------------------------------------------------- measurements


def em_once(m: Map, case: Case, state: GMMState) -> None:
    em_iteration(m, case.xyz, case.weight, state, 0.5 * max(case.grid.voxel_size), SIGMA_MAX)


def bench_threaded(case: Case, state: GMMState, reps: int) -> dict:
    """E+M with the threaded scheduler in this process (no cluster); map held in memory."""
    out: dict = {"scheduler": "threads", "threads": os.cpu_count()}
    with dask.config.set(scheduler="threads"), peak_rss(out):
        m = case.open_map()
        m.data = m.data.persist()
        out.update(summary(timed(lambda: em_once(m, case, state), reps), case.voxels))
    return out


def bench_cluster(case: Case, state: GMMState, reps: int, clusters: int, workers: int,
                  persist: bool = True) -> dict:
    """E+M on ``clusters`` fresh LocalClusters of ``workers`` single-threaded workers.

    Each cluster: open the map (persisted on the workers when ``persist``), one untimed
    warm-up iteration (numba cache load), ``reps`` timed iterations, then each worker's
    lifetime peak RSS.
    """
    times, rss, base, load, cpu, ru = [], [], [], [], [], []
    for _ in range(clusters):
        with dask_client(workers=workers) as client:
            base.append(sorted(v["rss"] / 2**20 for v in client.run(_worker_rss).values()))
            t0 = time.perf_counter()
            m = case.open_map()
            if persist:
                from distributed import wait

                m.data = m.data.persist()
                wait(m.data)
            load.append(time.perf_counter() - t0)
            em_once(m, case, state)  # warm-up: numba cache load in the workers
            c0 = sum(v["cpu_s"] for v in client.run(_worker_rss).values())
            t, _ = timed(lambda: em_once(m, case, state), reps, warmup=0)
            after = client.run(_worker_rss).values()
            times += t
            cpu.append((sum(v["cpu_s"] for v in after) - c0) / reps)
            rss.append(sorted(v["vmhwm"] / 2**20 for v in after))
            ru.append(sorted(v["ru_maxrss"] / 2**20 for v in after))
    out = {"scheduler": f"LocalCluster {workers} workers x 1 thread", "persisted": persist,
           "clusters": clusters, "open_map_s": statistics.median(load),
           "worker_start_rss_mib": base, "worker_peak_rss_mib": rss, "worker_ru_maxrss_mib": ru,
           "worker_peak_rss_mib_max": max(max(r) for r in rss)}
    out.update(summary((times, []), case.voxels))
    out["cpu_s"] = statistics.median(cpu)  # workers' CPU seconds per iteration, all workers
    return out


def bench_density(case: Case, scale: float, reps: int) -> dict:
    """gemmi's density vs ours alone (``simulate`` computed to one array), same atoms, widths and grid.

    gemmi's grid is periodic (a P1 cell of the box) and indexed [x, y, z]; ours is not
    periodic. Agreement is checked (Pearson) on a 64-section slab through the middle of the box.
    """
    vox = case.grid.voxel_size
    amp = K.amplitudes(case.weight, case.sigma, vox, scale)
    chunks = case.open_map().data.chunks
    nz, ny, nx = case.grid.shape
    z0, z1 = max(0, nz // 2 - 32), min(nz, nz // 2 + 32)
    with dask.config.set(scheduler="threads"):
        slab = simulate(case.grid, chunks, case.xyz, case.sigma, amp)[z0:z1].compute()
    res: dict = {}
    cell = gemmi.UnitCell(nx * vox[0], ny * vox[1], nz * vox[2], 90, 90, 90)
    for name, cls in (("gemmi_E", gemmi.DensityCalculatorE), ("gemmi_X", gemmi.DensityCalculatorX)):
        dc = cls()
        dc.grid.set_unit_cell(cell)
        dc.grid.set_size(nx, ny, nz)  # d_min stays 0: gemmi keeps this grid
        r = {"cutoff": dc.cutoff, "blur": dc.blur}
        with peak_rss(r):
            r.update(summary(timed(lambda dc=dc: dc.put_model_density_on_grid(case.structure[0]), reps),
                             case.voxels))
        g = np.asarray(dc.grid.array)[:, :, z0:z1].transpose(2, 1, 0)  # gemmi [x,y,z] -> [z,y,x]
        r["pearson_vs_ours"] = float(np.corrcoef(g.ravel(), slab.ravel())[0, 1])
        res[name] = r
        del dc, g
    for sched in ("sync", "threads"):
        r = {}
        with dask.config.set(scheduler=sched), peak_rss(r):
            r.update(summary(timed(lambda: simulate(case.grid, chunks, case.xyz, case.sigma, amp).compute(),
                                   reps), case.voxels))
        res[f"ours_simulate_{sched}"] = r
    return res


def bench_plan(case: Case, reps: int) -> dict:
    """Time of plan_blocks (atom -> chunk lists), done on the client in every E-step."""
    chunks = case.open_map().data.chunks
    r = summary(timed(lambda: plan_blocks(case.grid, chunks, case.xyz, K.KCUT * case.sigma), reps), 1)
    plan = plan_blocks(case.grid, chunks, case.xyz, K.KCUT * case.sigma)
    sizes = np.array([len(p) for p in plan])
    return {"median_s": r["median_s"], "chunks": len(plan), "atoms_per_chunk_median": float(np.median(sizes)),
            "atom_chunk_pairs": int(sizes.sum()), "halo_factor": float(sizes.sum() / len(case.xyz))}


# ----------------------------------------------------------------------------- report


def case_report(case: Case, state: GMMState, args, threaded: bool, clusters: int, reps: int) -> dict:
    print(f"[bench] {case.name}: {case.grid.shape} voxels, {len(case.xyz)} atoms", file=sys.stderr, flush=True)
    state = GMMState(case.sigma.copy(), state.scale, state.noise)  # the real fit's scale and noise
    r: dict = {"shape_zyx": case.grid.shape, "voxels": case.voxels, "atoms": len(case.xyz),
               "chunks": case.open_map().data.chunksize, "loadavg_start": os.getloadavg()}
    r["plan_blocks"] = bench_plan(case, reps)
    if threaded:
        r["em_threads"] = bench_threaded(case, state, reps)
        print(f"[bench]   threads   E+M {r['em_threads']['median_s']:.3f} s", file=sys.stderr, flush=True)
    r["em_cluster"] = bench_cluster(case, state, reps, clusters, args.workers)
    print(f"[bench]   cluster   E+M {r['em_cluster']['median_s']:.3f} s", file=sys.stderr, flush=True)
    if not args.quick and case.name != "real":
        r["em_cluster_stream"] = bench_cluster(case, state, reps, 1, args.workers, persist=False)
        print(f"[bench]   streaming E+M {r['em_cluster_stream']['median_s']:.3f} s", file=sys.stderr, flush=True)
    r["density"] = bench_density(case, state.scale, reps)
    d = r["density"]
    print(f"[bench]   density ours sync {d['ours_simulate_sync']['median_s']:.3f} s, gemmi E "
          f"{d['gemmi_E']['median_s']:.3f} s", file=sys.stderr, flush=True)
    gem = d["gemmi_E"]["median_s"]
    r["ratios"] = {
        "em_cluster_over_gemmi_E": r["em_cluster"]["median_s"] / gem,
        "simulate_sync_over_gemmi_E": d["ours_simulate_sync"]["median_s"] / gem,
        "simulate_threads_over_gemmi_E": d["ours_simulate_threads"]["median_s"] / gem,
        "simulate_sync_over_gemmi_X": d["ours_simulate_sync"]["median_s"] / d["gemmi_X"]["median_s"],
    }
    gem_cpu = d["gemmi_E"]["cpu_s"]
    r["ratios"]["cpu_em_cluster_over_gemmi_E"] = r["em_cluster"]["cpu_s"] / gem_cpu
    r["ratios"]["cpu_simulate_sync_over_gemmi_E"] = d["ours_simulate_sync"]["cpu_s"] / gem_cpu
    if threaded:
        r["ratios"]["cpu_em_threads_over_gemmi_E"] = r["em_threads"]["cpu_s"] / gem_cpu
    if threaded:
        r["ratios"]["em_threads_over_gemmi_E"] = r["em_threads"]["median_s"] / gem
        r["ratios"]["em_cluster_over_em_threads"] = r["em_cluster"]["median_s"] / r["em_threads"]["median_s"]
    r["loadavg_end"] = os.getloadavg()
    return r


def _proc_rss(t: dict) -> str:
    return f"{t['peak_rss_mib']:.0f} (process; +{t['peak_rss_mib'] - t['start_rss_mib']:.0f} during the run)"


def _worker_rss_text(c: dict) -> str:
    return (f"{c['worker_peak_rss_mib_max']:.0f} (max worker; "
            f"{max(max(b) for b in c['worker_start_rss_mib']):.0f} at start)")


def markdown(res: dict) -> str:
    """The figures as a Markdown table plus one line of ratios per case."""
    mc = res["machine"]
    trim = res["args"].get("malloc_trim")
    lines = [f"Workers' MALLOC_TRIM_THRESHOLD_: {'unset (reff_dask.cluster default)' if trim in (None, 'None') else trim}.",
             f"Machine: {mc['cpu']}, {mc['cores']} cores, {mc['ram_gib']} GiB RAM; Python {mc['python']}, "
             f"numpy {mc['numpy']}, numba {mc['numba']}, dask/distributed {mc['dask']}, gemmi {mc['gemmi']}, "
             f"zarr {mc['zarr']}.", ""]
    lines += ["| case | run | median s (min) | CPU s | voxels/s | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for name, r in res["cases"].items():
        head = f"| {name}: {r['shape_zyx'][0]}^3, {r['atoms']:,} atoms, chunks {r['chunks'][0]}^3 "
        rows = []
        if "em_threads" in r:
            rows.append(("E+M, threaded scheduler, no cluster", r["em_threads"], _proc_rss(r["em_threads"])))
        c = r["em_cluster"]
        rows.append((f"E+M, {c['scheduler']}, map persisted", c, _worker_rss_text(c)))
        if "em_cluster_stream" in r:
            s = r["em_cluster_stream"]
            rows.append(("E+M, same cluster kind, map read from Zarr every iteration", s, _worker_rss_text(s)))
        d = r["density"]
        rows.append(("density only: ours, simulate, 1 thread", d["ours_simulate_sync"], _proc_rss(d["ours_simulate_sync"])))
        rows.append(("density only: ours, simulate, threaded", d["ours_simulate_threads"],
                     _proc_rss(d["ours_simulate_threads"])))
        for g in ("gemmi_E", "gemmi_X"):
            rows.append((f"density only: gemmi DensityCalculator{g[-1]}, 1 thread", d[g], _proc_rss(d[g])))
        for label, t, rss in rows:
            lines.append(f"{head}| {label} | {t['median_s']:.3f} ({t['min_s']:.3f}), {t['n']} runs | "
                         f"{t['cpu_s']:.3g} | {t['voxels_per_s']:.3g} | {rss} |")
    lines.append("")
    for name, r in res["cases"].items():
        ra = r["ratios"]
        p = r["plan_blocks"]
        d = r["density"]
        lines.append(f"- {name}: E+M cluster / gemmi E = {ra['em_cluster_over_gemmi_E']:.2f}"
                     + (f"; E+M threaded / gemmi E = {ra['em_threads_over_gemmi_E']:.2f}; cluster / threaded = "
                        f"{ra['em_cluster_over_em_threads']:.2f}" if "em_threads_over_gemmi_E" in ra else "")
                     + f"; density only, ours 1 thread / gemmi E = {ra['simulate_sync_over_gemmi_E']:.2f} "
                     f"(/ gemmi X = {ra['simulate_sync_over_gemmi_X']:.2f}), ours threaded / gemmi E = "
                     f"{ra['simulate_threads_over_gemmi_E']:.2f}; Pearson ours vs gemmi E "
                     f"{d['gemmi_E']['pearson_vs_ours']:.3f}, vs X {d['gemmi_X']['pearson_vs_ours']:.3f}; "
                     f"plan_blocks {p['median_s']:.3f} s for {p['chunks']} chunks (atom-chunk pairs / atoms "
                     f"{p['halo_factor']:.2f}); load average {r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}")
        lines.append(f"  - CPU-time ratios (robust to other load): E+M cluster (workers' CPU) / gemmi E = "
                     f"{ra['cpu_em_cluster_over_gemmi_E']:.2f}"
                     + (f", E+M threaded / gemmi E = {ra['cpu_em_threads_over_gemmi_E']:.2f}"
                        if "cpu_em_threads_over_gemmi_E" in ra else "")
                     + f", density only ours 1 thread / gemmi E = {ra['cpu_simulate_sync_over_gemmi_E']:.2f}")
    if "synthetic" in res:
        sy = res["synthetic"]
        lines.append(f"- synthetic store: {sy['copies']} copies of 5NI1, {sy['atoms']:,} atoms, "
                     f"{sy['store_mib']:.0f} MiB Zarr, made in {sy.get('make_store_s', float('nan')):.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="edge of the synthetic map in voxels (default 512)")
    ap.add_argument("--chunks", type=int, default=128, help="chunk edge of the synthetic Zarr store (64 or 128)")
    ap.add_argument("--real-chunks", type=int, default=64, help="chunk edge for the real map (default 64)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement, real case")
    ap.add_argument("--large-reps", type=int, default=3, help="timed repetitions per measurement, large case")
    ap.add_argument("--clusters", type=int, default=3, help="fresh clusters per E+M measurement, real case")
    ap.add_argument("--large-clusters", type=int, default=2, help="fresh clusters, large case")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--quick", action="store_true", help="large map: skip the threaded-scheduler and "
                    "read-from-Zarr-every-iteration runs")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp"), help="folder for the synthetic Zarr store")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the synthetic Zarr store")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument("--malloc-trim", default=None, metavar="BYTES",
                    help="set MALLOC_TRIM_THRESHOLD_ in the workers (Dask's nanny default is 65536; "
                         "reff_dask.cluster leaves it unset): for an A/B of that setting")
    args = ap.parse_args(argv)
    if args.malloc_trim is not None:
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(args.malloc_trim)  # inherited by the spawned workers

    t_start = time.perf_counter()
    res: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "cases": {}}
    real = real_case(args.real_chunks)
    with dask.config.set(scheduler="threads"):
        m = real.open_map()
        state = initial_state(m, real.xyz, real.weight, real.sigma)
        map_sd = float(m.data.std().compute())
    res["state"] = {"scale": state.scale, "noise": state.noise, "median_sigma_A": float(np.median(real.sigma)),
                    "median_b_A2": float(np.median(sigma_to_b(real.sigma)))}
    res["cases"]["real"] = case_report(real, state, args, True, args.clusters, args.reps)
    if not args.skip_large:
        big, info = large_case(real, args.size, args.chunks, args.tmp, state.scale, state.noise,
                               0.1 * map_sd, args.keep)
        res["synthetic"] = info
        print(f"[bench] synthetic store {info}", file=sys.stderr, flush=True)
        try:
            res["cases"][big.name] = case_report(big, state, args, not args.quick,
                                                 args.large_clusters, args.large_reps)
        finally:
            if not args.keep:
                shutil.rmtree(info["store"], ignore_errors=True)
    res["total_s"] = time.perf_counter() - t_start
    text = markdown(res)
    print(text)
    print(f"\n(total {res['total_s']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
