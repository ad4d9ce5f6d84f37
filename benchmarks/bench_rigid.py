"""Rigid-body stage (issue 11): capture range on EMD-3488 and refine with / without it.

Capture range: 5NI1 chain A turned about its centre (axis (1, 2, 0.5)) or shifted (direction
(0.6, -0.8, 0)) by known amounts, then ``reff_dask.rigid.rigid_fit`` with every chain a group,
in this process; final CA RMSD of chain A to 5NI1, of the other chains, E/M iterations and
seconds per iteration. With ``--refine``: the README's refine command (fast, vacuum) on the
model with chain A turned 20 deg and shifted 6 A, without and with ``--rigid chains`` (CPU s of
the command and its children; CA RMSD of the refined model to 5NI1).

    python benchmarks/bench_rigid.py                # capture range, ~3 min here
    python benchmarks/bench_rigid.py --refine       # and the two refinements, ~4 min more
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reff_dask.io.maps import read_map
from reff_dask.io.models import atom_table, read_structure, updated_structure, write_structure
from reff_dask.rigid import RigidSettings, rigid_fit

from _machine import DATA, ROOT, machine  # noqa: E402  (benchmarks/ is on sys.path)

AXIS = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
DIRECTION = np.array([0.6, -0.8, 0.0])


def rotation(deg: float) -> np.ndarray:
    k = np.array([[0, -AXIS[2], AXIS[1]], [AXIS[2], 0, -AXIS[0]], [-AXIS[1], AXIS[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def moved(xyz: np.ndarray, a: np.ndarray, deg: float, shift: float) -> np.ndarray:
    out = xyz.copy()
    c = xyz[a].mean(axis=0)
    out[a] = (xyz[a] - c) @ rotation(deg).T + c + shift * DIRECTION
    return out


def rms(x: np.ndarray, y: np.ndarray, sel: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((x[sel] - y[sel]) ** 2, axis=1))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refine", action="store_true")
    ap.add_argument("--tmp", default="/tmp/reff_bench_rigid", type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "capture": [], "refine": []}
    print(f"machine: {info['machine']}", flush=True)
    m = read_map(DATA / "emd_3488.map.gz", 64)
    m.data = m.data.persist()
    st = read_structure(DATA / "5ni1.pdb")
    at = atom_table(st)
    ca = np.array([a.name == "CA" for ch in st[0] for r in ch for a in r])
    a = at.chain == 0
    cases = [(0.0, s) for s in (5.0, 10.0, 15.0, 20.0)] + [(d, 0.0) for d in (10.0, 20.0, 30.0, 45.0)]
    for deg, shift in cases:
        x0 = moved(at.xyz, a, deg, shift)
        t0 = time.perf_counter()
        res = rigid_fit(m, x0, at.weight, at.chain.astype(int), RigidSettings(3.2))
        dt = time.perf_counter() - t0
        row = {"rotation_deg": deg, "shift_A": shift, "start_ca_rmsd_A": rms(x0, at.xyz, a & ca),
               "final_ca_rmsd_A": rms(res.xyz, at.xyz, a & ca), "others_ca_rmsd_A": rms(res.xyz, at.xyz, ~a & ca),
               "iterations": len(res.history), "seconds": dt, "seconds_per_iteration": dt / len(res.history)}
        info["capture"].append(row)
        print(f"  {deg:4.0f} deg {shift:4.0f} A: CA RMSD {row['start_ca_rmsd_A']:.2f} -> {row['final_ca_rmsd_A']:.2f} A "
              f"(others {row['others_ca_rmsd_A']:.2f}), {row['iterations']} iterations, {dt:.1f} s", flush=True)
    if args.refine:
        x0 = moved(at.xyz, a, 20.0, 6.0)
        write_structure(updated_structure(st, xyz=x0), args.tmp / "moved")
        for label, extra in (("MD alone", []), ("--rigid chains", ["--rigid", "chains"])):
            out = args.tmp / label.replace(" ", "_").strip("-")
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "reff_dask.cli", "refine", "-m", str(DATA / "emd_3488.map.gz"),
                                "-p", str(args.tmp / "moved.pdb"), "-r", "3.2", "-o", str(out), "--preset", "fast",
                                "--implicit", "none", *extra], cwd=ROOT, capture_output=True, text=True)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode != 0:
                raise SystemExit(p.stderr[-2000:])
            rep = json.loads((out / "report.json").read_text())
            fin = atom_table(read_structure(out / "model_refined.pdb"))
            row = {"run": label, "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                   "wall_s": time.perf_counter() - t0, "ccc_final": rep["ccc_final"],
                   "ca_rmsd_chain_A": rms(fin.xyz, at.xyz, a & ca), "ca_rmsd_others": rms(fin.xyz, at.xyz, ~a & ca),
                   "geometry": {k: rep["geometry"]["refined"]["overall"][k] for k in
                                ("bond_rmsd_A", "angle_rmsd_deg", "twisted_peptides", "clashes")},
                   "rigid_seconds": rep["wall_seconds"].get("rigid", 0.0)}
            info["refine"].append(row)
            print(f"  refine, {label}: CCC {row['ccc_final']:.4f}, CA RMSD chain A {row['ca_rmsd_chain_A']:.2f} A, "
                  f"others {row['ca_rmsd_others']:.2f}; {row['cpu_s']:.0f} CPU s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
