"""`reff-dask` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import contextmanager

from .errors import InputError, NumericalError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``reff-dask refine: error: ...`` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _chunks(text: str):
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"want one positive size or three (z,y,x), got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _int(lo: int):
    """argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"want an integer >= {lo}, got {v}")
        return v

    return parse


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite float in the range [lo, hi] (ends open where asked)."""
    if lo is None:
        want = "finite"
    elif hi is None:
        want = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a number, got {text!r}") from None
        below = lo is not None and (v <= lo if lo_open else v < lo)
        above = hi is not None and (v >= hi if hi_open else v > hi)
        if not math.isfinite(v) or below or above:
            raise argparse.ArgumentTypeError(f"want a number {want}, got {text}")
        return v

    return parse


#: Global map resolution, Angstrom.
_resolution = _float(0.5, 50.0)  # io.maps.RESOLUTION_RANGE_A (not imported: the parser stays light)
_positive = _float(0.0, lo_open=True)
_nonneg = _float(0.0)


def _cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", help="address (tcp://host:8786) or scheduler file of a running Dask "
                                       "cluster; default: start an embedded local cluster")
    g.add_argument("--workers", type=_int(0), help="worker processes of an embedded local cluster; 0: run in this "
                                                   "process on threads (default: in this process for maps up to "
                                                   "300^3 voxels and models up to 150,000 atoms, 20,000 for "
                                                   "refine/ensemble; else one worker per core)")
    g.add_argument("--chunks", type=_chunks, default=64, help="map chunk edge in voxels, or z,y,x (default 64)")
    g.add_argument("--tls-dir", help="folder with ca.pem, cert.pem, key.pem to join a tls:// scheduler "
                                     "(deploy/tls/make-certs.sh makes them)")
    g.add_argument("--cluster", choices=["local", "slurm", "pbs"], default="local",
                   help="without --scheduler: start the cluster locally (default) or as SLURM/PBS batch jobs "
                        "(dask-jobqueue; see deploy/README.md)")
    j = p.add_argument_group("batch cluster (--cluster slurm|pbs; unset values come from the dask jobqueue config)")
    j.add_argument("--jobs", type=_int(1), default=1, help="batch jobs to submit (default 1)")
    j.add_argument("--queue", help="partition (SLURM) or queue (PBS)")
    j.add_argument("--account", help="account/project to charge")
    j.add_argument("--walltime", help="per job, e.g. 02:00:00 (default 00:30:00)")
    j.add_argument("--job-cores", type=_int(1), help="cores per job (default 4); one 1-thread worker per core")
    j.add_argument("--job-memory", help="memory per job, e.g. 16GiB (default 16GiB)")
    j.add_argument("--job-extra", action="append", default=[], help="extra #SBATCH/#PBS directive, e.g. --job-extra=--exclusive (repeat)")
    j.add_argument("--job-prologue", action="append", default=[],
                   help="shell line run before the worker starts, e.g. 'source ~/venv/bin/activate' (repeat)")
    j.add_argument("--no-tls", action="store_true", help="plain TCP between the batch jobs (default: TLS)")


@contextmanager
def _cluster(args, size: tuple[int, int]):
    """The job's Dask client (None in-process): :func:`.cluster.dask_client`, saying where the job
    runs and, on a cluster, where its dashboard is."""
    from .cluster import dashboard_line, dask_client

    with dask_client(**_cluster_kw(args, size)) as client:
        if client is not None:
            print(f"[{args.command}] {dashboard_line(client)}", file=sys.stderr, flush=True)
        yield client


def _cluster_kw(args, size: tuple[int, int]) -> dict:
    """:func:`.cluster.dask_client` arguments; prints where the job runs (``size``: map voxels, atoms)."""
    from .cluster import JobQueueSettings, choose_workers

    workers, line = choose_workers(args.workers, args.scheduler, args.cluster, *size,
                                   md=args.command in ("refine", "ensemble"))
    print(f"[{args.command}] {line}", file=sys.stderr, flush=True)
    jq = JobQueueSettings(jobs=args.jobs, queue=args.queue, account=args.account, walltime=args.walltime,
                          cores=args.job_cores, memory=args.job_memory, job_extra=args.job_extra,
                          prologue=args.job_prologue, tls=not args.no_tls)
    return {"scheduler": args.scheduler, "workers": workers, "cluster": args.cluster, "jobqueue": jq,
            "tls_dir": args.tls_dir}


_CONVENTION_HELP = ("scores by this project's definitions ('reff', default; blockwise) or by TEMPy 2.1.2's "
                    "('tempy': SMOC, LoQFit and CCC as TEMPy.smoc/loqfit/scores compute them, for comparison "
                    "with TEMPy/CCP-EM numbers; the whole map in memory). README: `score` outputs, and the two score conventions")


def _map_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--map", required=True, help="map: MRC/CCP4 (.mrc, .map, .gz) or Zarr store")
    p.add_argument("-p", "--model", required=True, help="atomic model: PDB or mmCIF")
    p.add_argument("-r", "--resolution", type=_resolution, required=True, help="global map resolution (A)")
    p.add_argument("-o", "--outdir", required=True, help="output folder")


def _bstage_args(p: argparse.ArgumentParser, use_model_b: bool = True) -> None:
    g = p.add_argument_group("widths (B-only stage)")
    if use_model_b:
        g.add_argument("--use-model-b", action="store_true",
                       help="take widths from the model's B column (already refined) instead of running "
                            "the B-only stage")
    g.add_argument("--iterations", type=_int(1), help="per-atom E/M iterations (default 25)")
    g.add_argument("--residue-iterations", type=_int(0),
                   help="E/M iterations with residue-pooled widths first (default 100; stops earlier once "
                        "converged)")
    g.add_argument("--residue-average", action="store_true",
                   help="keep one width per residue to the end (paper's residue-averaged B)")
    g.add_argument("--sigma-max", type=_positive,
                   help="cap on Gaussian sigma in A (default 2.5, as the paper; 1.5 for membrane proteins)")
    g.add_argument("--sigma-min", type=_positive, default=None, help="floor on sigma in A (default: half a voxel)")


def _settings(cls, resolution: float, args):
    """``cls(resolution, ...)`` with the options the user gave, by field name; every other field
    keeps the dataclass default (the one source of defaults: options default to None, and
    tests/test_cli.py checks the help's "(default ...)" against the dataclasses)."""
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if f.name != "resolution" and getattr(args, f.name, None) is not None}
    return cls(resolution, **given)


