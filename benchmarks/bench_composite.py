"""Benchmark of the responsibility-weighted composite (``reff_dask.composite``) for 5 maps.

Cases
  real    five focused maps made from EMD-3488 (100^3, 1.05 A; model 5NI1, 4579 atoms):
          map k (k = 0..3) is sharp around chain k and blurred (Gaussian filter, 2 voxels)
          plus smooth noise elsewhere; map 4 is the whole map mildly blurred (a consensus
          map). Written as MRC files, read back chunked. Widths per map from the B-only
          stage (timed separately: ``--b-iterations``).
  synth   ``--sizes`` N^3 boxes (default 256) at 1.05 A: whole copies of 5NI1 translated by
          the real box edge; five maps simulated with ``reff_dask.gmm.blockwise.simulate``:
          map k sharp (sigma 0.7 A) in the k-th of five overlapping slabs along x, blurred
          (sigma 1.6 A) elsewhere, plus Gaussian noise; map 4 on a 1.2 A grid shifted by a
          fraction of a voxel (so it is resampled). Written as Zarr stores under ``--tmp``.
          Widths, scale and noise are the simulation's own (no B-only stage).

For each case, on fresh 2-worker LocalClusters (``reff_dask.cluster.dask_client``):
the composite built and written (Zarr, then MRC, ``reff_dask.jobs.outputs.write_maps``),
median wall time over ``--reps`` runs, output voxels per second, and worker memory: RSS
at start (after loading the kernels), the largest RSS sampled every 0.1 s during the run
(``client.run`` from a client thread), and the lifetime peak (``VmHWM``, /proc/self/status; a
fresh cluster per measurement). Reference in
the same process and cluster: the plain average of the same maps written the same way.
Quality on the real case: CCC of composite and average with the original map.

    python benchmarks/bench_composite.py                 # real + synthetic 256^3, a few minutes on 2 cores
    python benchmarks/bench_composite.py --sizes 160,256,320 --reps 3
    python benchmarks/bench_composite.py --skip-synth

Prints a Markdown summary and writes all figures as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from reff_dask.bfactor import BFactorSettings
from reff_dask.cluster import dask_client
from reff_dask.composite import ComponentFit, composite, fit_component, focus_scales, plain_average
from reff_dask.gmm import kernels as K
from reff_dask.gmm.blockwise import simulate
from reff_dask.io.maps import Map, MapGrid, read_map, write_mrc, write_zarr
from reff_dask.io.models import atom_table, read_structure
from reff_dask.jobs.outputs import write_maps

from _machine import MAP, MODEL, machine  # noqa: E402  (benchmarks/ is on sys.path)
N_MAPS = 5
warnings.filterwarnings("ignore", message="Port 8787 is already in use")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _worker_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker_maxrss() -> int:
    """Lifetime peak RSS (bytes) of the calling process: ``VmHWM`` from /proc/self/status.

    Not ``resource.getrusage(...).ru_maxrss``: a spawned worker inherits the parent's peak
    RSS at spawn time in ``ru_maxrss`` (Linux keeps it across exec).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Poll every worker's current RSS (``client.run``) from a client thread while a block runs."""

    def __init__(self, client, interval: float = 0.1):
        self.client, self.interval, self.peak = client, interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for w, v in self.client.run(_worker_rss).items():
                    self.peak[w] = max(self.peak.get(w, 0), v)
            except Exception:  # a worker busy past the timeout: try again
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def max_mib(self) -> float:
        return max(self.peak.values(), default=0) / 2**20


