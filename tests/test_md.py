"""MD layer on real data (5NI1 haemoglobin, 3J6B chain 9), kept small and short.

Most dynamics run on a two-chain piece of 5NI1 (chain A 1-40 and the part of
chain B it touches, B 100-135) so a step costs a few ms on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gemmi
import numpy as np
import openmm
import openmm.unit as unit
import pytest

from reff_dask.md.clashes import find_clashes
from reff_dask.md.force import DEFAULT_K_GMM, make_gmm_force, set_gmm_targets
from reff_dask.md.prepare import prepare_model
from reff_dask.md.simulate import (
    NEIGHBOUR_MARGIN_A,
    ChainSimulation,
    choose_platform,
    clear_cache,
    neighbour_particles,
    run_chain_segment,
)

PDB_5NI1 = Path(__file__).resolve().parents[1] / "examples" / "emd_3488" / "5ni1.pdb"  # ships with the repo
PDB_3J6B = Path(__file__).resolve().parents[2] / "shared" / "data" / "emd_2566" / "3j6b_chain9_withH.pdb"

pytestmark = pytest.mark.slow  # MD: minutes (pytest -m "not slow" leaves them out)


def _xyz(st: gemmi.Structure) -> np.ndarray:
    return np.array([[a.pos.x, a.pos.y, a.pos.z] for ch in st[0] for r in ch for a in r])


def _piece(st: gemmi.Structure, keep: dict[str, tuple[int, int]]) -> gemmi.Structure:
    """Copy of ``st`` with only residues lo..hi (polymer) of the named chains."""
    out = st.clone()
    model = out[0]
    for name in [ch.name for ch in model]:
        if name not in keep:
            model.remove_chain(name)
    for ch in model:
        lo, hi = keep[ch.name]
        for i in range(len(ch) - 1, -1, -1):
            r = ch[i]
            if not (lo <= r.seqid.num <= hi) or r.het_flag == "H":
                del ch[i]
    return out


@pytest.fixture(scope="module")
def st_5ni1() -> gemmi.Structure:
    return gemmi.read_structure(str(PDB_5NI1))


@pytest.fixture(scope="module")
def prepared_full(st_5ni1):
    return prepare_model(st_5ni1)


@pytest.fixture(scope="module")
def piece(st_5ni1):
    st = _piece(st_5ni1, {"A": (1, 40), "B": (100, 135)})
    return st, prepare_model(st)


@pytest.fixture(scope="module")
def piece_a30(st_5ni1):
    st = _piece(st_5ni1, {"A": (1, 30)})
    return st, prepare_model(st)


# ---------------------------------------------------------------- prepare

def test_prepare_5ni1_excludes_ligands_and_maps_protein(st_5ni1, prepared_full):
    pm = prepared_full
    ex = {(e.chain, e.resname) for e in pm.excluded}
    assert {(c, "HEM") for c in "ABCD"} <= ex
    assert sum(e.resname == "HEM" for e in pm.excluded) == 4
    assert sum(e.resname == "HOH" for e in pm.excluded) == 24
    assert len(pm.excluded) == 28
    assert pm.chains == ["A", "B", "C", "D"]
    # every protein atom is simulated, every HEM / water atom is not
    names = [r.name for ch in st_5ni1[0] for r in ch for _ in r]
    protein = np.array([n not in ("HEM", "HOH") for n in names])
    assert pm.n_input_atoms == len(names) == 4579
    assert np.all(pm.atom_map[protein] >= 0)
    assert np.all(pm.atom_map[~protein] == -1)
    # maps are inverse of each other; mapped particles sit at the input positions
    mapped = pm.atom_map[protein]
    assert len(np.unique(mapped)) == len(mapped)
    assert np.array_equal(pm.particle_atom[mapped], np.flatnonzero(protein))
    assert np.allclose(pm.positions_A[mapped], _xyz(st_5ni1)[protein])
    # particles without an input atom: added hydrogens, plus the heavy atom
    # pdbfixer adds (the missing OG of one serine; 5NI1 has its OXTs)
    added = [a for a in pm.topology.atoms() if pm.particle_atom[a.index] < 0 and pm.particle_chain[a.index]]
    heavy = sorted((a.residue.name, a.name) for a in added if a.element.symbol != "H")
    assert heavy == [("SER", "OG")]
    assert sum(a.element.symbol == "H" for a in added) > 4000
    kinds = {f.__class__.__name__ for f in pm.system.getForces()}
    assert "CustomGBForce" in kinds and "NonbondedForce" in kinds  # GBn2 implicit solvent
    assert set(pm.particle_chain) == set("ABCD") | {""}
    # haems and waters are in MD as fixed stand-ins (mass 0) at their input positions
    stand_in = np.flatnonzero(pm.particle_chain == "")
    assert len(stand_in) == (~protein).sum()
    assert all(pm.system.getParticleMass(int(i))._value == 0 for i in stand_in)
    np.testing.assert_allclose(pm.positions_A[stand_in], _xyz(st_5ni1)[~protein])


def test_prepare_keeps_input_hydrogens_and_splits_gaps():
    if not PDB_3J6B.exists():
        pytest.skip(f"{PDB_3J6B} not present (../shared/data beside the repository)")
    st = gemmi.read_structure(str(PDB_3J6B))
    pm = prepare_model(st)
    assert pm.excluded == []
    heavy = np.array([not a.is_hydrogen() for r in st[0]["9"] for a in r])
    assert np.all(pm.atom_map[heavy] >= 0)
    # input hydrogens: placed afresh by Modeller; those of a template name map to the new one,
    # the few others (6 of 1437) follow their residue
    assert (pm.atom_map[~heavy] >= 0).sum() >= 1430
    assert pm.n_riders == (pm.atom_map < 0).sum()
    assert pm.chains == ["9"]
    # the chain has gaps: one OpenMM chain per continuous segment, no long bond
    assert pm.topology.getNumChains() > 1
    pos = pm.positions_A
    for f in pm.system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            d = [np.linalg.norm(pos[f.getBondParameters(b)[0]] - pos[f.getBondParameters(b)[1]])
                 for b in range(f.getNumBonds())]
            assert max(d) < 2.5


# ---------------------------------------------------------------- GMM force

def test_gmm_force_energy_and_direction():
    """One free particle: energy k(1-exp(-r^2/2w^2)), force points at the target."""
    system = openmm.System()
    system.addParticle(12.0)
    k, w_A, r_A = 300.0, 1.0, 0.8
    target = np.array([[10.0, 10.0, 10.0]])
    f = make_gmm_force([0], target, w_A, k_gmm=k)
    system.addForce(f)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(((target + [r_A, 0, 0]) / 10.0).tolist())
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert e == pytest.approx(k * (1 - np.exp(-(r_A**2) / (2 * w_A**2))), rel=1e-6)
    fx = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)[0]
    expect = -k * (r_A / 10) / (w_A / 10) ** 2 * np.exp(-(r_A**2) / (2 * w_A**2))
    assert fx[0] == pytest.approx(expect, rel=1e-6) and abs(fx[1]) < 1e-9
    # moving the target onto the particle switches the pull off
    set_gmm_targets(f, target + [r_A, 0, 0], w_A, ctx)
    st = ctx.getState(getEnergy=True)
    assert st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) == pytest.approx(0, abs=1e-9)


def _heavy_bond_rms(pm, pos_A):
    mass = np.array([pm.system.getParticleMass(i)._value for i in range(pm.n_particles)])
    dev = []
    for f in pm.system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for b in range(f.getNumBonds()):
                i, j, r0, _ = f.getBondParameters(b)
                if mass[i] > 1.5 and mass[j] > 1.5:
                    dev.append(np.linalg.norm(pos_A[i] - pos_A[j]) - r0._value * 10)
    return float(np.sqrt(np.mean(np.square(dev))))


def test_gmm_force_pulls_atoms_to_shifted_targets(piece_a30):
    """Default k_gmm: a piece whose targets move 1 A follows within one `fast`
    segment; without the force it does not.  Noisy targets keep bonds sane."""
    st, pm = piece_a30
    xyz = _xyz(st)
    shift = np.array([1.0, 0.0, 0.0])
    moved = {}
    for k in (0.0, DEFAULT_K_GMM):
        sim = ChainSimulation(pm, "A", preset="fast", k_gmm=k)
        out = sim.run(xyz + shift, 1.0, seed=3)
        moved[k] = float((out - xyz)[:, 0].mean())
    assert moved[0.0] < 0.3
    assert moved[DEFAULT_K_GMM] > 0.6
    # minimisation with the same targets lands on them
    out = ChainSimulation(pm, "A", preset="minimise").run(xyz + shift, 1.0)
    assert np.sqrt(((out - xyz - shift) ** 2).sum(1).mean()) < 0.2
    rng = np.random.default_rng(0)
    sim = ChainSimulation(pm, "A", preset="fast")
    sim.run(xyz + rng.normal(0, 0.5, xyz.shape), 1.0, seed=3)
    assert _heavy_bond_rms(pm, sim.particle_positions_A) < 0.07


# ---------------------------------------------------------------- sub-systems

def _grouped(pm):
    """Copy of a PreparedModel whose forces sit in separate force groups."""
    system = openmm.XmlSerializer.clone(pm.system)
    for g, f in enumerate(system.getForces()):
        f.setForceGroup(g)
    return dataclasses.replace(pm, system=system)


def test_subsystem_forces_match_full_system(piece):
    """Forces on chain A's mobile atoms: bonded and direct non-bonded terms equal
    the full system's (the neighbour shell = non-bonded cutoff); GBn2 differs only
    through Born radii of cut-off neighbours (< 2 % RMS)."""
    _, pm0 = piece
    pm = _grouped(pm0)
    sim = ChainSimulation(pm, "A", preset="paper")  # no constraints: every bond term kept
    assert len(sim.fixed) > 0
    plat = openmm.Platform.getPlatformByName("Reference")
    full = openmm.Context(pm.system, openmm.VerletIntegrator(0.001), plat)
    full.setPositions(pm.positions_A / 10.0)
    sub = openmm.Context(sim.system, openmm.VerletIntegrator(0.001), plat)
    sub.setPositions(sim._pos_nm)
    mob = np.isin(sim.subset, sim.mobile)
    for g, f in enumerate(pm.system.getForces()):
        a = full.getState(getForces=True, groups={g}).getForces(asNumpy=True)._value[sim.mobile]
        b = sub.getState(getForces=True, groups={g}).getForces(asNumpy=True)._value[mob]
        # a force that is zero here (e.g. the contact wall on a model without clashes) must be zero in both
        scale = (a**2).sum(1).mean() or 1.0
        rel = np.sqrt(((a - b) ** 2).sum(1).mean() / scale)
        name = f.__class__.__name__
        if name == "CustomGBForce":
            assert rel < 0.02, (name, rel)
        else:
            assert rel < 1e-6, (name, rel)


def test_subsystem_cut_again_is_the_same_and_sees_a_changed_system(piece):
    """A worker cuts the same system every EM iteration from its parsed XML: a second cut equals
    the first, and a system that gained a force is parsed afresh."""
    from reff_dask.md.subsystem import extract_subsystem

    _, pm = piece
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(pm.system))
    subset = np.flatnonzero(pm.in_chains("A"))
    mobile = np.ones(len(subset), bool)
    first, again = (openmm.XmlSerializer.serialize(extract_subsystem(system, subset, mobile, True)) for _ in range(2))
    assert first == again
    extra = openmm.CustomExternalForce("x")
    extra.addParticle(int(subset[0]), [])
    system.addForce(extra)
    cut = extract_subsystem(system, subset, mobile, True)
    assert cut.getNumForces() == openmm.XmlSerializer.deserialize(first).getNumForces() + 1


def test_neighbours_fixed_and_updated(piece):
    _, pm = piece
    sim = ChainSimulation(pm, "A", preset="fast")
    # neighbour set at the start: other-chain particles within 10 A + the margin, and only those
    pos = pm.positions_A
    other = np.flatnonzero(pm.particle_chain != "A")
    d = np.sqrt(((pos[other][:, None] - pos[pm.particle_chain == "A"][None]) ** 2).sum(-1)).min(1)
    assert np.array_equal(np.sort(sim.fixed), other[d <= 10.0 + NEIGHBOUR_MARGIN_A])
    assert np.array_equal(neighbour_particles(pm, "A", pos, 10.0), sim.fixed)
    # a particle that comes within 10 A later joins the set
    far = other[np.argmax(d)]
    moved = pos.copy()
    moved[far] = pos[pm.particle_chain == "A"][0] + [5.0, 0.0, 0.0]
    assert far not in sim.fixed and far in neighbour_particles(pm, "A", moved, 10.0)
    fixed0 = sim.fixed_positions_A.copy()
    mob0 = sim.particle_positions_A.copy()
    sim.run(steps=20, seed=5)
    assert np.array_equal(sim.fixed_positions_A, fixed0)
    assert np.abs(sim.particle_positions_A - mob0).max() > 0.01
    # new neighbour positions (as after another chain's segment) are taken up and stay
    new = pm.positions_A.copy()
    new[sim.fixed] += [0.3, 0.0, 0.0]
    sim.update_neighbours(new)
    sim.run(steps=10)
    assert np.allclose(sim.fixed_positions_A, fixed0 + [0.3, 0.0, 0.0], atol=1e-5)


def test_run_chain_segment_cached_equals_rebuilt(piece):
    """Same inputs + seed -> same positions, whether the worker had the chain's
    simulation cached or rebuilt it.  Bit-for-bit with one CPU thread; with more
    threads OpenMM's CPU force summation order varies (~1e-7 A after 15 steps)
    and the random stream depends on the thread count."""
    st, pm = piece
    xyz = _xyz(st)
    rng = np.random.default_rng(1)
    targets = xyz + rng.normal(0, 0.3, xyz.shape)
    kw = dict(run_id="t-cache", iteration=4, seed=11, preset="fast", steps=15, threads=1)
    clear_cache()
    r1 = run_chain_segment(pm, "A", pm.positions_A, targets, 1.0, **kw)
    r2 = run_chain_segment(pm, "A", pm.positions_A, targets, 1.0, **kw)
    clear_cache()
    r3 = run_chain_segment(pm, "A", pm.positions_A, targets, 1.0, **kw)
    assert r1.rebuilt and not r2.rebuilt and r3.rebuilt
    assert np.array_equal(r1.particle_positions_A, r2.particle_positions_A)
    assert np.array_equal(r1.particle_positions_A, r3.particle_positions_A)
    assert np.array_equal(r1.particles, pm.chain_particles("A"))
    assert np.abs(r1.particle_positions_A - pm.positions_A[r1.particles]).max() > 0.01
    # the seed (here via the iteration number) matters
    r4 = run_chain_segment(pm, "A", pm.positions_A, targets, 1.0, **{**kw, "iteration": 5})
    assert not r4.rebuilt
    assert not np.array_equal(r1.particle_positions_A, r4.particle_positions_A)
    # the chain's input atoms, for scattering back into the atom table
    assert np.array_equal(r1.input_atoms, pm.chain_input_atoms("A"))
    assert np.array_equal(r1.input_positions_A, r1.particle_positions_A[
        np.searchsorted(r1.particles, pm.atom_map[r1.input_atoms])])
    # default (2) threads: the Langevin noise stream depends on the thread count,
    # so compare like with like; cached and rebuilt agree to float rounding
    kw2 = {**kw, "threads": 2, "run_id": "t-cache-2"}
    r5 = run_chain_segment(pm, "A", pm.positions_A, targets, 1.0, **kw2)
    clear_cache()
    r6 = run_chain_segment(pm, "A", pm.positions_A, targets, 1.0, **kw2)
    assert r5.rebuilt and r6.rebuilt
    assert np.allclose(r5.particle_positions_A, r6.particle_positions_A, atol=1e-4)
    clear_cache()


def test_choose_platform_cpu():
    plat, props = choose_platform("CPU", threads=1)
    assert plat.getName() == "CPU" and props == {"Threads": "1"}
    assert choose_platform()[0].getName() in ("CUDA", "OpenCL", "CPU")


# ---------------------------------------------------------------- clashes

def test_clashes_deposited_model_few_and_created_clash_found(st_5ni1):
    rep = find_clashes(st_5ni1)
    assert rep.clashscore < 10  # 20 pairs in 4579 atoms for the deposited 5NI1
    xyz = _xyz(st_5ni1)
    keys = [(ch.name, r.seqid.num, a.name) for ch in st_5ni1[0] for r in ch for a in r]
    i, j = keys.index(("A", 20, "CB")), keys.index(("A", 60, "CA"))
    moved = xyz.copy()
    moved[i] = xyz[j] + [0.5, 0.0, 0.0]
    rep2 = find_clashes(st_5ni1, moved)
    assert (min(i, j), max(i, j)) in {(c.i, c.j) for c in rep2.clashes}
    assert rep2.n_clashes > rep.n_clashes


def _chain_a_with_haem(st: gemmi.Structure) -> gemmi.Structure:
    out = st.clone()
    out.remove_waters()
    for name in [c.name for c in out[0] if c.name != "A"]:
        out[0].remove_chain(name)
    out.setup_entities()
    return out


@pytest.mark.parametrize("shield", [True, False])
def test_atoms_left_out_of_md_are_walls(st_5ni1, shield):
    """The distal His58 of chain A pulled onto the haem iron: with the haem present as fixed
    stand-ins it stops at the haem's surface (no new protein-haem clash); without them (the
    control) it moves into the haem. AMBER's own bonded terms (no library restraints, which
    stiffen the imidazole enough that the control's pull no longer reaches the haem): the wall
    is what is tested here."""
    st = _chain_a_with_haem(st_5ni1)
    pm = prepare_model(st, implicit=None, shield=shield, library_geometry=False)
    names = [(r.name, r.seqid.num, a.name) for r in st[0]["A"] for a in r]
    xyz = _xyz(st)
    fe = xyz[names.index(("HEM", 201, "FE"))]
    sim = ChainSimulation(pm, "A", preset="minimise", threads=1)
    targets = sim.positions.copy()
    his = np.array([names[i][1] == 58 and names[i][2] not in ("N", "CA", "C", "O") for i in sim.input_atoms])
    targets[his] = fe
    sim.set_k_gmm(1500.0)  # 5x the default depth: a pull of up to 6000 kJ/mol/nm
    sim.set_targets(targets, 1.5)
    new = xyz.copy()
    new[sim.input_atoms] = sim.minimise(max_iterations=2000)
    haem = np.array([n[0] == "HEM" for n in names])

    def haem_clashes(pos):
        return sum(1 for c in find_clashes(st, pos).clashes if haem[c.i] != haem[c.j])

    moved = np.linalg.norm(new[sim.input_atoms][his] - xyz[sim.input_atoms][his], axis=1).max()
    if shield:
        assert moved > 0.2  # pulled until it meets the wall
        assert haem_clashes(new) <= haem_clashes(xyz)
        assert np.array_equal(new[haem], xyz[haem])
    else:
        assert moved > 1.0
        assert haem_clashes(new) > haem_clashes(xyz)


def test_charmm36_with_haem_runs(st_5ni1):
    """CHARMM36 (the paper's other force field): chain A with its haem as stand-ins, the fast
    preset (H bonds constrained; CHARMM's Urey-Bradley terms must not become constraints)."""
    st = _chain_a_with_haem(st_5ni1)
    pm = prepare_model(st, "charmm36", implicit=None)
    assert pm.forcefield_files == ("charmm36.xml",) and (pm.particle_chain == "").sum() == 43
    sim = ChainSimulation(pm, "A", preset="fast", threads=1)
    x0 = sim.positions.copy()
    sim.set_targets(x0, 1.0)
    x = sim.run(steps=100, seed=1)
    assert np.all(np.isfinite(x))
    assert 0.02 < np.sqrt(((x - x0) ** 2).sum(1).mean()) < 0.5
    assert sim.system.getNumConstraints() == sum(
        pm.system.getParticleMass(int(i))._value < 1.5 for i in sim.mobile)  # one per hydrogen


@pytest.mark.parametrize("chain", ["A", None])
def test_stand_ins_hold_with_library_geometry(st_5ni1, chain):
    """With the library geometry the stand-ins' wall is part of the contact wall, and the
    whole-model simulation (chain None: the final stage) keeps the stand-ins too. The distal
    His58 pulled onto the haem iron by a 100x well (the library's planes and chiral volumes
    stiffen the residue; a smaller pull does not reach the haem): with the haem present it
    stops earlier and makes fewer protein-haem clashes than without it (4.3 vs 5.1 A moved,
    0 vs 3 clashes)."""
    st = _chain_a_with_haem(st_5ni1)
    names = [(r.name, r.seqid.num, a.name) for r in st[0]["A"] for a in r]
    xyz = _xyz(st)
    fe = xyz[names.index(("HEM", 201, "FE"))]
    haem = np.array([n[0] == "HEM" for n in names])
    out = {}
    for shield in (True, False):
        pm = prepare_model(st, implicit=None, shield=shield, library_geometry=True)
        sim = ChainSimulation(pm, chain, preset="minimise", threads=1)
        targets = sim.positions.copy()
        his = np.array([names[i][1] == 58 and names[i][2] not in ("N", "CA", "C", "O") for i in sim.input_atoms])
        targets[his] = fe
        sim.set_k_gmm(30000.0)
        sim.set_targets(targets, 1.5)
        new = xyz.copy()
        new[sim.input_atoms] = sim.minimise(max_iterations=2000)
        if shield:  # His58 moved beyond the wall list's margin: listed again, and complete
            assert sim.wall_lists >= 2
            pairs, every = _wall_forces(sim, sim._pos_nm)
            np.testing.assert_allclose(pairs, every, rtol=0, atol=1e-6)
        moved = np.linalg.norm(new[sim.input_atoms][his] - xyz[sim.input_atoms][his], axis=1).max()
        clashes = sum(1 for c in find_clashes(st, new).clashes if haem[c.i] != haem[c.j])
        out[shield] = (moved, clashes)
    assert out[True][0] < out[False][0] - 0.5, out
    assert out[True][1] < out[False][1], out


def _wall_forces(sim: ChainSimulation, pos_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forces of the contact wall on the moving particles at ``pos_nm``: as the simulation
    lists it (pairs) and as the nonbonded force it was made from (every pair, no list)."""
    from reff_dask.md.subsystem import extract_subsystem

    full = extract_subsystem(sim.prepared.system, sim.subset, sim._is_mobile)
    (nonbonded,) = [f for f in full.getForces() if f.getName() == "ContactWall"]
    out = []
    for f in (sim.system.getForce(sim._wall_index), nonbonded):
        s = openmm.System()
        for _ in range(len(sim.subset)):
            s.addParticle(1.0)
        s.addForce(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(f)))
        ctx = openmm.Context(s, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(pos_nm)
        out.append(ctx.getState(getForces=True).getForces(asNumpy=True)._value[sim._is_mobile])
    return out[0], out[1]


@pytest.mark.parametrize("chain", ["A", None])
def test_contact_wall_pairs_act_as_the_nonbonded_wall(prepared_full, chain):
    """The contact wall runs as a list of pairs within reach (a nonbonded wall walks every pair
    within the force field's 1 nm cutoff on OpenMM's CPU platform: a third of the MD time).
    On haemoglobin with its haem stand-ins, chain A with fixed neighbours and the whole model:
    the same forces on every moving particle as the nonbonded wall, at the start and with every
    particle moved up to half the list's margin."""
    from reff_dask.md.shield import WALL_MARGIN_A

    sim = ChainSimulation(prepared_full, chain, preset="fast", threads=1)
    assert sim.system.getForce(sim._wall_index).getNumBonds() > 1000
    rng = np.random.default_rng(5)
    for reach_nm in (0.0, WALL_MARGIN_A / 20.0):
        step = rng.normal(size=sim._pos_nm.shape)
        step *= reach_nm * rng.uniform(0, 1, (len(step), 1)) / np.linalg.norm(step, axis=1, keepdims=True)
        pairs, every = _wall_forces(sim, sim._pos_nm + step * sim._is_mobile[:, None])
        assert np.abs(every).max() > 100.0  # kJ/mol/nm: some pairs are inside the wall
        np.testing.assert_allclose(pairs, every, rtol=0, atol=1e-6)


def test_hydrogens_of_a_model_that_has_them_are_in_the_wall(shared_case):
    """A model with hydrogens (EMD-2566's 3J6B chain 9) has them written out and counted in its
    clashes, so they are in the contact wall, with the polar-H allowance: pairs and nonbonded
    wall agree; a hydrogen pushed 1.7 A from another (a MolProbity clash AMBER allows between
    amide H) is pushed back."""
    from reff_dask.io.models import read_structure

    st = read_structure(shared_case("emd_2566") / "3j6b_chain9_withH.pdb")
    pm = prepare_model(st, "amber14", None)
    n_h = int(pm.input_hydrogen.sum())
    assert n_h > 1000
    sim = ChainSimulation(pm, None, preset="fast", threads=1)
    assert sim._wall.heavy.sum() > int((~pm.input_hydrogen).sum()) + n_h * 0.9  # ~every atom, H included
    assert sim._wall.donh.sum() > 200  # amide and hydroxyl H
    pairs, every = _wall_forces(sim, sim._pos_nm)
    np.testing.assert_allclose(pairs, every, rtol=0, atol=1e-6)
    h = np.flatnonzero(sim._wall.heavy & (sim._wall.radius_nm < 0.12) & ~sim._wall.donh)
    i, j = h[0], h[-1]
    pos = sim._pos_nm.copy()
    pos[j] = pos[i] + [0.17, 0.0, 0.0]
    sim2 = ChainSimulation(pm, None, positions_A=_sub_to_full(sim, pos) * 10.0, preset="fast", threads=1)
    f = sim2.context.getState(getForces=True, groups={sim2._wall.group}).getForces(asNumpy=True)._value
    assert np.dot(f[j], pos[j] - pos[i]) > 100.0  # kJ/mol/nm, pushing j away from i
    # soft enough for 2 fs steps: relax, then dynamics held to the input positions, no blow-up
    relaxed = run_chain_segment(pm, None, pm.positions_A, pm.input_start_A, 1.0, preset="minimise",
                                threads=1, use_cache=False)
    start = pm.positions_A.copy()
    start[relaxed.particles] = relaxed.particle_positions_A
    for seed in (1, 2, 3):
        r = run_chain_segment(pm, None, start, pm.input_start_A, 1.0, preset="fast", seed=seed, threads=1,
                              use_cache=False)
        assert r.recovery is None, r.recovery


def _sub_to_full(sim: ChainSimulation, pos_nm: np.ndarray) -> np.ndarray:
    full = sim.prepared.positions_A / 10.0
    full = full.copy()
    full[sim.subset] = pos_nm
    return full


def test_md_groups_cover_chains_balanced_and_in_contact(prepared_full):
    """MD tasks as groups of chains: every chain in exactly one group, sizes balanced, a group's
    chains next to each other (haemoglobin: each group one alpha-beta pair in contact)."""
    from reff_dask.refine import md_groups

    pm = prepared_full
    chains = list(pm.chains)
    assert md_groups(pm, len(chains)) == chains and md_groups(pm, 99) == chains
    (one,) = md_groups(pm, 1)
    assert sorted(one) == sorted(chains)
    for n in (2, 3):
        groups = md_groups(pm, n)
        flat = [c for g in groups for c in ((g,) if isinstance(g, str) else g)]
        assert len(groups) == n and sorted(flat) == sorted(chains)
    two = md_groups(pm, 2)
    sizes = [len(pm.chain_particles(g)) for g in two]
    assert max(sizes) <= 1.2 * min(sizes)
    for g in two:
        a, b = (pm.positions_A[pm.chain_particles(c)] for c in g)
        d = np.min(np.linalg.norm(a[::7, None] - b[None, ::7], axis=2))
        assert d < 5.0, (g, d)


def test_group_segment_moves_its_chains_only(piece):
    """One MD task for a group of two chains: its particles are both chains' particles, and
    the positions it returns are those chains' only."""
    st, pm = piece
    pos = pm.positions_A
    r = run_chain_segment(pm, ("A", "B"), pos, _xyz(st), 1.0, preset="fast", steps=20, threads=1,
                          use_cache=False)
    assert np.array_equal(r.particles, np.flatnonzero(np.isin(pm.particle_chain, ["A", "B"])))
    assert r.particle_positions_A.shape == (len(r.particles), 3)
    assert np.isfinite(r.particle_positions_A).all()
    moved = np.linalg.norm(r.particle_positions_A - pos[r.particles], axis=1)
    assert moved.max() > 0.01
