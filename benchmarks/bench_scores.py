"""Benchmark of ``reff_dask.scores.score_models`` (global CCC + per-residue SMOCf and LoQFit).

Cases
  real   EMD-3488 map (100^3, 1.05 A) with PDB 5NI1 (578 scored residues).
  tiled  a ``--tiles``^3 tiling of the real map (default 3 -> 300^3, 27 M voxels) with the
         model copied into every tile (27 x 578 = 15,606 residues, 123,633 atoms), written
         as a Zarr store under ``--tmp`` (chunks of ``--chunks``) and read back lazily, so
         the workers read only the slices their residue groups need.

For each case, on a fresh 2-worker LocalCluster (``reff_dask.cluster.dask_client``, one
thread per worker): median wall time of ``score_models`` on the chunked map, and the same
on the map as one chunk (the reference: every residue in one task that holds the whole
map), both in this process; each worker's peak RSS (``VmHWM`` of /proc/self/status, read in the
worker with ``client.run``; a fresh cluster per configuration, so peaks do not mix). Each
cluster first scores the real case once, untimed, so the workers have loaded the numba
kernels; the start RSS reported is after that warm-up.

    python benchmarks/bench_scores.py               # real + 300^3, about 4 min on 2 cores
    python benchmarks/bench_scores.py --tiles 4     # 400^3, 37k residues
    python benchmarks/bench_scores.py --skip-tiled  # real case only

Prints a Markdown summary and writes the figures as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import dask.array as da
import gemmi
import numpy as np

from reff_dask.cluster import dask_client
from reff_dask.io.maps import Map, MapGrid, read_map, write_zarr
from reff_dask.io.models import read_structure
from reff_dask.scores import score_models

from _machine import MAP, MODEL, machine  # noqa: E402  (benchmarks/ is on sys.path)
RESOLUTION = 3.2


def _peak_rss_mib() -> float:
    """Peak RSS (MiB) of the calling process: ``VmHWM`` from /proc/self/status.

    Not ``resource.getrusage(...).ru_maxrss``: a worker is spawned (fork+exec, or vfork+exec)
    and Linux carries the parent's peak RSS at spawn time into the child's ``ru_maxrss``
    across exec, so every worker would report at least the client process's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def tiled_structure(st: gemmi.Structure, tiles: int, edge: float) -> gemmi.Structure:
    """``tiles``^3 copies of the first model, translated by ``edge`` A; chains renamed A0, B0, ... A1, ..."""
    out = gemmi.Structure()
    out.cell = gemmi.UnitCell()
    model = gemmi.Model("1")
    k = 0
    for iz in range(tiles):
        for iy in range(tiles):
            for ix in range(tiles):
                shift = gemmi.Position(ix * edge, iy * edge, iz * edge)
                for ch in st[0]:
                    c = ch.clone()
                    c.name = f"{ch.name}{k}"
                    for res in c:
                        for at in res:
                            at.pos = at.pos + shift
                    model.add_chain(c)
                k += 1
    out.add_model(model)
    out.setup_entities()
    return out


