"""`reff-dask score` against TEMPy 2.1.2's three scoring CLIs, one after the other in one run (issue 12).

TEMPy (PyPI ``biotempy``) needs its own environment; this script installs nothing:

    python3 -m venv /tmp/tempy && /tmp/tempy/bin/pip install numpy==1.23.5 gemmi==0.5.7 \\
        biopython==1.79 scipy mrcfile matplotlib pyfftw && /tmp/tempy/bin/pip install --no-deps biotempy voxcov
    python benchmarks/bench_score_tempy.py --tempy-bin /tmp/tempy/bin

Runs, on EMD-3488 (uncompressed copy of the map) with 5NI1 at 3.2 A, ``--repeats`` times each:
TEMPy.smoc, TEMPy.loqfit and TEMPy.scores (the three together make TEMPy's numbers that
``reff-dask score`` gives in one job: SMOC, LoQFit and global scores), and ``reff-dask score``
(no cluster named: in-process), with this project's scores and with ``--convention tempy``.
CPU s = the command and its children (RUSAGE_CHILDREN); median over repeats.

Then, in the same run, the agreement of ``reff-dask score`` (both conventions) with TEMPy on
each shared case (EMD-3488 with 5NI1, the EMD-2566 crop, the RNA crop; those two skipped
when ../shared/data is not there): per residue SMOC and LoQFit (Pearson r, mean |diff|,
mean diff, residues both score) and the global CCC. Prints Markdown tables; ``--json``
writes every run and every figure.
"""

from __future__ import annotations

import argparse
import csv
import glob
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

import numpy as np
from _machine import DATA, ROOT, machine  # noqa: E402  (benchmarks/ is on sys.path)

SHARED = DATA.parent
#: case: (map, model, resolution A) under ../shared/data
CASES = {"emd_3488": ("emd_3488/emd_3488.map.gz", "emd_3488/5ni1.pdb", 3.2),
         "emd_2566": ("emd_2566/emd_2566_crop_3j6b_chain9.mrc.gz", "emd_2566/3j6b_chain9_withH.pdb", 3.2),
         "emd_11007_rna": ("emd_11007_rna/emd_11007_crop_6yyt_rna.mrc.gz", "emd_11007_rna/6yyt_rna_PQTU.pdb", 2.9)}


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
        "reff-dask score --convention tempy": [sys.executable, "-m", "reff_dask.cli", "score", "-m", str(mp), "-p",
                                               str(model), "-r", "3.2", "-o", str(tmp / "reff_tempy"),
                                               "--convention", "tempy"],
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
    for k in ("reff-dask score", "reff-dask score --convention tempy"):
        c, w = med[k]
        print(f"\n{k} / TEMPy's three: CPU {c / tempy[0]:.2f}, wall {w / tempy[1]:.2f}")
    info["agreement"] = agreement(tmp, t)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


def _tempy_csv(folder: Path, kind: str) -> dict:
    out = {}
    for f in glob.glob(str(folder / f"{kind}_*_chain-*.csv")):
        chain = f.rsplit("chain-", 1)[1][:-4]
        for row in csv.reader(open(f)):
            out[(chain, int(row[0]))] = float(row[1])
    return out


def _reff_csv(folder: Path) -> tuple[dict, dict]:
    smoc, loq = {}, {}
    for row in csv.DictReader(open(folder / "scores.csv")):
        if row["icode"]:
            continue
        key = (row["chain"], int(row["resnum"]))
        s = [v for k, v in row.items() if k.startswith("smocf_")][0]
        q = [v for k, v in row.items() if k.startswith("loqfit_")][0]
        if s:
            smoc[key] = float(s)
        if q:
            loq[key] = float(q)
    return smoc, loq


def agreement(tmp: Path, tempy_bin: str) -> list[dict]:
    """Per case, metric and convention: r, mean |diff|, mean diff (reff - TEMPy) over residues both score."""
    rows = []
    print("\n| reff-dask convention | case | metric | residues | r | mean abs diff | mean diff (reff - TEMPy) |"
          "\n|---|---|---|---|---|---|---|")
    for case, (mp, model, res) in CASES.items():
        if not (SHARED / mp).exists():
            print(f"(skipped {case}: {SHARED / mp} not there)")
            continue
        d = tmp / "agree" / case
        d.mkdir(parents=True, exist_ok=True)
        plain = d / "map.mrc"
        with gzip.open(SHARED / mp) as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        r = str(res)
        for tool in ("smoc", "loqfit", "scores"):
            timed([f"{tempy_bin}/TEMPy.{tool}", "-m", str(plain), "-p", str(SHARED / model), "-r", r,
                   "--output-format", "csv"], d)
        ref = {"SMOC": _tempy_csv(d, "SMOC"), "LoQFit": _tempy_csv(d, "LoqFit")}
        ref_ccc = float(open(glob.glob(str(d / "globscores_*.csv"))[0]).read().split()[0].split(",")[1])
        for conv in ("reff", "tempy"):
            out = d / f"reff_{conv}"
            timed([sys.executable, "-m", "reff_dask.cli", "score", "-m", str(plain), "-p", str(SHARED / model),
                   "-r", r, "-o", str(out), "--convention", conv], ROOT)
            smoc, loq = _reff_csv(out)
            ccc = list(json.loads((out / "report.json").read_text())["ccc"].values())[0]["ccc_box"]
            for metric, got in (("SMOC", smoc), ("LoQFit", loq)):
                keys = sorted(k for k in ref[metric] if k in got)
                a = np.array([got[k] for k in keys])
                b = np.array([ref[metric][k] for k in keys])
                rr = float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")
                row = {"convention": conv, "case": case, "metric": metric, "n": len(keys), "r": rr,
                       "mean_abs_diff": float(np.abs(a - b).mean()), "mean_diff": float((a - b).mean())}
                rows.append(row)
                print(f"| {conv} | {case} | {metric} | {len(keys)} of {len(ref[metric])} | "
                      + ("-" if rr != rr else f"{rr:.4f}") + f" | {row['mean_abs_diff']:.4f} | "
                      f"{row['mean_diff']:+.4f} |")
            rows.append({"convention": conv, "case": case, "metric": "CCC", "reff": ccc, "tempy": ref_ccc})
            print(f"| {conv} | {case} | CCC (box) | | | {abs(ccc - ref_ccc):.4f} | {ccc:.4f} vs TEMPy {ref_ccc:.3f} |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
