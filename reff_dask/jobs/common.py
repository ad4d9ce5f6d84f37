"""What every job shares: its progress lines, the grid as JSON, and reports written as strict
JSON (NaN and inf become null, which every JSON reader takes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.atomic import write_text
from ..io.maps import MapGrid

__all__ = ["progress", "grid_dict", "nan_to_none", "write_json"]


def progress(job: str) -> Callable[[str], None]:
    """A function that prints one ``[job] text`` line to stderr at once (progress of a long job)."""

    def say(text: str) -> None:
        print(f"[{job}] {text}", file=sys.stderr, flush=True)

    return say


def grid_dict(grid: MapGrid) -> dict:
    """A map grid for a report: shape (z, y, x voxels), voxel size and origin (A, x y z)."""
    return {"shape_zyx": list(grid.shape), "voxel_size_xyz": list(grid.voxel_size), "origin_xyz": list(grid.origin)}


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside dicts, lists and tuples) as None."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented strict JSON at ``path``, written atomically (numpy scalars as numbers)."""
    write_text(path, json.dumps(nan_to_none(obj), indent=1, default=_plain, allow_nan=False))


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return nan_to_none(v.tolist())
    if isinstance(v, np.integer):
        return int(v)
    f = float(v)
    return f if np.isfinite(f) else None
