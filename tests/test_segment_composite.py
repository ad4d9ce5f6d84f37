"""Segmentation by chain responsibilities and responsibility-weighted composite maps, on EMD-3488 / 5NI1."""

from __future__ import annotations

import json

import dask.array as da
import mrcfile
import numpy as np
import pytest

from reff_dask.bfactor import BFactorSettings, refine_bfactors
from reff_dask.composite import (assign_atoms, check_grids, composite, fit_component, focus_scales,
                                 plain_average)
from reff_dask.errors import InputError
from reff_dask.gmm import components as C
from reff_dask.gmm import kernels as K
from reff_dask.io.maps import Map, MapGrid, read_map
from reff_dask.segment import segment, segment_stats

ndimage = pytest.importorskip("scipy.ndimage")
spatial = pytest.importorskip("scipy.spatial")

FAST = dict(iterations=3, residue_iterations=10)


def _ccc(x, y, mask=None):
    if mask is not None:
        x, y = x[mask], y[mask]
    return float(np.corrcoef(np.ravel(x), np.ravel(y))[0, 1])


def _voxel_of(grid: MapGrid, xyz: np.ndarray) -> np.ndarray:
    """Nearest voxel (z, y, x) index of each atom."""
    ijk = np.rint((xyz - np.asarray(grid.origin)) / np.asarray(grid.voxel_size)).astype(int)
    return ijk[:, ::-1]


# ----------------------------------------------------------------------------- segmentation


@pytest.fixture(scope="module")
def fit(real_map, real_atoms):
    r = refine_bfactors(real_map, real_atoms.xyz, real_atoms.weight, BFactorSettings(3.2, **FAST),
                        residue=real_atoms.residue)
    amp = K.amplitudes(real_atoms.weight, r.state.sigma, real_map.grid.voxel_size, r.state.scale)
    return r.state, amp


@pytest.fixture(scope="module")
def seg_result(real_map, real_atoms, fit):
    state, amp = fit
    seg = segment(real_map, real_atoms.xyz, state.sigma, amp, real_atoms.chain, real_atoms.chain_names,
                  state.noise)
    gamma, labels, stats = da.compute(seg.gamma, seg.labels, segment_stats(seg, real_map))
    return gamma, labels, stats


def test_component_densities_add_up_to_the_model_map(real_map, real_atoms, fit):
    """Per-chain densities of a block sum to the one-component density of the existing kernel."""
    state, amp = fit
    table = np.column_stack([real_atoms.xyz, state.sigma, amp])
    start, shape = (20, 30, 10), (40, 35, 50)
    dens = C.component_block(shape, start, real_map.grid.origin, real_map.grid.voxel_size, table,
                             real_atoms.chain, 4)
    whole = K.density_block(shape, start, real_map.grid.origin, real_map.grid.voxel_size, table)
    np.testing.assert_allclose(dens.sum(axis=0), whole, rtol=1e-5, atol=1e-6 * whole.max())
    for c in range(4):  # each chain's density is that of its own atoms alone
        alone = K.density_block(shape, start, real_map.grid.origin, real_map.grid.voxel_size,
                                table[real_atoms.chain == c])
        np.testing.assert_allclose(dens[c], alone, rtol=1e-5, atol=1e-6 * whole.max())


def test_each_chain_label_holds_its_own_atoms(real_map, real_atoms, seg_result):
    """More than 90% of each chain's atoms sit in voxels labelled with their own chain."""
    _, labels, _ = seg_result
    k, j, i = _voxel_of(real_map.grid, real_atoms.xyz).T
    at = labels[k, j, i]
    for c, name in enumerate(real_atoms.chain_names):
        own = np.mean(at[real_atoms.chain == c] == c + 1)
        assert own > 0.9, f"chain {name}: only {own:.1%} of its atoms in its own label"
    assert np.mean(at == 0) < 0.02  # atoms are not background


