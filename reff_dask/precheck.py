"""Every check of a job's inputs, options and output path that can be made before a cluster starts.

:func:`precheck` runs in the client process in well under a second for a path or option error
(no cluster, no worker, no OpenMM system): a bad input costs the user one line, exit 2 and
nothing written. Map *values* (NaN voxels, a flat map, a contour above the maximum) are
scanned here too when the map is small enough to read at once (:data:`SCAN_BYTES`); larger
maps are scanned by the job on the cluster's first pass, with the same checks.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .errors import InputError

#: Maps up to this size (float32 bytes) are scanned for NaN/flat values before the cluster starts.
SCAN_BYTES = 512 * 1024**2
#: Seconds to wait for a TCP answer from a scheduler address.
CONNECT_SECONDS = 5.0
#: Suffixes a composite map may be written as.
MAP_SUFFIXES = (".mrc", ".map", ".zarr")


def _local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _given_or_default(args, name: str, cls):
    """The option's value, or the settings dataclass's default when it was not given."""
    import dataclasses

    v = getattr(args, name, None)
    return v if v is not None else next(f.default for f in dataclasses.fields(cls) if f.name == name)


def check_options(args) -> None:
    """Options that must agree with each other (each one's own range is checked by the parser)."""
    cmd = args.command
    if getattr(args, "sigma_min", None) is not None:
        from .bfactor import BFactorSettings

        smin, smax = args.sigma_min, _given_or_default(args, "sigma_max", BFactorSettings)
        if smin > smax:
            raise InputError(f"--sigma-min {smin}", f"is above --sigma-max {smax}")
    if cmd == "ensemble":
        from .ensemble import EnsembleSettings

        lo, hi = (_given_or_default(args, k, EnsembleSettings) for k in ("min_members", "max_members"))
        if lo > hi:
            raise InputError(f"--min-members {lo}", f"is above --max-members {hi}")
    if cmd == "composite":
        n = len(args.map)
        for what, vals in (("-p/--model", args.model), ("-r/--resolution", args.resolution)):
            if len(vals) not in (1, n):
                raise InputError(f"composite {what}", f"given {len(vals)} times for {n} maps; give it once or "
                                                      "once per -m")
        from .jobs.composite import check_model_b

        check_model_b(args.model, n, args.use_model_b)
        out = str(args.output).rstrip("/")
        if not out.lower().endswith(MAP_SUFFIXES):
            raise InputError(args.output, "the composite is written as a map: name it .mrc, .map or .zarr")


def check_scheduler(args) -> None:
    """A scheduler file that exists and names an address, and something listening there."""
    sched = getattr(args, "scheduler", None)
    if getattr(args, "tls_dir", None):
        from .cluster import tls_security

        tls_security(args.tls_dir)
    if not sched:
        return
    address = sched
    if "://" not in sched and not _looks_like_address(sched):
        p = Path(sched)
        if not p.is_file():
            raise InputError(sched, "no such scheduler file (and not an address like tcp://host:8786)")
        try:
            address = json.loads(p.read_text())["address"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise InputError(sched, "not a Dask scheduler file (JSON with an \"address\")") from None
    probe_address(address, sched)


def _looks_like_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and "/" not in text)


def probe_address(address: str, shown: str | None = None) -> None:
    """Refuse a scheduler address that is malformed or where nothing answers on TCP."""
    shown = shown or address
    url = urlsplit(address if "://" in address else f"tcp://{address}")
    if url.scheme not in ("tcp", "tls", "ws", "wss", "inproc", "ucx"):
        raise InputError(shown, f"unknown scheduler protocol {url.scheme!r} (use tcp:// or tls://)")
    if url.scheme == "inproc":
        return
    try:
        host, port = url.hostname, url.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise InputError(shown, f"scheduler address {address!r} lacks a host or port (e.g. tcp://host:8786)")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise InputError(shown, f"no Dask scheduler answers at {host}:{port} ({why})") from None


def check_output(args) -> None:
    """The output folder (or composite map) can be made: probe-write beside it."""
    out = getattr(args, "outdir", None) or getattr(args, "output", None) or getattr(args, "store", None)
    if out is None or not _local(out):
        return
    out = Path(str(out).removeprefix("file://"))
    if args.command == "convert":
        if out.exists() and not out.is_dir():
            raise InputError(out, "exists and is a file; the Zarr store is a folder")
    elif args.command == "composite":
        if out.is_dir() and not str(out).rstrip("/").endswith(".zarr"):
            raise InputError(out, "is a folder; the composite is written as a map file (.mrc) or a .zarr store")
    elif out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder (the output folder)")
    parent = out if out.is_dir() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(out, f"cannot be made: {parent} is a file, not a folder")
    try:  # a real probe (root passes os.access everywhere): a folder made and removed again
        os.rmdir(tempfile.mkdtemp(prefix=".reff-dask-probe-", dir=parent))
    except OSError as e:
        raise InputError(out, f"cannot write there ({parent}: {e.strerror})") from None


def scan_map(m) -> dict | None:
    """Values of a small map checked (NaN, flat) in this process; ``None`` for a map too large."""
    import dask

    from .io.maps import check_map_values, map_stats

    if m.data.nbytes > SCAN_BYTES:
        return None
    with dask.config.set(scheduler="threads"):
        stats = map_stats(m)
    check_map_values(m, stats)
    return stats


def check_contour(m, stats: dict, contour: float | None) -> None:
    """Refuse a contour level that no voxel reaches."""
    if contour is not None and not contour <= stats["max"]:
        raise InputError(f"--contour {contour}", f"is above the maximum of {m.path} ({stats['max']:.4g}); "
                                                 "no voxel would be inside")


def check_inputs(args) -> tuple[int, int]:
    """Maps readable, models readable, each model inside its map, the job's own input rules.
    Returns the job's size: map voxels (all maps together) and atoms (the largest model)."""
    from .io.maps import read_map
    from .io.models import atom_table, check_in_box, read_structure, widths_from_b

    cmd = args.command
    chunks = getattr(args, "chunks", 64)
    maps = []
    for path in _as_list(getattr(args, "map", None)):
        m = read_map(path, chunks)
        maps.append((m, scan_map(m)))
    models = {}
    for path in _as_list(getattr(args, "model", None)):
        if path not in models:
            st = read_structure(path)
            models[path] = (st, atom_table(st, path))
    size = (sum(int(np.prod(m.grid.shape)) for m, _ in maps), max((len(a) for _, a in models.values()), default=0))
    if cmd == "score" and maps[0][1] is not None:
        check_contour(maps[0][0], maps[0][1], args.contour)
    if getattr(args, "convention", "reff") == "tempy" and maps:
        from .scores.tempy import MAX_VOXELS

        n = int(np.prod(maps[0][0].grid.shape))
        if n > MAX_VOXELS:
            raise InputError(maps[0][0].path, f"--convention tempy holds the whole map in memory, as TEMPy does: "
                                              f"{n:,} voxels is more than {MAX_VOXELS:,}; score it with the "
                                              "default convention (blockwise), or crop the map")
    for path in getattr(args, "half_maps", None) or []:
        h = read_map(path, chunks)
        if not h.grid.same_as(maps[0][0].grid):
            raise InputError(path, f"half map grid (shape {h.grid.shape}, voxel {np.round(h.grid.voxel_size, 4).tolist()} "
                                   f"A) differs from the map's (shape {maps[0][0].grid.shape}, voxel "
                                   f"{np.round(maps[0][0].grid.voxel_size, 4).tolist()} A): half maps must be on its grid")
    if cmd == "composite":
        _check_composite(args, [m for m, _ in maps], models)
        return size
    if maps:
        m = maps[0][0]
        for path, (st, atoms) in models.items():
            check_in_box(atoms, np.asarray(m.grid.origin), m.grid.upper, path, m.path)
    if cmd == "segment":
        from .jobs.segment import selection_groups

        st, atoms = models[args.model]
        if args.group:
            selection_groups(st, args.group, args.model)
        if args.use_model_b:
            widths_from_b(atoms.b_input, args.model)
    groups = args.group if cmd == "rigid" else getattr(args, "rigid", None) if cmd == "refine" else None
    if groups and groups not in (["chains"], ["auto"]):
        from .jobs.segment import selection_groups

        selection_groups(models[args.model][0], groups, args.model)
    if cmd == "ensemble":
        widths_from_b(models[args.model][1].b_input, args.model)
    if cmd == "refine" and args.resume:
        from . import checkpoint

        if not (Path(args.outdir) / checkpoint.NAME).exists():
            raise InputError(Path(args.outdir) / checkpoint.NAME,
                             "no checkpoint to resume from (run without --resume first)")
    return size


def _check_composite(args, maps, models) -> None:
    from .composite import check_grids
    from .io.models import widths_from_b

    atoms = [models[p][1] for p in args.model]
    for p, a in zip(args.model, atoms):
        if len(a) != len(atoms[0]):
            raise InputError(p, f"has {len(a)} atoms but {args.model[0]} has {len(atoms[0])}; per-map models "
                                "must be the same model (same atoms, in the same order)")
        if args.use_model_b:
            widths_from_b(a.b_input, p)
    check_grids(maps, maps[0].grid, not args.no_resample)


def check_md(args) -> None:
    """Force field, solvent model, OpenMM platform and monomer library of the MD jobs."""
    if args.command not in ("refine", "ensemble"):
        return
    from .jobs.inputs import check_md_options

    if args.command == "refine":
        from .validation import check_monlib

        check_monlib(args.monlib)
    implicit = None if args.implicit.lower() == "none" else args.implicit
    check_md_options(args.forcefield, implicit, args.platform)


def precheck(args) -> tuple[int, int]:
    """All checks that need no cluster, cheapest first: options, output path, scheduler, inputs, MD.
    Returns the job's size (map voxels, model atoms; see :func:`check_inputs`)."""
    check_options(args)
    check_output(args)
    check_scheduler(args)
    size = check_inputs(args)
    check_md(args)
    return size
