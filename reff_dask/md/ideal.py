"""Bonded equilibria of the MD system set to the CCP4 monomer library's targets.

AMBER14's equilibrium bond lengths and angles differ systematically from the Engh & Huber
values of the CCP4 monomer library, which validation (MolProbity, wwPDB, Refmac,
servalcat) measures models against: a 5ME2 haemoglobin model minimised with AMBER14 in
vacuum deviates by 0.0155 A (bonds) and 2.04 deg (angles) RMS, of which 0.0145 A and
1.67 deg are per-type offsets (N-CA-C 3.1 deg wider, CA-N 0.015 A longer, ...). The force
constants, torsions, impropers and non-bonded terms stay AMBER's; only the equilibrium
values of heavy-atom bond and angle terms that the library restrains are replaced, so the
force field relaxes a model towards the geometry it will be judged by.

CHARMM's Urey-Bradley 1-3 terms (HarmonicBondForce terms between the ends of an angle) get
the 1-3 distance implied by the library's two bonds and angle (law of cosines).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import gemmi
import numpy as np
import openmm

__all__ = ["LibraryTargets", "library_targets", "set_library_equilibria", "add_library_restraints", "PLANE_ENERGY",
           "OMEGA_ENERGY", "CHIRAL_ENERGY"]

#: Distance (nm) of particle 4 from the plane through particles 1-3, as |r34| sin(angle 2-3-4)
#: sin(dihedral 1-2-3-4), held at 0 by a harmonic term of stiffness k (kJ/mol/nm^2).
PLANE_ENERGY = ("0.5*k_plane*d^2; d = distance(p3, p4)*sin(angle(p2, p3, p4))*sin(dihedral(p1, p2, p3, p4))")
#: Peptide omega held at the library's value (180 or 0 deg): ~ 0.5 k dtheta^2 near it, k = kT / esd^2.
OMEGA_ENERGY = "k_omega*(1 - cos(theta - omega0))"
#: Signed chiral volume (a1 - c) . ((a2 - c) x (a3 - c)) of a centre c (particle 1) held at the
#: library's (gemmi's convention, as validation counts inversions), nm^3.
CHIRAL_ENERGY = ("0.5*k_chir*(v - v0)^2; v = ax*(by*cz - bz*cy) - ay*(bx*cz - bz*cx) + az*(bx*cy - by*cx); "
                 "ax = x2 - x1; ay = y2 - y1; az = z2 - z1; bx = x3 - x1; by = y3 - y1; bz = z3 - z1; "
                 "cx = x4 - x1; cy = y4 - y1; cz = z4 - z1")
#: Chiral volume esd (A^3), Refmac's and servalcat's default for the library's chiral centres.
CHIRAL_ESD_A3 = 0.2


def omega_stiffness(resolution_A: float | None) -> float:
    """Omega restraint stiffness relative to the library's kT / esd^2 (esd 5 deg): 1 at 3.5 A
    or better, (resolution / 3.5)^2 beyond, where a carbonyl no longer shows in the map and
    the wells bend peptides instead. GroEL chains A+B at 7 A (x4): 13 twisted peptides -> 0,
    CCC unchanged (0.301), angle RMSD 1.75 -> 1.85 deg (BENCHMARKS.md)."""
    if resolution_A is None:
        return 1.0
    return max(1.0, (float(resolution_A) / 3.5) ** 2)


class LibraryTargets(NamedTuple):
    """Restraint targets keyed by input atom indices: bonds {(i, j): (length A, esd A)},
    angles {(i, j, k): (deg, esd deg)}, planes [(atoms, esd A)], peptide omegas
    [((CA, C, N, CA), deg, esd deg)] (180 for TRANS links, 0 for CIS), chiral centres
    [((centre, a1, a2, a3), signed ideal volume A^3)] (centres of either hand left out)."""

    bonds: dict[tuple[int, int], tuple[float, float]]
    angles: dict[tuple[int, int, int], tuple[float, float]]
    planes: list[tuple[list[int], float]]
    omegas: list[tuple[list[int], float, float]]
    chirals: list[tuple[list[int], float]] = []


def library_targets(structure: gemmi.Structure, monlib: str | None = None) -> LibraryTargets:
    """Heavy-atom bond (A) and angle (deg) targets and esds, planes and peptide omegas of model 0 of ``structure`` from the monomer
    library, keyed by input atom indices (package order; bond keys (i, j) with i < j, angle
    keys (i, j, k) with i < k, j the centre)."""
    from ..validation import read_monomers

    st = structure.clone()
    while len(st) > 1:
        del st[1]
    k = 0
    for ch in st[0]:
        for res in ch:
            for at in res:
                k += 1
                at.serial = k  # input index + 1, kept through remove_hydrogens
    st.remove_hydrogens()
    st.setup_entities()
    lib = read_monomers(st[0].get_all_residue_names(), monlib)
    order = [at.serial - 1 for ch in st[0] for res in ch for at in res]  # input index, iteration order
    topo = gemmi.prepare_topology(st, lib, model_index=0, h_change=gemmi.HydrogenChange.NoChange,
                                  reorder=False, ignore_unknown_links=True)
    # prepare_topology renumbers serials (1, 2, ... in iteration order): map them back
    k = 0
    for ch in st[0]:
        for res in ch:
            for at in res:
                at.serial = order[k] + 1
                k += 1
    # restraints gemmi makes up for residues without a dictionary (from their own coordinates) are not targets
    skip = {at.serial - 1 for ch in st[0] for res in ch if res.name not in lib.monomers for at in res}
    bonds: dict[tuple[int, int], tuple[float, float]] = {}
    for b in topo.bonds:
        if any(x.serial - 1 in skip for x in b.atoms):
            continue
        i, j = b.atoms[0].serial - 1, b.atoms[1].serial - 1
        bonds[(min(i, j), max(i, j))] = (float(b.restr.value), float(b.restr.esd))
    angles: dict[tuple[int, int, int], tuple[float, float]] = {}
    for a in topo.angles:
        if any(x.serial - 1 in skip for x in a.atoms):
            continue
        i, j, kk = (x.serial - 1 for x in a.atoms)
        angles[(min(i, kk), j, max(i, kk))] = (float(a.restr.value), float(a.restr.esd))
    planes = [([x.serial - 1 for x in p.atoms], float(p.restr.esd)) for p in topo.planes
              if len(p.atoms) >= 4 and not any(x.serial - 1 in skip for x in p.atoms)]
    omegas = [([x.serial - 1 for x in t.atoms], float(t.restr.value), float(t.restr.esd)) for t in topo.torsions
              if t.restr.label == "omega" and not any(x.serial - 1 in skip for x in t.atoms)]
    chirals = []
    for c in topo.chirs:
        if c.restr.sign == gemmi.ChiralityType.Both or any(x.serial - 1 in skip for x in c.atoms):
            continue
        v = topo.ideal_chiral_abs_volume(c)
        sign = 1.0 if c.restr.sign == gemmi.ChiralityType.Positive else -1.0
        chirals.append(([x.serial - 1 for x in c.atoms], sign * float(v)))
    return LibraryTargets(bonds, angles, planes, omegas, chirals)


#: kT at 300 K, kJ/mol
KT = 2.494


def set_library_equilibria(system: openmm.System, particle_atom: np.ndarray, targets: tuple,
                           stiffness: float = 1.0) -> dict[str, int]:
    """Replace the equilibria of ``system``'s harmonic bond and angle terms between input atoms
    (``particle_atom``: input atom index of each particle, -1 for added atoms) by the library
    targets; returns how many terms of each kind were changed."""
    bonds, angles = targets.bonds, targets.angles
    pa = np.asarray(particle_atom)
    ends = {(i, k): (i, j, k) for (i, j, k) in angles}
    n = {"bonds": 0, "angles": 0, "urey_bradley": 0}
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for t in range(f.getNumBonds()):
                p1, p2, r0, kb = f.getBondParameters(t)
                a1, a2 = int(pa[p1]) if p1 < len(pa) else -1, int(pa[p2]) if p2 < len(pa) else -1
                if a1 < 0 or a2 < 0:
                    continue
                key = (min(a1, a2), max(a1, a2))
                if key in bonds:
                    r, esd = bonds[key]
                    f.setBondParameters(t, p1, p2, r / 10.0, max(kb._value, stiffness * KT / (esd / 10.0) ** 2))
                    n["bonds"] += 1
                elif key in ends:  # a Urey-Bradley 1-3 term
                    i, j, k = ends[key]
                    b1, b2 = bonds.get((min(i, j), max(i, j))), bonds.get((min(j, k), max(j, k)))
                    if b1 is None or b2 is None:
                        continue
                    b1, b2 = b1[0], b2[0]
                    th = math.radians(angles[ends[key]][0])
                    f.setBondParameters(t, p1, p2, math.sqrt(b1 * b1 + b2 * b2 - 2 * b1 * b2 * math.cos(th)) / 10.0, kb)
                    n["urey_bradley"] += 1
        elif isinstance(f, openmm.HarmonicAngleForce):
            for t in range(f.getNumAngles()):
                p1, p2, p3, th0, ka = f.getAngleParameters(t)
                a = [int(pa[p]) if p < len(pa) else -1 for p in (p1, p2, p3)]
                if min(a) < 0:
                    continue
                key = (min(a[0], a[2]), a[1], max(a[0], a[2]))
                if key in angles:
                    th, esd = angles[key]
                    f.setAngleParameters(t, p1, p2, p3, math.radians(th),
                                         max(ka._value, stiffness * KT / math.radians(esd) ** 2))
                    n["angles"] += 1
    return n


def _plane_frame(xyz: np.ndarray) -> tuple[int, int, int]:
    """Three well-spread points of a planar group (indices into ``xyz``): the first, the one
    farthest from it, and the one farthest from the line through those two."""
    a = 0
    b = int(np.argmax(np.linalg.norm(xyz - xyz[a], axis=1)))
    u = (xyz[b] - xyz[a]) / max(np.linalg.norm(xyz[b] - xyz[a]), 1e-9)
    r = xyz - xyz[a]
    off = np.linalg.norm(r - np.outer(r @ u, u), axis=1)
    return a, b, int(np.argmax(off))


def add_library_restraints(system: openmm.System, particle_atom: np.ndarray, targets: LibraryTargets,
                           positions_A: np.ndarray, stiffness: float = 1.0, omega: float = 1.0) -> dict[str, int]:
    """Restraints AMBER holds too weakly against a GMM well, at the library's stiffness kT/esd^2:

    * planes (aromatic rings, peptide and nucleic-acid link planes, amides, carboxylates,
      guanidinium, bases; esd 0.02 A): every atom but three spread reference atoms gets a
      harmonic term on its distance from their plane (AMBER's impropers are ~1/100 as stiff);
    * peptide omega (CA-C-N-CA, esd 5 deg), which the heavy-atom planes leave free (the
      library's second peptide plane holds it through the amide H);
    * chiral volumes (CA of every amino acid, CB of Ile and Thr, sugar carbons; esd 0.2 A^3):
      AMBER has no term that keeps a centre's hand, and at low resolution the wells can pull
      a CA through its plane (GroEL at 7 A: 4 CA inverted in 14 chains without this term).

    ``omega`` scales the omega terms' stiffness (see :func:`omega_stiffness`). Returns the
    number of terms added, by kind."""
    pa = np.asarray(particle_atom)
    part = np.full(int(pa.max()) + 1 if len(pa) else 0, -1, dtype=np.int64)
    ok = pa >= 0
    part[pa[ok]] = np.flatnonzero(ok)

    def particles(atoms) -> list[int]:
        return [int(part[i]) if i < len(part) else -1 for i in atoms]

    planes = openmm.CustomCompoundBondForce(4, PLANE_ENERGY)
    planes.addPerBondParameter("k_plane")
    planes.setName("LibraryPlanes")
    for atoms, esd in targets.planes:
        ps = particles(atoms)
        if min(ps) < 0:
            continue
        ref = _plane_frame(positions_A[ps])
        k = stiffness * KT / (max(esd, 0.005) / 10.0) ** 2
        for j, p in enumerate(ps):
            if j not in ref:
                planes.addBond([ps[ref[0]], ps[ref[1]], ps[ref[2]], p], [k])
    omegas = openmm.CustomTorsionForce(OMEGA_ENERGY)
    omegas.addPerTorsionParameter("k_omega")
    omegas.addPerTorsionParameter("omega0")
    omegas.setName("LibraryOmega")
    for atoms, value, esd in targets.omegas:
        ps = particles(atoms)
        if min(ps) < 0:
            continue
        omegas.addTorsion(*ps, [omega * stiffness * KT / math.radians(max(esd, 1.0)) ** 2,
                                math.radians(value)])
    chirals = openmm.CustomCompoundBondForce(4, CHIRAL_ENERGY)
    chirals.addPerBondParameter("k_chir")
    chirals.addPerBondParameter("v0")
    chirals.setName("LibraryChirality")
    k_chir = stiffness * KT / (CHIRAL_ESD_A3 * 1e-3) ** 2
    for atoms, v0 in targets.chirals:
        ps = particles(atoms)
        if min(ps) < 0:
            continue
        chirals.addBond(ps, [k_chir, v0 * 1e-3])
    for f in (planes, omegas, chirals):
        if f.getNumBonds() if isinstance(f, openmm.CustomCompoundBondForce) else f.getNumTorsions():
            system.addForce(f)
    return {"plane_terms": planes.getNumBonds(), "omega_terms": omegas.getNumTorsions(),
            "chiral_terms": chirals.getNumBonds()}