def test_responsibilities_sum_to_at_most_one_with_noise_the_rest(real_map, seg_result):
    gamma, labels, stats = seg_result
    chains = gamma[:4].sum(axis=0)
    assert chains.max() <= 1 + 1e-6 and gamma.min() >= 0
    np.testing.assert_allclose(chains + gamma[4], 1.0, atol=1e-5)
    assert gamma[4][labels == 0].mean() > 0.9  # background voxels are mostly noise
    assert gamma[4, 0, 0, 0] > 0.999  # a box corner, far from the protein
    # map mass is shared out completely: chains + noise = the map's positive mass
    assert stats["mass"].sum() == pytest.approx(float(stats["total_mass"]), rel=1e-6)
    assert stats["voxels"].sum() == np.prod(real_map.grid.shape)


def test_segmentation_does_not_depend_on_chunks(real_map, real_atoms, fit, seg_result):
    state, amp = fit
    small = Map(real_map.data.rechunk(32), real_map.grid, real_map.path)
    seg = segment(small, real_atoms.xyz, state.sigma, amp, real_atoms.chain, real_atoms.chain_names, state.noise)
    gamma, labels = da.compute(seg.gamma, seg.labels)
    np.testing.assert_allclose(gamma, seg_result[0], rtol=1e-6, atol=1e-7)
    assert np.array_equal(labels, seg_result[1])


