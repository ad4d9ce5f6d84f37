"""Fixed repulsive stand-ins for atoms left out of MD (ligands, waters, ions the force field
cannot parameterise), so simulated atoms cannot move into them.

Each such atom becomes a particle of mass 0 (never moves) that takes no part in the force
field's charges and Lennard-Jones terms (in implicit solvent it displaces solvent as an
uncharged atom of its element) and meets the simulated atoms through a soft wall that starts 0.2 A before a clash would begin (a clash is 0.4 A of overlap,
:mod:`reff_dask.md.clashes`), so an atom pressed against it stays clear of a clash:

    E = k_wall * (d0 - r)^2  for r < d0,   d0 = r_i + r_j - 0.2 A (- 0.5 A for two N/O atoms)

with MolProbity's Probe radii r_i. Pairs that are covalently linked at the start (a metal
coordinated by a His, a glycan on an Asn: distance below the covalent radii sum + 0.45 A)
are exempt. Units: nm inside OpenMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
import openmm
from openmm import app

from .clashes import HBOND_ALLOWANCE_A, HBOND_H_ALLOWANCE_A, probe_radius

__all__ = ["K_WALL", "H_WALL_SCALE", "WALL_MARGIN_A", "add_shields", "add_contact_wall", "WallTable", "wall_table",
           "pair_wall_force"]

#: wall stiffness, kJ/mol/nm^2: 0.2 A inside the wall (where a clash would begin) it pushes
#: back with 8000 kJ/mol/nm, more than the GMM well's steepest pull at its default depth
#: (300 exp(-1/2) / 0.03 nm); as stiff as a C-H bond, so 2 fs steps stay stable
K_WALL = 2.0e5
WALL = "k_wall*step(d0-r)*(d0-r)^2; d0=rad1+rad2-0.02-hb*polar1*polar2"
#: the contact wall acts between two simulated atoms of the wall (heavy atoms, and hydrogens of
#: a model that has them), and between a stand-in and any simulated particle (the stand-ins'
#: own wall folded in: one force, one neighbour list); N/O pairs get the H-bond allowance ``hb``,
#: a polar hydrogen (``donh``) and an N/O ``hbh``, as in the clash counter
CONTACT_WALL = ("k_wall*min(soft1,soft2)*step(d0-r)*(d0-r)^2; "
                "d0=(rad1+rad2-0.02-hb*polar1*polar2-hbh*(donh1*polar2+donh2*polar1))"
                "*act; act=heavy1*heavy2+shield1+shield2-2*shield1*shield2")
PAIR_WALL = "k_wall*kw*step(d0-r)*(d0-r)^2"
#: a pair with a hydrogen meets a wall this much softer (``soft``): several full-strength walls
#: on one 1-amu hydrogen at once (a side-chain H among its neighbours' H) exceed what 2 fs steps
#: integrate (omega dt > 2: EMD-2566's model with hydrogens blew up in its first segment)
H_WALL_SCALE = 0.1
#: reach (A) beyond a pair's wall distance d0 at which :func:`pair_wall_force` lists the pair:
#: the list holds every contact while no particle has moved more than half of it
WALL_MARGIN_A = 2.0


def _gb_params(force: openmm.CustomGBForce | openmm.GBSAOBCForce, elements: list[str], element: str) -> list:
    """Implicit-solvent parameters of a stand-in: those of a simulated atom of the same element
    (else a carbon) with no charge, so it displaces solvent like an uncharged solute atom."""
    k = elements.index(element) if element in elements else elements.index("C")
    params = list(force.getParticleParameters(k))
    if isinstance(force, openmm.GBSAOBCForce):
        params[0] = 0.0
        return params
    names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    for i, n in enumerate(names):
        if n in ("charge", "q"):
            params[i] = 0.0
    return params


def add_shields(system: openmm.System, topology: app.Topology, positions_A: np.ndarray,
                atoms: list[tuple[str, str, str, str, int]], xyz_A: np.ndarray, own_wall: bool = True,
                exempt: list[set[int]] | None = None) -> np.ndarray:
    """Append one fixed, wall-only particle per atom of ``atoms`` (element, atom name, residue
    name, chain name, residue number) at ``xyz_A`` (A) to ``system`` and ``topology`` (one chain
    "shield"); returns the new (n_particles, 3) positions, A. ``positions_A`` are the
    simulated particles' positions. ``own_wall=False``: no wall force of their own, for a system
    that gets :func:`add_contact_wall` (which then holds the stand-ins' wall too; a separate
    force needs an interaction group, which bypasses OpenMM's neighbour list: on haemoglobin's
    four haems it cost more than the rest of the wall). ``exempt[k]``: simulated particles
    the k-th stand-in has no wall with (a rider's own residue, whose bonded neighbours sit
    inside any wall distance)."""
    n0 = system.getNumParticles()
    if not len(atoms):
        return positions_A
    for _ in atoms:
        system.addParticle(0.0)
    sim_elements = [a.element.symbol if a.element is not None else "X" for a in topology.atoms()]
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            for _ in atoms:
                f.addParticle(0.0, 0.1, 0.0)
        elif isinstance(f, (openmm.CustomGBForce, openmm.GBSAOBCForce)):
            for e, *_ in atoms:
                params = _gb_params(f, sim_elements, e)
                if isinstance(f, openmm.CustomGBForce):
                    f.addParticle(params)
                else:
                    f.addParticle(*params)
        elif isinstance(f, openmm.CustomNonbondedForce):  # e.g. CHARMM's Lennard-Jones table
            if f.getNumInteractionGroups() == 0:  # keep it among the simulated particles
                f.addInteractionGroup(range(n0), range(n0))
            for _ in atoms:
                f.addParticle(f.getParticleParameters(0))
    # topology: existing atoms' radii and polarity; new chain for the stand-ins
    bonded = {a.index: set() for a in topology.atoms()}
    for a, b in topology.bonds():
        bonded[a.index].add(b)
        bonded[b.index].add(a)
    rad, polar, elem = [], [], []
    for a in topology.atoms():
        e = a.element.symbol if a.element is not None else "C"
        ph = e == "H" and any(b.element is not None and b.element.symbol in ("N", "O") for b in bonded[a.index])
        rad.append(probe_radius(e, a.name, a.residue.name, ph))
        polar.append(e in ("N", "O"))
        elem.append(e)
    chain = topology.addChain("shield")
    last = None
    for e, name, resname, ch, num in atoms:
        if last != (ch, num, resname):
            res = topology.addResidue(resname, chain, str(num))
            last = (ch, num, resname)
        topology.addAtom(name, app.Element.getBySymbol(e) if e != "X" else None, res)
        rad.append(probe_radius(e, name, resname))
        polar.append(e in ("N", "O"))
        elem.append(e)
    # covalent links at the start are exempt; OpenMM wants the same exclusions in every
    # nonbonded force, so the force field's exceptions get the links too
    shield = np.arange(n0, n0 + len(atoms))
    pos = np.vstack([positions_A, xyz_A])
    cov = np.array([gemmi.Element(e).covalent_r if e != "X" else 0.7 for e in elem])
    links = set()
    for k, s in enumerate(shield):
        d = np.linalg.norm(pos[:n0] - pos[s], axis=1)
        links.update((int(s), int(j)) for j in np.flatnonzero(d < cov[:n0] + cov[s] + 0.45))
        if exempt is not None:
            links.update((int(s), int(j)) for j in exempt[k])
    links = sorted(links)
    exceptions = []
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            exceptions = [tuple(f.getExceptionParameters(k)[:2]) for k in range(f.getNumExceptions())]
            for i, j in links:
                f.addException(i, j, 0.0, 0.1, 0.0)
        elif isinstance(f, openmm.CustomNonbondedForce):
            for i, j in links:
                f.addExclusion(i, j)
    if own_wall:
        wall = openmm.CustomNonbondedForce(WALL)
        wall.addGlobalParameter("k_wall", K_WALL)
        wall.addGlobalParameter("hb", HBOND_ALLOWANCE_A / 10.0)
        wall.addPerParticleParameter("rad")
        wall.addPerParticleParameter("polar")
        for r, p in zip(rad, polar):
            wall.addParticle([r / 10.0, float(p)])
        wall.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
        wall.setCutoffDistance(2 * max(rad) / 10.0)
        wall.addInteractionGroup(shield.tolist(), list(range(n0)))
        for i, j in exceptions + links:
            wall.addExclusion(i, j)
        system.addForce(wall)
    return pos


def add_contact_wall(system: openmm.System, topology: app.Topology, hydrogens: bool = False) -> int:
    """A wall between simulated heavy atoms more than three bonds apart: the same soft wall as
    the stand-ins', 0.2 A before a MolProbity clash (Probe radii, H-bond allowances for two
    N/O atoms and for a polar H and an N/O). AMBER's Lennard-Jones lets a GMM well press e.g.
    a residue's own N onto a side-chain carbon four bonds away (2.8 A); refinement programs
    hold such contacts with a repulsion term of the same kind. ``hydrogens``: the simulated
    hydrogens are in the wall too (for a model whose hydrogens are written out and counted in
    its clashes: AMBER lets an amide H come to 1.7 A of another H, a MolProbity clash).
    Returns the number of atoms in the wall."""
    heavy, rad, polar, shield, donh, soft = [], [], [], [], [], []
    bonded: dict[int, set] = {a.index: set() for a in topology.atoms()}
    for a, b in topology.bonds():
        bonded[a.index].add(b)
        bonded[b.index].add(a)
    for a in topology.atoms():
        e = a.element.symbol if a.element is not None else "C"
        ph = e == "H" and any(b.element is not None and b.element.symbol in ("N", "O") for b in bonded[a.index])
        rad.append(probe_radius(e, a.name, a.residue.name, ph))
        polar.append(e in ("N", "O"))
        donh.append(ph)
        soft.append(H_WALL_SCALE if e == "H" else 1.0)
        shield.append(a.residue.chain.id == "shield")
        if (e != "H" or hydrogens) and not shield[-1] and system.getParticleMass(a.index)._value > 0:
            heavy.append(a.index)
    n = system.getNumParticles()
    if len(rad) != n or not heavy:
        return 0
    # every particle takes part (an interaction group would bypass the neighbour list: 5x the MD
    # cost); hydrogens and stand-ins have heavy = 0, so their wall distance is 0
    wall = openmm.CustomNonbondedForce(CONTACT_WALL)
    wall.addGlobalParameter("k_wall", K_WALL)
    wall.addGlobalParameter("hb", HBOND_ALLOWANCE_A / 10.0)
    wall.addGlobalParameter("hbh", HBOND_H_ALLOWANCE_A / 10.0)
    wall.addPerParticleParameter("rad")
    wall.addPerParticleParameter("polar")
    wall.addPerParticleParameter("heavy")
    wall.addPerParticleParameter("shield")
    wall.addPerParticleParameter("donh")
    wall.addPerParticleParameter("soft")
    is_heavy = np.zeros(n, dtype=bool)
    is_heavy[heavy] = True
    for r, p, h, sh, dh, sf in zip(rad, polar, is_heavy, shield, donh, soft):
        wall.addParticle([r / 10.0, float(p), float(h), float(sh), float(dh), sf])
    wall.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    wall.setCutoffDistance(2 * max(rad) / 10.0)
    # pairs within three bonds are the force field's exceptions (1-2, 1-3 excluded, 1-4 scaled):
    # the clash counter exempts the same pairs, and OpenMM wants the same exclusions in every
    # nonbonded force
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            for k in range(f.getNumExceptions()):
                i, j, *_ = f.getExceptionParameters(k)
                wall.addExclusion(i, j)
            break
    wall.setName("ContactWall")
    system.addForce(wall)
    return len(heavy)


@dataclass(frozen=True)
class WallTable:
    """The contact wall of a (sub-)system as arrays, to list its pairs at given positions.

    radius_nm, polar, heavy, shield, donh, soft: per particle (the wall's per-particle parameters;
    ``heavy``: in the wall among simulated atoms, hydrogens included where the model has them;
    ``soft``: stiffness factor, a pair takes the smaller);
    excluded: sorted keys ``i * n + j`` (i < j) of pairs without a wall; hb_nm, hbh_nm: H-bond
    allowances (N/O pairs, polar H with N/O); k_wall: stiffness, kJ/mol/nm^2; group: the force group."""

    radius_nm: np.ndarray
    polar: np.ndarray
    heavy: np.ndarray
    shield: np.ndarray
    donh: np.ndarray
    soft: np.ndarray
    excluded: np.ndarray
    hb_nm: float
    hbh_nm: float
    k_wall: float
    group: int


def wall_table(force: openmm.CustomNonbondedForce) -> WallTable:
    """The :func:`add_contact_wall` force of a system as a :class:`WallTable`."""
    n = force.getNumParticles()
    par = np.array([force.getParticleParameters(i) for i in range(n)], dtype=float).reshape(n, 6)
    ex = np.array([force.getExclusionParticles(k) for k in range(force.getNumExclusions())],
                  dtype=np.int64).reshape(-1, 2)
    keys = np.unique(ex.min(axis=1) * n + ex.max(axis=1))
    glob = {force.getGlobalParameterName(k): force.getGlobalParameterDefaultValue(k)
            for k in range(force.getNumGlobalParameters())}
    return WallTable(par[:, 0], par[:, 1] > 0, par[:, 2] > 0, par[:, 3] > 0, par[:, 4] > 0, par[:, 5], keys,
                     float(glob["hb"]), float(glob["hbh"]), float(glob["k_wall"]), force.getForceGroup())


def wall_pairs(table: WallTable, positions_nm: np.ndarray, movable: np.ndarray,
               margin_nm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, d0_nm) of the wall's pairs closer than d0 + ``margin_nm`` at ``positions_nm``:
    two atoms of the wall, or a stand-in and any non-stand-in particle; not excluded, at least one
    ``movable``. The same pairs and distances as the :data:`CONTACT_WALL` nonbonded force."""
    from scipy.spatial import cKDTree

    pos = np.asarray(positions_nm, dtype=float)
    n = len(pos)
    reach = 2 * float(table.radius_nm.max(initial=0.0)) - 0.02 + margin_nm
    heavy = np.flatnonzero(table.heavy)
    hh = cKDTree(pos[heavy]).query_pairs(reach, output_type="ndarray") if len(heavy) > 1 else np.zeros((0, 2), int)
    pairs = [heavy[hh]]
    shield = np.flatnonzero(table.shield)
    if len(shield):
        rest = np.flatnonzero(~table.shield)
        near = cKDTree(pos[rest]).query_ball_point(pos[shield], reach)
        counts = np.fromiter((len(h) for h in near), dtype=np.int64, count=len(shield))
        hits = np.fromiter((r for h in near for r in h), dtype=np.int64, count=int(counts.sum()))
        pairs.append(np.column_stack([np.repeat(shield, counts), rest[hits]]))
    p = np.vstack(pairs).astype(np.int64)
    i, j = p.min(axis=1), p.max(axis=1)
    mov = np.asarray(movable, dtype=bool)
    keep = (mov[i] | mov[j]) & ~np.isin(i * n + j, table.excluded, assume_unique=False)
    i, j = i[keep], j[keep]
    pol, dh = table.polar, table.donh
    d0 = (table.radius_nm[i] + table.radius_nm[j] - 0.02 - table.hb_nm * (pol[i] & pol[j])
          - table.hbh_nm * ((dh[i] & pol[j]) | (dh[j] & pol[i])))
    close = np.linalg.norm(pos[i] - pos[j], axis=1) < d0 + margin_nm
    order = np.lexsort((j[close], i[close]))
    return i[close][order], j[close][order], d0[close][order]


