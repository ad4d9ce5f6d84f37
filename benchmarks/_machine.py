"""Shared by the benchmark scripts: where the real data is, and what machine ran them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REFF_DATA", ROOT.parent / "shared" / "data")) / "emd_3488"
MAP = DATA / "emd_3488.map.gz"
MODEL = DATA / "5ni1.pdb"


def machine() -> dict:
    """CPU model, cores, RAM, library versions and the load average at the start."""
    import dask
    import distributed
    import gemmi
    import numba
    import numpy as np
    import zarr

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem, 1), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "gemmi": gemmi.__version__, "zarr": zarr.__version__,
            "load_average_at_start": os.getloadavg()}
