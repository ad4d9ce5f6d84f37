"""Ensembles on the real EMD-3488 map with chain A of 5NI1 (B refined here), kept small for CI:
vacuum, few members, short minimisations. The full protocol is timed in benchmarks/bench_ensemble.py."""

from __future__ import annotations

import json
import subprocess
import sys

import gemmi
import numpy as np
import pytest

from reff_dask import ensemble as E
from reff_dask.bfactor import BFactorSettings, refine_bfactors
from reff_dask.gmm.mstep import uniform_sigma
from reff_dask.io.maps import map_stats, read_map
from reff_dask.io.models import atom_table, b_to_sigma, read_structure, sigma_to_b, updated_structure
from reff_dask.md.prepare import prepare_model

pytestmark = pytest.mark.slow  # MD, subprocess jobs or a cluster: minutes (pytest -m "not slow" leaves them out)

SMALL = dict(max_members=5, min_members=5, minimise_iterations=100)


@pytest.fixture(scope="module")
def refined_a(real_map, model_path, tmp_path_factory):
    """Chain A (with its haem) of 5NI1, B-factors refined on the map, written as a PDB file."""
    st = read_structure(model_path)
    st.remove_waters()
    for name in [c.name for c in st[0] if c.name != "A"]:
        st[0].remove_chain(name)
    st.setup_entities()
    atoms = atom_table(st)
    b = refine_bfactors(real_map, atoms.xyz, atoms.weight, BFactorSettings(3.2, iterations=10, residue_iterations=30),
                        residue=atoms.residue)
    path = tmp_path_factory.mktemp("ens") / "chainA_refinedB.pdb"
    updated_structure(st, b_iso=sigma_to_b(b.state.sigma)).write_pdb(str(path))
    st = read_structure(path)
    return path, st, atom_table(st, path)


@pytest.fixture(scope="module")
def setup(real_map, refined_a):
    _path, st, atoms = refined_a
    sigma = b_to_sigma(atoms.b_input)
    prepared = prepare_model(st, implicit=None)
    settings = E.EnsembleSettings(3.2, **SMALL)
    inp = E.make_member_inputs(prepared, real_map, atoms.xyz, sigma, settings)
    mask = (E.member_map(real_map, atoms.xyz, atoms.weight, uniform_sigma(3.2)) > 0).persist()
    return st, atoms, sigma, prepared, inp, mask


@pytest.fixture(scope="module")
def grown(real_map, setup):
    st, atoms, sigma, prepared, inp, mask = setup
    return E.grow_ensemble(real_map, inp, atoms.weight, sigma, mask)


def test_shifted_sigma_smallest_is_floor():
    s = np.array([0.6, 0.9, 1.7, 2.5])
    out = E.shifted_sigma(s, 0.25)
    assert out.min() == pytest.approx(0.25)
    np.testing.assert_allclose(np.diff(out), np.diff(s))  # a shift, not a scale


def test_sampling_deterministic_and_hydrogens_follow(setup):
    _st, _atoms, _sigma, prepared, inp, _mask = setup
    a, b, c = E.sample_particles(inp, 3), E.sample_particles(inp, 3), E.sample_particles(inp, 4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    d = a - inp.base_particles
    moved = np.sqrt((d ** 2).sum(1))
    # every particle moves rigidly with an input atom: X-H bond lengths are those of the refined model
    h = np.flatnonzero((prepared.particle_atom < 0) & (prepared.particle_chain != ""))  # not the haem stand-ins
    assert len(h) > 500 and np.all(inp.parent[h] >= 0)
    np.testing.assert_allclose(d[h], d[inp.parent[h]])
    # per-axis spread follows the shifted widths (chi-square over ~1100 atoms)
    heavy = np.flatnonzero(prepared.particle_atom >= 0)
    ratio = np.mean(moved[heavy] ** 2 / (3 * inp.shift_sigma[heavy] ** 2))
    assert 0.85 < ratio < 1.15
    assert inp.shift_sigma[heavy].min() == pytest.approx(0.25)


def test_member_bit_reproducible_cached_or_rebuilt(setup):
    *_, inp, _mask = setup
    a = E.run_member(inp, 1)
    b = E.run_member(inp, 1)  # cached simulation
    E.clear_cache()
    c = E.run_member(inp, 1)  # rebuilt
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.xyz, c.xyz)
    assert a.stats["bond_rmsd_A"] < 0.06  # stereochemistry kept (refined model: ~0.013 A)


def test_ensemble_map_beats_single_model(real_map, setup, grown):
    """The ensemble map fits the map better than the single refined model's map drawn with the same uniform
    width (the paper's comparison), and better than the refined model relaxed by the same protocol."""
    st, atoms, sigma, prepared, inp, mask = setup
    s_u = uniform_sigma(3.2)
    single_u = E.ccc_box_mask(real_map, E.member_map(real_map, atoms.xyz, atoms.weight, s_u), mask)
    single_b = E.ccc_box_mask(real_map, E.member_map(real_map, atoms.xyz, atoms.weight, sigma), mask)
    relaxed = E.relaxed_single(inp)
    single_r = E.ccc_box_mask(real_map, E.member_map(real_map, relaxed.xyz, atoms.weight, s_u), mask)
    assert grown.size >= 3
    h = grown.history
    assert h[grown.size - 1]["ccc_ensemble"] == pytest.approx(grown.ccc)
    assert grown.ccc > max(r["ccc_member"] for r in h[:grown.size])  # averaging helps
    print(f"ensemble of {grown.size}: CCC {grown.ccc:.4f} (mask {grown.ccc_mask:.4f}); single model: uniform width "
          f"{single_u[0]:.4f} ({single_u[1]:.4f}), its B {single_b[0]:.4f} ({single_b[1]:.4f}), relaxed "
          f"{single_r[0]:.4f} ({single_r[1]:.4f})")
    assert grown.ccc > single_u[0] + 0.003  # the paper's comparison: same (uniform) width for every map
    assert grown.ccc_mask > single_u[1] + 0.01
    assert grown.ccc > single_r[0]  # not only the density force: averaging members adds to one relaxed model


