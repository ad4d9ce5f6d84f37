"""The block graph shared by every map product: one task per chunk of a chunked grid.

A chunk's value depends on the atoms whose support reaches it. That halo is taken on the
atom side (:func:`plan_blocks`), so chunks need no voxel overlap and results do not depend on
the chunking. The atom table enters the graph once (:func:`graph_key`); each chunk task gets
the indices of its atoms. :func:`per_block` builds the tasks, :func:`assemble` puts lazy
blocks back together as one Dask array; the map products (E-step, simulated map,
responsibilities, composite, resampling, contour CCC, local scores) are short wrappers.

Units: voxel indices z, y, x; origin and voxel size in Angstrom, x, y, z (as :class:`MapGrid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import dask.array as da
import numpy as np
from dask import delayed
from dask.delayed import Delayed

from ..io.maps import MapGrid

__all__ = ["Block", "assemble", "block_starts", "graph_key", "grid_blocks", "per_block", "plan_blocks"]


@dataclass(frozen=True)
class Block:
    """One chunk: its C-order number, global start and shape (voxels, z y x) and the grid's
    origin and voxel size (A, x y z), as the kernels take them."""

    number: int
    start: tuple[int, int, int]
    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    voxel: tuple[float, float, float]


def block_starts(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """Global start index of each chunk, per axis."""
    return [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64) for c in chunks]


def grid_blocks(grid: MapGrid, chunks: tuple[tuple[int, ...], ...]) -> list[Block]:
    """Every chunk of ``grid`` under Dask ``chunks`` (normalised), in C order."""
    starts = block_starts(chunks)
    origin = tuple(float(v) for v in grid.origin)
    voxel = tuple(float(v) for v in grid.voxel_size)
    out = []
    for b, index in enumerate(np.ndindex(*[len(c) for c in chunks])):
        start = tuple(int(starts[a][index[a]]) for a in range(3))
        shape = tuple(int(chunks[a][index[a]]) for a in range(3))
        out.append(Block(b, start, shape, origin, voxel))
    return out


def plan_blocks(grid: MapGrid, chunks: tuple[tuple[int, ...], ...], xyz: np.ndarray,
                radius: np.ndarray) -> list[np.ndarray]:
    """Indices of the atoms whose sphere (``radius``, A) touches each chunk, chunks in C order.

    Vectorised: each atom is expanded over the chunk ranges it overlaps on each axis.
    """
    starts = block_starts(chunks)
    nblocks = [len(c) for c in chunks]
    o = np.asarray(grid.origin)
    h = np.asarray(grid.voxel_size)
    n = np.asarray(grid.shape[::-1])  # x, y, z counts
    r = np.asarray(radius, dtype=float)[:, None] * (1 + 1e-9)
    lo = np.ceil((xyz - r - o) / h).astype(np.int64)
    hi = np.floor((xyz + r - o) / h).astype(np.int64)
    keep = np.all((hi >= 0) & (lo <= n - 1), axis=1)
    lo = np.clip(lo, 0, n - 1)
    hi = np.clip(hi, 0, n - 1)
    # chunk index ranges per axis, axis order x, y, z -> starts[2], starts[1], starts[0]
    blo = np.empty_like(lo)
    bhi = np.empty_like(hi)
    for ax, zyx in ((0, 2), (1, 1), (2, 0)):
        blo[:, ax] = np.searchsorted(starts[zyx], lo[:, ax], side="right") - 1
        bhi[:, ax] = np.searchsorted(starts[zyx], hi[:, ax], side="right") - 1
    atoms = np.nonzero(keep)[0]
    blo, bhi = blo[keep], bhi[keep]
    span = bhi - blo + 1
    count = span.prod(axis=1)
    owner = np.repeat(atoms, count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    sx, sy = np.repeat(span[:, 0], count), np.repeat(span[:, 1], count)
    bx = np.repeat(blo[:, 0], count) + local % sx
    by = np.repeat(blo[:, 1], count) + (local // sx) % sy
    bz = np.repeat(blo[:, 2], count) + local // (sx * sy)
    block_id = (bz * nblocks[1] + by) * nblocks[2] + bx
    order = np.argsort(block_id, kind="stable")
    owner, block_id = owner[order], block_id[order]
    bounds = np.searchsorted(block_id, np.arange(np.prod(nblocks) + 1))
    return [owner[bounds[b]:bounds[b + 1]] for b in range(int(np.prod(nblocks)))]


def graph_key(arr: np.ndarray) -> Delayed:
    """``arr`` as one graph key: computed once per call on one worker and copied from there
    to the workers whose chunk tasks need it (once per worker, not once per chunk). Unlike
    scattered data, a key in the graph can be recomputed, so losing the worker that holds
    it mid-iteration costs a retry, not the run."""
    return delayed(arr, pure=True)


def per_block(func: Callable[..., Any], grid: MapGrid, chunks, *args: Any, data: da.Array | None = None,
              atoms: tuple[np.ndarray, np.ndarray] | None = None) -> list[Delayed]:
    """One delayed ``func`` call per chunk of ``grid`` under ``chunks``, in C order:
    ``func(block, [data chunk,] [table, atom indices,] *args)``.

    data: a Dask array chunked as ``chunks`` (the map), whose chunk is passed after the
    :class:`Block`; atoms: ``(table, radius)``, an (N, k) per-atom table (one graph key for
    all tasks) and each atom's reach (A): every task gets the table and the indices of the
    atoms that reach its chunk."""
    chunks = da.core.normalize_chunks(chunks, grid.shape)
    blocks = grid_blocks(grid, chunks)
    lead: list[list] = [[] for _ in blocks]
    if data is not None:
        if data.chunks != chunks:
            raise ValueError(f"data chunks {data.chunks} differ from the grid's {chunks}")
        for row, part in zip(lead, data.to_delayed().ravel()):
            row.append(part)
    if atoms is not None:
        table, radius = atoms
        table = np.ascontiguousarray(table, dtype=np.float64)
        key = graph_key(table)
        for row, idx in zip(lead, plan_blocks(grid, chunks, table[:, :3], radius)):
            row += [key, idx]
    return [delayed(func, pure=True)(blk, *row, *args) for blk, row in zip(blocks, lead)]


def assemble(parts: Sequence[Delayed | da.Array], chunks, dtype, lead: tuple[int, ...] = ()) -> da.Array:
    """One lazy array from per-chunk results in C order (as :func:`per_block` returns them):
    each part is a ``lead + chunk shape`` array (leading axes, e.g. one per component, are the
    same for every chunk); parts may already be Dask arrays (e.g. zeros for empty chunks)."""
    nb = [len(c) for c in chunks]
    shapes = [tuple(int(chunks[a][i[a]]) for a in range(3)) for i in np.ndindex(*nb)]
    if len(parts) != len(shapes):
        raise ValueError(f"{len(parts)} parts for {len(shapes)} chunks")
    arrays = [p if isinstance(p, da.Array) else da.from_delayed(p, shape=tuple(lead) + s, dtype=dtype)
              for p, s in zip(parts, shapes)]
    nested: Any = [[[arrays[(z * nb[1] + y) * nb[2] + x] for x in range(nb[2])] for y in range(nb[1])]
                   for z in range(nb[0])]
    for _ in lead:
        nested = [nested]
    return da.block(nested)
