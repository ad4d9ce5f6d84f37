"""The `reff-dask` command as a user runs it: outputs on the real example, clear errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from reff_dask.io.maps import read_map
from reff_dask.io.models import atom_table, b_to_sigma, read_structure

pytestmark = pytest.mark.slow  # MD, subprocess jobs or a cluster: minutes (pytest -m "not slow" leaves them out)


def _cli(*args, timeout=1800):
    return subprocess.run([sys.executable, "-m", "reff_dask.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bfactor_run(tmp_path_factory, map_path, model_path):
    out = tmp_path_factory.mktemp("bfactor") / "out"
    r = _cli("bfactor", "-m", map_path, "-p", model_path, "-r", 3.2, "-o", out, "--workers", 2,
             "--chunks", 40, "--residue-iterations", 30, "--iterations", 10)
    assert r.returncode == 0, r.stderr
    return out, r


def test_bfactor_writes_model_map_report_plot(bfactor_run, model_path, real_atoms):
    out, r = bfactor_run
    for name in ("model_bfactor.pdb", "model_bfactor.cif", "simulated.mrc", "report.json", "bfactor.png"):
        assert (out / name).stat().st_size > 0, name
    assert "iteration" in r.stderr  # progress shown
    assert "[bfactor] Dask dashboard: http://" in r.stderr  # where to watch the cluster
    report = json.loads((out / "report.json").read_text())
    assert report["ccc_refined_b"] > report["ccc_uniform_b"] + 0.02
    assert len(report["iterations"]) == 40
    assert all(h["noise"] > 0 for h in report["iterations"])
    back = atom_table(read_structure(out / "model_bfactor.pdb"))
    assert len(back) == len(real_atoms)  # every input atom kept
    np.testing.assert_allclose(back.xyz, real_atoms.xyz, atol=1e-3)  # positions fixed
    sigma = b_to_sigma(back.b_input)
    assert sigma.min() >= 0.5 * 1.05 - 1e-3 and sigma.max() <= 2.5 + 1e-3  # standard B from sigma
    assert 20 < np.median(back.b_input) < 100  # A^2, plausible for a 3.2 A map
    sim = read_map(out / "simulated.mrc")
    assert sim.grid.shape == (100, 100, 100)


def test_convert_then_bfactor_on_zarr_agrees(tmp_path, bfactor_run, map_path, model_path):
    store = tmp_path / "emd_3488.zarr"
    r = _cli("convert", map_path, store, "--chunks", 50)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "z"
    r = _cli("bfactor", "-m", store, "-p", model_path, "-r", 3.2, "-o", out, "--workers", 1,
             "--residue-iterations", 30, "--iterations", 10)
    assert r.returncode == 0, r.stderr
    a = json.loads((out / "report.json").read_text())
    b = json.loads((bfactor_run[0] / "report.json").read_text())
    assert a["ccc_refined_b"] == pytest.approx(b["ccc_refined_b"], abs=1e-6)


def test_joins_running_cluster_by_address(tmp_path, map_path, model_path, bfactor_run):
    """`--scheduler ADDRESS` runs the job on an existing cluster (scheduler + 2 worker processes)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "joined"
        r = _cli("bfactor", "-m", map_path, "-p", model_path, "-r", 3.2, "-o", out, "--chunks", 40,
                 "--scheduler", cluster.scheduler_address, "--residue-iterations", 30, "--iterations", 10)
        assert r.returncode == 0, r.stderr
    a = json.loads((out / "report.json").read_text())
    b = json.loads((bfactor_run[0] / "report.json").read_text())
    assert a["ccc_refined_b"] == pytest.approx(b["ccc_refined_b"], abs=1e-9)


@pytest.mark.parametrize("job", ["refine", "bfactor", "score", "segment"])
@pytest.mark.parametrize("case", ["missing_map", "missing_model", "outdir_is_a_file", "unwritable"])
def test_path_errors_come_before_any_cluster(tmp_path, map_path, model_path, job, case):
    """A bad path: one line naming it, exit 2, nothing written, and no cluster started
    (no Dask warning or worker output on stderr)."""
    args = {"map": map_path, "model": model_path, "out": tmp_path / "out"}
    if case == "missing_map":
        args["map"] = tmp_path / "nosuch.map"
    elif case == "missing_model":
        args["model"] = tmp_path / "nosuch.pdb"
    elif case == "outdir_is_a_file":
        args["out"] = tmp_path / "a_file"
        args["out"].write_text("x")
    else:
        args["out"] = "/proc/no/such/folder"
    r = _cli(job, "-m", args["map"], "-p", args["model"], "-r", 3.2, "-o", args["out"], timeout=900)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job, cls", [("bfactor", "reff_dask.bfactor.BFactorSettings"),
                                      ("refine", "reff_dask.refine.RefineSettings"),
                                      ("ensemble", "reff_dask.ensemble.EnsembleSettings")])
def test_help_states_the_settings_defaults(job, cls):
    """Options of a job's settings default to None and take the dataclass's default (one source);
    the help's "(default N)" for each such option must say the dataclass's value."""
    import dataclasses
    import importlib
    import re

    from reff_dask.cli import build_parser

    mod, name = cls.rsplit(".", 1)
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(mod), name))}
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[job]
    checked = 0
    for action in sub._actions:
        field = action.dest
        if field not in defaults or field == "resolution" or action.option_strings == []:
            continue
        assert action.default in (None, False), (job, field, action.default)  # the dataclass decides
        m = re.search(r"\(default ([^;):,]+)", action.help or "")
        if m and re.fullmatch(r"[-+.\w]+", m.group(1).strip()):
            want = defaults[field]
            got = type(want)(m.group(1).strip()) if want is not None else m.group(1).strip()
            assert got == want, (job, field, m.group(1), want)
            checked += 1
    assert checked >= 3, (job, checked)


def test_dashboard_line_points_at_a_served_dashboard():
    """On a cluster the job prints where its Dask dashboard is, and the address answers."""
    import urllib.request

    from reff_dask.cluster import dashboard_line, dask_client

    with dask_client(workers=1) as client:
        line = dashboard_line(client)
        assert line.startswith("Dask dashboard: http://")
        with urllib.request.urlopen(line.split(": ", 1)[1], timeout=60) as page:
            assert page.status == 200
