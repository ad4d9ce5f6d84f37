"""reff-dask next to a peer refinement program (servalcat), on the same map and start model.

Installs nothing. servalcat pins its own gemmi/numpy, so give it its own virtual environment:

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install servalcat
    python benchmarks/bench_peers.py --servalcat /tmp/peers/bin/servalcat

Runs, one after the other in this process's children, on the same inputs:

  servalcat   ``servalcat refine_spa_norefmac --model START --map MAP -d RES --monlib MONLIB
              -o servalcat/refined --ncycle 10`` in its own folder (a gzipped map is unpacked
              there first: servalcat reads plain MRC/CCP4 only). Skipped, with a message, when
              ``--servalcat`` (default: ``servalcat`` on PATH) is not there.
  reff-dask   ``reff-dask refine -m MAP -p START -r RES -o reff/ --preset fast --implicit none``,
              the README's first command (here as ``python -m reff_dask.cli``, the same entry
              point), plus ``--reff-args "..."``. ``--skip-reff`` leaves it out.

Per run: CPU seconds (user + sys) of the process and every child it waited for
(``resource.getrusage(RUSAGE_CHILDREN)`` before and after ``subprocess.run``: Dask workers and
OpenMM threads included; a grandchild that outlives its parent would be missed) and wall seconds.
Then, for the start model and each refined model (hydrogens removed first, so models with and
without riding hydrogens compare alike):

  CCC box    Pearson over the whole map box of the map and a model map of one Gaussian per heavy
             atom, mass Z x occupancy, sigma = 0.225 x resolution: ``reff_dask.bfactor.model_ccc``.
  CCC 3 A    the same two maps over voxels within 3 A of a heavy atom of that model (its own mask).
             (JSON also has ``ccc_mask``, the project's mask CCC: voxels within 4 sigma of an atom,
             i.e. 0.9 x resolution A.)
  CA RMSD    with ``--reference``: RMSD, in place (both models sit in the map's frame; no
             superposition), of CA atoms matched by chain name + residue number + insertion code
             (P atoms of nucleotides the same way), and how many were matched.
  geometry   ``reff_dask.validation.validate_geometry`` against the same monomer library:
             bond and angle RMSD, angle outliers (|z| > 4), twisted peptides, plane outliers,
             clashes (heavy atoms only, for every model alike).

Prints a Markdown table, the load average (``uptime``) and the machine; ``--json`` writes
everything as JSON. Cases:

    python benchmarks/bench_peers.py --servalcat /tmp/peers/bin/servalcat            # EMD-3488, ~8 CPU min
    python benchmarks/bench_peers.py --map M.mrc --model START.pdb --resolution 2.9 [--reference REF.pdb]
    python benchmarks/bench_peers.py ... --skip-reff                                  # servalcat + metrics only

The default case, ``--case emd_3488``: map examples/emd_3488/emd_3488.map.gz, start 5ME2
(examples/emd_3488/5me2.pdb), reference 5NI1 (the deposited final model), 3.2 A.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CASES = {
    "emd_3488": {"map": ROOT / "examples/emd_3488/emd_3488.map.gz", "model": ROOT / "examples/emd_3488/5me2.pdb",
                 "reference": ROOT / "examples/emd_3488/5ni1.pdb", "resolution": 3.2},
    # the other shared cases (../shared/data): deposited models, no separate answer to compare with
    "emd_2566": {"map": SHARED / "emd_2566/emd_2566_crop_3j6b_chain9.mrc.gz",
                 "model": SHARED / "emd_2566/3j6b_chain9_withH.pdb", "reference": None, "resolution": 3.2},
    "emd_11007_rna": {"map": SHARED / "emd_11007_rna/emd_11007_crop_6yyt_rna.mrc.gz",
                      "model": SHARED / "emd_11007_rna/6yyt_rna_PQTU.pdb", "reference": None, "resolution": 2.9},
    # two neighbouring subunits of the GroEL 14-mer (the other 12 chains' density stays in the map)
    "emd_1997_groel_AB": {"map": SHARED / "emd_1997_groel/emd_1997.map.gz",
                          "model": SHARED / "emd_1997_groel/1oel_14mer_fit_emd1997.pdb.gz", "chains": "AB",
                          "reference": None, "resolution": 7.0},
}


def chain_subset(model: Path, chains: str, folder: Path) -> Path:
    """``model`` cut to ``chains`` (one letter each), written as PDB in ``folder``."""
    import gemmi

    st = gemmi.read_structure(str(model))
    for name in [c.name for c in st[0] if c.name not in chains]:
        st[0].remove_chain(name)
    while len(st) > 1:
        del st[1]
    st.setup_entities()
    out = folder / f"{model.name.split('.')[0]}_{chains}.pdb"
    st.write_pdb(str(out))
    return out
MASK_RADIUS_A = 3.0
COLUMNS = ["run", "CPU s", "wall s", "CCC box / 3 A", "CA RMSD to ref", "bond RMSD", "angle RMSD",
           "twisted peptides", "plane outliers", "angle outliers (z>4)", "clashes"]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run ``cmd`` in ``cwd`` with output to ``log``; CPU (this process's waited-for children) and wall seconds."""
    print(f"[peers] $ {shlex.join(cmd)}   (in {cwd}; log {log})", file=sys.stderr, flush=True)
    load = os.getloadavg()
    cpu0, t0 = _cpu_children(), time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    print(f"[peers]   exit {rc}: {cpu:.1f} CPU s, {wall:.1f} wall s", file=sys.stderr, flush=True)
    return {"command": shlex.join(cmd), "returncode": rc, "cpu_s": cpu, "wall_s": wall, "log": str(log),
            "load_average_before": load, "load_average_after": os.getloadavg()}


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "".join(open(path, errors="replace").readlines()[-n:])
    except OSError:
        return ""


