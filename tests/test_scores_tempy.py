"""``--convention tempy``: TEMPy 2.1.2's SMOC, LoQFit and CCC, checked against TEMPy's own output.

tests/data/tempy212_scores.tsv.gz holds TEMPy 2.1.2's per-residue values on the shared cases
(the commands are in its header); TEMPy itself is not needed here.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from reff_dask.io.maps import read_map
from reff_dask.io.models import read_structure
from reff_dask.scores import ScoreSettings, score_models
from reff_dask.scores.tempy import TempyConvention, crossing

FIXTURE = Path(__file__).parent / "data" / "tempy212_scores.tsv.gz"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "emd_3488"


def _tempy_values() -> tuple[dict, dict]:
    per_res, ccc = {}, {}
    with gzip.open(FIXTURE, "rt") as f:
        for line in f:
            if line.startswith("#"):
                continue
            p = line.split()
            if p[0] == "ccc":
                ccc[p[1]] = float(p[2])
            else:
                per_res[(p[0], p[1], int(p[2]))] = (float(p[3]), float(p[4]))
    return per_res, ccc


def _case(name: str, shared_case) -> tuple[Path, Path, float]:
    if name == "emd_3488":
        return EXAMPLE / "emd_3488.map.gz", EXAMPLE / "5ni1.pdb", 3.2
    d = shared_case(name)
    if name == "emd_2566":
        return d / "emd_2566_crop_3j6b_chain9.mrc.gz", d / "3j6b_chain9_withH.pdb", 3.2
    return d / "emd_11007_crop_6yyt_rna.mrc.gz", d / "6yyt_rna_PQTU.pdb", 2.9


def _scores(map_path, model_path, resolution, settings):
    t = score_models(read_map(map_path, 48), {"m": read_structure(model_path)}, resolution, settings)
    rows = {(c, int(n)): (s, q) for c, n, s, q in zip(t.chain, t.seqnum, t.smoc[:, 0], t.loqfit[:, 0])}
    return rows, t.ccc["m"]["ccc_box"]


@pytest.mark.parametrize("case", ["emd_3488", "emd_2566", "emd_11007_rna"])
def test_tempy_convention_reproduces_tempy(case, shared_case):
    """Issue 12's goal: r >= 0.99, mean |diff| <= 0.005 (SMOC) and 0.02 A (LoQFit) on every residue TEMPy scores."""
    map_path, model_path, resolution = _case(case, shared_case)
    ref, ref_ccc = _tempy_values()
    ref = {k[1:]: v for k, v in ref.items() if k[0] == case}
    got, ccc = _scores(map_path, model_path, resolution, ScoreSettings(convention="tempy", qscore_sigma=None))
    assert set(ref) <= set(got)
    keys = sorted(ref)
    for j, tol in ((0, 0.005), (1, 0.02)):
        a = np.array([got[k][j] for k in keys])
        b = np.array([ref[k][j] for k in keys])
        assert np.all(np.isfinite(a))
        assert np.abs(a - b).mean() <= tol
        assert np.abs(a - b).max() <= 10 * tol
        if np.std(b) > 0:  # EMD-2566's crop is smaller than one LoQFit box: one value for all
            assert np.corrcoef(a, b)[0, 1] >= 0.99
    assert ccc == pytest.approx(ref_ccc[case], abs=6e-4)  # TEMPy prints 3 decimals


def test_switches_off_give_this_projects_smoc_and_ccc(map_path, model_path):
    """With every TEMPy definition switched off, SMOC and CCC are this project's own (chunked) SMOCf and
    CCC: the switches name every difference there is between the two."""
    off = TempyConvention(**{k: False for k in TempyConvention.names()})
    got, ccc = _scores(map_path, model_path, 3.2, ScoreSettings(convention="tempy", tempy=off, qscore_sigma=None))
    own, own_ccc = _scores(map_path, model_path, 3.2, ScoreSettings(qscore_sigma=None))
    keys = [k for k in got if np.isfinite(got[k][0])]
    assert len(keys) == 578  # ligands kept: the four haems scored too
    assert np.allclose([got[k][0] for k in keys], [own[k][0] for k in keys], atol=2e-5)
    assert ccc == pytest.approx(own_ccc, abs=1e-5)
    # each switch alone moves the scores (here: those that matter on this case)
    tempy, _ = _scores(map_path, model_path, 3.2, ScoreSettings(convention="tempy", qscore_sigma=None))
    for name, idx in (("grid_model_map", 0), ("half_voxel_mask", 0), ("loqfit_lower_edge", 1), ("loqfit_raw", 1)):
        one, _ = _scores(map_path, model_path, 3.2,
                         ScoreSettings(convention="tempy", tempy=replace(TempyConvention(), **{name: False}),
                                       qscore_sigma=None))
        both = [k for k in tempy if k in one and np.isfinite(tempy[k][idx]) and np.isfinite(one[k][idx])]
        assert np.abs(np.array([one[k][idx] - tempy[k][idx] for k in both])).mean() > 0.005, name


