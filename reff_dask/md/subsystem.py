"""Cut a particle subset out of an OpenMM System (per-chain sub-systems).

Every force is copied through its XML serialisation: per-particle entries are
kept for the subset (in subset order) and every term (bond, angle, torsion,
CMAP, exception, exclusion, interaction group) whose particles all lie in the
subset is kept with re-numbered indices.  This avoids residue templates, so a
neighbour chain can be cut mid-residue.  Units: nm (OpenMM).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import openmm

__all__ = ["extract_subsystem", "hydrogen_bonds", "within_cutoff"]

_SUPPORTED = {
    "HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "RBTorsionForce",
    "CMAPTorsionForce", "CustomBondForce", "CustomAngleForce", "CustomTorsionForce",
    "CustomCompoundBondForce", "NonbondedForce", "CustomNonbondedForce", "CustomGBForce",
    "GBSAOBCForce", "CustomExternalForce",
}
_SKIPPED = {"CMMotionRemover"}
_INDEX_ATTR = re.compile(r"^(p\d+|a\d|b\d|index)$")
_TERM_LISTS = {"Bonds", "Angles", "Torsions", "Exceptions", "Exclusions"}


def _filter_force_xml(xml: str, remap: np.ndarray, skip_pairs: set[tuple[int, int]] | None) -> str:
    root = ET.fromstring(xml)
    ftype = root.get("type")
    keep_pos = np.flatnonzero(remap >= 0)
    for child in list(root):
        tag = child.tag
        if tag == "Particles" and ftype != "CustomExternalForce":
            items = list(child)
            child[:] = [items[i] for i in keep_pos]
        elif tag in _TERM_LISTS or (tag == "Particles" and ftype == "CustomExternalForce"):
            kept = []
            for it in child:
                keys = [k for k in it.attrib if _INDEX_ATTR.match(k)]
                idx = [int(it.get(k)) for k in keys]
                new = [int(remap[i]) for i in idx]
                if min(new) < 0:
                    continue
                if skip_pairs is not None and len(idx) == 2 and tag == "Bonds" \
                        and (min(idx), max(idx)) in skip_pairs:
                    continue
                for k, v in zip(keys, new):
                    it.set(k, str(v))
                kept.append(it)
            child[:] = kept
        elif tag == "InteractionGroups":
            for group in child:
                for s in group:
                    kept = []
                    for it in s:
                        j = int(remap[int(it.get("index"))])
                        if j >= 0:
                            it.set("index", str(j))
                            kept.append(it)
                    s[:] = kept
        elif tag in ("ParticleOffsets", "ExceptionOffsets") and len(child):
            raise NotImplementedError(f"{ftype} with parameter offsets")
    return ET.tostring(root, encoding="unicode")


def hydrogen_bonds(system: openmm.System) -> list[tuple[int, int, float]]:
    """(i, j, r0_nm) of the covalent bond of each hydrogen (mass < 1.5 amu): among its
    HarmonicBondForce terms with a heavy atom, the shortest. (CHARMM adds Urey-Bradley 1-3
    terms, e.g. H...C and H...H, as harmonic bonds too; constraining those would over-
    determine the geometry.)"""
    mass = np.array([system.getParticleMass(i)._value for i in range(system.getNumParticles())])
    best: dict[int, tuple[int, int, float]] = {}
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for b in range(f.getNumBonds()):
                i, j, r0, _k = f.getBondParameters(b)
                r0 = r0._value
                if (mass[i] < 1.5) == (mass[j] < 1.5):
                    continue  # H-H or heavy-heavy
                h = i if mass[i] < 1.5 else j
                if h not in best or r0 < best[h][2]:
                    best[h] = (min(i, j), max(i, j), r0)
    return sorted(best.values())


def extract_subsystem(
    system: openmm.System,
    subset: np.ndarray,
    mobile: np.ndarray,
    constrain_hbonds: bool = False,
) -> openmm.System:
    """A System of the particles ``subset`` (sorted indices into ``system``).

    ``mobile`` (bool, per subset entry) marks particles that move; the others get
    mass 0 (fixed).  With ``constrain_hbonds`` bonds to hydrogen between two
    mobile particles become constraints (their harmonic terms are dropped).
    Constraints already in ``system`` are kept where both particles are in the
    subset and at least one is mobile.  Particle ``k`` of the result is
    ``subset[k]`` of ``system``.
    """
    subset = np.asarray(subset, dtype=np.int64)
    mobile = np.asarray(mobile, dtype=bool)
    if np.any(np.diff(subset) <= 0):
        raise ValueError("subset must be sorted and unique")
    n = system.getNumParticles()
    remap = np.full(n, -1, dtype=np.int64)
    remap[subset] = np.arange(len(subset))
    mobile_full = np.zeros(n, dtype=bool)
    mobile_full[subset[mobile]] = True

    sub = openmm.System()
    for k, i in enumerate(subset):
        sub.addParticle(system.getParticleMass(int(i)) if mobile[k] else 0.0)
    for c in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(c)
        if remap[i] >= 0 and remap[j] >= 0 and mobile_full[i] and mobile_full[j]:
            sub.addConstraint(int(remap[i]), int(remap[j]), d)
    skip = None
    if constrain_hbonds:
        skip = set()
        for i, j, r0 in hydrogen_bonds(system):
            if mobile_full[i] and mobile_full[j]:
                sub.addConstraint(int(remap[i]), int(remap[j]), r0)
                skip.add((i, j))
    for f in system.getForces():
        name = f.__class__.__name__
        if name in _SKIPPED:
            continue
        if name not in _SUPPORTED:
            raise NotImplementedError(f"cannot cut {name} into a sub-system")
        xml = openmm.XmlSerializer.serialize(f)
        xml = _filter_force_xml(xml, remap, skip if name == "HarmonicBondForce" else None)
        sub.addForce(openmm.XmlSerializer.deserialize(xml))
    return sub


def within_cutoff(ref: np.ndarray, pts: np.ndarray, cutoff: float) -> np.ndarray:
    """Boolean mask over ``pts``: within ``cutoff`` of any point of ``ref`` (any length unit,
    consistent). A k-d tree over ``ref`` (scipy): called for every MD task of every EM
    iteration, where all-pairs distances cost 0.5 s per haemoglobin chain."""
    from scipy.spatial import cKDTree

    ref = np.asarray(ref, dtype=float).reshape(-1, 3)
    pts = np.asarray(pts, dtype=float).reshape(-1, 3)
    if len(ref) == 0 or len(pts) == 0:
        return np.zeros(len(pts), dtype=bool)
    d, _ = cKDTree(ref).query(pts, k=1, distance_upper_bound=cutoff)
    return d <= cutoff
