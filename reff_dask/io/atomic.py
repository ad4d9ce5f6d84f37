"""Atomic output: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and for directories (Zarr stores). On error the temporary is
    removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically (an fsspec URL: one object written on close)."""
    s = str(target)
    if "://" in s and not s.startswith("file://"):
        import fsspec

        with fsspec.open(s, "w") as f:
            f.write(text)
        return
    if s.startswith("file://"):
        target = s[len("file://"):]
    with atomic_path(target) as tmp:
        tmp.write_text(text)
