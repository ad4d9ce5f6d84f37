"""The MD system's bonded geometry agrees with the CCP4 library that models are validated
against, and input atoms without an MD particle follow their residue (real models)."""

from __future__ import annotations

import math

import gemmi
import numpy as np
import openmm
import pytest

from reff_dask.io.models import read_structure, updated_structure
from reff_dask.md.ideal import library_targets
from reff_dask.md.prepare import prepare_model
from reff_dask.md.simulate import ChainSimulation
from reff_dask.validation import validate_geometry

pytestmark = pytest.mark.slow  # MD, subprocess jobs or a cluster: minutes (pytest -m "not slow" leaves them out)


def _piece(st: gemmi.Structure, chain: str, lo: int, hi: int) -> gemmi.Structure:
    out = st.clone()
    out.remove_ligands_and_waters()
    for name in [c.name for c in out[0] if c.name != chain]:
        out[0].remove_chain(name)
    ch = out[0][chain]
    for i in range(len(ch) - 1, -1, -1):
        if not lo <= ch[i].seqid.num <= hi:
            del ch[i]
    out.setup_entities()
    return out


def _minimised(st: gemmi.Structure, library: bool) -> gemmi.Structure:
    """``st`` minimised in vacuum, each atom held loosely (k 30 kJ/mol, width 0.8 A) at its start."""
    prep = prepare_model(st, "amber14", None, library_geometry=library)
    xyz0 = prep.input_start_A
    sim = ChainSimulation(prep, None, preset="minimise", k_gmm=30.0, threads=1)
    sim.set_targets(xyz0, 0.8)
    sim.minimise(max_iterations=0, tolerance=1.0)
    pa = prep.particle_atom[sim.subset[sim._mobile_sub]]
    out = xyz0.copy()
    ok = pa >= 0
    out[pa[ok]] = sim.particle_positions_A[ok]
    return updated_structure(st, xyz=out)


def test_equilibria_are_the_library_targets(real_structure):
    st = _piece(real_structure, "A", 1, 12)
    prep = prepare_model(st, "amber14", None)
    bonds, angles = library_targets(st)[:2]
    assert prep.library_terms["bonds"] == len(bonds) - 0  # every heavy-atom bond has a term
    names = {a.index: a.name for a in prep.topology.atoms()}
    checked = 0
    for f in prep.system.getForces():
        if isinstance(f, openmm.HarmonicAngleForce):
            for t in range(f.getNumAngles()):
                p1, p2, p3, th, _k = f.getAngleParameters(t)
                if (names[p1], names[p2], names[p3]) == ("N", "CA", "C"):
                    a = [int(prep.particle_atom[p]) for p in (p1, p2, p3)]
                    want = angles[(min(a[0], a[2]), a[1], max(a[0], a[2]))][0]
                    assert math.degrees(th.value_in_unit(openmm.unit.radian)) == np_approx(want)
                    checked += 1
    assert checked == 12


def np_approx(x: float, tol: float = 1e-9):
    import pytest

    return pytest.approx(x, abs=tol)


def test_minimised_geometry_matches_the_library_only_with_library_equilibria(real_structure):
    """AMBER14's own equilibria put a minimised model ~0.015 A / ~2 deg off the library (mostly
    per-type offsets such as N-CA-C); with the library's equilibria it lands within 0.011 A /
    1.3 deg, as well-refined models do."""
    st = _piece(real_structure, "A", 1, 40)
    amber = validate_geometry(_minimised(st, library=False), clashes=False).overall
    ours = validate_geometry(_minimised(st, library=True), clashes=False).overall
    assert amber["bond_rmsd_A"] > 0.013 and amber["angle_rmsd_deg"] > 1.6
    assert ours["bond_rmsd_A"] < 0.011 and ours["angle_rmsd_deg"] < 1.3
    assert ours["angle_outliers"] == 0 and ours["twisted_peptides"] == 0