def _bsettings(args, resolution: float):
    from .bfactor import BFactorSettings

    return _settings(BFactorSettings, resolution, args)


def _ensemble_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ensemble (the model's B column gives the widths: B = 8 pi^2 sigma^2)")
    g.add_argument("--k-ens", type=_nonneg, help="ensemble force constant (Eq. 14), kJ/mol A^3 "
                                                               "(default 1000)")
    g.add_argument("--k-dens", type=_nonneg, default=None, help="density force, kJ/mol per atom per map sd")
    g.add_argument("--max-members", type=_int(1), help="members at most (default 40)")
    g.add_argument("--min-members", type=_int(1), help="members at least (default 3)")
    g.add_argument("--patience", type=_int(1),
                   help="stop after this many members without a better ensemble CCC (default 3)")
    g.add_argument("--minimise-iterations", type=_int(0), help="L-BFGS iterations per minimisation (default 200)")
    g.add_argument("--md-steps", type=_int(0),
                   help="MD steps (0.1 fs) with the forces on between the minimisations (paper: 2000; default 0)")
    g.add_argument("--member-width", choices=["resolution", "model"],
                   help="widths of the members' simulated maps: uniform from the resolution (default) or "
                        "the model's B")
    g.add_argument("--forcefield", default="amber14", help="amber14 (default) or charmm36")
    g.add_argument("--implicit", default="default", help="implicit solvent XML (default: GBn2), or 'none' for vacuum")
    g.add_argument("--platform", help="OpenMM platform (default: CUDA, then OpenCL, then CPU)")
    g.add_argument("--seed", type=_int(0), help="random seed of the sampling (default 1)")


def _ensemble_settings(args):
    from .ensemble import EnsembleSettings

    return _settings(EnsembleSettings, args.resolution, args)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="reff-dask", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bfactor", help="refine per-atom B-factors with positions fixed")
    _map_model_args(b)
    _bstage_args(b, use_model_b=False)
    _cluster_args(b)

    rf = sub.add_parser("refine", help="refine atom positions and B-factors: GMM-guided MD (the main job)")
    _map_model_args(rf)
    g = rf.add_argument_group("position refinement")
    g.add_argument("--preset", choices=["paper", "fast", "minimise"],
                   help="MD per EM iteration: paper = 0.1 fs x 2000 steps (default); fast = 2 fs x 100 "
                        "steps with H bonds constrained; minimise = L-BFGS only")
    g.add_argument("--steps", type=_int(1), help="MD steps per EM iteration (overrides the preset)")
    g.add_argument("--k-gmm", type=_nonneg, default=None, help="depth of each atom's target well, kJ/mol (default: 300 up to 3.5 A resolution, x 3.5 / resolution beyond)")
    g.add_argument("--max-iterations", type=_int(1), help="EM iterations at most (default 300)")
    g.add_argument("--patience", type=_int(1),
                   help="stop after this many iterations without a CCC gain of 0.002 (default 3); the final "
                        "stage then refines on without thermal noise")
    g.add_argument("--forcefield", default="amber14", help="amber14 (default) or charmm36")
    g.add_argument("--implicit", default="default",
                   help="implicit solvent XML (default: GBn2), or 'none' for vacuum")
    g.add_argument("--platform", help="OpenMM platform (default: CUDA, then OpenCL, then CPU)")
    g.add_argument("--seed", type=_int(0), help="random seed of the MD (default 1)")
    g.add_argument("--threads", type=_int(0),
                   help="OpenMM CPU threads per MD task (default 1: runs are bitwise reproducible; groups of "
                        "chains run in parallel on the workers; 0: OpenMM's own choice)")
    g.add_argument("--rigid", nargs="+", metavar="chains|auto|NAME=SELECTION",
                   help="first fit rigid bodies by the same mixture model: 'chains' (each chain), 'auto' (each "
                        "chain's compact domains, found from its contacts), or groups in gemmi selection syntax "
                        "(e.g. dom1=//A/1-80 dom2=//A/81-200); for a model several A or tens of degrees off its "
                        "density (another conformation, a domain hinge motion, a docked domain)")
    g.add_argument("--resume", action="store_true", help="continue from OUTDIR/checkpoint.npz")
    g.add_argument("--monlib", help="CCP4 monomer library folder (e.g. $CLIBD_MON) for residues the bundled "
                                    "dictionaries lack: geometry targets in MD and the geometry report")
    g.add_argument("--convention", choices=["reff", "tempy"], default="reff",
                   help="scores of the start and refined model in the report: " + _CONVENTION_HELP)
    _bstage_args(rf, use_model_b=False)
    _cluster_args(rf)

    rg = sub.add_parser("rigid", help="rigid-body fit of chains or selected groups (mixture-model EM, coarse to "
                                      "fine): large moves before flexible fitting")
    _map_model_args(rg)
    rg.add_argument("--group", action="append", metavar="NAME=SELECTION",
                    help="fit these groups (repeat; gemmi selection syntax, e.g. --group dom1=//A/1-80); atoms in no "
                         "group stay put; '--group auto': each chain's compact domains, found from its contacts "
                         "(default: every chain is a group)")
    _cluster_args(rg)

    sg = sub.add_parser("segment", help="split a map into per-chain parts by GMM responsibilities")
    _map_model_args(sg)
    sg.add_argument("--group", action="append", metavar="NAME=SELECTION",
                    help="segment by groups of atoms instead of chains (repeat; gemmi selection syntax, e.g. "
                         "--group alpha=/1/A,C --group beta=/1/B,D); atoms in no group form 'rest'")
    sg.add_argument("--threshold", type=_float(0.0, 1.0, hi_open=True), default=0.5,
                    help="label a voxel when its top responsibility exceeds this (default 0.5)")
    sg.add_argument("--keep-zarr", action="store_true", help="also keep the outputs as Zarr stores")
    _bstage_args(sg)
    _cluster_args(sg)

    cm = sub.add_parser("composite", help="responsibility-weighted composite of pre-aligned focused maps")
    cm.add_argument("-m", "--map", action="append", required=True, help="focused map (repeat, one per map)")
    cm.add_argument("-p", "--model", action="append", required=True,
                    help="consensus model, or one model per map (repeat in map order)")
    cm.add_argument("-r", "--resolution", type=_resolution, action="append", required=True,
                    help="resolution (A): one, or one per map")
    cm.add_argument("-o", "--output", required=True, help="composite map: .mrc, or a .zarr store")
    cm.add_argument("--no-resample", action="store_true",
                    help="refuse maps whose grid differs from the first map's (default: trilinear resampling)")
    cm.add_argument("--match-scale", action="store_true",
                    help="bring every map to the first map's intensity units (fitted mass scales) before mixing")
    _bstage_args(cm)
    _cluster_args(cm)

    sc = sub.add_parser("score", help="fit scores of one or more models: global CCC, per-residue SMOCf and LoQFit")
    sc.add_argument("-m", "--map", required=True, help="map: MRC/CCP4 (.mrc, .map, .gz) or Zarr store")
    sc.add_argument("-p", "--model", action="append", required=True, help="model: PDB or mmCIF (repeat to compare)")
    sc.add_argument("-r", "--resolution", type=_resolution, required=True, help="global map resolution (A)")
    sc.add_argument("-o", "--outdir", required=True, help="output folder")
    sc.add_argument("--window", type=_int(1), default=11, help="SMOCf window in residues (default 11)")
    sc.add_argument("--contour", type=_float(), help="also report the CCC over map voxels >= this level")
    sc.add_argument("--loqfit-cap", type=_positive, default=18.0, help="upper limit on LoQFit in A (default 18)")
    sc.add_argument("--qscore-sigma", type=_positive, default=0.6,
                    help="reference width of the Q-score in A (default 0.6, MapQ's; EMDB's validation uses 0.4)")
    sc.add_argument("--half-maps", nargs=2, metavar=("HALF1", "HALF2"),
                    help="the two half maps (on the map's grid): FSC of each with the model, and of one with the other")
    sc.add_argument("--convention", choices=["reff", "tempy"], default="reff", help=_CONVENTION_HELP)
    _cluster_args(sc)

    en = sub.add_parser("ensemble", help="ensemble of models sampled from a refined model's B-factors, "
                                         "with its ensemble map, RMSF and CCCs")
    _map_model_args(en)
    _ensemble_args(en)
    _cluster_args(en)

    va = sub.add_parser("validate", help="model geometry against the CCP4 monomer library: bond/angle RMSD and "
                                         "outliers, twisted/cis peptides, planes, chirality, clashes (no map)")
    va.add_argument("-p", "--model", action="append", required=True, help="model: PDB or mmCIF (repeat)")
    va.add_argument("--monlib", help="CCP4 monomer library folder (e.g. $CLIBD_MON) for residues the bundled "
                                     "dictionaries lack")
    va.add_argument("-o", "--outdir", help="also write validation.json and validation.csv here")

    c = sub.add_parser("convert", help="convert an MRC/CCP4 map (plain or .gz) into a chunked Zarr store")
    c.add_argument("map")
    c.add_argument("store")
    c.add_argument("--chunks", type=_chunks, default=64, help="chunk edge in voxels (default 64)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .precheck import precheck

        size = precheck(args)
        if args.command == "convert":
            from .io.maps import read_map, write_zarr

            m = read_map(args.map, args.chunks)
            write_zarr(m, args.store, args.chunks)
            print(f"wrote {args.store}: {m.grid.shape[::-1]} voxels (x,y,z), voxel {m.grid.voxel_size} A, "
                  f"origin {m.grid.origin} A", file=sys.stderr)
            return 0
        if args.command == "validate":
            from .jobs import validate

            validate.run(args.model, args.outdir, args.monlib)
            return 0

        if args.command == "bfactor":
            from .jobs import bfactor

            settings = _bsettings(args, args.resolution)
            with _cluster(args, size):
                bfactor.run(args.map, args.model, args.resolution, args.outdir, settings, args.chunks)
            return 0
        if args.command == "refine":
            from .jobs import refine
            from .refine import RefineSettings

            rs = _settings(RefineSettings, args.resolution, args)
            implicit = None if args.implicit.lower() == "none" else args.implicit
            with _cluster(args, size):
                refine.run(args.map, args.model, args.resolution, args.outdir, rs, _bsettings(args, args.resolution),
                           args.forcefield, implicit, args.chunks, args.resume, monlib=args.monlib, rigid=args.rigid,
                           convention=args.convention)
            return 0
        if args.command == "rigid":
            from .jobs import rigid

            with _cluster(args, size):
                rigid.run(args.map, args.model, args.resolution, args.outdir, args.group, args.chunks)
            return 0
        if args.command in ("segment", "composite"):
            res = args.resolution if args.command == "segment" else args.resolution[0]
            settings = _bsettings(args, res)
            if args.command == "segment":
                from .jobs import segment

                with _cluster(args, size):
                    segment.run(args.map, args.model, args.resolution, args.outdir, settings, args.group,
                                args.use_model_b, args.threshold, args.chunks, args.keep_zarr)
                return 0
            from .jobs import composite

            with _cluster(args, size):
                composite.run(args.map, args.model, args.resolution, args.output, settings, args.use_model_b,
                              not args.no_resample, args.match_scale, args.chunks)
            return 0
        if args.command == "score":
            from .jobs import score
            from .scores import ScoreSettings

            settings = ScoreSettings(window=args.window, loqfit_cap=args.loqfit_cap, contour=args.contour,
                                     qscore_sigma=args.qscore_sigma, convention=args.convention)
            with _cluster(args, size):
                score.run(args.map, args.model, args.resolution, args.outdir, settings, args.chunks, args.half_maps)
            return 0
        if args.command == "ensemble":
            from .jobs import ensemble

            implicit = None if args.implicit.lower() == "none" else args.implicit
            with _cluster(args, size):
                ensemble.run(args.map, args.model, args.resolution, args.outdir, _ensemble_settings(args),
                             args.forcefield, implicit, args.chunks)
            return 0
    except InputError as e:
        print(f"reff-dask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NumericalError as e:
        print(f"reff-dask {args.command}: numerical failure: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        resume = " (rerun with --resume to continue from the checkpoint)" if args.command == "refine" else ""
        print(f"reff-dask {args.command}: interrupted; outputs written so far are complete, nothing is "
              f"half-written{resume}", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