def pair_wall_force(table: WallTable, positions_nm: np.ndarray, movable: np.ndarray,
                    margin_nm: float = WALL_MARGIN_A / 10.0) -> openmm.CustomBondForce:
    """The contact wall as a CustomBondForce over the pairs of :func:`wall_pairs`: exact while
    no particle has moved more than ``margin_nm / 2`` from ``positions_nm``. OpenMM's CPU
    platform shares one neighbour list among a context's nonbonded forces, at the largest
    cutoff, so a 0.36 nm wall as a CustomNonbondedForce walks every pair within the force
    field's 1 nm cutoff: 12.5 ms of a 37 ms force evaluation for haemoglobin, 0.7 ms as pairs."""
    i, j, d0 = wall_pairs(table, positions_nm, movable, margin_nm)
    kw = np.minimum(table.soft[i], table.soft[j])
    f = openmm.CustomBondForce(PAIR_WALL)
    f.addGlobalParameter("k_wall", table.k_wall)
    f.addPerBondParameter("d0")
    f.addPerBondParameter("kw")
    for a, b, d, k in zip(i.tolist(), j.tolist(), d0.tolist(), kw.tolist()):
        f.addBond(a, b, [d, k])
    f.setForceGroup(table.group)
    f.setName("ContactWallPairs")
    return f