def test_five_prime_phosphates_follow_their_residue(shared_case):
    """RNA: AMBER's 5' templates have no phosphate, so P/OP1/OP2 of each chain's first residue
    have no MD particle. They must move with their residue (the P-O5' bond kept), not stay put."""
    case = shared_case("emd_11007_rna")
    st = read_structure(case / "6yyt_rna_PQTU.pdb")
    prep = prepare_model(st, "amber14", None)
    assert prep.n_riders == 12  # P, OP1, OP2 of four chains
    rot = np.array([[math.cos(0.4), -math.sin(0.4), 0], [math.sin(0.4), math.cos(0.4), 0], [0, 0, 1]])
    moved = prep.input_positions_A(prep.positions_A @ rot.T + [3.0, -2.0, 1.0], prep.input_start_A)
    np.testing.assert_allclose(moved, prep.input_start_A @ rot.T + [3.0, -2.0, 1.0], atol=1e-9)
    geo = validate_geometry(updated_structure(st, xyz=moved), clashes=False).overall
    assert geo["bond_outliers"] == 0
    # the residue flexes (O5' moves 0.4 A against C5', C4'): the phosphate turns about O5', so
    # P-O5' and the O-P-O5' angles stay as they were
    flexed = prep.positions_A.copy()
    for riders, anchors in prep.riders:
        assert len(anchors) >= 3
        flexed[prep.atom_map[anchors[0]]] += [0.25, -0.2, 0.25]
    moved = prep.input_positions_A(flexed, prep.input_start_A)
    for riders, anchors in prep.riders:
        pivot, p0, p1 = anchors[0], prep.input_start_A, moved
        for r in riders:
            assert np.linalg.norm(p1[r] - p1[pivot]) == pytest.approx(np.linalg.norm(p0[r] - p0[pivot]), abs=1e-9)
            for q in riders:
                if q != r:
                    a0 = _angle(p0[q], p0[r], p0[pivot])
                    assert _angle(p1[q], p1[r], p1[pivot]) == pytest.approx(a0, abs=1e-6)


def _angle(a, b, c) -> float:
    u, v = a - b, c - b
    return math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))


def _clashing_piece(real_structure):
    """Chain A 1-20 with the CB of residue 10 put 0.6 A from the CA of residue 14: a start
    that 2 fs dynamics cannot integrate (non-finite positions at the first step)."""
    st = _piece(real_structure, "A", 1, 20)
    ch = st[0]["A"]
    ca = ch[13].find_atom("CA", "*").pos
    ch[9].find_atom("CB", "*").pos = gemmi.Position(ca.x + 0.6, ca.y, ca.z)
    return st


def test_md_blow_up_is_recovered_and_reported(real_structure):
    from reff_dask.md.simulate import clear_cache, run_chain_segment

    st = _clashing_piece(real_structure)
    prep = prepare_model(st, "amber14", None)
    clear_cache()
    r = run_chain_segment(prep, "A", prep.positions_A, prep.input_start_A, 1.0, preset="fast",
                          run_id="blowup", threads=1, use_cache=False)
    assert np.isfinite(r.particle_positions_A).all()
    assert r.recovery is not None and "chain A" in r.recovery and "1 fs" in r.recovery


def test_md_blow_up_that_cannot_be_recovered_stops_with_one_message(real_structure):
    import pytest

    from reff_dask.errors import NumericalError
    from reff_dask.md.simulate import run_chain_segment

    st = _piece(real_structure, "A", 1, 20)
    prep = prepare_model(st, "amber14", None)
    far = prep.input_start_A + 40.0  # targets 70 A away with a well of 1e9 kJ/mol
    with pytest.raises(NumericalError, match="chain A at EM iteration 7"):
        run_chain_segment(prep, "A", prep.positions_A, far, 30.0, preset="fast", k_gmm=1e9, iteration=7,
                          run_id="hopeless", threads=1, use_cache=False)


def test_omega_restraints_stiffen_beyond_3_5_A(real_structure):
    """At 7 A the omega restraint is 4x the library's kT/esd^2 (GroEL A+B: 13 twisted peptides -> 0);
    at 3.5 A or better it is the library's."""
    from reff_dask.md.ideal import KT, omega_stiffness

    assert omega_stiffness(None) == omega_stiffness(3.2) == omega_stiffness(3.5) == 1.0
    assert omega_stiffness(7.0) == 4.0
    st = _piece(real_structure, "A", 1, 12)
    k = {}
    for res in (3.2, 7.0):
        prep = prepare_model(st, "amber14", None, resolution_A=res)
        f = next(f for f in prep.system.getForces() if f.getName() == "LibraryOmega")
        assert f.getNumTorsions() == 11  # one per peptide
        k[res] = f.getTorsionParameters(0)[4][0]
    assert k[3.2] == np_approx(KT / math.radians(5.0) ** 2, 1e-6)
    assert k[7.0] == np_approx(4 * k[3.2], 1e-6)


