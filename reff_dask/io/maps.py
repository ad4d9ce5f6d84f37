"""Maps as chunked Dask arrays: MRC/CCP4 (plain or gzip) and Zarr stores.

Every map here is a :class:`Map`: a float32 Dask array indexed ``[z, y, x]`` plus a
:class:`MapGrid` saying where voxel ``[0, 0, 0]`` sits (Angstrom) and the voxel size
(Angstrom, per axis, ``x, y, z`` order). Voxel ``[k, j, i]`` is at
``origin + (i * vx, j * vy, k * vz)``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask
import dask.array as da
import mrcfile
import numpy as np

from ..errors import InputError
from .atomic import atomic_path

#: Refuse maps larger than this many voxels (2^36 = 64 Gi voxels = 256 GiB of float32):
#: such a header is almost surely corrupt.
MAX_VOXELS = 2**36
DEFAULT_CHUNK = 64
_MRC_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


@dataclass(frozen=True)
class MapGrid:
    """Geometry of a map: shape ``(nz, ny, nx)``, voxel size and origin in Angstrom (x, y, z)."""

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]

    def same_as(self, other: "MapGrid", tol: float = 1e-3) -> bool:
        """True when both grids place every voxel at the same point (within ``tol`` Angstrom)."""
        return (
            self.shape == other.shape
            and np.allclose(self.voxel_size, other.voxel_size, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
        )

    @property
    def upper(self) -> np.ndarray:
        """Position (Angstrom, x y z) of the last voxel."""
        n_xyz = np.array(self.shape[::-1]) - 1
        return np.asarray(self.origin) + n_xyz * np.asarray(self.voxel_size)


@dataclass
class Map:
    """A map: ``data`` is a float32 Dask array ``[z, y, x]``; ``path`` names its source."""

    data: da.Array
    grid: MapGrid
    path: str


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is an fsspec URL of a remote or in-memory store (``s3://``, ``gs://``, ``memory://``...).

    ``file://`` URLs are local paths (see :func:`local_path`), not URLs here.
    """
    s = str(path)
    return "://" in s and not s.startswith("file://")