def find_servalcat(name: str) -> str | None:
    p = Path(name)
    if p.parent != Path(".") or os.sep in name:
        return str(p) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(name)


def plain_map(map_path: Path, folder: Path) -> Path:
    """The map as a plain MRC file servalcat can read: unpacked into ``folder`` when gzipped."""
    with open(map_path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if not gz:
        return map_path
    out = folder / (map_path.name[:-3] if map_path.name.endswith(".gz") else map_path.name + ".mrc")
    if out.suffix not in (".mrc", ".map", ".ccp4"):
        out = out.with_suffix(".mrc")
    with gzip.open(map_path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def origin_warning(map_path: Path) -> str | None:
    """servalcat drops the MRC ORIGIN field and places the box by NSTART; say so when they disagree."""
    import gemmi

    read = gemmi.read_ccp4_header if hasattr(gemmi, "read_ccp4_header") else gemmi.read_ccp4_map
    m = read(str(map_path))
    origin = np.array([m.header_float(50 + i) for i in range(3)])
    if not np.any(origin):
        return None
    nstart = np.array([m.header_i32(5 + i) for i in range(3)], dtype=float)
    cell = np.array([m.header_float(11 + i) for i in range(3)])
    grid = np.array([m.header_i32(8 + i) for i in range(3)], dtype=float)
    axes = [m.header_i32(17 + i) - 1 for i in range(3)]  # MAPC/MAPR/MAPS: file axis -> x/y/z
    start_xyz = np.zeros(3)
    for file_axis, xyz_axis in enumerate(axes):
        start_xyz[xyz_axis] = nstart[file_axis]
    if np.allclose(origin, start_xyz * cell / np.maximum(grid, 1), atol=0.01):
        return None
    return (f"{map_path}: MRC ORIGIN {origin.round(2).tolist()} A does not match NSTART; servalcat ignores ORIGIN, "
            "so its model may be misplaced relative to this map")


def run_servalcat(exe: str, map_path: Path, model: Path, resolution: float, monlib: Path, ncycle: int,
                  work: Path) -> dict:
    folder = work / "servalcat"
    folder.mkdir(parents=True, exist_ok=True)
    mrc = plain_map(map_path, folder)
    warn = origin_warning(mrc)
    if warn:
        print(f"[peers] warning: {warn}", file=sys.stderr)
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        version = "servalcat (version unknown)"
    cmd = [exe, "refine_spa_norefmac", "--model", str(model), "--map", str(mrc), "-d", f"{resolution:g}",
           "--monlib", str(monlib), "-o", "refined", "--ncycle", str(ncycle)]
    run = timed(cmd, folder, folder / "run.log")
    run.update(version=version.strip(), warning=warn)
    # servalcat writes PREFIX.pdb when the model fits the PDB format, and PREFIX.mmcif always
    run["model"] = next((str(p) for p in (folder / "refined.pdb", folder / "refined.mmcif") if p.exists()), None)
    return run


def run_reff(map_path: Path, model: Path, resolution: float, extra: list[str], work: Path) -> dict:
    out = work / "reff"
    cmd = [sys.executable, "-m", "reff_dask.cli", "refine", "-m", str(map_path), "-p", str(model),
           "-r", f"{resolution:g}", "-o", str(out), "--preset", "fast", "--implicit", "none", *extra]
    work.mkdir(parents=True, exist_ok=True)
    run = timed(cmd, work, work / "reff.log")
    run["model"] = next((str(p) for p in (out / "model_refined.pdb", out / "model_refined.cif") if p.exists()), None)
    return run


# ---------------------------------------------------------------------------------------- metrics


def _trace_atoms(st) -> dict[tuple, np.ndarray]:
    """CA of amino acids and P of nucleotides, keyed by (chain, residue number, insertion code)."""
    import gemmi

    out = {}
    for ch in st[0]:
        for res in ch:
            info = gemmi.find_tabulated_residue(res.name)
            name = "P" if info is not None and info.is_nucleic_acid() else "CA"
            at = res.find_atom(name, "*")
            if at is not None:
                out[(ch.name, res.seqid.num, res.seqid.icode.strip(), name)] = np.array(at.pos.tolist())
    return out


def trace_rmsd(st, ref) -> tuple[float | None, int, int]:
    """RMSD (A, in place) of matched CA/P atoms; matched count; reference count."""
    a, b = _trace_atoms(st), _trace_atoms(ref)
    keys = sorted(set(a) & set(b))
    if not keys:
        return None, 0, len(b)
    d = np.array([a[k] - b[k] for k in keys])
    return float(np.sqrt((d * d).sum(axis=1).mean())), len(keys), len(b)


def map_ccc(m, dense: np.ndarray, xyz: np.ndarray, weight: np.ndarray, resolution: float) -> dict:
    """CCC box and project mask CCC (``model_ccc``), and the CCC within ``MASK_RADIUS_A`` of the atoms."""
    from reff_dask.gmm.fit import model_ccc
    from reff_dask.gmm import kernels as K
    from reff_dask.gmm.mstep import uniform_sigma

    sigma = uniform_sigma(resolution)
    box, mask = model_ccc(m, xyz, weight, sigma)
    shape = tuple(m.grid.shape)
    start = np.zeros(3, dtype=np.int64)
    origin = np.asarray(m.grid.origin, dtype=np.float64)
    voxel = np.asarray(m.grid.voxel_size, dtype=np.float64)
    xyz = np.ascontiguousarray(xyz, dtype=np.float64)
    sig = np.full(len(xyz), sigma)
    model = np.zeros(shape)
    K.density(shape, start, origin, voxel, xyz, sig, K.amplitudes(weight, sig, m.grid.voxel_size, 1.0),
              K.KCUT, model, np.zeros(shape, dtype=np.uint8))
    near = np.zeros(shape, dtype=np.uint8)  # the kernel's support test with radius MASK_RADIUS_A
    K.density(shape, start, origin, voxel, xyz, np.full(len(xyz), MASK_RADIUS_A / K.KCUT), np.zeros(len(xyz)),
              K.KCUT, np.zeros(shape), near)
    sel = near.view(bool)
    x, y = dense[sel], model[sel]
    ccc3 = float(np.corrcoef(x, y)[0, 1]) if sel.sum() > 1 else float("nan")
    return {"ccc_box": float(box), "ccc_mask": float(mask), "ccc_3A": ccc3, "voxels_3A": int(sel.sum())}


def metrics(path: str, m, dense: np.ndarray, resolution: float, monlib: Path, reference) -> dict:
    from reff_dask.io.models import atom_table, read_structure
    from reff_dask.validation import validate_geometry

    st = read_structure(path)
    st.remove_hydrogens()
    atoms = atom_table(st, path)
    out = {"model": str(path), "heavy_atoms": len(atoms)}
    out.update(map_ccc(m, dense, atoms.xyz, atoms.weight, resolution))
    if reference is not None:
        rmsd, n, n_ref = trace_rmsd(st, reference)
        out.update(ca_rmsd_A=rmsd, ca_matched=n, ca_reference=n_ref)
    geo = validate_geometry(st, monlib=monlib)
    out["geometry"] = geo.overall
    out["geometry_worst"] = geo.worst[:5]
    out["unknown_residues"] = geo.unknown_residues
    return out


# ---------------------------------------------------------------------------------------- output


def _f(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        q = r.get("metrics")
        if q is None:
            lines.append(f"| {r['run']} | {_f(r.get('cpu_s'), '{:.0f}')} | {_f(r.get('wall_s'), '{:.0f}')} | "
                         + " | ".join(["failed"] + ["-"] * (len(COLUMNS) - 4)) + " |")
            continue
        g = q["geometry"]
        rmsd = "-" if "ca_rmsd_A" not in q else (
            f"{_f(q['ca_rmsd_A'], '{:.2f}')} ({q['ca_matched']}/{q['ca_reference']})")
        cells = [r["run"], _f(r.get("cpu_s"), "{:.0f}") if "cpu_s" in r else "-",
                 _f(r.get("wall_s"), "{:.0f}") if "wall_s" in r else "-",
                 f"{q['ccc_box']:.3f} / {_f(q['ccc_3A'], '{:.3f}')}", rmsd,
                 f"{g['bond_rmsd_A']:.4f}", f"{g['angle_rmsd_deg']:.2f}", str(g["twisted_peptides"]),
                 str(g["plane_outliers"]), str(g["angle_outliers"]), str(g["clashes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from reff_dask.validation import BUNDLED_MONOMERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), default="emd_3488",
                    help="bundled case (default emd_3488); --map/--model/--resolution override it")
    ap.add_argument("--map", type=Path, help="map (MRC/CCP4, plain or .gz)")
    ap.add_argument("--model", type=Path, help="start model")
    ap.add_argument("--resolution", type=float, help="resolution (A)")
    ap.add_argument("--reference", type=Path, help="reference model for the CA RMSD (default: the case's; "
                                                   "none with --map)")
    ap.add_argument("--servalcat", default="servalcat", help="servalcat executable (default: servalcat on PATH)")
    ap.add_argument("--ncycle", type=int, default=10, help="servalcat cycles (default 10)")
    ap.add_argument("--monlib", type=Path, default=BUNDLED_MONOMERS,
                    help="CCP4 monomer library for servalcat and the geometry check (default: the bundled subset)")
    ap.add_argument("--reff-args", default="", help='extra reff-dask refine arguments, e.g. "--workers 2"')
    ap.add_argument("--skip-reff", action="store_true", help="leave out the reff-dask run")
    ap.add_argument("--workdir", type=Path, help="folder for the runs' outputs (default: a new temporary folder, kept)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    case = dict(CASES[args.case])
    if args.map is not None:
        if args.model is None or args.resolution is None:
            ap.error("--map needs --model and --resolution")
        case = {"map": args.map, "model": args.model, "reference": None, "resolution": args.resolution}
    for key in ("model", "resolution"):
        if getattr(args, key) is not None:
            case[key] = getattr(args, key)
    if args.reference is not None:
        case["reference"] = args.reference
    for key in ("map", "model", "reference"):
        if case[key] is not None:
            case[key] = Path(case[key]).resolve()
            if not case[key].exists():
                ap.error(f"{case[key]}: no such file")
    if not (args.monlib / "list" / "mon_lib_list.cif").exists():
        ap.error(f"{args.monlib}: not a CCP4 monomer library (no list/mon_lib_list.cif)")
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_peers."))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if case.get("chains"):
        case["model"] = chain_subset(case["model"], case["chains"], work)
    info = machine()
    print(f"[peers] case: map {case['map']}, start {case['model']}, {case['resolution']:g} A, "
          f"reference {case['reference']}; outputs in {work}", file=sys.stderr, flush=True)

    runs: list[dict] = [{"run": f"start ({case['model'].name})", "model": str(case["model"])}]
    exe = find_servalcat(args.servalcat)
    skipped = []
    if exe is None:
        msg = (f"servalcat not found ({args.servalcat}); skipped. Install it into its own venv: python3 -m venv "
               "/tmp/peers && /tmp/peers/bin/pip install servalcat, then pass --servalcat /tmp/peers/bin/servalcat")
        print(f"[peers] {msg}", file=sys.stderr)
        skipped.append(msg)
    elif case["map"].is_dir():
        msg = f"servalcat reads MRC/CCP4 maps only, not the Zarr store {case['map']}; skipped"
        print(f"[peers] {msg}", file=sys.stderr)
        skipped.append(msg)
    else:
        r = run_servalcat(exe, case["map"], case["model"], case["resolution"], args.monlib.resolve(), args.ncycle,
                          work)
        words = r["version"].split()
        r["run"] = f"servalcat {words[1] if len(words) > 1 else ''} ({args.ncycle} cycles)".replace("  ", " ")
        runs.append(r)
    if args.skip_reff:
        skipped.append("reff-dask (--skip-reff)")
    else:
        r = run_reff(case["map"], case["model"], case["resolution"], shlex.split(args.reff_args), work)
        r["run"] = "reff-dask (fast, vacuum" + (f", {args.reff_args}" if args.reff_args else "") + ")"
        runs.append(r)

    import dask

    from reff_dask.io.maps import read_map
    from reff_dask.io.models import read_structure

    with dask.config.set(scheduler="synchronous"):  # one core; no cluster needed for one small map
        m = read_map(case["map"], chunks=64)
        dense = np.asarray(m.data.compute(), dtype=np.float64)
        reference = None
        if case["reference"] is not None:
            reference = read_structure(case["reference"])
            reference.remove_hydrogens()
        for r in runs:
            if r.get("model") is None or r.get("returncode", 0) != 0:
                print(f"[peers] {r['run']}: no model (exit {r.get('returncode')}); last lines of {r.get('log')}:\n"
                      f"{_tail(Path(r['log'])) if r.get('log') else ''}", file=sys.stderr)
                continue
            r["metrics"] = metrics(r["model"], m, dense, case["resolution"], args.monlib, reference)

    print(table(runs))
    print()
    print("CPU s: user+sys of the run and all its waited-for children; CCC: map vs a model map of Gaussians "
          f"(sigma 0.225 x {case['resolution']:g} A, mass Z x occupancy) over the box / within {MASK_RADIUS_A:g} A "
          "of that model's heavy atoms; CA RMSD in place, matched by chain + residue number (P for nucleotides), "
          "(matched/reference); geometry: reff_dask.validation on heavy atoms "
          f"({'bundled monomer subset' if args.monlib == BUNDLED_MONOMERS else args.monlib}).")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {uptime}")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; python {info['python']}, "
          f"numpy {info['numpy']}, gemmi {info['gemmi']}, dask {info['dask']}; load average at start "
          f"{tuple(round(x, 2) for x in info['load_average_at_start'])}")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        doc = {"case": {k: (str(v) if isinstance(v, Path) else v) for k, v in case.items()},
               "monlib": str(args.monlib), "workdir": str(work), "machine": info, "uptime_at_end": uptime,
               "runs": runs, "skipped": skipped, "table_markdown": table(runs)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=float))
    return 0 if all(r.get("returncode", 0) == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
