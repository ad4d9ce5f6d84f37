"""Maps and outputs as Zarr stores at fsspec URLs (memory:// stands in for s3:// / gs://; file:// too).

fsspec's memory filesystem lives in one process, so these runs use an in-process
distributed cluster (worker threads), which goes through the same store code as a
multi-process cluster reading an object store.
"""

from __future__ import annotations

import json
import uuid

import dask.array as da
import fsspec
import numpy as np
import pytest

from reff_dask.bfactor import BFactorSettings, refine_bfactors
from reff_dask.cli import main
from reff_dask.errors import InputError
from reff_dask.io.maps import Map, read_map, write_zarr
from reff_dask.jobs.outputs import write_maps

pytestmark = pytest.mark.slow  # MD, subprocess jobs or a cluster: minutes (pytest -m "not slow" leaves them out)

FAST = dict(iterations=3, residue_iterations=5)


@pytest.fixture
def bucket():
    name = f"memory://bucket-{uuid.uuid4().hex[:8]}"
    yield name
    fs = fsspec.filesystem("memory")
    if fs.exists(name[len("memory://"):]):
        fs.rm(name[len("memory://"):], recursive=True)


@pytest.fixture(scope="module")
def threads_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            Client(c) as client:
        yield client


def test_convert_to_url_and_back(bucket, map_path, real_map, tmp_path):
    url = f"{bucket}/emd_3488.zarr"
    assert main(["convert", str(map_path), url, "--chunks", "40"]) == 0
    m = read_map(url, 40)
    assert m.grid.same_as(real_map.grid)
    assert m.data.chunks[0] == (40, 40, 20)
    np.testing.assert_array_equal(m.data.compute(), real_map.data.compute())
    local = f"file://{tmp_path}/emd.zarr"  # file:// URLs are local paths, written atomically
    write_zarr(m, local, 50)
    np.testing.assert_array_equal(read_map(local).data.compute(), real_map.data.compute())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emd.zarr"]  # no temporary left behind


def test_bfactor_from_url_store_equals_local_map(bucket, map_path, real_map, real_atoms, threads_cluster):
    url = f"{bucket}/emd.zarr"
    write_zarr(real_map, url, 50)
    settings = BFactorSettings(3.2, **FAST)
    a = refine_bfactors(read_map(url, 50), real_atoms.xyz, real_atoms.weight, settings, residue=real_atoms.residue)
    b = refine_bfactors(read_map(map_path, 50), real_atoms.xyz, real_atoms.weight, settings,
                        residue=real_atoms.residue)
    np.testing.assert_array_equal(a.state.sigma, b.state.sigma)
    assert a.ccc == b.ccc


def test_composite_job_reads_and_writes_urls(bucket, real_map, model_path, tmp_path, threads_cluster):
    from reff_dask.jobs import composite as job

    m1, m2 = f"{bucket}/in/a.zarr", f"{bucket}/in/b.zarr"
    write_zarr(real_map, m1, 50)
    write_zarr(Map(real_map.data * 1.5, real_map.grid, "b"), m2, 50)
    settings = BFactorSettings(3.2, **FAST)
    models = [str(model_path), str(tmp_path / "b.pdb")]  # one model per map, B from its column
    (tmp_path / "b.pdb").write_bytes(model_path.read_bytes())
    out = f"{bucket}/out/composite.zarr"
    rep = job.run([m1, m2], models, [3.2], out, settings, use_model_b=True, chunks=50)
    local = job.run([m1, m2], models, [3.2], str(tmp_path / "composite.zarr"), settings, use_model_b=True, chunks=50)
    got = read_map(out)
    assert got.grid.same_as(real_map.grid)
    np.testing.assert_array_equal(got.data.compute(), read_map(tmp_path / "composite.zarr").data.compute())
    with fsspec.open(f"{bucket}/out/composite.json", "r") as f:
        report = json.load(f)
    assert report["output"] == out and report["model_ccc_uniform_b"] == local["model_ccc_uniform_b"]
    assert rep["model_ccc_uniform_b"] > 0.5


def test_interrupted_url_write_is_refused_not_half_read(bucket, real_map, threads_cluster):
    """A store whose writing failed part-way has no map metadata: read_map refuses it."""

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1, 1):
            raise RuntimeError("worker lost its connection")
        return block

    broken = real_map.data.rechunk(50).map_blocks(boom, dtype=np.float32)
    for write in (lambda url: write_maps({url: broken}, real_map.grid),
                  lambda url: write_zarr(Map(broken, real_map.grid, "x"), url, 50)):
        url = f"{bucket}/out/{uuid.uuid4().hex[:6]}.zarr"
        with pytest.raises(RuntimeError, match="lost its connection"):
            write(url)
        with pytest.raises(InputError, match="lacks map metadata"):
            read_map(url)
    with pytest.raises(ValueError, match="must be Zarr"):
        write_maps({f"{bucket}/x.mrc": da.zeros(real_map.grid.shape)}, real_map.grid)
