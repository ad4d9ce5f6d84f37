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

import gemmi
import numpy as np
import openmm

__all__ = ["library_targets", "set_library_equilibria"]


def library_targets(structure: gemmi.Structure, monlib: str | None = None
                    ) -> tuple[dict[tuple[int, int], tuple[float, float]],
                               dict[tuple[int, int, int], tuple[float, float]]]:
    """Heavy-atom bond (A) and angle (deg) targets and esds of model 0 of ``structure`` from the monomer
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
    topo = gemmi.prepare_topology(st, lib, model_index=0, h_change=gemmi.HydrogenChange.NoChange,
                                  reorder=False, ignore_unknown_links=True)
    bonds: dict[tuple[int, int], tuple[float, float]] = {}
    for b in topo.bonds:
        i, j = b.atoms[0].serial - 1, b.atoms[1].serial - 1
        bonds[(min(i, j), max(i, j))] = (float(b.restr.value), float(b.restr.esd))
    angles: dict[tuple[int, int, int], tuple[float, float]] = {}
    for a in topo.angles:
        i, j, kk = (x.serial - 1 for x in a.atoms)
        angles[(min(i, kk), j, max(i, kk))] = (float(a.restr.value), float(a.restr.esd))
    return bonds, angles


#: kT at 300 K, kJ/mol
KT = 2.494


def set_library_equilibria(system: openmm.System, particle_atom: np.ndarray, structure: gemmi.Structure,
                           monlib: str | None = None, stiffness: float = 1.0) -> dict[str, int]:
    """Replace the equilibria of ``system``'s harmonic bond and angle terms between input atoms
    (``particle_atom``: input atom index of each particle, -1 for added atoms) by the library
    targets; returns how many terms of each kind were changed."""
    bonds, angles = library_targets(structure, monlib)
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