def _warm() -> None:
    """Load the numba kernels in a worker (cache), so the first timed run pays no compile."""
    K.density_block((4, 4, 4), (0, 0, 0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.array([[1.0, 1.0, 1.0, 1.0, 1.0]]))


# ----------------------------------------------------------------------------- inputs


def focused_real(tmp: Path, chunks: int, b_settings: BFactorSettings, workers: int) -> dict:
    """Five focused MRC maps from EMD-3488 and their B-only fits (timed)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    m = read_map(MAP, chunks)
    at = atom_table(read_structure(MODEL), MODEL)
    me = m.data.compute().astype(np.float64)
    g = m.grid
    zz, yy, xx = np.indices(g.shape)
    pos = np.stack([xx, yy, zz], -1).reshape(-1, 3) * np.asarray(g.voxel_size) + np.asarray(g.origin)
    d = np.stack([cKDTree(at.xyz[at.chain == c]).query(pos)[0].reshape(g.shape) for c in range(4)])
    sd = me.std()
    blur = ndimage.gaussian_filter(me, 2.0)
    paths = []
    for k in range(N_MAPS):
        rng = np.random.default_rng(k)
        if k < 4:
            others = np.min(np.delete(d, k, axis=0), axis=0)
            w = 1 / (1 + np.exp(-(others - d[k]) / 1.5))
            f = w * me + (1 - w) * (blur + 3 * sd * ndimage.gaussian_filter(rng.normal(size=g.shape), 0.7))
        else:
            f = ndimage.gaussian_filter(me, 1.0)
        f = f + 0.1 * sd * rng.normal(size=g.shape)
        p = tmp / f"focus_{k}.mrc"
        write_mrc(p, f.astype(np.float32), g)
        paths.append(p)
    maps = [read_map(p, chunks) for p in paths]
    fits, times = [], []
    with dask_client(workers=workers):
        for mk in maps:
            mk.data = mk.data.persist()
            t0 = time.perf_counter()
            fits.append(fit_component(mk, at.xyz, at.weight, at.residue, b_settings))
            times.append(time.perf_counter() - t0)
        scales = focus_scales(maps, fits, at.weight)
    return {"paths": paths, "fits": fits, "scales": scales, "weight": at.weight, "grid": g, "original": me,
            "atoms": len(at), "b_stage_s": times,
            "open": lambda: [read_map(p, chunks) for p in paths]}


def synthetic(size: int, tmp: Path, chunks: int) -> dict:
    """Five simulated focused maps in a ``size``^3 box (Zarr stores), with their true fits."""
    real = read_map(MAP, chunks)
    at = atom_table(read_structure(MODEL), MODEL)
    vox = real.grid.voxel_size
    edge = np.array(real.grid.shape[::-1]) * np.asarray(vox)
    n = np.maximum(np.floor(size * np.asarray(vox) / edge).astype(int), 1)
    off = np.array([(i * edge[0], j * edge[1], k * edge[2])
                    for k in range(n[2]) for j in range(n[1]) for i in range(n[0])])
    xyz = (at.xyz[None] + off[:, None]).reshape(-1, 3)
    weight = np.tile(at.weight, len(off))
    grid = MapGrid((size,) * 3, vox, (0.0, 0.0, 0.0))
    box = size * vox[0]
    scale, noise, noise_sd = 0.15, 0.005, 0.01
    fits, paths = [], []
    t0 = time.perf_counter()
    for k in range(N_MAPS):
        lo, hi = (k - 0.25) * box / N_MAPS, (k + 1.25) * box / N_MAPS  # overlapping slabs along x
        sharp = (xyz[:, 0] >= lo) & (xyz[:, 0] < hi)
        sigma = np.where(sharp, 0.7, 1.6)
        if k == N_MAPS - 1:  # another grid: 1.2 A voxels, shifted, covering the box
            v2 = (1.2, 1.2, 1.2)
            g = MapGrid((int(np.ceil(box / 1.2)),) * 3, v2, (-0.37, 0.41, -0.23))
        else:
            g = grid
        store = tmp / f"synth_{size}_{k}.zarr"
        if not store.exists():
            amp = K.amplitudes(weight, sigma, g.voxel_size, scale)
            with dask.config.set(scheduler="threads"):
                sim = simulate(g, chunks, xyz, sigma, amp, noise)
                rng = da.random.default_rng(100 + k)
                data = sim + rng.normal(0.0, noise_sd, size=g.shape, chunks=sim.chunks).astype(np.float32)
                write_zarr(Map(data, g, f"synth{k}"), store, chunks=chunks)
        paths.append(store)
        fits.append(ComponentFit(xyz, sigma, scale, noise, g))
    return {"paths": paths, "fits": fits, "scales": None, "weight": weight, "grid": grid, "atoms": len(xyz),
            "copies": len(off), "make_s": time.perf_counter() - t0,
            "open": lambda: [read_map(p, chunks) for p in paths]}


# ----------------------------------------------------------------------------- measurement


def measure(case: dict, chunks: int, reps: int, workers: int, out_dir: Path) -> dict:
    """Composite and plain average, each on its own fresh clusters: times and worker peak RSS."""
    res = {}
    voxels = int(np.prod(case["grid"].shape))
    for what in ("composite", "average"):
        times, peaks, sampled, starts, cpus, loads = [], [], [], [], [], []
        for r in range(reps):
            with dask_client(workers=workers) as client:
                client.run(_warm)
                starts.append(max(client.run(_worker_rss).values()) / 2**20)
                cpu0 = sum(client.run(time.process_time).values()) + time.process_time()
                load0 = os.getloadavg()[0]
                maps = case["open"]()
                target = out_dir / f"{what}.mrc"
                with RssSampler(client) as sampler:
                    t0 = time.perf_counter()
                    if what == "composite":
                        lazy = composite(maps, case["fits"], case["weight"], case["grid"], chunks,
                                         match_scale=True, scales=case["scales"])
                    else:
                        lazy = plain_average(maps, case["grid"], chunks)
                    write_maps({target: lazy}, case["grid"])
                    times.append(time.perf_counter() - t0)
                cpus.append(sum(client.run(time.process_time).values()) + time.process_time() - cpu0)
                loads.append((load0, os.getloadavg()[0]))
                sampled.append(sampler.max_mib)
                peaks.append(max(client.run(_worker_maxrss).values()) / 2**20)
        med = statistics.median(times)
        cpu = statistics.median(cpus)
        res[what] = {"median_s": med, "times_s": times, "voxels_per_s": voxels / med, "cpu_s": cpu,
                     "voxels_per_cpu_s": voxels / cpu, "loadavg_1min": loads,
                     "worker_peak_rss_mib_max": max(peaks), "worker_start_rss_mib_max": max(starts),
                     "worker_sampled_rss_mib_max": max(sampled)}
        log(f"  {what}: {med:.2f} s, CPU {cpu:.2f} s (workers + client), load {loads[0][0]:.1f} -> {loads[-1][1]:.1f}, "
            f"{voxels / med:.3g} voxels/s, worker RSS during run {max(sampled):.0f} MiB "
            f"(lifetime peak {max(peaks):.0f}, at start {max(starts):.0f})")
    res["ratio_composite_over_average"] = res["composite"]["median_s"] / res["average"]["median_s"]
    if "original" in case:
        me = case["original"]
        for what in ("composite", "average"):
            x = read_map(out_dir / f"{what}.mrc").data.compute()
            res[what]["ccc_with_original"] = float(np.corrcoef(x.ravel(), me.ravel())[0, 1])
    return res


def _self_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_inprocess(case: dict, chunks: int, reps: int, out_dir: Path) -> dict:
    """Reference without a cluster: the same composite and average with Dask's threaded scheduler
    (2 threads) in this process; wall, this process's CPU and its RSS (sampled every 10 ms)."""
    res = {}
    voxels = int(np.prod(case["grid"].shape))
    for what in ("composite", "average"):
        times, cpus, loads, peaks, starts = [], [], [], [], []
        for _ in range(reps):
            maps = case["open"]()
            peak, stop = [_self_rss()], threading.Event()
            starts.append(peak[0] / 2**20)

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], _self_rss())
                    stop.wait(0.01)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            load0 = os.getloadavg()[0]
            c0, t0 = time.process_time(), time.perf_counter()
            with dask.config.set(scheduler="threads"):
                if what == "composite":
                    lazy = composite(maps, case["fits"], case["weight"], case["grid"], chunks,
                                     match_scale=True, scales=case["scales"])
                else:
                    lazy = plain_average(maps, case["grid"], chunks)
                write_maps({out_dir / f"{what}_inproc.mrc": lazy}, case["grid"])
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            stop.set()
            th.join()
            peaks.append(peak[0] / 2**20)
            loads.append((load0, os.getloadavg()[0]))
        med, cpu = statistics.median(times), statistics.median(cpus)
        res[what] = {"median_s": med, "times_s": times, "voxels_per_s": voxels / med, "cpu_s": cpu,
                     "voxels_per_cpu_s": voxels / cpu, "loadavg_1min": loads,
                     "process_peak_rss_mib_max": max(peaks), "process_start_rss_mib_max": max(starts)}
        log(f"  in-process {what}: {med:.2f} s, CPU {cpu:.2f} s, load {loads[0][0]:.1f} -> {loads[-1][1]:.1f}, "
            f"process RSS {max(starts):.0f} -> {max(peaks):.0f} MiB")
    return res


