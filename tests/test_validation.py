"""Geometry validation (`reff_dask.validation`) on hand-built cases and the `reff-dask validate` command.

Every case starts from the bundled 5ME2 model (examples/emd_3488) or from a monomer
dictionary's ideal coordinates, edits a few coordinates with gemmi, and checks that exactly
the planted defect is reported.
"""

from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from pathlib import Path

import gemmi
import numpy as np
import pytest

from reff_dask.validation import WORSE_IF_HIGHER, read_monomers, validate_geometry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "emd_3488"
START = EXAMPLE / "5me2.pdb"
COUNTS = ("bonds", "bond_outliers", "angles", "angle_outliers", "peptides", "twisted_peptides",
          "cis_peptides", "plane_atoms", "plane_outliers", "chirals", "chiral_outliers", "clashes")


@lru_cache(maxsize=1)
def _5me2() -> gemmi.Structure:
    return gemmi.read_structure(str(START))


def _fragment(last: int = 30) -> gemmi.Structure:
    """Chain A residues 1..last of 5ME2 (Hb alpha: V1 L2 S3 P4 A5 ... Y24 ...), no haem, no other chains."""
    st = _5me2().clone()
    for name in [ch.name for ch in st[0] if ch.name != "A"]:
        st[0].remove_chain(name)
    ch = st[0]["A"]
    for i in reversed(range(len(ch))):
        if ch[i].seqid.num > last or ch[i].het_flag == "H":
            del ch[i]
    st.setup_entities()
    return st


def _res(st: gemmi.Structure, num: int, chain: str = "A") -> gemmi.Residue:
    return next(r for r in st[0][chain] if r.seqid.num == num)


def _xyz(atom: gemmi.Atom) -> np.ndarray:
    return np.array(atom.pos.tolist())


def _put(atom: gemmi.Atom, xyz) -> None:
    atom.pos = gemmi.Position(*map(float, xyz))


def _rotate_after(st: gemmi.Structure, num: int, degrees: float) -> None:
    """Turn every residue after residue ``num`` of chain A about the C(num)-N(num+1) bond."""
    ch = st[0]["A"]
    k = next(i for i, r in enumerate(ch) if r.seqid.num == num)
    origin = _xyz(ch[k]["C"][0])
    axis = _xyz(ch[k + 1]["N"][0]) - origin
    axis /= np.linalg.norm(axis)
    t = math.radians(degrees)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(t) * kx + (1 - math.cos(t)) * kx @ kx  # Rodrigues
    for res in list(ch)[k + 1:]:
        for at in res:
            _put(at, origin + rot @ (_xyz(at) - origin))


def _omega(st: gemmi.Structure, num: int) -> float:
    return math.degrees(gemmi.calculate_omega(_res(st, num), _res(st, num + 1)))


def _differs(before: dict, after: dict) -> dict:
    return {k: (before[k], after[k]) for k in COUNTS if before[k] != after[k]}


def _ideal_residue(name: str) -> gemmi.Structure:
    """One free amino acid at its dictionary's ideal coordinates (heavy atoms and OXT)."""
    cc = read_monomers([name]).monomers[name]
    res = gemmi.Residue()
    res.name, res.seqid, res.het_flag = name, gemmi.SeqId(1, " "), "A"
    for a in cc.atoms:
        if a.el.name == "H":
            continue
        at = gemmi.Atom()
        at.name, at.element, at.pos, at.occ, at.b_iso = a.id, a.el, a.xyz, 1.0, 30.0
        res.add_atom(at)
    ch = gemmi.Chain("A")
    ch.add_residue(res)
    model = gemmi.Model("1")
    model.add_chain(ch)
    st = gemmi.Structure()
    st.add_model(model)
    st.setup_entities()
    return st


# ---------------------------------------------------------------- (a) ideal / stretched bond


