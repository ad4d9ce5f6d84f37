"""Writing several lazy maps that share work: one pass into Zarr stores, then MRC chunk by chunk.

Maps derived from the same per-block computation (a segmentation's masked maps and label
map, say) are stored together in one Dask computation, so each block is computed once;
the Zarr stores are then copied into MRC files with :func:`reff_dask.io.maps.write_mrc`,
a batch of chunks at a time. Workers write the Zarr stores, so the output folder must be
visible to them (always true for the embedded local cluster).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ..io.maps import MapGrid, is_url, local_path, write_mrc


def _zarr_target(path: Path, data: da.Array, grid: MapGrid, source: str):
    import zarr

    chunks = tuple(int(c[0]) for c in data.chunks)
    z = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, overwrite=True)
    z.attrs.update({"voxel_size": list(grid.voxel_size), "origin": list(grid.origin), "axis_order": "zyx",
                    "source": source})
    return z


def _write_urls(urls: dict[str, da.Array], local: dict, grid: MapGrid, extra, source: str):
    """Zarr stores at fsspec URLs: chunks first, map metadata last (a store cut short has none,
    so ``read_map`` refuses it); local targets after, as usual."""
    import zarr

    bad = [u for u in urls if not u.rstrip("/").endswith(".zarr")]
    if bad:
        raise ValueError(f"{bad[0]}: outputs at URLs must be Zarr stores (name ending in .zarr)")
    sources, dests = [], []
    for url, data in urls.items():
        if data.shape != grid.shape:
            raise ValueError(f"{url}: array shape {data.shape} is not the grid's {grid.shape}")
        data = data.rechunk(tuple(int(c[0]) for c in data.chunks))
        sources.append(data)
        dests.append(zarr.create_array(store=url, shape=data.shape, chunks=tuple(int(c[0]) for c in data.chunks),
                                       dtype=data.dtype, overwrite=True))
    stored = da.store(sources, dests, lock=False, compute=False)
    result = dask.compute(stored, extra)[1]
    for url in urls:
        zarr.open_array(url, mode="r+").attrs.update({"voxel_size": list(grid.voxel_size),
                                                      "origin": list(grid.origin), "axis_order": "zyx",
                                                      "source": source})
    if local:
        write_maps(local, grid, source=source)
    return result


def write_maps(outputs: dict[str | Path, da.Array], grid: MapGrid, extra=None, source: str = "reff-dask") -> object:
    """Compute ``outputs`` (target path -> lazy ``[z, y, x]`` array on ``grid``) in one pass.

    A target ending in ``.zarr`` is written as a Zarr store (readable by ``read_map``);
    any other as float32 MRC, through a temporary Zarr store beside it. A ``.zarr`` target
    may be an fsspec URL (``s3://``, ``gs://``, ``memory://``; ``file://`` is local). ``extra`` (any
    Dask collection or nested container of them) is computed in the same pass and
    returned, so reductions over the same blocks cost no second computation.
    All targets are replaced atomically.
    """
    urls = {str(p): a for p, a in outputs.items() if is_url(p)}
    if urls:
        return _write_urls(urls, {p: a for p, a in outputs.items() if not is_url(p)}, grid, extra, source)
    targets = {Path(local_path(p)): a for p, a in outputs.items()}
    if not targets:
        return dask.compute(extra)[0] if extra is not None else None
    parent = next(iter(targets)).parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".reff-work-", dir=parent))
    try:
        stores, sources, dests = {}, [], []
        for i, (target, data) in enumerate(targets.items()):
            if data.shape != grid.shape:
                raise ValueError(f"{target}: array shape {data.shape} is not the grid's {grid.shape}")
            dtype = np.float32 if target.suffix != ".zarr" else data.dtype
            data = data.astype(dtype)
            if any(len(set(c[:-1])) > 1 for c in data.chunks):  # Zarr needs regular chunks
                data = data.rechunk(tuple(int(c[0]) for c in data.chunks))
            store = work / f"{i}.zarr"
            stores[target] = store
            sources.append(data)
            dests.append(_zarr_target(store, data, grid, source))
        stored = da.store(sources, dests, lock=False, compute=False)
        result = dask.compute(stored, extra)[1]
        for target, store in stores.items():
            if target.suffix == ".zarr":
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(store, target)
            else:
                write_mrc(target, da.from_zarr(str(store)).astype(np.float32), grid)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
