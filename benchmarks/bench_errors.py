"""Wall time from launch to the one-line refusal, for option, path, map and model errors.

Each case runs ``python -m reff_dask.cli`` as a fresh process (imports included), as a user
meets it. Prints the median of ``--repeat`` runs per case and the worst case.

    python benchmarks/bench_errors.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "emd_3488"


def cases(tmp: Path) -> dict[str, list[str]]:
    m, p, out = str(EX / "emd_3488.map.gz"), str(EX / "5ni1.pdb"), str(tmp / "out")
    (tmp / "file").write_text("x")
    (tmp / "text.mrc").write_text("hello\n" * 300)
    (tmp / "dup.pdb").write_text("".join(l for l in open(p) if l.startswith("ATOM"))[:81 * 3] * 2)
    return {
        "option --workers -1": ["refine", "-m", m, "-p", p, "-r", "3.2", "-o", out, "--workers", "-1"],
        "option --sigma-min > --sigma-max": ["bfactor", "-m", m, "-p", p, "-r", "3.2", "-o", out, "--sigma-min", "3"],
        "missing map": ["refine", "-m", str(tmp / "nope.mrc"), "-p", p, "-r", "3.2", "-o", out],
        "output is a file": ["refine", "-m", m, "-p", p, "-r", "3.2", "-o", str(tmp / "file")],
        "scheduler not listening": ["score", "-m", m, "-p", p, "-r", "3.2", "-o", out, "--scheduler",
                                    "tcp://127.0.0.1:1"],
        "text as map": ["bfactor", "-m", str(tmp / "text.mrc"), "-p", p, "-r", "3.2", "-o", out],
        "duplicated atoms": ["bfactor", "-m", m, "-p", str(tmp / "dup.pdb"), "-r", "3.2", "-o", out],
        "contour above map max (map read + scanned)": ["score", "-m", m, "-p", p, "-r", "3.2", "-o", out, "--contour", "1e9"],
        "refine: unknown force field (OpenMM loaded)": ["refine", "-m", m, "-p", p, "-r", "3.2", "-o", out,
                                                       "--forcefield", "nonsense"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        rows = []
        for name, argv in cases(Path(d)).items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "reff_dask.cli", *argv], capture_output=True, text=True,
                                   cwd=ROOT)
                times.append(time.perf_counter() - t0)
                assert r.returncode == 2, r.stderr
            rows.append((name, statistics.median(times), r.stderr.strip()))
        for name, t, line in rows:
            print(f"{t:6.2f} s  {name:45s} {line[:110]}")
        print(f"worst median {max(t for _, t, _ in rows):.2f} s")


if __name__ == "__main__":
    main()