@pytest.mark.parametrize("name", ["SER", "ALA", "PHE", "VAL"])
def test_dictionary_ideal_residue_scores_near_zero(name):
    g = validate_geometry(_ideal_residue(name))
    o = g.overall
    assert o["bonds"] > 0 and o["angles"] > 0 and o["chirals"] == 1
    assert o["bond_rmsd_A"] < 0.01 and o["angle_rmsd_deg"] < 0.5
    assert all(o[k] == 0 for k in ("bond_outliers", "angle_outliers", "plane_outliers", "chiral_outliers",
                                   "clashes", "twisted_peptides", "cis_peptides"))
    assert g.worst == [] and g.unknown_residues == []


def test_bond_rmsd_matches_a_hand_computation():
    """RMSD of the side-chain bonds of ideal TYR, stretched by known amounts, computed by hand
    from the dictionary: validate_geometry must report the same number."""
    st = _ideal_residue("TYR")
    cc = read_monomers(["TYR"]).monomers["TYR"]
    res = st[0]["A"][0]
    _put(res["OH"][0], _xyz(res["CZ"][0]) + 1.2 * (_xyz(res["OH"][0]) - _xyz(res["CZ"][0])))
    sq = []
    for b in cc.rt.bonds:
        a1, a2 = res.find_atom(b.id1.atom, "*"), res.find_atom(b.id2.atom, "*")
        if a1 is None or a2 is None:
            continue
        sq.append((a1.pos.dist(a2.pos) - b.value) ** 2)
    g = validate_geometry(st)
    assert g.overall["bonds"] == len(sq)
    assert g.overall["bond_rmsd_A"] == pytest.approx(math.sqrt(np.mean(sq)), rel=1e-6)
    assert g.overall["bond_outliers"] == 1
    assert g.worst[0].startswith("bond A/TYR1:") and "OH" in g.worst[0]


def test_stretched_bond_is_an_outlier_and_named():
    ref = _fragment()
    before = validate_geometry(ref)
    st = ref.clone()
    ser = _res(st, 3)
    assert ser.name == "SER"
    cc = read_monomers(["SER"]).monomers["SER"]
    ideal = next(b.value for b in cc.rt.bonds if {b.id1.atom, b.id2.atom} == {"CB", "OG"})
    cb, og = _xyz(ser["CB"][0]), _xyz(ser["OG"][0])
    u = (og - cb) / np.linalg.norm(og - cb)
    _put(ser["OG"][0], cb + (ideal + 0.1) * u)  # along the bond: no angle changes
    after = validate_geometry(st)
    assert _differs(before.overall, after.overall) == {
        "bond_outliers": (before.overall["bond_outliers"], before.overall["bond_outliers"] + 1)}
    assert after.overall["bond_rmsd_A"] > before.overall["bond_rmsd_A"]
    assert after.overall["angle_rmsd_deg"] == pytest.approx(before.overall["angle_rmsd_deg"], abs=1e-9)
    hit = [w for w in after.worst if w.startswith("bond") and "SER3" in w and "OG" in w]
    assert len(hit) == 1 and f"{ideal + 0.1:.3f} A" in hit[0]
    assert not any("SER3" in w for w in before.worst)
    # the untouched copy did not move
    assert validate_geometry(ref).overall == before.overall


# ---------------------------------------------------------------- (b) cis and twisted peptides


def test_cis_peptide_flagged():
    st = _fragment()
    assert abs(_omega(st, 8)) > 150  # THR8-ASN9, trans
    _rotate_after(st, 8, 180.0)
    assert abs(_omega(st, 8)) < 30
    g = validate_geometry(st)
    assert g.overall["cis_peptides"] == 1 and g.overall["twisted_peptides"] == 0
    assert g.per_chain["A"]["cis_peptides"] == 1
    assert any("THR8-ASN9" in w and "cis" in w for w in g.worst)


def test_cis_proline_not_counted():
    st = _fragment()
    assert _res(st, 4).name == "PRO"
    _rotate_after(st, 3, 180.0)  # SER3-PRO4
    assert abs(_omega(st, 3)) < 30
    g = validate_geometry(st)
    assert g.overall["cis_peptides"] == 0 and g.overall["twisted_peptides"] == 0