def markdown(res: dict) -> str:
    mc = res["machine"]
    lines = [f"Machine: {mc['cpu']}, {mc['cores']} cores, {mc['ram_gib']} GiB RAM; Python {mc['python']}, "
             f"numpy {mc['numpy']}, numba {mc['numba']}, dask/distributed {mc['dask']}, zarr {mc['zarr']}. "
             f"{res['workers']} worker processes x 1 thread, chunks {res['chunks']}^3, {N_MAPS} maps, "
             f"median of the runs (count in the run column), each on a fresh cluster.", "",
             "| case | output voxels | atoms | run | median s | voxels/s | CPU s (workers + client) | voxels per CPU s "
             "| worker RSS MiB: start / max during run / lifetime peak | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["cases"].items():
        for what in ("composite", "average"):
            t = r[what]
            label = "composite (Eq. 11-13) -> Zarr -> MRC" if what == "composite" else \
                "reference: plain average -> Zarr -> MRC"
            lines.append(f"| {name} | {r['voxels']:,} | {r['atoms']:,} | {label}, {len(t['times_s'])} runs | "
                         f"{t['median_s']:.2f} | "
                         f"{t['voxels_per_s']:.3g} | {t['cpu_s']:.2f} | {t['voxels_per_cpu_s']:.3g} | "
                         f"{t['worker_start_rss_mib_max']:.0f} / "
                         f"{t['worker_sampled_rss_mib_max']:.0f} / {t['worker_peak_rss_mib_max']:.0f} | "
                         f"{t['loadavg_1min'][0][0]:.1f} -> {t['loadavg_1min'][-1][1]:.1f} |")
        for what in ("composite", "average"):
            if "in_process" not in r:
                continue
            t = r["in_process"][what]
            lines.append(f"| {name} | {r['voxels']:,} | {r['atoms']:,} | {what}, in this process (threaded "
                         f"scheduler, no cluster), {len(t['times_s'])} runs | {t['median_s']:.2f} | "
                         f"{t['voxels_per_s']:.3g} | {t['cpu_s']:.2f} | {t['voxels_per_cpu_s']:.3g} | "
                         f"process: {t['process_start_rss_mib_max']:.0f} / {t['process_peak_rss_mib_max']:.0f} | "
                         f"{t['loadavg_1min'][0][0]:.1f} -> {t['loadavg_1min'][-1][1]:.1f} |")
    lines.append("")
    for name, r in res["cases"].items():
        extra = ""
        if "ccc_with_original" in r["composite"]:
            extra = (f"; CCC with the original map: composite {r['composite']['ccc_with_original']:.4f}, "
                     f"plain average {r['average']['ccc_with_original']:.4f}; B-only stage per map "
                     f"{statistics.median(r['b_stage_s']):.2f} s (median of {N_MAPS})")
        if "in_process" in r:
            ip = r["in_process"]
            extra += (f"; cluster / in-process: time {r['composite']['median_s'] / ip['composite']['median_s']:.2f} "
                      f"(composite), {r['average']['median_s'] / ip['average']['median_s']:.2f} (average), CPU "
                      f"{r['composite']['cpu_s'] / ip['composite']['cpu_s']:.2f} (composite), "
                      f"{r['average']['cpu_s'] / ip['average']['cpu_s']:.2f} (average)")
        lines.append(f"- {name}: composite / plain average time = {r['ratio_composite_over_average']:.2f}{extra}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256", help="synthetic box edges, comma-separated (default 256)")
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--b-iterations", type=int, default=5, help="per-atom B iterations per real map (default 5)")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for inputs and outputs")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--synth-reps", type=int, default=None, help="runs per synthetic case (default --reps)")
    ap.add_argument("--json", default=None, help="write all figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reff_bench_composite_", dir=args.tmp))
    res = {"machine": machine(), "workers": args.workers, "chunks": args.chunks, "reps": args.reps, "cases": {}}
    try:
        if not args.skip_real:
            log("real: making 5 focused maps from EMD-3488, B-only stage per map")
            real = focused_real(work, args.chunks, BFactorSettings(3.2, iterations=args.b_iterations,
                                                                    residue_iterations=20), args.workers)
            r = measure(real, args.chunks, args.reps, args.workers, work)
            r["in_process"] = measure_inprocess(real, args.chunks, args.reps, work)
            r.update(voxels=int(np.prod(real["grid"].shape)), atoms=real["atoms"], b_stage_s=real["b_stage_s"])
            res["cases"]["real EMD-3488 x5 focused"] = r
        if not args.skip_synth:
            for size in (int(s) for s in args.sizes.split(",")):
                log(f"synthetic {size}^3: simulating 5 maps")
                syn = synthetic(size, work, args.chunks)
                r = measure(syn, args.chunks, args.synth_reps or args.reps, args.workers, work)
                r["in_process"] = measure_inprocess(syn, args.chunks, args.synth_reps or args.reps, work)
                r.update(voxels=size**3, atoms=syn["atoms"], copies=syn["copies"], make_s=syn["make_s"])
                res["cases"][f"synthetic {size}^3 x5 (one map resampled)"] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(res)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