def test_five_prime_phosphates_are_walls_that_move_with_them(shared_case):
    """The riders (5' P, OP1, OP2) have wall-only stand-ins that follow them, so other atoms
    cannot move into them (a refinement pressed chain Q's G18 O3' to 2.46 A of chain P's 5' P
    before). G18 pulled onto that P with a 5x well: with the stand-ins its O3' stops at the
    wall; without them it moves to within 1.3 A."""
    from reff_dask.md.simulate import ChainSimulation

    case = shared_case("emd_11007_rna")
    st = read_structure(case / "6yyt_rna_PQTU.pdb")
    prep = prepare_model(st, "amber14", None)
    assert len(prep.rider_particles) == 12
    np.testing.assert_allclose(prep.positions_A[prep.rider_particles], prep.input_start_A[prep.rider_atoms])
    moved = prep.input_positions_A(prep.positions_A + [1.0, 0.0, 0.0], prep.input_start_A)
    placed = prep.place_riders(prep.positions_A + [1.0, 0.0, 0.0], moved)
    np.testing.assert_allclose(placed[prep.rider_particles], prep.input_start_A[prep.rider_atoms] + [1.0, 0.0, 0.0],
                               atol=1e-9)

    names = [(ch.name, r.seqid.num, a.name) for ch in st[0] for r in ch for a in r]
    xyz = prep.input_start_A
    p5, o3 = names.index(("P", 5, "P")), names.index(("Q", 18, "O3'"))
    dist = {}
    for shield in (True, False):
        pm = prep if shield else prepare_model(st, "amber14", None, shield=False)
        sim = ChainSimulation(pm, "Q", preset="minimise", threads=1)
        targets = sim.positions.copy()
        g18 = np.array([names[i][:2] == ("Q", 18) for i in sim.input_atoms])
        targets[g18] += xyz[p5] - xyz[o3]
        sim.set_k_gmm(1500.0)
        sim.set_targets(targets, 1.5)
        new = sim.minimise(max_iterations=2000)
        dist[shield] = float(np.linalg.norm(new[list(sim.input_atoms).index(o3)] - xyz[p5]))
    assert dist[True] > 2.7 and dist[False] < 1.5, dist


def test_segment_that_flings_a_particle_away_is_a_blow_up():
    """A segment can end with finite but absurd coordinates (EMD-2566 once moved atoms 1e12 A in
    one segment and gave NaN only a segment later): a particle that moved more than
    MAX_SEGMENT_MOVE_A counts as a blow-up, a normal segment does not."""
    from reff_dask.md.simulate import MAX_SEGMENT_MOVE_A, _run_healthy

    class Flung:
        def __init__(self, jump):
            self.particle_positions_A, self.jump = np.zeros((5, 3)), jump

        def set_positions(self, p):
            self.particle_positions_A = np.array(p, dtype=float)

        def set_targets(self, t, w):
            pass

        def run(self, steps=None, seed=None):
            self.particle_positions_A = self.particle_positions_A.copy()
            self.particle_positions_A[2, 0] += self.jump

        def energy(self):
            return -1.0

    start = np.ones((5, 3))
    assert _run_healthy(Flung(1.5), start, start, 1.0, 100, 1)
    assert not _run_healthy(Flung(MAX_SEGMENT_MOVE_A * 1.01), start, start, 1.0, 100, 1)
    assert not _run_healthy(Flung(2e12), start, start, 1.0, 100, 1)


def test_an_inverted_ca_is_put_back_by_the_chiral_restraint(real_structure):
    """A CA turned into its mirror image (CB reflected through the N-CA-C plane): AMBER alone keeps
    the wrong hand (nothing in it knows a hand), the library's chiral-volume term restores it."""
    st = _piece(real_structure, "A", 1, 12)
    res = st[0]["A"][5]
    n, ca, c, cb = (np.array(res[x][0].pos.tolist()) for x in ("N", "CA", "C", "CB"))
    normal = np.cross(n - ca, c - ca)
    normal /= np.linalg.norm(normal)
    new = cb - 2 * np.dot(cb - ca, normal) * normal
    side = [at for at in res if at.name not in ("N", "CA", "C", "O")]
    shift = new - cb
    for at in side:  # the whole side chain goes with its CB
        at.pos = gemmi.Position(*(np.array(at.pos.tolist()) + shift))
    assert validate_geometry(st, clashes=False).overall["chiral_outliers"] == 1
    prep = prepare_model(st, "amber14", None)
    assert prep.library_terms["chiral_terms"] == sum(1 for r in st[0]["A"] if r.name != "GLY") + sum(
        1 for r in st[0]["A"] if r.name in ("ILE", "THR"))
    assert validate_geometry(_minimised(st, library=False), clashes=False).overall["chiral_outliers"] == 1
    assert validate_geometry(_minimised(st, library=True), clashes=False).overall["chiral_outliers"] == 0