def test_twisted_peptide_flagged():
    st = _fragment()
    _rotate_after(st, 8, 90.0)
    assert 60 < abs(_omega(st, 8)) < 120
    g = validate_geometry(st)
    assert g.overall["twisted_peptides"] == 1 and g.overall["cis_peptides"] == 0
    assert any("THR8-ASN9" in w and "twisted" in w for w in g.worst)


# ---------------------------------------------------------------- (c) planes


def test_ring_atom_out_of_plane_is_a_plane_outlier():
    ref = _fragment()
    before = validate_geometry(ref)
    st = ref.clone()
    tyr = _res(st, 24)
    assert tyr.name == "TYR"
    ring = np.array([_xyz(tyr[n][0]) for n in ("CG", "CD1", "CD2", "CE1", "CE2", "CZ")])
    normal = np.linalg.svd(ring - ring.mean(axis=0))[2][2]
    _put(tyr["CZ"][0], _xyz(tyr["CZ"][0]) + 0.3 * normal)
    after = validate_geometry(st)
    assert after.overall["plane_outliers"] == before.overall["plane_outliers"] + 1
    assert any(w.startswith("plane A/TYR24:CZ") for w in after.worst)
    assert after.overall["plane_atoms"] == before.overall["plane_atoms"]


# ---------------------------------------------------------------- (d) chirality


def test_mirrored_cb_is_a_chirality_outlier():
    ref = _fragment()
    before = validate_geometry(ref)
    st = ref.clone()
    ala = _res(st, 5)
    assert ala.name == "ALA"
    n, ca, c, cb = (_xyz(ala[x][0]) for x in ("N", "CA", "C", "CB"))
    normal = np.cross(n - ca, c - ca)
    normal /= np.linalg.norm(normal)
    _put(ala["CB"][0], cb - 2 * np.dot(cb - ca, normal) * normal)  # reflect through the N-CA-C plane
    after = validate_geometry(st)
    assert before.overall["chiral_outliers"] == 0
    changed = _differs(before.overall, after.overall)
    changed.pop("clashes", None)  # a D-Ala CB meets the PRO4 carbonyl O (2.64 A): a real clash
    assert changed == {"chiral_outliers": (0, 1)}
    # bond lengths and angles at CA are kept by the reflection
    assert after.overall["bond_rmsd_A"] == pytest.approx(before.overall["bond_rmsd_A"], abs=1e-9)
    assert "chirality A/ALA5:CA inverted" in after.worst


# ---------------------------------------------------------------- (e) unknown residues


def _with_unknown_residues() -> gemmi.Structure:
    st = _fragment()
    _res(st, 12).name = "ZZZ"  # was ALA
    lig = gemmi.Residue()
    lig.name, lig.seqid, lig.het_flag = "LIG", gemmi.SeqId(1, " "), "H"
    for k, el in enumerate(("C", "O")):
        at = gemmi.Atom()
        at.name, at.element, at.pos, at.occ = f"{el}1", gemmi.Element(el), gemmi.Position(80 + 1.3 * k, 80, 80), 1.0
        lig.add_atom(at)
    ch = gemmi.Chain("L")
    ch.add_residue(lig)
    st[0].add_chain(ch)
    st.setup_entities()
    return st


def test_unknown_residues_listed_not_fatal():
    g = validate_geometry(_with_unknown_residues())
    assert g.unknown_residues == ["A/ZZZ12", "L/LIG1"]
    assert sorted(g.per_chain) == ["A", "L"]
    assert g.overall["bonds"] > 0 and g.overall["peptides"] > 0


