"""In this process or on a local cluster: where worker processes start to pay (issue 12).

Runs the user's commands (``reff-dask score`` and ``reff-dask bfactor``, and with ``--refine``
the README's first command) once with ``--workers 0`` (Dask's threaded scheduler in the
command's own process) and once with ``--workers N`` (an embedded cluster of N one-thread
worker processes), one after the other on the same inputs, and reports CPU seconds of the
command and all its child processes (``resource.getrusage(RUSAGE_CHILDREN)`` around
``subprocess.run``) and wall seconds, and whether the outputs agree.

Cases
  real    EMD-3488 (100^3 voxels, 1.05 A) with 5ME2 (4,468 atoms)
  tiledK  the real map tiled K x K x K (K=2: 200^3, 8 copies of 5ME2, 35,744 atoms; K=3: 300^3,
          120,636 atoms), written as a Zarr store (chunks 64^3), the model copied into every tile

    python benchmarks/bench_inprocess.py                       # real + tiled2, ~6 min on 2 cores
    python benchmarks/bench_inprocess.py --tiles 2 3 --refine  # adds 300^3 and refine on the real case

Prints a Markdown table and writes every figure as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np

from reff_dask.io.maps import Map, MapGrid, read_map, write_zarr
from reff_dask.io.models import atom_table, read_structure

from _machine import DATA, ROOT, machine  # noqa: E402  (benchmarks/ is on sys.path)
from bench_scores import tiled_structure  # noqa: E402

START = DATA / "5me2.pdb"
MAP = DATA / "emd_3488.map.gz"


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(args: list[str], log: Path) -> dict:
    cmd = [sys.executable, "-m", "reff_dask.cli", *args]
    load = os.getloadavg()[0]
    cpu0, t0 = _cpu_children(), time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    print(f"  exit {rc}: {cpu:.1f} CPU s, {wall:.1f} s wall  ({' '.join(args[:1] + args[-2:])})", flush=True)
    if rc != 0:
        raise SystemExit(f"failed: {' '.join(cmd)} (log {log})")
    return {"cpu_s": cpu, "wall_s": wall, "load_before": load}


def _same_scores(a: Path, b: Path) -> bool:
    return (a / "scores.csv").read_bytes() == (b / "scores.csv").read_bytes()


def _max_b_diff(a: Path, b: Path) -> float:
    ba, bb = (atom_table(read_structure(d / "model_bfactor.cif")).b_input for d in (a, b))
    return float(np.max(np.abs(ba - bb)))


def run_case(name: str, map_path: Path, model: Path, tmp: Path, workers: int, refine: bool) -> list[dict]:
    rows = []
    jobs = [("score", []), ("bfactor", ["--iterations", "10", "--residue-iterations", "30"])]
    if refine:
        jobs.append(("refine", ["--preset", "fast", "--implicit", "none"]))
    for job, extra in jobs:
        out = {}
        for w in (0, workers):
            d = tmp / f"{name}_{job}_w{w}"
            shutil.rmtree(d, ignore_errors=True)
            print(f"{name} {job} --workers {w}", flush=True)
            out[w] = (d, timed([job, "-m", str(map_path), "-p", str(model), "-r", "3.2", "-o", str(d),
                                "--workers", str(w), *extra], tmp / f"{name}_{job}_w{w}.log"))
        row = {"case": name, "job": job, "in_process": out[0][1], "cluster": out[workers][1]}
        if job == "score":
            row["outputs_identical"] = _same_scores(out[0][0], out[workers][0])
        elif job == "bfactor":
            row["max_b_difference_A2"] = _max_b_diff(out[0][0], out[workers][0])
        else:
            rep = [json.loads((out[w][0] / "report.json").read_text()) for w in (0, workers)]
            row["ccc_final"] = [r["ccc_final"] for r in rep]
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, nargs="*", default=[2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refine", action="store_true", help="also the README's refine command on the real case")
    ap.add_argument("--tmp", default="/tmp/reff_bench_inprocess")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "workers": args.workers, "rows": []}
    print(f"machine: {info['machine']}", flush=True)
    info["rows"] += run_case("real", MAP, START, tmp, args.workers, args.refine)
    m = read_map(MAP, 100)
    st = read_structure(START)
    for k in args.tiles:
        x = np.tile(m.data.compute(), (k,) * 3)
        grid = MapGrid(x.shape, m.grid.voxel_size, m.grid.origin)
        store = tmp / f"tiled{k}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        write_zarr(Map(da.from_array(x, chunks=64), grid, "tiled"), store, 64)
        model = tmp / f"tiled{k}.cif"
        big = tiled_structure(st, k, 100 * m.grid.voxel_size[0])
        big.setup_entities()
        big.make_mmcif_document().write_file(str(model))
        print(f"tiled{k}: {grid.shape[::-1]} voxels, {big[0].count_atom_sites()} atoms", flush=True)
        info["rows"] += run_case(f"tiled{k}", store, model, tmp, args.workers, False)
    print(f"\n| case | job | in process CPU s / wall s | {args.workers} workers CPU s / wall s | CPU ratio "
          "cluster / in process | wall ratio | outputs |")
    print("|---|---|---|---|---|---|---|")
    for r in info["rows"]:
        a, b = r["in_process"], r["cluster"]
        same = ("identical" if r.get("outputs_identical") else "differ") if "outputs_identical" in r else (
            f"max B diff {r['max_b_difference_A2']:.2g} A^2" if "max_b_difference_A2" in r else
            f"CCC {r['ccc_final'][0]:.4f} / {r['ccc_final'][1]:.4f}")
        print(f"| {r['case']} | {r['job']} | {a['cpu_s']:.1f} / {a['wall_s']:.1f} | {b['cpu_s']:.1f} / "
              f"{b['wall_s']:.1f} | {b['cpu_s'] / a['cpu_s']:.2f} | {b['wall_s'] / a['wall_s']:.2f} | {same} |")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
