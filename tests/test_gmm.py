"""The blockwise Gaussian-mixture E/M step against independent truth, on the real EMD-3488 case."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

from reff_dask.gmm.fit import GMMState, em_iteration
from reff_dask.gmm import kernels as K
from reff_dask.gmm.blocks import plan_blocks
from reff_dask.gmm.blockwise import estep, simulate
from reff_dask.io.maps import Map, MapGrid


def _varied_sigma(atoms, seed=0):
    """Known, varied per-atom widths (A) between 0.6 and 1.6."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.6, 1.6, len(atoms))


def _rechunk(m: Map, chunks) -> Map:
    return Map(m.data.rechunk(chunks), m.grid, m.path)


@pytest.mark.parametrize("chunks", [(37, 37, 37), (16, 23, 30), (100, 50, 2)])
def test_chunked_estep_equals_one_chunk(real_map, real_atoms, chunks):
    """Moments and sums do not depend on chunking, including chunks thinner than the halo (2 voxels)."""
    sigma = _varied_sigma(real_atoms)
    amp = K.amplitudes(real_atoms.weight, sigma, real_map.grid.voxel_size, 0.2)
    one = estep(real_map, real_atoms.xyz, sigma, amp, 0.004)
    many = estep(_rechunk(real_map, chunks), real_atoms.xyz, sigma, amp, 0.004)
    assert real_map.data.npartitions == 1
    np.testing.assert_allclose(many.moments, one.moments, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.sums, one.sums, rtol=1e-9)
    assert one.moments[:, K.M_W].min() > 0  # every atom of this model sees density


def test_density_kernel_matches_direct_formula():
    """The numba density equals the closed-form normalised Gaussian, and conserves mass."""
    grid = MapGrid((30, 32, 34), (0.9, 1.0, 1.1), (-5.0, 2.0, 3.0))
    xyz = np.array([[10.3, 17.1, 18.2], [12.0, 16.2, 19.9]])
    sigma = np.array([1.1, 1.7])
    weight = np.array([6.0, 8.0])
    amp = K.amplitudes(weight, sigma, grid.voxel_size, 1.0)
    dens = simulate(grid, (7, 11, 13), xyz, sigma, amp).compute().astype(np.float64)
    k, j, i = np.indices(grid.shape)
    pos = np.stack([grid.origin[0] + i * grid.voxel_size[0], grid.origin[1] + j * grid.voxel_size[1],
                    grid.origin[2] + k * grid.voxel_size[2]], axis=-1)
    expect = np.zeros(grid.shape)
    for x, s, w in zip(xyz, sigma, weight):
        d2 = ((pos - x) ** 2).sum(-1)
        g = w * np.prod(grid.voxel_size) / (2 * np.pi * s * s) ** 1.5 * np.exp(-d2 / (2 * s * s))
        expect += np.where(d2 <= (K.KCUT * s) ** 2, g, 0.0)
    np.testing.assert_allclose(dens, expect, rtol=1e-5, atol=1e-7)
    # mass of a cut Gaussian: P(r < 4 sigma) of a 3-D normal
    p_inside = math.erf(4 / math.sqrt(2)) - math.sqrt(2 / math.pi) * 4 * math.exp(-8)
    assert dens.sum() == pytest.approx(weight.sum() * p_inside, rel=2e-3)


def _chunk_and_coordinates(blk, data, table, idx):
    """A chunk of the map, its global voxel z index, and how many atoms reach it."""
    z = np.arange(blk.start[0], blk.start[0] + blk.shape[0], dtype=np.float32)
    return np.stack([np.asarray(data, np.float32), np.broadcast_to(z[:, None, None], blk.shape),
                     np.full(blk.shape, len(idx), np.float32)])