def test_rmsf_correlates_with_refined_b(setup, grown):
    st, atoms, *_ = setup
    ca = np.array([a.name == "CA" for ch in st[0] for r in ch for a in r])
    r = E.rmsf(grown.xyz())[ca]
    assert np.corrcoef(r, atoms.b_input[ca])[0, 1] > 0.3
    assert 0.05 < r.mean() < 1.0


def test_growth_stops_when_ccc_stops_improving(real_map, setup):
    st, atoms, sigma, prepared, inp, mask = setup
    import dataclasses

    s = dataclasses.replace(inp.settings, max_members=6, min_members=1, patience=1, min_improvement=0.5)
    inp2 = dataclasses.replace(inp, settings=s)
    res = E.grow_ensemble(real_map, inp2, atoms.weight, sigma, mask)
    assert res.evaluated == 2 and res.size == 1  # the second member cannot gain 0.5


# ---------------------------------------------------------------- command line


def _cli(*args, timeout=1800):
    return subprocess.run([sys.executable, "-m", "reff_dask.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(refined_a, map_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens_cli") / "out"
    r = _cli("ensemble", "-m", map_path, "-p", refined_a[0], "-r", 3.2, "-o", out, "--implicit", "none",
             "--workers", 2, "--chunks", 50, "--max-members", 4, "--min-members", 4, "--minimise-iterations", 100)
    assert r.returncode == 0, r.stderr
    return out, r


def test_cli_outputs(cli_run, refined_a, real_map, map_path):
    out, r = cli_run
    for name in ("ensemble.pdb", "ensemble.cif", "ensemble_map.mrc", "rmsf.csv", "ensemble.png", "report.json"):
        assert (out / name).stat().st_size > 0, name
    rep = json.loads((out / "report.json").read_text())
    n = rep["ensemble_size"]
    assert 1 <= n <= 4 and len(rep["ccc_members"]) == n
    assert rep["ccc_ensemble"] > rep["ccc_single_uniform"]
    st = gemmi.read_structure(str(out / "ensemble.pdb"))
    assert len(st) == n
    assert all(m.count_atom_sites() == len(refined_a[2]) for m in st)  # every input atom in every member
    emap = read_map(out / "ensemble_map.mrc")
    assert emap.grid.same_as(real_map.grid)
    lines = (out / "rmsf.csv").read_text().splitlines()
    assert lines[0].startswith("chain,seqnum") and len(lines) == 1 + rep["rmsf_vs_b_ca"]["residues"] == 142
    assert "member" in r.stderr


def test_cli_same_as_in_process(cli_run, refined_a, real_map, map_path):
    """Members made as Dask tasks on 2 worker processes equal members made in-process."""
    out, _ = cli_run
    path, st, atoms = refined_a
    prepared = prepare_model(st, implicit=None)
    settings = E.EnsembleSettings(3.2, max_members=4, min_members=4, minimise_iterations=100)
    stats = map_stats(read_map(map_path, chunks=50))  # as the job normalises the density force
    inp = E.make_member_inputs(prepared, real_map, atoms.xyz, b_to_sigma(atoms.b_input), settings,
                               stats["mean"], stats["std"])
    first = E.run_member(inp, 0)
    back = gemmi.read_structure(str(out / "ensemble.pdb"))[0]
    xyz = np.array([[a.pos.x, a.pos.y, a.pos.z] for ch in back for r in ch for a in r])
    np.testing.assert_allclose(xyz, first.xyz, atol=2e-3)  # PDB precision


@pytest.mark.parametrize("case", ["zero_b", "missing_map"])
def test_cli_bad_input(tmp_path, refined_a, map_path, case):
    model, mp = refined_a[0], map_path
    if case == "zero_b":
        st = read_structure(model)
        for ch in st[0]:
            for r in ch:
                for a in r:
                    a.b_iso = 0.0
        model = tmp_path / "zero_b.pdb"
        st.write_pdb(str(model))
    else:
        mp = tmp_path / "nope.mrc"
    out = tmp_path / "out"
    r = _cli("ensemble", "-m", mp, "-p", model, "-r", 3.2, "-o", out, "--workers", 1, "--implicit", "none")
    assert r.returncode == 2
    assert str(model if case == "zero_b" else mp) in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_members_rerun_when_the_scattered_inputs_are_lost(real_map, setup, grown, process_cluster):
    """The member inputs reach the workers as scattered data (one replica kept, never
    recomputed); when it is lost with a worker, the members in flight are cancelled ("lost
    dependencies"). grow_ensemble scatters again and resubmits them: the ensemble is the same
    as the in-process one. The loss is made certain by cancelling the scattered future after
    the first member."""
    from reff_dask.cluster import dask_client

    st, atoms, sigma, prepared, inp, mask = setup
    cancelled = []

    def progress(row):
        if row["member"] == 0:
            (fut,) = E._SCATTERED.values()
            fut.cancel()
            cancelled.append(fut)

    with dask_client(scheduler=process_cluster):
        res = E.grow_ensemble(real_map, inp, atoms.weight, sigma, mask, progress=progress)
        assert cancelled and all(f is not cancelled[0] for f in E._SCATTERED.values())
    assert res.evaluated == grown.evaluated and res.size == grown.size
    for a, b in zip(res.members, grown.members):
        np.testing.assert_allclose(a.xyz, b.xyz, atol=1e-6)