def local_path(path: str | Path) -> str | Path:
    """``file:///abs/x.zarr`` -> ``/abs/x.zarr``; anything else unchanged."""
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else path


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` names a Zarr store (a ``.zarr`` path, a store folder, or a URL)."""
    path = local_path(path)
    s = str(path)
    if "://" in s or s.rstrip("/").endswith(".zarr"):
        return True
    p = Path(s)
    return p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


#: Resolutions (A) a job accepts: below 0.5 A or beyond 50 A a number is a typo, not a map.
RESOLUTION_RANGE_A = (0.5, 50.0)


def check_resolution(resolution: float, map_path: str) -> None:
    """Refuse a resolution outside :data:`RESOLUTION_RANGE_A`, naming the map it was given for."""
    lo, hi = RESOLUTION_RANGE_A
    if not lo <= resolution <= hi:
        raise InputError(map_path, f"resolution {resolution} A is outside {lo:g}-{hi:g} A")


def read_map(path: str | Path, chunks: int | Sequence[int] = DEFAULT_CHUNK) -> Map:
    """Open an MRC/CCP4 file (``.gz`` too) or a Zarr store as a chunked :class:`Map`.

    Raises :class:`InputError` naming the file for anything that is not a readable,
    orthogonal, finite-sized map.
    """
    path = local_path(path)
    if is_zarr(path):
        return _read_zarr(path, chunks)
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder but not a Zarr store (no zarr.json/.zarray inside)")
    return _read_mrc(path, chunks)


# ----------------------------------------------------------------------------- MRC


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _mrc_geometry(path: Path, header) -> tuple[tuple[int, int, int], MapGrid, tuple[int, int, int]]:
    """Check an MRC header; return file shape (sections, rows, cols), grid, and file-axis labels."""
    nc, nr, ns = int(header.nx), int(header.ny), int(header.nz)
    if min(nc, nr, ns) <= 0:
        raise InputError(path, f"header gives a non-positive map size {nc} x {nr} x {ns}")
    if nc * nr * ns > MAX_VOXELS:
        raise InputError(path, f"header gives an absurd map size {nc} x {nr} x {ns} "
                               f"({nc * nr * ns:.3g} voxels); the header is probably corrupt")
    mode = int(header.mode)
    if mode not in _MRC_DTYPES:
        raise InputError(path, f"unsupported MRC data mode {mode} (complex or packed data)")
    axes = (int(header.mapc), int(header.mapr), int(header.maps))  # labels of cols, rows, sections
    if axes == (0, 0, 0):
        axes = (1, 2, 3)  # some writers leave zeros here; the standard order is then meant
    elif sorted(axes) != [1, 2, 3]:
        raise InputError(path, f"header axis order mapc/mapr/maps = {axes} is not an order of 1, 2, 3")
    angles = np.array([float(header.cellb.alpha), float(header.cellb.beta), float(header.cellb.gamma)])
    if np.any(angles != 0) and not np.allclose(angles, 90.0, atol=1e-3):
        raise InputError(path, f"non-orthogonal cell (angles {angles.tolist()}); only orthogonal maps are supported")
    sampling = {1: int(header.mx), 2: int(header.my), 3: int(header.mz)}  # by axis label x=1,y=2,z=3
    if min(sampling.values()) <= 0:
        raise InputError(path, f"header sampling mx, my, mz = {tuple(sampling.values())}: the voxel size "
                               "(cell / sampling) is undefined; the header is damaged")
    cell = {1: float(header.cella.x), 2: float(header.cella.y), 3: float(header.cella.z)}
    n_by_label = {axes[0]: nc, axes[1]: nr, axes[2]: ns}
    voxel = []
    for label in (1, 2, 3):
        m = sampling[label]
        v = cell[label] / m
        if not np.isfinite(v) or v <= 0 or v > 1000:
            raise InputError(path, f"voxel size along {'xyz'[label - 1]} is {v!r} A (cell {cell[label]} / "
                                   f"sampling {m}); the header is unusable")
        voxel.append(v)
    start_by_file_axis = (int(header.nxstart), int(header.nystart), int(header.nzstart))
    start = {axes[i]: start_by_file_axis[i] for i in range(3)}
    header_origin = np.array([float(header.origin.x), float(header.origin.y), float(header.origin.z)])
    if not np.all(np.isfinite(header_origin)):
        raise InputError(path, f"header origin {header_origin.tolist()} is not finite; the header is damaged")
    if np.any(header_origin != 0):
        origin = header_origin
    else:
        origin = np.array([start[label] * voxel[label - 1] for label in (1, 2, 3)])
    shape_zyx = (n_by_label[3], n_by_label[2], n_by_label[1])
    if min(shape_zyx) < 2:
        raise InputError(path, f"a map of {shape_zyx[::-1]} voxels (x, y, z) is not a 3-D map")
    grid = MapGrid(shape_zyx, tuple(float(v) for v in voxel), tuple(float(o) for o in origin))
    return (ns, nr, nc), grid, axes


def _zyx_transpose(axes: tuple[int, int, int]) -> tuple[int, int, int]:
    """Transpose taking a file array (sections, rows, cols) to (z, y, x)."""
    file_axis_of_label = {axes[2]: 0, axes[1]: 1, axes[0]: 2}
    return (file_axis_of_label[3], file_axis_of_label[2], file_axis_of_label[1])


class _MrcSlicer:
    """Picklable lazy view of an uncompressed MRC data block: workers open the file themselves."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, np.dtype(dtype)
        self.ndim = len(shape)

    def __getitem__(self, key):
        mm = np.memmap(self.path, mode="r", dtype=self.dtype, offset=self.offset, shape=self.shape)
        return np.asarray(mm[key], dtype=np.float32)


def _read_mrc(path: Path, chunks) -> Map:
    gz = _is_gzip(path)
    try:
        with mrcfile.open(path, header_only=True) as mrc:
            header = mrc.header
            ext_bytes = int(header.nsymbt)
            endian = header.mode.dtype.byteorder
    except (ValueError, OSError, EOFError) as e:
        raise InputError(path, f"not a readable MRC/CCP4 map ({e})") from None
    file_shape, grid, axes = _mrc_geometry(path, header)
    dtype = np.dtype(_MRC_DTYPES[int(header.mode)]).newbyteorder(endian if endian in "<>" else "=")
    expected = int(np.prod(file_shape)) * dtype.itemsize
    if gz:
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except (OSError, EOFError) as e:
            raise InputError(path, f"gzip stream is damaged or truncated ({e})") from None
        have = len(raw) - 1024 - ext_bytes
        if have < expected:
            raise InputError(path, f"data block is truncated: header needs {expected} bytes "
                                   f"for {file_shape[::-1]} voxels, file holds {max(have, 0)}")
        arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(file_shape)),
                            offset=1024 + ext_bytes).reshape(file_shape).astype(np.float32)
        data = da.from_array(arr, chunks=_chunks(chunks, file_shape), name=f"map-{_token(path)}")
    else:
        have = path.stat().st_size - 1024 - ext_bytes
        if have < expected:
            raise InputError(path, f"data block is truncated: header needs {expected} bytes "
                                   f"for {file_shape[::-1]} voxels, file holds {max(have, 0)}")
        src = _MrcSlicer(str(path.resolve()), 1024 + ext_bytes, file_shape, dtype)
        data = da.from_array(src, chunks=_chunks(chunks, file_shape), name=f"map-{_token(path)}",
                             meta=np.empty((0, 0, 0), np.float32))
    tr = _zyx_transpose(axes)
    if tr != (0, 1, 2):
        data = data.transpose(tr).rechunk(_chunks(chunks, grid.shape))
    return Map(data, grid, str(path))


def _token(path: Path) -> str:
    st = path.stat()
    return dask.base.tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _chunks(chunks, shape) -> tuple[int, ...]:
    if np.isscalar(chunks):
        chunks = (int(chunks),) * 3
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


# ----------------------------------------------------------------------------- Zarr

ZARR_ATTRS = ("voxel_size", "origin", "axis_order")


def _read_zarr(path, chunks) -> Map:
    import zarr

    try:
        z = zarr.open_array(str(path), mode="r")
    except Exception as e:  # zarr raises several types for a missing/damaged store
        raise InputError(path, f"not a readable Zarr array store ({type(e).__name__}: {e})") from None
    attrs = dict(z.attrs)
    missing = [k for k in ZARR_ATTRS if k not in attrs]
    if missing:
        raise InputError(path, f"Zarr store lacks map metadata {missing}; make it with `reff-dask convert`")
    if attrs["axis_order"] != "zyx" or z.ndim != 3:
        raise InputError(path, f"expected a 3-D array in zyx order, found ndim={z.ndim}, "
                               f"axis_order={attrs['axis_order']!r}")
    grid = MapGrid(tuple(int(n) for n in z.shape), tuple(float(v) for v in attrs["voxel_size"]),
                   tuple(float(o) for o in attrs["origin"]))
    if not (np.all(np.isfinite(grid.voxel_size)) and min(grid.voxel_size) > 0):
        raise InputError(path, f"voxel size {grid.voxel_size} is not a positive number")
    if not np.all(np.isfinite(grid.origin)):
        raise InputError(path, f"origin {grid.origin} is not finite")
    if min(grid.shape) < 2:
        raise InputError(path, f"a map of {grid.shape[::-1]} voxels is not a 3-D map")
    data = da.from_zarr(str(path))
    if chunks is not None and tuple(c[0] for c in data.chunks) != _chunks(chunks, grid.shape):
        # keep the store's own chunks unless they are tiny; Zarr chunks are the unit of I/O
        if np.prod([c[0] for c in data.chunks]) < 16**3:
            data = data.rechunk(_chunks(chunks, grid.shape))
    return Map(data.astype(np.float32), grid, str(path))


def write_zarr(m: Map, target: str | Path, chunks: int | Sequence[int] = DEFAULT_CHUNK) -> None:
    """Write ``m`` as a chunked Zarr array store with its grid in the attributes.

    Local paths (and ``file://`` URLs) are written beside the target and renamed onto it.
    fsspec URLs (``s3://``, ``gs://``, ``memory://``) are written in place with the map
    metadata last (one object PUT), so a store whose writing was interrupted has no map
    metadata and :func:`read_map` refuses it rather than reading a half-written map.
    """
    import zarr

    data = m.data.astype(np.float32).rechunk(_chunks(chunks, m.grid.shape))
    attrs = {"voxel_size": list(m.grid.voxel_size), "origin": list(m.grid.origin),
             "axis_order": "zyx", "source": os.path.basename(m.path)}

    def _write(url: str) -> None:
        da.to_zarr(data, url, overwrite=True)
        zarr.open_array(url, mode="r+").attrs.update(attrs)

    target = local_path(target)
    if is_url(target):
        _write(str(target))
    else:
        with atomic_path(target) as tmp:
            _write(str(tmp))


# ----------------------------------------------------------------------------- MRC out


def write_mrc(target: str | Path, data: da.Array | np.ndarray, grid: MapGrid) -> None:
    """Write a ``[z, y, x]`` array as float32 MRC with ``grid``'s voxel size and origin, atomically.

    A Dask array is computed a batch of chunks at a time, so memory stays bounded.
    """
    with atomic_path(target) as tmp:
        with mrcfile.new_mmap(tmp, shape=grid.shape, mrc_mode=2, overwrite=True) as mrc:
            if isinstance(data, da.Array):
                blocks = list(np.ndindex(*data.numblocks))
                bounds = [np.cumsum((0,) + c) for c in data.chunks]
                for start in range(0, len(blocks), 16):
                    batch = blocks[start:start + 16]
                    values = dask.compute(*[data.blocks[b] for b in batch])
                    for b, v in zip(batch, values):
                        sl = tuple(slice(bounds[a][b[a]], bounds[a][b[a] + 1]) for a in range(3))
                        mrc.data[sl] = v
            else:
                mrc.data[...] = np.asarray(data, dtype=np.float32)
            mrc.voxel_size = tuple(grid.voxel_size)
            mrc.header.origin = tuple(grid.origin)
            mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
            mrc.update_header_stats()


def map_stats(m: Map) -> dict:
    """Mean, standard deviation, min, max and count of non-finite voxels, in one pass."""
    x = m.data.astype(np.float64)
    finite = da.isfinite(x)
    xf = da.where(finite, x, 0.0)
    n = finite.sum()
    s, s2 = xf.sum(), (xf * xf).sum()
    lo = da.where(finite, x, np.inf).min()
    hi = da.where(finite, x, -np.inf).max()
    n, s, s2, lo, hi = dask.compute(n, s, s2, lo, hi)
    total = int(np.prod(m.grid.shape))
    mean = s / max(n, 1)
    return {"mean": float(mean), "std": float(np.sqrt(max(s2 / max(n, 1) - mean**2, 0.0))),
            "min": float(lo), "max": float(hi), "nonfinite": int(total - n), "voxels": total}


def check_map_values(m: Map, stats: dict) -> None:
    """Refuse maps with NaN/inf voxels or no contrast at all."""
    if stats["nonfinite"]:
        raise InputError(m.path, f"{stats['nonfinite']} of {stats['voxels']} voxels are NaN or infinite")
    if not stats["std"] > 0:
        raise InputError(m.path, "every voxel has the same value; there is no density to fit")

