"""`reff-dask validate`: geometry of one or more models against the CCP4 monomer library.

No map and no Dask cluster: every model is read, checked and measured in this process
(:func:`reff_dask.validation.validate_geometry`). Prints one table per model (overall and
per chain) with its worst deviations; with an output folder, also writes
``validation.json`` (every number) and ``validation.csv`` (one row per model and chain).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import TextIO

from ..errors import InputError
from ..io.atomic import write_text
from ..io.models import model_labels, read_structure
from ..validation import OMEGA_TWIST_DEG, PLANE_OUTLIER_A, Z_OUTLIER, check_monlib, validate_geometry
from .common import progress, write_json

#: (key in the geometry dicts, table header, format) in table and CSV order.
COLUMNS = (
    ("bond_rmsd_A", "bond RMSD A", "{:.4f}"),
    ("angle_rmsd_deg", "angle RMSD deg", "{:.2f}"),
    ("bond_outliers", "bond outl", "{:d}"),
    ("angle_outliers", "angle outl", "{:d}"),
    ("twisted_peptides", "twisted pep", "{:d}"),
    ("cis_peptides", "cis pep", "{:d}"),
    ("plane_outliers", "plane outl", "{:d}"),
    ("chiral_outliers", "chiral outl", "{:d}"),
    ("clashes", "clashes", "{:d}"),
)
#: Restraint counts, written to the CSV after the columns above.
COUNTS = ("bonds", "angles", "peptides", "plane_atoms", "chirals")

NOTES = {
    "outliers": f"bond and angle outliers: |deviation| > {Z_OUTLIER:g} x the dictionary esd",
    "peptides": f"twisted: omega more than {OMEGA_TWIST_DEG:g} deg from both 0 and 180; "
                f"cis: within {OMEGA_TWIST_DEG:g} deg of 0, proline excluded",
    "planes": f"plane outliers: atoms more than {PLANE_OUTLIER_A:g} A from their restraint plane",
    "chirality": "chiral centres with the wrong handedness",
    "clashes": "pairs overlapping by 0.4 A or more (MolProbity radii; hydrogens take part where present); "
               "a clash between chains counts for the chain of its first atom",
    "scope": "heavy atoms of the first model; residues without a dictionary are listed in unknown_residues",
}


def format_table(label: str, path: str, result: dict, n_worst: int = 10) -> str:
    """One model's table: overall and per-chain rows, worst deviations, unknown residues."""
    heads = ["scope"] + [h for _, h, _ in COLUMNS]
    rows = [["all"] + [fmt.format(result["overall"].get(k, 0)) for k, _, fmt in COLUMNS]]
    for chain, r in result["per_chain"].items():
        rows.append([f"chain {chain}"] + [fmt.format(r.get(k, 0)) for k, _, fmt in COLUMNS])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    o = result["overall"]
    lines = [f"{label}  ({path}: {result['atoms']} atoms; {o.get('bonds', 0)} bonds, {o.get('angles', 0)} angles, "
             f"{o.get('peptides', 0)} peptides, {o.get('plane_atoms', 0)} plane atoms, "
             f"{o.get('chirals', 0)} chiral centres)"]
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths))))
    for r in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    worst = result["worst"][:n_worst]
    lines.append(f"worst {len(worst)}:" if worst else "worst: none beyond the outlier limits")
    lines.extend(f"  {w}" for w in worst)
    unknown = result["unknown_residues"]
    if unknown:
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        lines.append(f"no dictionary (not checked): {', '.join(unknown[:10])}{more}")
    return "\n".join(lines)


def csv_text(results: dict[str, dict]) -> str:
    """One row per model and chain."""
    buf = io.StringIO()
    keys = [k for k, _, _ in COLUMNS] + list(COUNTS)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "chain"] + keys)
    for label, res in results.items():
        for chain, r in res["per_chain"].items():
            w.writerow([label, chain] + [f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")
                                         for k in keys])
    return buf.getvalue()


def run(model_paths: list[str], outdir: str | None = None, monlib: str | None = None, n_worst: int = 10,
        out: TextIO | None = None) -> dict:
    """Validate every model; print the tables to ``out`` (stdout) and, with ``outdir``, write
    validation.json and validation.csv there. Returns the JSON report as a dict."""
    out = out or sys.stdout
    t0 = time.perf_counter()
    check_monlib(monlib)
    labels = model_labels(model_paths)
    structures = [read_structure(p) for p in model_paths]  # every file checked before any work
    results: dict[str, dict] = {}
    for label, path, st in zip(labels, model_paths, structures):
        try:
            geo = validate_geometry(st, monlib=monlib, n_worst=max(n_worst, 10))
        except FileNotFoundError as e:
            raise InputError(monlib or "--monlib", str(e)) from None
        except (RuntimeError, ValueError) as e:
            raise InputError(path, f"geometry could not be computed ({e})") from None
        results[label] = {"file": str(path), "atoms": st[0].count_atom_sites(), **geo.as_dict()}
        print(format_table(label, str(path), results[label], n_worst), file=out)
        print(file=out, flush=True)
    report = {
        "command": "validate",
        "monlib": str(monlib) if monlib else None,
        "dictionaries": "bundled CCP4 monomer-library subset" + (f", then {monlib}" if monlib else ""),
        "thresholds": {"z_outlier": Z_OUTLIER, "omega_twist_deg": OMEGA_TWIST_DEG,
                       "plane_outlier_A": PLANE_OUTLIER_A},
        "notes": NOTES,
        "models": results,
        "wall_seconds": time.perf_counter() - t0,
    }
    if outdir is not None:
        d = Path(outdir)
        write_json(d / "validation.json", report)
        write_text(d / "validation.csv", csv_text(results))
        progress("validate")(f"wrote {d / 'validation.json'} and {d / 'validation.csv'}")
    return report
