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