@pytest.mark.parametrize("chunks", [100, (30, 45, 100), (17, 100, 33)])
def test_block_graph_puts_every_chunk_in_place(real_map, real_atoms, chunks):
    """per_block + assemble, the block graph of every map product: each task sees its own chunk
    of the map at its global position (a leading axis kept), and the atoms that reach it."""
    from reff_dask.gmm.blocks import assemble, per_block
    from reff_dask.io.maps import read_map

    m = read_map(real_map.path, chunks=chunks)
    radius = np.full(len(real_atoms), 3.0)
    parts = per_block(_chunk_and_coordinates, m.grid, m.data.chunks, data=m.data,
                      atoms=(real_atoms.xyz, radius))
    out = assemble(parts, m.data.chunks, np.float32, lead=(3,)).compute()
    np.testing.assert_array_equal(out[0], np.asarray(real_map.data, np.float32))
    np.testing.assert_array_equal(out[1][:, 0, 0], np.arange(m.grid.shape[0]))
    assert out[2].max() <= len(real_atoms) and out[2].sum() > 0
    with pytest.raises(ValueError, match="differ"):
        per_block(_chunk_and_coordinates, m.grid, 50, data=m.data)


def test_plan_blocks_is_exact_superset(real_map, real_atoms):
    """Every atom whose sphere reaches a chunk is planned for it (brute force over all pairs)."""
    chunks = da.core.normalize_chunks((23, 31, 17), real_map.grid.shape)
    radius = np.full(len(real_atoms), 3.3)
    plan = plan_blocks(real_map.grid, chunks, real_atoms.xyz, radius)
    starts = [np.cumsum((0,) + c[:-1]) for c in chunks]
    h, o = np.array(real_map.grid.voxel_size), np.array(real_map.grid.origin)
    for b, idx in enumerate(np.ndindex(*[len(c) for c in chunks])):
        lo_zyx = np.array([starts[a][idx[a]] for a in range(3)])
        hi_zyx = lo_zyx + np.array([chunks[a][idx[a]] for a in range(3)]) - 1
        lo = o + lo_zyx[::-1] * h
        hi = o + hi_zyx[::-1] * h
        d = np.maximum(0, np.maximum(lo - real_atoms.xyz, real_atoms.xyz - hi))
        need = np.nonzero((d ** 2).sum(1) <= 3.3 ** 2)[0]
        assert set(need) <= set(plan[b].tolist())


def test_simulated_map_is_fixed_point(real_map, real_atoms):
    """A map made from known per-atom widths on the real 5NI1 geometry is a fixed point of the E/M step."""
    sigma = _varied_sigma(real_atoms, seed=1)
    scale, noise = 0.15, 0.003
    amp = K.amplitudes(real_atoms.weight, sigma, real_map.grid.voxel_size, scale)
    sim = Map(simulate(real_map.grid, 50, real_atoms.xyz, sigma, amp, noise).persist(), real_map.grid, "sim")
    new, es, targets = em_iteration(sim, real_atoms.xyz, real_atoms.weight, GMMState(sigma, scale, noise),
                                    0.3, 3.0)
    rel = np.abs(new.sigma - sigma) / sigma
    assert np.median(rel) < 0.002
    assert rel.max() < 0.02
    assert np.abs(targets - real_atoms.xyz).max() < 0.02  # Angstrom
    assert new.scale == pytest.approx(scale, rel=0.005)
    assert new.noise == pytest.approx(noise, rel=0.005)


def test_blockwise_ccc_equals_numpy(real_map, real_atoms):
    """CCC from blockwise sums equals numpy's correlation of the whole arrays."""
    sigma = np.full(len(real_atoms), 0.72)
    amp = K.amplitudes(real_atoms.weight, sigma, real_map.grid.voxel_size, 1.0)
    es = estep(_rechunk(real_map, 32), real_atoms.xyz, sigma, amp, 0.0, with_moments=False)
    sim = simulate(real_map.grid, 100, real_atoms.xyz, sigma, amp).compute()
    expect = np.corrcoef(real_map.data.compute().ravel(), sim.ravel())[0, 1]
    assert es.ccc == pytest.approx(expect, abs=1e-6)
    assert 0.5 < es.ccc < 0.9
