"""Shared fixtures: the bundled real example (EMD-3488 + 5NI1) and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "emd_3488"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def map_path() -> Path:
    return EXAMPLE / "emd_3488.map.gz"


@pytest.fixture(scope="session")
def model_path() -> Path:
    return EXAMPLE / "5ni1.pdb"


@pytest.fixture(scope="session")
def real_map(map_path):
    from reff_dask.io.maps import read_map

    return read_map(map_path, chunks=100)


@pytest.fixture(scope="session")
def real_structure(model_path):
    from reff_dask.io.models import read_structure

    return read_structure(model_path)


@pytest.fixture(scope="session")
def real_atoms(real_structure, model_path):
    from reff_dask.io.models import atom_table

    return atom_table(real_structure, model_path)


@pytest.fixture(scope="session")
def shared_case():
    """Path of a case folder in ../shared/data, or skip when that folder is not beside the repo."""

    def get(name: str) -> Path:
        p = SHARED_DATA / name
        if not p.exists():
            pytest.skip(f"{p} not present")
        return p

    return get


@pytest.fixture
def process_cluster(tmp_path):
    """A real multi-process Dask cluster on localhost: `dask scheduler` and two `dask worker`
    processes (one thread each), started as separate programs; yields the scheduler address."""
    import json
    import subprocess
    import sys
    import time

    from distributed import Client

    sfile = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                               "--scheduler-file", str(sfile)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        while not (sfile.exists() and sfile.stat().st_size) and procs[0].poll() is None:
            time.sleep(0.1)  # the scheduler's own event: its file written (or it died)
        address = json.loads(sfile.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                           "--local-directory", str(tmp_path)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=600) as c:
            c.wait_for_workers(2, timeout=1800)  # a hang guard; workers start slowly on a busy machine
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