def run_config(label: str, map_source, chunks, structures: dict, reps: int, workers: int) -> dict:
    """Median wall time of score_models and per-worker peak RSS, on a fresh cluster."""
    with dask_client(workers=workers) as client:
        score_models(read_map(MAP, 50), {"warm-up": read_structure(MODEL)}, RESOLUTION)  # loads numba kernels
        base = client.run(_peak_rss_mib)
        load0 = os.getloadavg()
        cpu0 = sum(client.run(time.process_time).values())
        ccpu0 = time.process_time()
        times = []
        for _ in range(reps):
            m = read_map(map_source, chunks)
            if m.data.chunksize != tuple(min(chunks, n) for n in m.data.shape):
                m.data = m.data.rechunk(chunks)  # Zarr keeps its own chunks: force the one-chunk reference
            t0 = time.perf_counter()
            table = score_models(m, structures, RESOLUTION)
            times.append(time.perf_counter() - t0)
        peaks = client.run(_peak_rss_mib)
        cpu = (sum(client.run(time.process_time).values()) - cpu0) / reps
        client_cpu = (time.process_time() - ccpu0) / reps  # graph building, M-side work, gathering
    n = len(table) * len(table.models)
    med = statistics.median(times)
    row = {"config": label, "chunks": str(chunks), "npartitions": m.data.npartitions, "residues": n,
           "seconds": times, "median_s": med, "residues_per_s": n / med,
           "worker_peak_rss_mib": sorted(peaks.values()), "worker_start_rss_mib": sorted(base.values()),
           "worker_cpu_s": cpu, "residues_per_worker_cpu_s": n / cpu, "client_cpu_s": client_cpu, "loadavg": [load0, os.getloadavg()],
           "smocf_mean": table.model_means()[table.models[0]]["smocf_mean"],
           "loqfit_median": table.model_means()[table.models[0]]["loqfit_median"], "table": table}
    print(f"  {label:28s} {m.data.npartitions:4d} chunks  {med:7.2f} s  {n / med:8.1f} residues/s  "
          f"workers' CPU {cpu:.2f} s  client CPU {client_cpu:.2f} s  worker peak RSS {', '.join(f'{p:.0f}' for p in sorted(peaks.values()))} MiB  "
          f"load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return row


def run_inprocess(label: str, map_source, chunks, structures: dict, reps: int) -> dict:
    """Reference without a cluster: score_models with Dask's synchronous scheduler in this process."""
    import dask

    with dask.config.set(scheduler="sync"):
        score_models(read_map(MAP, 100), {"warm-up": read_structure(MODEL)}, RESOLUTION)
        load0 = os.getloadavg()
        times, cpus = [], []
        for _ in range(reps):
            m = read_map(map_source, chunks)
            c0, t0 = time.process_time(), time.perf_counter()
            table = score_models(m, structures, RESOLUTION)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    n = len(table) * len(table.models)
    med = statistics.median(times)
    cpu = statistics.median(cpus)
    print(f"  {label:28s} {m.data.npartitions:4d} chunks  {med:7.2f} s  {n / med:8.1f} residues/s  "
          f"CPU {cpu:.2f} s  load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return {"config": label, "chunks": str(chunks), "npartitions": m.data.npartitions, "residues": n,
            "seconds": times, "median_s": med, "residues_per_s": n / med, "cpu_s": cpu,
            "residues_per_cpu_s": n / cpu, "loadavg": [load0, os.getloadavg()]}


def compare(a: dict, b: dict) -> dict:
    ta, tb = a.pop("table"), b.pop("table")
    return {"max_abs_diff_smocf": float(np.nanmax(np.abs(ta.smoc - tb.smoc))),
            "max_abs_diff_loqfit": float(np.nanmax(np.abs(ta.loqfit - tb.loqfit))),
            "speed_ratio_chunked_over_one_chunk": a["residues_per_s"] / b["residues_per_s"],
            "peak_ratio_chunked_over_one_chunk": max(a["worker_peak_rss_mib"]) / max(b["worker_peak_rss_mib"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=64, help="chunk edge of the chunked runs (tiled case)")
    ap.add_argument("--real-chunks", type=int, default=32, help="chunk edge of the chunked runs (real case)")
    ap.add_argument("--reps", type=int, default=3, help="repeats on the real case (tiled: 1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tmp", default="/tmp/reff_bench_scores")
    ap.add_argument("--skip-tiled", action="store_true")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument("--no-tiled-reference", action="store_true",
                    help="tiled case: skip the one-chunk reference (one task holding the whole map)")
    ap.add_argument("--malloc-trim", default=None, metavar="BYTES",
                    help="set MALLOC_TRIM_THRESHOLD_ in the workers (Dask's nanny default is 65536; "
                         "reff_dask.cluster leaves it unset): for an A/B of that setting")
    args = ap.parse_args()
    if args.malloc_trim is not None:
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(args.malloc_trim)  # inherited by the spawned workers
    info = {"machine": machine(), "workers": args.workers, "threads_per_worker": 1, "resolution": RESOLUTION,
            "malloc_trim_threshold": args.malloc_trim}
    print(f"machine: {info['machine']}", flush=True)
    st = read_structure(MODEL)
    print(f"real case: {MAP.name} + {MODEL.name}", flush=True)
    a = run_config("real, chunked", MAP, args.real_chunks, {"5ni1": st}, args.reps, args.workers)
    b = run_config("real, one chunk (reference)", MAP, 100, {"5ni1": st}, args.reps, args.workers)
    c = run_inprocess("real, one chunk, in-process", MAP, 100, {"5ni1": st}, args.reps)
    info["real"] = {"chunked": a, "one_chunk": b, "in_process": c, **compare(a, b),
                    "cluster_one_chunk_cpu_over_in_process_cpu": b["worker_cpu_s"] / c["cpu_s"],
                    "cluster_chunked_cpu_over_in_process_cpu": a["worker_cpu_s"] / c["cpu_s"]}
    if not args.skip_tiled:
        tmp = Path(args.tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        m = read_map(MAP, 100)
        x = np.tile(m.data.compute(), (args.tiles,) * 3)
        edge = 100 * m.grid.voxel_size[0]
        grid = MapGrid(x.shape, m.grid.voxel_size, m.grid.origin)
        store = tmp / f"tiled{args.tiles}.zarr"
        write_zarr(Map(da.from_array(x, chunks=args.chunks), grid, "tiled"), store, args.chunks)
        del x
        big = tiled_structure(st, args.tiles, edge)
        print(f"tiled case: {grid.shape[::-1]} voxels, {big[0].count_atom_sites()} atoms, "
              f"{args.tiles ** 3} model copies (Zarr store, chunks {args.chunks})", flush=True)
        a = run_config("tiled, chunked", store, args.chunks, {"tiled": big}, 1, args.workers)
        info["tiled"] = {"shape": grid.shape, "atoms": big[0].count_atom_sites(), "chunked": a}
        if not args.no_tiled_reference:
            b = run_config("tiled, one chunk (reference)", store, max(grid.shape), {"tiled": big}, 1, args.workers)
            info["tiled"].update(one_chunk=b, **compare(a, b))
        else:
            a.pop("table")
        shutil.rmtree(store, ignore_errors=True)
    print("\n| case | map | chunks | residues | median s | residues/s | workers' (client) CPU s | residues per worker CPU s "
          "| worker peak RSS (MiB) | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in ("real", "tiled"):
        if case not in info:
            continue
        for cfg in ("chunked", "one_chunk"):
            if cfg not in info[case]:
                continue
            r = info[case][cfg]
            shape = "100^3" if case == "real" else f"{info['tiled']['shape'][0]}^3"
            print(f"| {case} {cfg.replace('_', ' ')} | {shape} | {r['npartitions']} | {r['residues']} | "
                  f"{r['median_s']:.2f} | {r['residues_per_s']:.0f} | {r['worker_cpu_s']:.2f} ({r['client_cpu_s']:.2f}) | "
                  f"{r['residues_per_worker_cpu_s']:.0f} | "
                  f"{' / '.join(f'{p:.0f}' for p in r['worker_peak_rss_mib'])} | "
                  f"{r['loadavg'][0][0]:.1f} -> {r['loadavg'][1][0]:.1f} |")
        if "in_process" in info[case]:
            r = info[case]["in_process"]
            print(f"| {case} one chunk, in this process (sync scheduler, no cluster) | 100^3 | 1 | {r['residues']} | "
                  f"{r['median_s']:.2f} | {r['residues_per_s']:.0f} | {r['cpu_s']:.2f} (this process) | "
                  f"{r['residues_per_cpu_s']:.0f} | | {r['loadavg'][0][0]:.1f} -> {r['loadavg'][1][0]:.1f} |")
        c = info[case]
        if "speed_ratio_chunked_over_one_chunk" not in c:
            continue
        print(f"| {case}: chunked / one chunk | | | | | x{c['speed_ratio_chunked_over_one_chunk']:.2f} | | | "
              f"x{c['peak_ratio_chunked_over_one_chunk']:.2f} (max diff SMOCf {c['max_abs_diff_smocf']:.1e}, "
              f"LoQFit {c['max_abs_diff_loqfit']:.1e} A) | |")
    print(f"\nload average at start {info['machine']['load_average_at_start']}, at end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
