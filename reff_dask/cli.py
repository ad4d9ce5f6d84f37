"""`reff-dask` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from .errors import InputError


def _chunks(text: str):
    parts = [int(p) for p in text.split(",")]
    if len(parts) not in (1, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError("chunks: one size or three (z,y,x), positive")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", help="address (tcp://host:8786) or scheduler file of a running Dask "
                                       "cluster; default: start an embedded local cluster")
    g.add_argument("--workers", type=int, help="worker processes of the embedded cluster (default: cores)")
    g.add_argument("--chunks", type=_chunks, default=64, help="map chunk edge in voxels, or z,y,x (default 64)")


def _map_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--map", required=True, help="map: MRC/CCP4 (.mrc, .map, .gz) or Zarr store")
    p.add_argument("-p", "--model", required=True, help="atomic model: PDB or mmCIF")
    p.add_argument("-r", "--resolution", type=float, required=True, help="global map resolution (A)")
    p.add_argument("-o", "--outdir", required=True, help="output folder")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reff-dask", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bfactor", help="refine per-atom B-factors with positions fixed")
    _map_model_args(b)
    b.add_argument("--iterations", type=int, default=25, help="per-atom E/M iterations (default 25)")
    b.add_argument("--residue-iterations", type=int, default=100,
                   help="E/M iterations with residue-pooled widths first (default 100; stops "
                        "earlier once converged)")
    b.add_argument("--residue-average", action="store_true",
                   help="keep one width per residue to the end (paper's residue-averaged B)")
    b.add_argument("--sigma-max", type=float, default=2.5,
                   help="cap on Gaussian sigma in A (paper: 2.5; 1.5 for membrane proteins)")
    b.add_argument("--sigma-min", type=float, default=None, help="floor on sigma in A (default: half a voxel)")
    _cluster_args(b)

    c = sub.add_parser("convert", help="convert an MRC/CCP4 map (plain or .gz) into a chunked Zarr store")
    c.add_argument("map")
    c.add_argument("store")
    c.add_argument("--chunks", type=_chunks, default=64, help="chunk edge in voxels (default 64)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            from .io.maps import read_map, write_zarr

            m = read_map(args.map, args.chunks)
            write_zarr(m, args.store, args.chunks)
            print(f"wrote {args.store}: {m.grid.shape[::-1]} voxels (x,y,z), voxel {m.grid.voxel_size} A, "
                  f"origin {m.grid.origin} A", file=sys.stderr)
            return 0
        from .cluster import dask_client

        if args.command == "bfactor":
            from .bfactor import BFactorSettings
            from .jobs import bfactor

            settings = BFactorSettings(args.resolution, args.iterations, args.residue_iterations,
                                       args.sigma_max, args.sigma_min, args.residue_average)
            with dask_client(args.scheduler, args.workers):
                bfactor.run(args.map, args.model, args.resolution, args.outdir, settings, args.chunks)
            return 0
    except InputError as e:
        print(f"reff-dask {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
