"""The README's test command, run several times in a row while busy processes load the CPU.

Proves the suite does not depend on timing (issue 15): every run must pass, with no rerun
plugin. The load is ``--spinners`` Python processes that spin for the whole time (4 on the
2-core CI machine: each test process gets about a third of a core).

    python benchmarks/bench_loaded_suite.py --runs 3 --spinners 4 --json loaded.json

Prints one line per run (exit status, pytest's summary line, wall minutes, load average) and
writes them to --json. Run it from the repository root in the project's environment.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time


def _spin() -> None:
    while True:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spinners", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("pytest_args", nargs="*", default=["-q"], help="arguments of pytest (default: -q)")
    a = ap.parse_args()
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(a.spinners)]
    for p in spinners:
        p.start()
    rows = []
    try:
        for k in range(a.runs):
            t0 = time.time()
            r = subprocess.run([sys.executable, "-m", "pytest", *a.pytest_args], capture_output=True, text=True)
            summary = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or [""]
            row = {"run": k + 1, "exit": r.returncode, "summary": summary[0].strip("= "),
                   "wall_min": round((time.time() - t0) / 60, 1), "load_average": os.getloadavg(),
                   "spinners": a.spinners, "cores": os.cpu_count()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if r.returncode:
                print(r.stdout[-6000:], file=sys.stderr)
    finally:
        for p in spinners:
            p.terminate()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