@pytest.mark.slow
def test_segment_cli_writes_masked_maps_labels_and_report(tmp_path, map_path, model_path, real_atoms, real_map):
    from reff_dask.cli import main

    out = tmp_path / "seg"
    rc = main(["segment", "-m", str(map_path), "-p", str(model_path), "-r", "3.2", "-o", str(out),
               "--iterations", "2", "--residue-iterations", "5", "--workers", "1", "--chunks", "50"])
    assert rc == 0
    report = json.loads((out / "segment.json").read_text())
    fractions = [c["map_mass_fraction"] for c in report["chains"]]
    assert sum(fractions) + report["background"]["noise_mass_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert all(0.15 < f < 0.3 for f in fractions)  # four similar haemoglobin chains
    labels = read_map(out / "labels.mrc").data.compute()
    k, j, i = _voxel_of(real_map.grid, real_atoms.xyz).T
    assert np.mean(labels[k, j, i] == real_atoms.chain + 1) > 0.9
    me = real_map.data.compute()
    masked = sum(read_map(out / c["file"]).data.compute() for c in report["chains"])
    # chains take a share of each voxel, at most all of it
    assert np.all(np.abs(masked) <= np.abs(me) * (1 + 1e-5) + 1e-7)
    assert _ccc(masked, me) > 0.9
    with mrcfile.open(out / "chain_A.mrc", permissive=True) as mrc:
        assert mrc.data.shape == real_map.grid.shape


# ----------------------------------------------------------------------------- composite


@pytest.fixture(scope="module")
def focused(real_map, real_atoms):
    """Two overlapping 'focused' maps from the real one: sharp around chains A+B (map 1) or C+D
    (map 2), blurred and noisier elsewhere; map 2 on another intensity scale (gain 1.3, offset)."""
    me = real_map.data.compute().astype(np.float64)
    g = real_map.grid
    zz, yy, xx = np.indices(g.shape)
    pos = np.stack([xx, yy, zz], -1).reshape(-1, 3) * np.asarray(g.voxel_size) + np.asarray(g.origin)
    ab = np.isin(real_atoms.chain, [0, 1])
    d_ab = spatial.cKDTree(real_atoms.xyz[ab]).query(pos)[0].reshape(g.shape)
    d_cd = spatial.cKDTree(real_atoms.xyz[~ab]).query(pos)[0].reshape(g.shape)
    s = d_cd - d_ab  # > 0 on the A+B side of the interface
    w1 = 1 / (1 + np.exp(-s / 1.5))
    sd = me.std()
    blur = ndimage.gaussian_filter(me, 2.0)

    def make(w, seed):
        rng = np.random.default_rng(seed)
        smooth_noise = 3 * sd * ndimage.gaussian_filter(rng.normal(size=g.shape), 0.7)
        return w * me + (1 - w) * (blur + smooth_noise) + 0.1 * sd * rng.normal(size=g.shape)

    f1 = make(w1, 1).astype(np.float32)
    f2 = (1.3 * make(1 - w1, 2) + 0.2 * sd).astype(np.float32)
    maps = [Map(da.from_array(f, chunks=50), g, name) for f, name in ((f1, "focus_ab"), (f2, "focus_cd"))]
    settings = BFactorSettings(3.2, **FAST)
    fits = [fit_component(m, real_atoms.xyz, real_atoms.weight, real_atoms.residue, settings) for m in maps]
    near = np.minimum(d_ab, d_cd) < 3.0
    return dict(me=me, f1=f1, f2=f2, maps=maps, fits=fits, s=s, near=near)


@pytest.mark.slow
def test_atoms_go_to_the_map_that_resolves_them(focused, real_atoms):
    """Chains A+B get their lowest B in map 1, C+D in map 2; ties split; atoms outside every map drop out."""
    share = assign_atoms(np.stack([f.sigma for f in focused["fits"]]))
    ab = np.isin(real_atoms.chain, [0, 1])
    assert share[0, ab].mean() > 0.9 and share[1, ~ab].mean() > 0.9
    np.testing.assert_allclose(share.sum(axis=0), 1.0)
    toy = assign_atoms(np.array([[1.0, 2.0, np.inf, 1.5], [1.5, 2.0, np.inf, np.inf]]))
    np.testing.assert_allclose(toy, [[1, 0.5, 0, 1], [0, 0.5, 0, 0]])


def test_composite_beats_plain_average_and_has_no_seam(focused, real_atoms, real_map):
    """The composite correlates with the original map better than the plain average, and shows no
    drop in local correlation at the A+B / C+D boundary against the (seamless) plain average."""
    maps, fits, me, s, near = focused["maps"], focused["fits"], focused["me"], focused["s"], focused["near"]
    g = real_map.grid
    scales = focus_scales(maps, fits, real_atoms.weight)
    assert scales[1] / scales[0] == pytest.approx(1.3, rel=0.1)  # the gain of map 2, measured
    avg = plain_average(maps, g, 50).compute()
    plain = composite(maps, fits, real_atoms.weight, g, 50, scales=scales).compute()
    matched = composite(maps, fits, real_atoms.weight, g, 50, match_scale=True, scales=scales).compute()
    assert _ccc(plain, me) > _ccc(avg, me) + 0.03
    assert _ccc(matched, me) > _ccc(avg, me) + 0.05

    slab, rest = near & (np.abs(s) < 1.0), near & (np.abs(s) >= 1.0)
    hard = np.where(s > 0, focused["f1"], focused["f2"])  # a hard switch: a seam by construction
    c_slab, c_rest = _ccc(matched, me, slab), _ccc(matched, me, rest)
    a_slab, a_rest = _ccc(avg, me, slab), _ccc(avg, me, rest)
    h_slab, h_rest = _ccc(hard, me, slab), _ccc(hard, me, rest)
    assert c_rest > a_rest + 0.01  # better away from the boundary ...
    assert c_slab >= a_slab - 0.002  # ... and no worse than the seamless average on it
    assert h_slab < a_slab - 0.005 and h_rest > c_rest  # the slab check does catch a real seam
    for lo in range(-8, 8, 2):  # no dip anywhere across the boundary
        band = near & (s >= lo) & (s < lo + 2)
        assert _ccc(matched, me, band) >= _ccc(avg, me, band) - 0.002


def test_composite_does_not_depend_on_chunks(focused, real_atoms, real_map):
    maps, fits = focused["maps"], focused["fits"]
    one = composite(maps, fits, real_atoms.weight, real_map.grid, 100, match_scale=True).compute()
    many = composite(maps, fits, real_atoms.weight, real_map.grid, (32, 40, 27), match_scale=True).compute()
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())