def test_tempy_crossing_takes_the_last_strict_crossing_in_angstrom():
    res = np.array([1000.0, 20.0, 10.0, 5.0, 4.0, 3.0])
    assert crossing(np.array([1.0, 0.9, 0.7, 0.3, 0.2, 0.1]), res) == pytest.approx(10 - 0.2 / 0.4 * 5)
    assert crossing(np.array([1.0, 0.9, 0.4, 0.6, 0.45, 0.1]), res) == pytest.approx(4 + 0.05 / 0.15 * 1)
    assert crossing(np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.55]), res) == 0.0  # never: the caller clamps to Nyquist
    assert crossing(np.array([1.0, 0.9, 0.5, 0.3, 0.2, 0.1]), res) == 0.0   # touching 0.5 is not crossing it


def test_cli_score_convention_tempy(tmp_path, map_path, model_path):
    out = tmp_path / "s"
    r = subprocess.run([sys.executable, "-m", "reff_dask.cli", "score", "-m", str(map_path), "-p", str(model_path),
                        "-r", "3.2", "-o", str(out), "--convention", "tempy", "--qscore-sigma", "0.6"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "SMOC (TEMPy)" in r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["convention"] == "tempy"
    assert rep["ccc"]["5ni1"]["ccc_box"] == pytest.approx(_tempy_values()[1]["emd_3488"], abs=6e-4)
    assert rep["model_means"]["5ni1"]["residues"] == 574


def test_number_windows_stop_at_numbering_gaps_not_at_bonds(real_structure):
    """TEMPy's windows stop where residue numbers skip even if the chain is bonded across; this
    project's stop where the chain is broken, whatever the numbers."""
    from reff_dask.scores.tempy import model_atoms, residues

    st = real_structure.clone()
    for res in st[0]["A"]:
        if res.seqid.num > 50:
            res.seqid.num += 10  # a numbering gap after A50, the chain still bonded
    conv = TempyConvention()
    st2, _, _ = model_atoms(st, conv)
    tempy = residues(st2, 11, conv)
    own = residues(st2, 11, replace(conv, number_windows=False))
    i = [k for k, (c, n) in enumerate(zip(tempy.chain, tempy.seqnum)) if c == "A" and n == 50][0]
    atoms_of = {int(n): set(a.tolist()) for c, n, a in zip(tempy.chain, tempy.seqnum, tempy.atoms) if c == "A"}
    assert set(tempy.window[i].tolist()) == set().union(*(atoms_of[n] for n in range(45, 51)))
    assert set(own.window[i].tolist()) == set().union(*(atoms_of[n] for n in [45, 46, 47, 48, 49, 50,
                                                                             61, 62, 63, 64, 65]))


def test_tempy_masses_and_ligands(shared_case, real_structure):
    """TEMPy weighs atoms by their name's first letter (phosphorus 'P' weighs 1, iron 'FE' 1) and
    reads no ligands or waters."""
    from reff_dask.scores.tempy import model_atoms

    conv = TempyConvention()
    st, _, w = model_atoms(real_structure, conv)
    names = [at.name for res in st[0][0] for at in res]
    assert "FE" not in names and len(st[0][0]) == 141  # haem and waters gone
    assert w[names.index("CA")] == 12.0 and w[names.index("SD")] == 32.0
    _, _, w_kept = model_atoms(real_structure, replace(conv, drop_ligands=False, name_masses=False))
    assert len(w_kept) == real_structure[0].count_atom_sites()
    rna = read_structure(shared_case("emd_11007_rna") / "6yyt_rna_PQTU.pdb")
    st, _, w = model_atoms(rna, conv)
    p = [i for i, at in enumerate(at for ch in st[0] for res in ch for at in res) if at.name == "P"]
    assert p and np.all(w[p] == 1.0)
    _, _, wz = model_atoms(rna, replace(conv, name_masses=False))
    assert np.all(wz[p] == 15.0)