def test_unknown_residues_contribute_nothing():
    g = validate_geometry(_with_unknown_residues())
    assert g.per_chain["L"]["bonds"] == 0 and g.per_chain["L"]["angles"] == 0
    # ZZZ12's own restraints and its peptide bonds to LYS11 and ALA13 are gone
    st = _fragment()
    good = validate_geometry(st)
    cut = st.clone()
    del cut[0]["A"][11]
    without = validate_geometry(cut)
    assert g.per_chain["A"]["bonds"] == without.overall["bonds"] < good.overall["bonds"]


# ---------------------------------------------------------------- (f) per chain vs overall


def test_per_chain_sums_to_overall():
    g = validate_geometry(_5me2())
    assert sorted(g.per_chain) == ["A", "B", "C", "D"]
    for k in COUNTS:
        assert sum(r[k] for r in g.per_chain.values()) == g.overall[k], k
    for n, rmsd in (("bonds", "bond_rmsd_A"), ("angles", "angle_rmsd_deg")):
        sq = sum(r[n] * r[rmsd] ** 2 for r in g.per_chain.values())
        assert math.sqrt(sq / g.overall[n]) == pytest.approx(g.overall[rmsd], rel=1e-9)
    assert set(WORSE_IF_HIGHER) <= set(g.overall)
    # the figures quoted in the module's reference check
    assert g.overall["bond_rmsd_A"] == pytest.approx(0.0137, abs=1e-4)
    assert g.overall["angle_rmsd_deg"] == pytest.approx(1.61, abs=0.01)
    assert g.overall["angle_outliers"] == 6


# ---------------------------------------------------------------- (g) monlib argument


def test_monlib_folder_without_list_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a CCP4 monomer library \(no list/mon_lib_list.cif\)"):
        validate_geometry(_fragment(5), monlib=tmp_path)


# ---------------------------------------------------------------- reff-dask validate


def test_cli_validate_tables_and_files(tmp_path, capsys, monkeypatch):
    import reff_dask.cluster
    from reff_dask import cli
    from reff_dask.validation import BUNDLED_MONOMERS

    def no_cluster(*a, **k):
        raise AssertionError("validate started a Dask cluster")

    monkeypatch.setattr(reff_dask.cluster, "dask_client", no_cluster)
    frag = _fragment()
    _rotate_after(frag, 8, 180.0)
    frag_path = tmp_path / "frag_cis.pdb"
    frag.write_pdb(str(frag_path))
    out = tmp_path / "out"
    rc = cli.main(["validate", "-p", str(START), "-p", str(frag_path), "--monlib", str(BUNDLED_MONOMERS),
                   "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "5me2" in text and "frag_cis" in text and "worst" in text
    assert "THR8-ASN9" in text
    rep = json.loads((out / "validation.json").read_text())
    assert list(rep["models"]) == ["5me2", "frag_cis"]
    m = rep["models"]["5me2"]
    assert m["overall"]["angle_outliers"] == 6 and sorted(m["per_chain"]) == ["A", "B", "C", "D"]
    assert rep["models"]["frag_cis"]["overall"]["cis_peptides"] == 1
    with open(out / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["chain"]) for r in rows] == [("5me2", c) for c in "ABCD"] + [("frag_cis", "A")]
    assert int(rows[-1]["cis_peptides"]) == 1
    assert float(rows[0]["bond_rmsd_A"]) == pytest.approx(m["per_chain"]["A"]["bond_rmsd_A"], abs=1e-4)
    assert not list(out.glob(".*part"))  # no leftovers of the atomic writes


def test_cli_validate_bad_input_is_one_line(tmp_path, capsys):
    from reff_dask import cli

    rc = cli.main(["validate", "-p", str(tmp_path / "missing.pdb")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "missing.pdb" in err and "no such file" in err
    rc = cli.main(["validate", "-p", str(START), "--monlib", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "mon_lib_list.cif" in err


def test_model_labels_are_short_and_unique():
    from reff_dask.io.models import model_labels

    paths = ["a/5me2.pdb", "b/5me2.cif.gz", "c/my model.pdb", ".pdb"]
    assert model_labels(paths) == ["5me2", "5me2_2", "my_model", "model"]