def _shifted_grid_map(f: np.ndarray, grid: MapGrid, name: str) -> Map:
    """``f`` resampled (cubic) onto a 1.2 A grid shifted by a fraction of a voxel, covering part of the box."""
    vox = (1.2, 1.2, 1.2)
    origin = (np.asarray(grid.origin) + (10.37, 30.59, 12.23))
    shape = (62, 55, 66)  # z, y, x: cuts off part of chains A and B (low y)
    zz, yy, xx = np.indices(shape)
    idx = [(origin[a] + [xx, yy, zz][a] * vox[a] - grid.origin[a]) / grid.voxel_size[a] for a in range(3)]
    data = ndimage.map_coordinates(f, [idx[2], idx[1], idx[0]], order=3, mode="nearest").astype(np.float32)
    return Map(da.from_array(data, chunks=40), MapGrid(shape, vox, tuple(float(o) for o in origin)), name)


def test_composite_resamples_a_map_on_another_grid(focused, real_atoms, real_map):
    """Map 2 on a shifted 1.2 A grid covering part of the box: composite still beats the average,
    matches the same-grid composite, and is map 1 exactly where map 2 has no voxels."""
    g = real_map.grid
    m1, m2 = focused["maps"][0], _shifted_grid_map(focused["f2"], g, "focus_cd_regridded")
    settings = BFactorSettings(3.2, **FAST)
    fit2 = fit_component(m2, real_atoms.xyz, real_atoms.weight, real_atoms.residue, settings)
    assert 0 < fit2.inside.sum() < len(real_atoms)  # part of the model is outside map 2
    maps, fits = [m1, m2], [focused["fits"][0], fit2]
    scales = focus_scales(maps, fits, real_atoms.weight)
    comp = composite(maps, fits, real_atoms.weight, g, 50, match_scale=True, scales=scales).compute()
    same = composite(focused["maps"], focused["fits"], real_atoms.weight, g, 50, match_scale=True).compute()
    avg = plain_average(maps, g, 50).compute()
    me = focused["me"]
    assert _ccc(comp, me) > _ccc(avg, me) + 0.03
    from reff_dask.resample import coverage

    cov = coverage(m2.grid, g)
    assert 0.3 < cov.mean() < 0.9
    assert _ccc(comp[cov], same[cov]) > 0.97
    np.testing.assert_allclose(comp[~cov], focused["f1"][~cov], rtol=1e-5, atol=1e-5 * np.abs(me).max())


def test_composite_refuses_maps_off_the_grid(focused, real_map):
    g = real_map.grid
    far = Map(focused["maps"][1].data, MapGrid(g.shape, g.voxel_size, (500.0, 0.0, 0.0)), "far_away.mrc")
    with pytest.raises(InputError, match="far_away.mrc.*does not overlap"):
        check_grids([focused["maps"][0], far], g)
    coarse = Map(focused["maps"][1].data, MapGrid(g.shape, (1.1, 1.1, 1.1), g.origin), "coarse.mrc")
    check_grids([focused["maps"][0], coarse], g)  # fine with resampling
    with pytest.raises(InputError, match="coarse.mrc.*resampling is off"):
        check_grids([focused["maps"][0], coarse], g, allow_resample=False)


def _write(path, m: Map) -> str:
    from reff_dask.io.maps import write_mrc

    write_mrc(path, m.data, m.grid)
    return str(path)


