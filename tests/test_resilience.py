"""Failures mid-run: a worker process killed during B-factor refinement; a whole `reff-dask refine`
run killed with SIGKILL and continued with --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import gemmi
import numpy as np
import pytest

from reff_dask.bfactor import BFactorSettings, refine_bfactors
from reff_dask.io.maps import read_map

pytestmark = pytest.mark.slow  # MD, subprocess jobs or a cluster: minutes (pytest -m "not slow" leaves them out)

#: guards against a hang, not a measure of speed: a loaded 2-core machine runs these 10x slower
HANG_S = 1800
SETTINGS = BFactorSettings(3.2, iterations=5, residue_iterations=15, tol=0.0)  # no early stop: fixed work


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    return cluster, Client(cluster)


def _bfactor_run(map_path, atoms, progress=None):
    m = read_map(map_path, 50)
    m.data = m.data.persist()  # as jobs.inputs does: map chunks live in worker memory
    return refine_bfactors(m, atoms.xyz, atoms.weight, SETTINGS, residue=atoms.residue, progress=progress)


def test_worker_killed_mid_refinement_same_result(map_path, real_atoms):
    """SIGKILL one worker process (holding persisted map chunks and the atom table)
    while an E-step is in flight: Dask recomputes the lost chunks from the file, the nanny
    starts a new worker, the refinement completes, and the widths equal an unbroken run's."""
    cluster, client = _cluster()
    try:
        ref = _bfactor_run(map_path, real_atoms)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed = threading.Event()

        def progress(row):
            if row["iteration"] == 6 and not killed.is_set():
                killed.set()  # kill during the next iteration's E-step
                threading.Timer(0.01, os.kill, (victim, signal.SIGKILL)).start()

        got = _bfactor_run(map_path, real_atoms, progress)
        assert killed.is_set()
        client.wait_for_workers(2, timeout=HANG_S)
        assert victim not in client.run(os.getpid).values()  # the worker really died
    finally:
        client.close()
        cluster.close()
    assert len(got.history) == len(ref.history) == 20
    np.testing.assert_array_equal(got.state.sigma, ref.state.sigma)
    assert (got.state.scale, got.state.noise, got.ccc) == (ref.state.scale, ref.state.noise, ref.ccc)


# ----------------------------------------------------------------------------- whole run killed


def _small_model(model_path, tmp_path):
    st = gemmi.read_structure(str(model_path))
    st.setup_entities()
    for name in {ch.name for ch in st[0]} - {"A"}:
        st[0].remove_chain(name)
    ch = st[0]["A"]
    for i in reversed(range(len(ch))):
        if ch[i].seqid.num > 40 or gemmi.find_tabulated_residue(ch[i].name) is None or not gemmi.find_tabulated_residue(ch[i].name).is_amino_acid():
            del ch[i]
    out = tmp_path / "a1-40.pdb"
    st.write_pdb(str(out))
    return out


def _refine_cmd(map_path, model, out):
    return [sys.executable, "-m", "reff_dask.cli", "refine", "-m", str(map_path), "-p", str(model), "-r", "3.2",
            "-o", str(out), "--preset", "fast", "--steps", "20", "--implicit", "none", "--max-iterations", "2",
            "--residue-iterations", "5", "--iterations", "1", "--workers", "1", "--chunks", "50"]


def test_refine_sigkill_then_resume_same_model(map_path, model_path, tmp_path):
    model = _small_model(model_path, tmp_path)
    full = tmp_path / "full"
    r = subprocess.run(_refine_cmd(map_path, model, full), capture_output=True, text=True, timeout=HANG_S)
    assert r.returncode == 0, r.stderr

    cut = tmp_path / "cut"
    # own process group: SIGKILL takes the client and its local workers down at once, like a lost node
    p = subprocess.Popen(_refine_cmd(map_path, model, cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    ckpt = cut / "checkpoint.npz"
    while not ckpt.exists() and p.poll() is None:  # the run's own event, however long it takes
        time.sleep(0.02)
    assert p.poll() is None, "run ended before its first checkpoint"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (cut / "report.json").exists()
    leftovers = [f.name for f in cut.iterdir() if f.name != "checkpoint.npz"]
    assert all(not n.endswith(".part") for n in leftovers), leftovers  # nothing half-written under a real name
    with np.load(ckpt) as z:
        done = json.loads(str(z["meta"]))["iteration"]
    assert done < 2

    r = subprocess.run(_refine_cmd(map_path, model, cut) + ["--resume"], capture_output=True, text=True, timeout=HANG_S)
    assert r.returncode == 0, r.stderr
    a = gemmi.read_structure(str(full / "model_refined.pdb"))
    b = gemmi.read_structure(str(cut / "model_refined.pdb"))
    xa = np.array([at.pos.tolist() for res in a[0]["A"] for at in res])
    xb = np.array([at.pos.tolist() for res in b[0]["A"] for at in res])
    np.testing.assert_allclose(xb, xa, atol=2e-3)  # PDB precision
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (full, cut))
    assert [h["ccc"] for h in rb["iterations"]] == pytest.approx([h["ccc"] for h in ra["iterations"]], abs=1e-6)  # OpenMM CPU sums are not bitwise reproducible
