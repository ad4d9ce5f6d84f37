"""What every job shares: its progress lines, the grid as JSON, and reports written as strict
JSON (NaN and inf become null, which every JSON reader takes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..io.atomic import write_text
from ..io.maps import MapGrid

__all__ = ["Progress", "progress", "grid_dict", "nan_to_none", "write_json"]


class Progress:
    """A job's console progress on stderr. ``say(text)`` prints a ``[job] text`` line at once;
    :meth:`bar` shows how far a stage is: on a terminal one line redrawn in place (a bar where
    the stage's length is known, the step's own text, an ETA), elsewhere (a log file, a pipe,
    a batch job's output) the step's plain line, so logs keep one line per step."""

    WIDTH = 20

    def __init__(self, job: str, stream: TextIO | None = None) -> None:
        self.job, self._stream, self._open = job, stream, False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr  # looked up at each call

    def __call__(self, text: str) -> None:
        s = self.stream
        if self._open:  # a stage's bar stays on screen as its last state
            s.write("\n")
            self._open = False
        s.write(f"[{self.job}] {text}\n")
        s.flush()

    def bar(self, stage: str, done: int, total: int | None, detail: str, eta_s: float | None = None,
            eta_bound: str = "~", line: str | None = None) -> None:
        """Step ``done`` of a stage of at most ``total`` steps (None: not known in advance);
        ``detail``: the step's figures; ``eta_s``: seconds left, ``eta_bound`` "~", "<=" or ">=";
        ``line``: the plain line off a terminal (default: stage, step and detail)."""
        s = self.stream
        if not _is_terminal(s):
            self(line if line is not None else f"{stage} {done}{f'/{total}' if total else ''}  {detail}")
            return
        parts = [f"[{self.job}] {stage}"]
        if total:
            filled = int(round(self.WIDTH * min(done / total, 1.0)))
            parts.append(f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}")
        else:
            parts.append(f"{done}")
        parts.append(detail)
        if eta_s is not None and np.isfinite(eta_s):
            parts.append(f"ETA {eta_bound}{_duration(eta_s)}")
        s.write("\r\033[K" + "  ".join(parts))
        s.flush()
        self._open = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress(job: str) -> Progress:
    """A :class:`Progress` for ``job``: call it to print one ``[job] text`` line to stderr."""
    return Progress(job)


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