@pytest.mark.slow
def test_composite_cli_end_to_end(tmp_path, focused, model_path, real_map):
    from reff_dask.cli import main

    g = real_map.grid
    p1 = _write(tmp_path / "focus_ab.mrc", focused["maps"][0])
    p2 = _write(tmp_path / "focus_cd.mrc", _shifted_grid_map(focused["f2"], g, "x"))
    out = tmp_path / "composite.mrc"
    args = ["composite", "-m", p1, "-m", p2, "-p", str(model_path), "-r", "3.2", "-o", str(out),
            "--iterations", "2", "--residue-iterations", "5", "--workers", "1", "--chunks", "50"]
    assert main(args + ["--match-scale"]) == 0
    result = read_map(out)
    assert result.grid.same_as(g)
    comp = result.data.compute()
    assert _ccc(comp, focused["me"]) > _ccc(plain_average([read_map(p1), read_map(p2)], g, 50).compute(),
                                            focused["me"]) + 0.03
    report = json.loads(out.with_suffix(".json").read_text())
    assert [m["resampled"] for m in report["maps"]] == [False, True]
    assert report["model_ccc_uniform_b"] > max(m["model_ccc_uniform_b"] for m in report["maps"])

    from reff_dask.jobs import composite as job

    far = tmp_path / "far.mrc"
    _write(far, Map(focused["maps"][1].data, MapGrid(g.shape, g.voxel_size, (500.0, 0.0, 0.0)), "far"))
    settings = BFactorSettings(3.2, iterations=1, residue_iterations=1)
    with pytest.raises(InputError, match="far.mrc.*does not overlap"):
        job.run([p1, str(far)], [str(model_path)], [3.2], str(tmp_path / "bad.mrc"), settings)
    with pytest.raises(InputError, match="focus_cd.mrc.*resampling is off"):
        job.run([p1, p2], [str(model_path)], [3.2], str(tmp_path / "bad.mrc"), settings, allow_resample=False)
    assert main(["composite", "-m", p1, "-m", str(far), "-p", str(model_path), "-r", "3.2",
                 "-o", str(tmp_path / "bad.mrc"), "--workers", "1"]) == 2  # the CLI turns it into exit code 2
    assert not (tmp_path / "bad.mrc").exists()


@pytest.mark.slow
def test_segment_by_selection_groups(tmp_path, map_path, model_path):
    """--group with gemmi selections: alpha (A, C) and beta (B, D) chains of haemoglobin, the haems
    and waters left to 'rest'; each group's share of the map mass equals the sum of its chains'
    shares in the per-chain run (same widths), and a bad selection is a clear error."""
    from reff_dask.cli import main

    common = ["-m", str(map_path), "-p", str(model_path), "-r", "3.2", "--iterations", "2",
              "--residue-iterations", "5", "--workers", "1", "--chunks", "50"]
    rc = main(["segment", *common, "-o", str(tmp_path / "chains")])
    assert rc == 0
    rc = main(["segment", *common, "-o", str(tmp_path / "groups"), "--group", "alpha=/1/A,C/1-141",
               "--group", "beta=/1/B,D/1-146"])
    assert rc == 0
    by_chain = {c["chain"]: c for c in json.loads((tmp_path / "chains" / "segment.json").read_text())["chains"]}
    report = json.loads((tmp_path / "groups" / "segment.json").read_text())
    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["alpha", "beta", "rest"]
    assert groups["rest"]["atoms"] == 4579 - groups["alpha"]["atoms"] - groups["beta"]["atoms"] > 0
    for name, chains in (("alpha", "AC"), ("beta", "BD")):
        assert (tmp_path / "groups" / f"group_{name}.mrc").exists()
        whole = sum(by_chain[c]["map_mass_fraction"] for c in chains)
        assert 0.8 * whole < groups[name]["map_mass_fraction"] <= whole + 1e-6  # the haems went to 'rest'
    rc = main(["segment", *common, "-o", str(tmp_path / "bad"), "--group", "alpha=/1/Z"])
    assert rc == 2 and not (tmp_path / "bad").exists()
