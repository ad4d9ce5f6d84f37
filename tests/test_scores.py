"""Fit scores on the real case (EMD-3488 + 5NI1): SMOCf, LoQFit, global CCC, blockwise = one chunk, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

from reff_dask.errors import InputError
from reff_dask.gmm import kernels as K
from reff_dask.gmm.blockwise import simulate
from reff_dask.gmm.mstep import uniform_sigma
from reff_dask.io.maps import Map, MapGrid, read_map
from reff_dask.io.models import atom_table, read_structure, updated_structure, write_structure
from reff_dask.scores import ScoreSettings, score_models
from reff_dask.scores.loqfit import NOTE_CAP, NOTE_NYQUIST, crossing
from reff_dask.scores.residues import residue_table

RES = 3.2


@pytest.fixture(scope="module")
def shifted(real_structure, real_atoms):
    """The deposited model moved by 3 A along x."""
    return updated_structure(real_structure, xyz=real_atoms.xyz + np.array([3.0, 0.0, 0.0]))


@pytest.fixture(scope="module")
def one_chunk(real_map, real_structure, shifted):
    return score_models(real_map, {"deposited": real_structure, "shifted": shifted}, RES)


@pytest.mark.slow
def test_deposited_fits_better_than_shifted_residue_by_residue(one_chunk):
    t = one_chunk
    assert t.models == ["deposited", "shifted"]
    assert len(t) == 578  # 4 x (141 or 146 residues + 1 haem); waters are not scored
    smoc_better = np.mean(t.smoc[:, 0] > t.smoc[:, 1])
    loq_better = np.mean(t.loqfit[:, 0] < t.loqfit[:, 1])
    assert smoc_better > 0.95, smoc_better
    assert loq_better > 0.95, loq_better
    assert t.ccc["deposited"]["ccc_box"] > 0.5 > 0.2 > t.ccc["shifted"]["ccc_box"]
    assert t.ccc["deposited"]["ccc_mask"] > t.ccc["shifted"]["ccc_mask"]
    means = t.chain_means()
    assert list(means) == ["A", "B", "C", "D"]
    for c in means.values():
        assert c["deposited"]["smocf"] > c["shifted"]["smocf"] + 0.3
        assert c["deposited"]["loqfit"] < c["shifted"]["loqfit"] - 2.0


def test_loqfit_lies_between_nyquist_and_cap_and_tracks_resolution(one_chunk, real_map, real_structure):
    t = one_chunk
    nyquist, cap = 2 * 1.05, ScoreSettings().loqfit_cap
    q = t.loqfit[np.isfinite(t.loqfit)]
    assert len(q) == t.loqfit.size
    assert q.min() >= nyquist - 1e-6 and q.max() <= cap + 1e-6
    clamped = np.array([[n == NOTE_CAP for n in row] for row in t.note])
    assert np.all(t.loqfit[clamped] == cap)
    median = float(np.median(t.loqfit[:, 0]))
    assert 3.0 <= median <= 5.0, median
    # the same map low-pass filtered to 6 A (hard cut in Fourier space): LoQFit follows it
    x = real_map.data.compute().astype(np.float64)
    h = real_map.grid.voxel_size[0]
    f = np.sqrt(sum(np.meshgrid(np.fft.fftfreq(100, h) ** 2, np.fft.fftfreq(100, h) ** 2,
                                np.fft.rfftfreq(100, h) ** 2, indexing="ij")))
    low = np.fft.irfftn(np.fft.rfftn(x) * (f <= 1 / 6.0), s=x.shape, axes=(0, 1, 2)).astype(np.float32)
    low_map = Map(da.from_array(low, chunks=50), real_map.grid, "lowpass6")
    lt = score_models(low_map, {"deposited": real_structure}, RES)
    low_median = float(np.nanmedian(lt.loqfit[:, 0]))
    assert 5.0 <= low_median <= 7.5, low_median
    assert low_median > median + 1.5
    assert np.mean(lt.loqfit[:, 0] > t.loqfit[:, 0]) > 0.95


def test_chunked_scores_equal_one_chunk(one_chunk, map_path, real_structure, shifted):
    chunked = read_map(map_path, chunks=(32, 27, 40))
    assert chunked.data.npartitions == 4 * 4 * 3
    t = score_models(chunked, {"deposited": real_structure, "shifted": shifted}, RES)
    np.testing.assert_allclose(t.smoc, one_chunk.smoc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(t.loqfit, one_chunk.loqfit, rtol=0, atol=1e-9)
    assert t.note == one_chunk.note
    for label in t.models:
        for k, v in t.ccc[label].items():
            assert v == pytest.approx(one_chunk.ccc[label][k], abs=1e-6)


def test_cropped_map_placed_by_origin(shared_case):
    """EMD-2566 crop (box placed by the MRC ORIGIN field, model with hydrogens): the scores
    use the map's origin, and chunking does not change them."""
    case = shared_case("emd_2566")
    st = read_structure(case / "3j6b_chain9_withH.pdb")
    xyz = atom_table(st).xyz
    models = {"deposited": st, "shifted": updated_structure(st, xyz=xyz + np.array([3.0, 0.0, 0.0]))}
    one = score_models(read_map(case / "emd_2566_crop_3j6b_chain9.mrc.gz", 100), models, RES)
    chunked = score_models(read_map(case / "emd_2566_crop_3j6b_chain9.mrc.gz", 16), models, RES)
    assert len(one) == 195
    assert np.mean(one.smoc[:, 0] > one.smoc[:, 1]) > 0.95
    assert np.mean(one.loqfit[:, 0] < one.loqfit[:, 1]) > 0.95
    assert 3.0 <= np.median(one.loqfit[:, 0]) <= 5.0
    np.testing.assert_allclose(chunked.smoc, one.smoc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(chunked.loqfit, one.loqfit, rtol=0, atol=1e-9)


def test_model_against_its_own_simulated_map_scores_perfectly(real_map, real_structure, real_atoms):
    """Independent truth: on a map made of the very Gaussians the scores simulate, SMOCf is 1 and
    the local FSC is 1 in every shell (LoQFit at Nyquist) - on a chunked map, so every atom that
    reaches a residue's window from a neighbouring chunk must be in its group's simulated map."""
    sigma = np.full(len(real_atoms), uniform_sigma(RES))
    amp = K.amplitudes(real_atoms.weight, sigma, real_map.grid.voxel_size, 1.0)
    sim = simulate(real_map.grid, 24, real_atoms.xyz, sigma, amp)
    t = score_models(Map(sim, real_map.grid, "simulated"), [real_structure], RES)
    np.testing.assert_allclose(t.smoc[:, 0], 1.0, atol=1e-6)
    assert all(n[0] == NOTE_NYQUIST for n in t.note)
    np.testing.assert_allclose(t.loqfit[:, 0], 2 * real_map.grid.voxel_size[0], rtol=1e-6)
    assert t.ccc["model1"]["ccc_box"] == pytest.approx(1.0, abs=1e-6)


def test_smoc_windows_stop_at_chain_breaks(real_structure):
    st = real_structure.clone()
    del st[0]["A"][60]  # a gap after residue 60 of chain A (seqid 61 removed)
    res = residue_table(st, window=11)
    keys = res.keys()
    i60, i62 = keys.index(("A", 60, "")), keys.index(("A", 62, ""))
    assert res.window[i60, 1] == res.atoms[i60, 1]  # nothing after the break
    assert res.window[i62, 0] == res.atoms[i62, 0]  # nothing before it
    i30 = keys.index(("A", 30, ""))
    assert res.window[i30, 0] == res.atoms[i30 - 5, 0] and res.window[i30, 1] == res.atoms[i30 + 5, 1]
    first = keys.index(("B", 1, ""))
    assert res.window[first, 0] == res.atoms[first, 0]  # no window across chains


def test_fsc_crossing_interpolates_and_clamps():
    freq = np.arange(11) / 40.0  # shells of 1/40 A^-1, Nyquist 4 A
    fsc = np.array([1, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0, 0])
    value, note = crossing(fsc, freq)
    assert note == "" and value == pytest.approx(1 / (4.5 / 40.0))
    dip = fsc.copy()
    dip[1] = 0.3  # a dip at the lowest shell does not end the search
    assert crossing(dip, freq)[0] == pytest.approx(value)
    assert crossing(np.ones(11), freq) == (pytest.approx(4.0), NOTE_NYQUIST)
    assert crossing(np.full(11, 0.1), freq, cap=18.0) == (18.0, NOTE_CAP)


def test_model_off_the_map_is_an_input_error(real_map, real_structure, real_atoms):
    away = updated_structure(real_structure, xyz=real_atoms.xyz + 300.0)
    with pytest.raises(InputError, match="do not overlap"):
        score_models(real_map, {"away.pdb": away}, RES)
    with pytest.raises(InputError, match="resolution"):
        score_models(real_map, [real_structure], 0.1)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "reff_dask.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=1800)


@pytest.mark.slow
def test_cli_writes_tables_plots_and_report(tmp_path, map_path, model_path, shifted, real_atoms):
    write_structure(shifted, tmp_path / "shifted")
    out = tmp_path / "out"
    r = _cli("score", "-m", map_path, "-p", model_path, "-p", tmp_path / "shifted.pdb", "-r", RES, "-o", out,
             "--workers", 1, "--chunks", 50, "--contour", 0.1)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == ["5ni1", "shifted"] and report["resolution"] == RES
    assert report["model_files"] == {"5ni1": str(model_path), "shifted": str(tmp_path / "shifted.pdb")}
    ccc = report["ccc"]
    assert ccc["5ni1"]["ccc_box"] > ccc["shifted"]["ccc_box"] + 0.3
    assert ccc["5ni1"]["ccc_contour"] > ccc["shifted"]["ccc_contour"] + 0.3
    assert set(report["chain_means"]) == {"A", "B", "C", "D"}
    for name in report["outputs"]:
        assert (out / name).stat().st_size > 0, name
    for chain in "ABCD":
        assert (out / f"scores_chain_{chain}.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 578
    assert list(rows[0])[:4] == ["chain", "resnum", "icode", "resname"]
    assert {"smocf_5ni1", "loqfit_5ni1", "smocf_shifted", "loqfit_shifted"} <= set(rows[0])
    assert rows[0]["chain"] == "A" and rows[0]["resnum"] == "1" and rows[0]["resname"] == "VAL"
    js = json.loads((out / "scores.json").read_text())
    assert len(js["residues"]) == 578 and set(js["residues"][0]["scores"]) == {"5ni1", "shifted"}
    assert "5ni1" in r.stderr and "LoQFit" in r.stderr
    assert "starting a local cluster of 1 worker" in r.stderr  # the choice is printed
    _check_view(out, map_path, {"5ni1": model_path, "shifted": tmp_path / "shifted.pdb"}, rows)
    # no cluster named, a small map: the same job on threads in this process, the same tables
    inproc = tmp_path / "inproc"
    r = _cli("score", "-m", map_path, "-p", model_path, "-p", tmp_path / "shifted.pdb", "-r", RES, "-o", inproc,
             "--chunks", 50, "--contour", 0.1)
    assert r.returncode == 0, r.stderr
    assert "running in this process on threads" in r.stderr
    for name in ("scores.csv", "chain_means.csv"):
        assert (inproc / name).read_bytes() == (out / name).read_bytes(), name
    # a model that misses the map: exit code 2 and a message naming the file
    write_structure(updated_structure(shifted, xyz=real_atoms.xyz + 300.0), tmp_path / "away")
    r = _cli("score", "-m", map_path, "-p", tmp_path / "away.pdb", "-r", RES, "-o", tmp_path / "bad",
             "--workers", 1)
    assert r.returncode == 2
    assert "away.pdb" in r.stderr and "outside" in r.stderr
    assert set(report["fsc"]["5ni1"]) == {"map"} and 3.0 < report["fsc"]["5ni1"]["map"]["resolution_at_0.5_A"] < 4.0
    # half maps on another grid: one line naming the file, before any work
    from reff_dask.io.maps import MapGrid, write_mrc

    m = read_map(map_path)
    crop = MapGrid((90, 100, 100), m.grid.voxel_size, m.grid.origin)
    write_mrc(tmp_path / "h1.mrc", m.data.compute()[:90], crop)
    r = _cli("score", "-m", map_path, "-p", model_path, "-r", RES, "-o", tmp_path / "bad2",
             "--half-maps", tmp_path / "h1.mrc", map_path)
    assert r.returncode == 2 and "h1.mrc" in r.stderr and "grid" in r.stderr
    assert not (tmp_path / "bad2").exists()


def _check_view(out, map_path, models: dict, rows: list[dict]) -> None:
    """view.cxc as ChimeraX would run it: the map at a level inside its range that encloses about
    the model's volume, each model opened in order, residues coloured from defattr files whose
    residues exist, and labels on the ten lowest-SMOCf residues of the last model."""
    from reff_dask.io.maps import read_map

    lines = [ln for ln in (out / "view.cxc").read_text().splitlines() if ln and not ln.startswith("#")]
    opens = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("open ")]
    assert opens[0] == str(Path(map_path).resolve())
    assert opens[1:1 + len(models)] == [str(Path(p).resolve()) for p in models.values()]
    (vol,) = [ln for ln in lines if ln.startswith("volume #1 level ")]
    level = float(vol.split()[3])
    x = read_map(map_path).data.compute()
    assert x.min() < level < x.max()
    assert 0.02 < (x > level).mean() < 0.2  # the molecule's share of the box, not noise or nothing
    for k, label in enumerate(models):
        attr = f"smocf_{label}"
        assert f"open {(out / (attr + '.defattr')).resolve()}" in lines
        assert any(ln.startswith(f"color byattribute {attr} #{k + 2} ") for ln in lines)
        assign = [ln.split("\t")[1:] for ln in (out / f"{attr}.defattr").read_text().splitlines()
                  if ln.startswith("\t")]
        scored = {(r["chain"], r["resnum"]): float(r[f"smocf_{label}"]) for r in rows if r[f"smocf_{label}"]}
        got = {(spec.split("/")[1].split(":")[0], spec.split(":")[1]): float(v) for spec, v in assign}
        assert all(spec.startswith(f"#{k + 2}/") for spec, _ in assign)
        assert got.keys() == scored.keys()
        assert all(abs(got[key] - scored[key]) < 1e-3 for key in got)
    last = list(models)[-1]
    labels = [ln for ln in lines if ln.startswith("label ")]
    assert len(labels) == 10
    worst = sorted((float(r[f"smocf_{last}"]), r["chain"], r["resnum"]) for r in rows if r[f"smocf_{last}"])[:10]
    labelled = {(ln.split()[1].split("/")[1].split(":")[0], ln.split()[1].split(":")[1]) for ln in labels}
    assert labelled == {(c, n) for _, c, n in worst}


def _numpy_fsc(a: np.ndarray, b: np.ndarray, voxel) -> np.ndarray:
    """Reference FSC: full complex FFTs of the whole boxes, the same shells."""
    from reff_dask.scores.fsc import shells

    a, b = a - a.mean(), b - b.mean()
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k2 = sum((np.fft.fftfreq(n) / v)[tuple(slice(None) if d == ax else None for d in range(3))] ** 2
             for ax, (n, v) in enumerate(zip(a.shape, voxel[::-1])))
    width, n = shells(a.shape, voxel)
    s = np.rint(np.sqrt(k2) / width).astype(int).ravel()
    keep = s < n
    num = np.bincount(s[keep], (fa * np.conj(fb)).real.ravel()[keep], n)
    pa = np.bincount(s[keep], (np.abs(fa) ** 2).ravel()[keep], n)
    pb = np.bincount(s[keep], (np.abs(fb) ** 2).ravel()[keep], n)
    return num / np.sqrt(pa * pb)


def test_map_model_fsc_chunked_equals_whole_box_fft(map_path, real_atoms):
    """The slab-wise FFT FSC on chunked maps equals a whole-box FFT FSC (three chunkings, one of
    them uneven); a map with itself gives 1 in every shell; with noise, ~0 at high frequency."""
    from reff_dask.gmm import kernels as K
    from reff_dask.gmm.blockwise import simulate
    from reff_dask.io.maps import read_map
    from reff_dask.scores.fsc import map_fsc

    ref = None
    for chunks in (100, 40, 33):
        m = read_map(map_path, chunks)
        sig = np.full(len(real_atoms), 0.225 * RES)
        model = simulate(m.grid, m.data.chunks, real_atoms.xyz, sig,
                         K.amplitudes(real_atoms.weight, sig, m.grid.voxel_size, 1.0))
        c = map_fsc(m.data, model, m.grid.voxel_size)
        if ref is None:
            ref = _numpy_fsc(m.data.compute().astype(float), model.compute().astype(float), m.grid.voxel_size)
        np.testing.assert_allclose(c.fsc[1:], ref[1:], atol=1e-9)
    assert np.allclose(map_fsc(m.data, m.data, m.grid.voxel_size).fsc[1:], 1.0)
    noise = np.random.default_rng(3).normal(size=m.grid.shape)
    assert np.abs(map_fsc(m.data, noise, m.grid.voxel_size).fsc[20:]).max() < 0.1


def test_model_fsc_prefers_the_better_model(real_map, real_structure):
    """On EMD-3488 the deposited 5NI1 reaches FSC 0.5 at a finer resolution than the earlier
    5ME2 (3.3 vs 3.5 A), both near the map's 3.2 A; noisier half maps give coarser crossings."""
    import dask.array as da

    from reff_dask.io.maps import Map
    from reff_dask.scores.fsc import model_fsc

    start = atom_table(read_structure(Path(__file__).parents[1] / "examples/emd_3488/5me2.pdb"))
    final = atom_table(real_structure)
    r_final = model_fsc(real_map, final.xyz, final.weight, RES)["map"].resolution_at(0.5)
    r_start = model_fsc(real_map, start.xyz, start.weight, RES)["map"].resolution_at(0.5)
    assert 3.0 < r_final < r_start - 0.1 < 4.0, (r_final, r_start)
    x = real_map.data.compute()
    rng = np.random.default_rng(1)
    halves = [Map(da.from_array(x + rng.normal(0, x.std(), x.shape).astype(np.float32), chunks=50), real_map.grid,
                  f"half{k}") for k in (1, 2)]
    curves = model_fsc(real_map, final.xyz, final.weight, RES, halves)
    assert set(curves) == {"map", "half1", "half2", "half1_half2"}
    assert curves["half1"].resolution_at(0.5) > r_final
    assert 2.9 < curves["half1_half2"].resolution_at(0.143) < 3.6


def test_qscore_is_one_on_isolated_gaussians_and_falls_when_atoms_move():
    """Independent truth: a map of isolated Gaussians (width 0.6 A, atoms 6 A apart) scores Q ~ 1
    with the 0.6 A reference; the same atoms 1 A off their density score far lower."""
    from reff_dask.scores.qscore import atom_qscores

    grid_pts = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    xyz = 5.0 + 6.0 * grid_pts.astype(float)
    shape = (80, 80, 80)
    grid = MapGrid(shape, (0.3, 0.3, 0.3), (0.0, 0.0, 0.0))
    sig = np.full(len(xyz), 0.6)
    data = simulate(grid, 40, xyz, sig, K.amplitudes(np.ones(len(xyz)), sig, grid.voxel_size, 1.0))
    m = Map(data, grid, "gaussians")
    q = atom_qscores(m, xyz, np.zeros(len(xyz), bool), sigma=0.6)
    assert q.min() > 0.95, q.min()
    off = atom_qscores(m, xyz + [1.0, 0.0, 0.0], np.zeros(len(xyz), bool), sigma=0.6)
    assert off.max() < 0.6, off.max()


def test_qscore_matches_an_independent_implementation(map_path, real_atoms):
    """Per-atom Q-score of 5NI1 in EMD-3488 (sigma 0.6 A) against jqscore's (a JAX version of
    MapQ; values stored in tests/data with the command that made them): Pearson r >= 0.95 and
    the same mean; chunking does not change a value."""
    import gzip

    from reff_dask.scores.qscore import atom_qscores

    with gzip.open(Path(__file__).parent / "data" / "jqscore_emd3488_5ni1_sigma0.6.txt.gz", "rt") as f:
        ref = np.array([float(x) for x in f if not x.startswith("#")])
    assert len(ref) == len(real_atoms)
    q = atom_qscores(read_map(map_path, 100), real_atoms.xyz, real_atoms.hydrogen, sigma=0.6)
    ok = np.isfinite(q) & np.isfinite(ref)
    assert ok.sum() > 0.99 * len(ref)
    assert np.corrcoef(q[ok], ref[ok])[0, 1] >= 0.95
    assert abs(np.mean(q[ok]) - np.mean(ref[ok])) < 0.01
    chunked = atom_qscores(read_map(map_path, 33), real_atoms.xyz, real_atoms.hydrogen, sigma=0.6)
    np.testing.assert_allclose(chunked, q, atol=1e-9)


def test_fsc_with_noise_falls_where_the_noise_power_reaches_a_third_of_the_signal(real_map):
    """FSC(map, map + white noise) = sqrt(S / (S + N)) per shell (S: the map's mean power in the
    shell, N: the noise power, the same in every shell), so it crosses 0.5 where S = N / 3:
    the measured crossing lies where the map's own spectrum says it must (to a shell, the noise
    being one draw), and more noise moves it to a coarser resolution."""
    from reff_dask.scores.fsc import map_fsc

    a = real_map.data.compute().astype(np.float64)
    vox = np.asarray(real_map.grid.voxel_size)
    f = np.abs(np.fft.rfftn(a)) ** 2
    nz, ny, nx = a.shape
    k = np.sqrt((np.fft.fftfreq(nz)[:, None, None] / vox[2]) ** 2 + (np.fft.fftfreq(ny)[None, :, None] / vox[1]) ** 2
                + (np.fft.rfftfreq(nx)[None, None, :] / vox[0]) ** 2)
    width = 1.0 / (max(a.shape) * vox.max())
    shell = np.rint(k / width).astype(int).ravel()
    s = np.bincount(shell, f.ravel()) / np.maximum(np.bincount(shell), 1)
    got = []
    for sd in (2.0 * a.std(), 8.0 * a.std()):
        b = a + np.random.default_rng(7).normal(scale=sd, size=a.shape)
        got.append(map_fsc(real_map.data, b, vox).resolution_at(0.5))
        expected = np.sqrt(s / (s + sd ** 2 * a.size))
        first_below = int(np.nonzero(expected[1:] < 0.5)[0][0]) + 1
        assert 1.0 / ((first_below + 1) * width) <= got[-1] <= 1.0 / ((first_below - 2) * width)
    assert got[1] > got[0] + 0.3
