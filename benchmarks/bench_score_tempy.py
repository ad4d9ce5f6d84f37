"""`reff-dask score` against TEMPy 2.1.2's three scoring CLIs, one after the other in one run (issue 12).

TEMPy (PyPI ``biotempy``) needs its own environment; this script installs nothing:

    python3 -m venv /tmp/tempy && /tmp/tempy/bin/pip install numpy==1.23.5 gemmi==0.5.7 \\
        biopython==1.79 scipy mrcfile matplotlib pyfftw && /tmp/tempy/bin/pip install --no-deps biotempy voxcov
    python benchmarks/bench_score_tempy.py --tempy-bin /tmp/tempy/bin

Runs, on EMD-3488 (uncompressed copy of the map) with 5NI1 at 3.2 A, ``--repeats`` times each:
TEMPy.smoc, TEMPy.loqfit and TEMPy.scores (the three together make TEMPy's numbers that
``reff-dask score`` gives in one job: SMOC, LoQFit and global scores), and ``reff-dask score``
(no cluster named: in-process). CPU s = the command and its children (RUSAGE_CHILDREN);
median over repeats. Prints a Markdown table; ``--json`` writes every run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import DATA, ROOT, machine  # noqa: E402  (benchmarks/ is on sys.path)


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    cpu0, t0 = _cpu_children(), time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return cpu, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tempy-bin", required=True, type=Path, help="bin/ of the TEMPy environment")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", default="/tmp/reff_bench_tempy", type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = args.tmp
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mp = tmp / "emd_3488.map"
    with gzip.open(DATA / "emd_3488.map.gz") as src, open(mp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    model = DATA / "5ni1.pdb"
    t = str(args.tempy_bin)
    runs = {
        "TEMPy.smoc": [f"{t}/TEMPy.smoc", "-m", str(mp), "-p", str(model), "-r", "3.2", "--output-format", "csv"],
        "TEMPy.loqfit": [f"{t}/TEMPy.loqfit", "-m", str(mp), "-p", str(model), "-r", "3.2", "--output-format",
                         "csv"],
        "TEMPy.scores": [f"{t}/TEMPy.scores", "-m", str(mp), "-p", str(model), "-r", "3.2", "--output-format",
                         "csv"],
        "reff-dask score": [sys.executable, "-m", "reff_dask.cli", "score", "-m", str(mp), "-p", str(model), "-r",
                            "3.2", "-o", str(tmp / "reff")],
    }
    info = {"machine": machine(), "runs": {k: [] for k in runs}}
    print(f"machine: {info['machine']}", flush=True)
    for rep in range(args.repeats):
        for name, cmd in runs.items():
            cwd = tmp / name.replace(" ", "_")
            cwd.mkdir(exist_ok=True)
            cpu, wall = timed(cmd, cwd if name.startswith("TEMPy") else ROOT)
            info["runs"][name].append({"cpu_s": cpu, "wall_s": wall, "load": os.getloadavg()[0]})
            print(f"  {name} run {rep + 1}: {cpu:.1f} CPU s, {wall:.1f} s wall", flush=True)
    med = {k: (statistics.median(r["cpu_s"] for r in v), statistics.median(r["wall_s"] for r in v))
           for k, v in info["runs"].items()}
    tempy = tuple(sum(med[k][i] for k in med if k.startswith("TEMPy")) for i in (0, 1))
    print("\n| run | CPU s (median) | wall s (median) |\n|---|---|---|")
    for k, (c, w) in med.items():
        print(f"| {k} | {c:.1f} | {w:.1f} |")
    print(f"| TEMPy, three CLIs together | {tempy[0]:.1f} | {tempy[1]:.1f} |")
    c, w = med["reff-dask score"]
    print(f"\nreff-dask score / TEMPy's three: CPU {c / tempy[0]:.2f}, wall {w / tempy[1]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
