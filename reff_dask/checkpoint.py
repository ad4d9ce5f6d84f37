"""Refinement checkpoints: one atomic .npz per run, rewritten after every EM iteration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .io.atomic import atomic_path

NAME = "checkpoint.npz"


def save(outdir: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write ``arrays`` and JSON-able ``meta`` to ``outdir/checkpoint.npz`` atomically."""
    target = Path(outdir) / NAME
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta, default=float)), **arrays)
    return target


def load(outdir: str | Path, expect: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint; refuse it when its ``meta["run"]`` differs from ``expect`` (other inputs)."""
    path = Path(outdir) / NAME
    if not path.exists():
        raise InputError(path, "no checkpoint to resume from (run without --resume first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(path, f"damaged checkpoint ({e})") from None
    differ = {k: (meta["run"].get(k), v) for k, v in expect.items() if meta["run"].get(k) != v}
    if differ:
        raise InputError(path, "checkpoint was made with other settings: " +
                         ", ".join(f"{k} {a!r} != {b!r}" for k, (a, b) in differ.items()))
    return arrays, meta
