"""Position refinement on the real EMD-3488 map: fit improves, a displaced helix comes back,
clusters and resumed runs give the same model. Kept small for CI: pieces of 5NI1, vacuum,
the "fast" MD preset with few steps (the full protocol is in benchmarks/)."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from reff_dask.bfactor import BFactorSettings, refine_bfactors
from reff_dask.io.models import atom_table
from reff_dask.md.clashes import count_clashes
from reff_dask.md.prepare import prepare_model
from reff_dask.refine import RefineSettings, refine_positions

pytestmark = pytest.mark.slow  # MD, subprocess jobs or a cluster: minutes (pytest -m "not slow" leaves them out)

FAST = dict(preset="fast", steps=40, threads=1)


def _piece(structure: gemmi.Structure, chains: dict[str, tuple[int, int]]) -> gemmi.Structure:
    """Chains cut to residue ranges (protein only)."""
    st = structure.clone()
    st.remove_ligands_and_waters()
    model = st[0]
    for ch in [c.name for c in model if c.name not in chains]:
        model.remove_chain(ch)
    for ch in model:
        lo, hi = chains[ch.name]
        for i in range(len(ch) - 1, -1, -1):
            if not lo <= ch[i].seqid.num <= hi:
                del ch[i]
    st.setup_entities()
    return st


def _backbone(st: gemmi.Structure) -> np.ndarray:
    return np.array([[a.pos.x, a.pos.y, a.pos.z] for ch in st[0] for r in ch for a in r
                     if a.name in ("N", "CA", "C", "O")])


def _shift_residues(st: gemmi.Structure, chain: str, lo: int, hi: int, shift) -> gemmi.Structure:
    out = st.clone()
    for r in out[0][chain]:
        if lo <= r.seqid.num <= hi:
            for a in r:
                a.pos = a.pos + gemmi.Position(*shift)
    return out


def _bstate(real_map, st):
    atoms = atom_table(st)
    b = refine_bfactors(real_map, atoms.xyz, atoms.weight,
                        BFactorSettings(3.2, iterations=10, residue_iterations=30), residue=atoms.residue)
    return atoms, b.state


def _refine(real_map, st, settings, **kw):
    atoms, state = _bstate(real_map, st)
    prepared = prepare_model(st, implicit=None)
    return atoms, prepared, refine_positions(real_map, atoms.xyz, atoms.weight, state, prepared, settings, **kw)


def test_deposited_model_fit_improves_without_new_clashes(real_map, real_structure):
    """Chains A and B of 5NI1: the EM/MD loop and the final minimisation (as the job runs them)
    raise the CCC and leave no more clashes, twisted peptides or plane outliers than the
    deposited model has."""
    st = _piece(real_structure, {"A": (1, 141), "B": (1, 146)})
    settings = RefineSettings(3.2, max_iterations=6, patience=3, **FAST)
    atoms, prepared, r = _refine(real_map, st, settings)
    assert r.ccc_best > r.ccc_start
    from reff_dask.gmm.fit import model_ccc
    from reff_dask.gmm.mstep import uniform_sigma
    from reff_dask.io.models import updated_structure
    from reff_dask.refine import minimise

    from reff_dask.validation import validate_geometry

    xyz = minimise(real_map, r, atoms.weight, prepared, settings)
    assert model_ccc(real_map, xyz, atoms.weight, uniform_sigma(3.2))[0] > r.ccc_start + 0.003
    assert count_clashes(updated_structure(st, xyz=xyz)) <= count_clashes(st)
    # geometry as validation measures it (CCP4 library): no new twisted peptides or plane
    # outliers, bond/angle RMSD of a well-refined model
    before = validate_geometry(st, clashes=False).overall
    after = validate_geometry(updated_structure(st, xyz=xyz), clashes=False).overall
    assert after["twisted_peptides"] <= before["twisted_peptides"]
    assert after["plane_outliers"] <= before["plane_outliers"]
    assert after["chiral_outliers"] <= before["chiral_outliers"]
    assert after["bond_rmsd_A"] < 0.012 and after["angle_rmsd_deg"] < 2.0, after
    moved = np.sqrt(np.mean(np.sum((xyz - atoms.xyz) ** 2, axis=1)))
    assert moved < 1.0  # a deposited model at 3.2 A is already close: small changes only


def test_displaced_helix_is_pulled_back(real_map, real_structure):
    """Helix B of chain A (residues 20-35) moved 2.5 A: refinement at least halves its backbone RMSD.
    The whole chain is modelled: density of residues left out would lure the helix (with chain A
    1-60 only it stops at 1.4 A)."""
    ref = _piece(real_structure, {"A": (1, 141)})
    start = _shift_residues(ref, "A", 20, 35, (1.5, -1.5, 1.4))
    sel = lambda st: _backbone(_piece(st, {"A": (20, 35)}))  # noqa: E731
    rmsd0 = np.sqrt(np.mean(np.sum((sel(start) - sel(ref)) ** 2, axis=1)))
    assert 1.5 < rmsd0 < 3.0
    atoms, prepared, r = _refine(real_map, start, RefineSettings(3.2, max_iterations=25, patience=5, **FAST))
    from reff_dask.io.models import updated_structure

    rmsd1 = np.sqrt(np.mean(np.sum((sel(updated_structure(start, xyz=r.xyz)) - sel(ref)) ** 2, axis=1)))
    assert rmsd1 < 0.5 * rmsd0, (rmsd0, rmsd1)


@pytest.fixture(scope="module")
def two_chains(real_map, real_structure):
    """Chains A and B, residues 1-40: inputs, settings (5 iterations, no early stop) and the
    unbroken in-process run every other run is compared with."""
    st = _piece(real_structure, {"A": (1, 40), "B": (1, 40)})
    atoms, state = _bstate(real_map, st)
    prepared = prepare_model(st, implicit=None)
    # md_groups fixed: the default follows the worker count (in-process: one task), and the
    # cluster run must be the same computation as this in-process one
    settings = RefineSettings(3.2, max_iterations=5, patience=10, md_groups=2, **FAST)
    plain = refine_positions(real_map, atoms.xyz, atoms.weight, state, prepared, settings)
    return atoms, state, prepared, settings, plain


def test_cluster_and_resume_give_the_same_model(real_map, two_chains, tmp_path, process_cluster):
    """Two chains on a real cluster (scheduler and 2 workers as separate processes) ==
    in-process; a run resumed from its checkpoint == an unbroken run with the same seed."""
    from reff_dask.cluster import dask_client

    atoms, state, prepared, settings, plain = two_chains
    with dask_client(scheduler=process_cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        dist = refine_positions(real_map, atoms.xyz, atoms.weight, state, prepared, settings)
    np.testing.assert_allclose(dist.xyz, plain.xyz, atol=1e-4)
    assert [h["ccc"] for h in dist.history] == pytest.approx([h["ccc"] for h in plain.history], abs=1e-6)

    out = tmp_path / "run"
    first = RefineSettings(3.2, max_iterations=2, patience=10, md_groups=2, **FAST)
    refine_positions(real_map, atoms.xyz, atoms.weight, state, prepared, first, outdir=out)
    resumed = refine_positions(real_map, atoms.xyz, atoms.weight, state, prepared, settings, outdir=out,
                               resume=True)
    assert len(resumed.history) == 5
    np.testing.assert_allclose(resumed.xyz, plain.xyz, atol=1e-4)
    # the best so far, as progress reports it, counts the iterations before the resume too
    assert [h["best_iteration"] for h in resumed.history] == [h["best_iteration"] for h in plain.history]
    assert [h["best_ccc"] for h in resumed.history] == pytest.approx([h["best_ccc"] for h in plain.history], abs=1e-6)


def test_refine_command_keeps_every_atom_and_reports(tmp_path, real_structure, map_path):
    """`reff-dask refine` on chain A 1-40 with its haem: haem (no force-field parameters) kept
    unchanged and reported, every input atom written, report/plot/scores present."""
    import json
    import subprocess
    import sys

    from reff_dask.io.models import read_structure

    st = real_structure.clone()
    st.remove_waters()
    model = st[0]
    for ch in [c.name for c in model if c.name != "A"]:
        model.remove_chain(ch)
    ch = model["A"]
    for i in range(len(ch) - 1, -1, -1):
        if ch[i].het_flag != "H" and ch[i].seqid.num > 40:
            del ch[i]
    st.setup_entities()
    pdb = tmp_path / "a40_hem.pdb"
    st.write_pdb(str(pdb))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "reff_dask.cli", "refine", "-m", map_path, "-p", pdb, "-r", "3.2",
                        "-o", out, "--preset", "fast", "--steps", "20", "--implicit", "none",
                        "--max-iterations", "3", "--iterations", "5", "--residue-iterations", "10",
                        "--workers", "1"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert "iteration   1" in r.stderr and "HEM" in r.stderr  # progress; the haem is reported
    report = json.loads((out / "report.json").read_text())
    assert [e["resname"] for e in report["kept_fixed"]] == ["HEM"]
    assert len(report["iterations"]) == 3
    assert report["ccc_final"] >= report["ccc_start"]
    assert set(report["scores_per_chain"]["A"]) == {"start", "refined"}
    assert set(report["wall_seconds"]) >= {"gmm_seconds", "md_seconds", "overhead_seconds", "total"}
    for name in ("model_refined.pdb", "model_refined.cif", "refine.png", "scores.csv", "checkpoint.npz"):
        assert (out / name).stat().st_size > 0, name
    a_in, a_out = atom_table(read_structure(pdb)), atom_table(read_structure(out / "model_refined.cif"))
    assert len(a_out) == len(a_in)
    hem = np.array([r.name == "HEM" for c in st[0] for r in c for _ in r])
    np.testing.assert_allclose(a_out.xyz[hem], a_in.xyz[hem], atol=1e-3)
    assert np.abs(a_out.xyz[~hem] - a_in.xyz[~hem]).max() > 0.05  # protein moved


def test_worker_killed_mid_refinement_same_model(real_map, two_chains, process_cluster):
    """A worker process SIGKILLed during an EM iteration of a position refinement on a real
    multi-process cluster: its chain task is rerun elsewhere (the nanny restarts the worker) and
    the run ends in the same model as an unbroken in-process run."""
    import os
    import signal
    import threading

    from reff_dask.cluster import dask_client

    atoms, state, prepared, settings, plain = two_chains
    with dask_client(scheduler=process_cluster) as client:
        victim = sorted(client.run(os.getpid).values())[0]
        killed = threading.Event()

        def progress(row):
            if row["iteration"] == 2 and not killed.is_set():
                killed.set()
                threading.Timer(0.05, os.kill, (victim, signal.SIGKILL)).start()

        got = refine_positions(real_map, atoms.xyz, atoms.weight, state, prepared, settings, progress=progress)
        assert killed.is_set() and victim not in client.run(os.getpid).values()
    assert len(got.history) == len(plain.history) == 5
    np.testing.assert_allclose(got.xyz, plain.xyz, atol=1e-4)


@pytest.mark.parametrize("option", [["--forcefield", "amber99-typo"], ["--platform", "NoSuchGPU"],
                                    ["--implicit", "implicit/nonexistent.xml"]])
def test_refine_refuses_unknown_md_options(tmp_path, map_path, model_path, option):
    """An unknown force field, solvent file or platform: one clear line naming it, exit 2, nothing written."""
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "reff_dask.cli", "refine", "-m", map_path, "-p", model_path,
                        "-r", "3.2", "-o", out, "--workers", "1", *option], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 2
    assert option[1] in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_final_stage_rounds_until_the_model_stops_moving(real_map, two_chains):
    """The final stage repeats (targets, whole-model minimisation) until a round moves the atoms
    less than final_shift_A rms, at most final_rounds; each round's shift is reported, and the
    shifts shrink."""
    from dataclasses import replace

    from reff_dask.refine import minimise

    atoms, state, prepared, settings, plain = two_chains
    rounds: list[dict] = []
    xyz = minimise(real_map, plain, atoms.weight, prepared, replace(settings, final_rounds=10, final_shift_A=0.02),
                   rounds=rounds)
    shifts = [r["shift_rms_A"] for r in rounds]
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    assert all(s >= 0.02 for s in shifts[:-1])
    assert shifts[-1] < 0.02 or len(rounds) == 10
    assert shifts[-1] < shifts[0]
    assert np.isfinite(xyz).all()
    capped: list[dict] = []
    minimise(real_map, plain, atoms.weight, prepared, replace(settings, final_rounds=2, final_shift_A=0.0),
             rounds=capped)
    assert len(capped) == 2


def test_md_tasks_rerun_when_the_scattered_model_is_lost(two_chains, process_cluster):
    """The prepared model reaches the workers as scattered data, which Dask cannot recompute
    and of which its memory manager keeps one replica: losing the worker that holds it cancels
    the iteration's MD tasks ("lost dependencies"). The runner scatters it again and reruns
    them, to the same positions. Here the loss is made certain by cancelling the scattered
    future."""
    from reff_dask.cluster import dask_client
    from reff_dask.refine import ChainRunner

    atoms, state, prepared, settings, plain = two_chains
    with dask_client(scheduler=process_cluster) as client:
        runner = ChainRunner(prepared, settings, run_id="lost-scatter")
        pos = prepared.positions_A
        first = runner.run(pos, atoms.xyz, 1.0, iteration=1)
        lost = runner._prepared
        client.cancel(lost)
        again = runner.run(pos, atoms.xyz, 1.0, iteration=1)
        assert runner._prepared is not lost
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_md_groups_follow_workers_that_join(two_chains):
    """A worker joins mid-run (a cluster that scales up): at the next iteration the chains are
    regrouped for two workers, one group on each, and the new worker gets the prepared model;
    the segments match an in-process run of the same groups."""
    from dataclasses import replace

    from distributed import Client, LocalCluster

    from reff_dask.refine import ChainRunner

    atoms, state, prepared, settings, plain = two_chains
    auto = replace(settings, md_groups=None)
    pos = prepared.positions_A
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        runner = ChainRunner(prepared, auto, run_id="scale-up")
        assert len(runner.groups) == 1
        runner.run(pos, atoms.xyz, 1.0, iteration=1)
        cluster.scale(2)
        client.wait_for_workers(2, timeout=1800)  # an event, not a clock: only a hang guard
        moved = runner.run(pos, atoms.xyz, 1.0, iteration=2)
        assert sorted(runner.groups) == ["A", "B"]
        assert sorted(runner._home.values()) == sorted(client.scheduler_info()["workers"])
    here = ChainRunner(prepared, replace(settings, md_groups=2), run_id="scale-up-here")
    np.testing.assert_allclose(moved, here.run(pos, atoms.xyz, 1.0, iteration=2), atol=1e-6)


def test_well_depth_falls_beyond_3_5_A():
    """The default well depth is 300 kJ/mol up to 3.5 A and 300 x 3.5 / resolution beyond (GroEL
    at 7 A: 150, which keeps the angle RMSD below the input's); a depth given is kept."""
    from reff_dask.refine import RefineSettings

    assert RefineSettings(2.9).k_gmm == RefineSettings(3.5).k_gmm == 300.0
    assert RefineSettings(7.0).k_gmm == 150.0
    assert RefineSettings(7.0, k_gmm=300.0).k_gmm == 300.0


def test_final_stage_on_groups_of_chains_ends_where_the_whole_model_does(real_map, real_structure):
    """Where the MD stage runs several groups of chains (a cluster's workers), the start
    relaxation and the final stage run them too, each group against its neighbours as they were
    at the round's start, and no task holds the whole model. On haemoglobin's alpha1-beta1 pair
    (73 atom pairs within 4 A across the interface) the final model on two groups is the one on
    the whole model to within 0.05 A rms, with no clash the whole-model one lacks."""
    from dataclasses import replace

    from reff_dask.io.models import updated_structure
    from reff_dask.refine import ChainRunner, minimise
    from reff_dask.validation import validate_geometry

    st = _piece(real_structure, {"A": (1, 200), "B": (1, 200)})
    settings = RefineSettings(3.2, max_iterations=1, md_groups=2, final_rounds=8, final_shift_A=0.01, **FAST)
    atoms, prepared, r = _refine(real_map, st, settings)
    runner = ChainRunner(prepared, settings, run_id="groups-test")
    assert runner.minimise_tasks == runner.groups and sorted(runner.groups) == ["A", "B"]
    assert ChainRunner(prepared, replace(settings, md_groups=1), run_id="whole-test").minimise_tasks == [None]
    finals = {}
    for n in (1, 2):
        rounds: list[dict] = []
        finals[n] = minimise(real_map, r, atoms.weight, prepared, replace(settings, md_groups=n), rounds=rounds)
        assert rounds[-1]["shift_rms_A"] < rounds[0]["shift_rms_A"]
    diff = np.sqrt(np.mean(np.sum((finals[2] - finals[1]) ** 2, axis=1)))
    assert diff < 0.05, diff
    geo = {n: validate_geometry(updated_structure(st, xyz=x)).overall for n, x in finals.items()}
    assert geo[2]["clashes"] <= geo[1]["clashes"]
    assert geo[2]["bond_rmsd_A"] < 1.1 * geo[1]["bond_rmsd_A"] + 1e-3
    assert geo[2]["twisted_peptides"] == geo[1]["twisted_peptides"] == 0


def test_every_worker_keeps_its_copy_of_the_prepared_model(two_chains, process_cluster):
    """The MD tasks' prepared model stays on every worker between EM iterations: Dask's active
    memory manager trims a broadcast key to one replica (then each iteration fetches the model
    again: ~1 GB for GroEL), but leaves the one copy per worker that the runner scatters."""
    from reff_dask.cluster import dask_client
    from reff_dask.refine import ChainRunner

    _atoms, _state, prepared, settings, _plain = two_chains
    with dask_client(scheduler=process_cluster) as client:
        runner = ChainRunner(prepared, settings, run_id="amm")
        broadcast = client.scatter(prepared, broadcast=True, hash=False)
        client.amm.run_once()  # what the scheduler does every 2 s
        holders = client.who_has(list(runner._prepared.values()))
        assert sorted(w for ws in holders.values() for w in ws) == sorted(runner._workers)
        assert len(client.who_has(broadcast)[broadcast.key]) == 1  # the trimming this avoids
