"""Steric clash counter (distances in Angstrom).

A clash is a pair of atoms closer than ``overlap_A`` (0.4 A, MolProbity's
threshold) below their van der Waals contact distance r_i + r_j, unless they are within ``max_bond_separation`` covalent bonds
(default 3: bonded, 1-3 and 1-4 pairs are never clashes).  Donor/acceptor
pairs may come closer: N/O...N/O by ``HBOND_ALLOWANCE_A`` (0.5 A) and a
hydrogen on N/O ...N/O by ``HBOND_H_ALLOWANCE_A`` (0.8 A), as in an H-bond.

Radii are those of MolProbity's Probe (Word et al. 1999, J Mol Biol 285:1711), the
radii MolProbity's clashscore is defined with: C 1.70 (carbonyl/carboxyl/amide C
1.65), N 1.55, O 1.40, S and P 1.80, H 1.17 (polar H 1.00); other elements take
gemmi's van der Waals radius.  (Bondi's O radius, 1.52 A, would flag every
backbone O(i)...C(i+1) contact shorter than 2.82 A, which ordinary peptide
geometry reaches.)

Covalent bonds are inferred, not read from a dictionary:
* within a residue: r_cov_i + r_cov_j + 0.45 A >= d >= 0.6 (r_cov_i + r_cov_j)
  (two atoms on top of each other are a clash, not a bond);
* between residues: peptide C-N (< 2.0 A) and O3'-P (< 2.0 A) links of
  consecutive residues, SG-SG (< 2.5 A), and, for a non-polymer residue
  (ligand, glycan) or a metal, the same distance rule as within a residue.
Pairs from different alternate conformations are ignored; the search is
not periodic (the CRYST1 box of a cryo-EM model is not a crystal).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import gemmi
import numpy as np

__all__ = ["Clash", "ClashReport", "find_clashes", "count_clashes", "probe_radius"]

HBOND_ALLOWANCE_A = 0.5
HBOND_H_ALLOWANCE_A = 0.8
PROBE_RADII_A = {"C": 1.70, "N": 1.55, "O": 1.40, "S": 1.80, "P": 1.80, "H": 1.17, "D": 1.17}
CARBONYL_C_A = 1.65
POLAR_H_A = 1.00
#: trigonal carbons bonded to O (backbone C, side-chain carboxyl/amide C)
_CARBONYL = {("*", "C"), ("ASP", "CG"), ("ASN", "CG"), ("GLU", "CD"), ("GLN", "CD")}
_POLYMER = {
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS",
    "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "MSE", "SEC", "PYL",
    "DA", "DC", "DG", "DT", "DI", "A", "C", "G", "U", "I", "ACE", "NME",
}


def probe_radius(element: str, name: str, resname: str, polar_h: bool = False) -> float:
    """Probe van der Waals radius (A) of an atom: by element, carbonyl C of polymer residues
    1.65, hydrogens on N/O (``polar_h``) 1.00; elements Probe does not list: gemmi's."""
    if element in ("H", "D") and polar_h:
        return POLAR_H_A
    if element == "C" and resname in _POLYMER and (("*", name) in _CARBONYL or (resname, name) in _CARBONYL):
        return CARBONYL_C_A
    return PROBE_RADII_A[element] if element in PROBE_RADII_A else gemmi.Element(element).vdw_r


@dataclass(frozen=True)
class Clash:
    """Input atom indices i < j (package atom order), distance and overlap
    below the vdW contact distance, A."""

    i: int
    j: int
    distance_A: float
    overlap_A: float


@dataclass
class ClashReport:
    """Clashes found; ``clashscore`` = clashes per 1000 atoms (MolProbity-like)."""

    n_atoms: int
    clashes: list[Clash] = field(default_factory=list)

    @property
    def n_clashes(self) -> int:
        return len(self.clashes)

    @property
    def clashscore(self) -> float:
        return 1000.0 * len(self.clashes) / max(self.n_atoms, 1)


def _bonds(atoms, pos, el, cov, res_key, res_name, metal, pairs, dists, names):
    """Infer covalent bonds among candidate pairs; returns adjacency sets."""
    adj: dict[int, set[int]] = defaultdict(set)
    for (i, j), d in zip(pairs, dists):
        s = cov[i] + cov[j]
        ri, rj = res_key[i], res_key[j]
        bonded = False
        if ri == rj:
            bonded = 0.6 * s <= d <= s + 0.45
        else:
            same_chain_next = ri[0] == rj[0] and abs(ri[1] - rj[1]) == 1
            ni, nj = names[i], names[j]
            if same_chain_next:
                first, second = (i, j) if ri[1] < rj[1] else (j, i)
                pair = (names[first], names[second])
                if pair in (("C", "N"), ("O3'", "P")) and d < 2.0:
                    bonded = True
            if not bonded and ni == "SG" and nj == "SG" and d < 2.5:
                bonded = True
            if not bonded and (metal[i] or metal[j] or res_name[i] not in _POLYMER
                               or res_name[j] not in _POLYMER):
                if res_name[i] not in ("HOH", "WAT") and res_name[j] not in ("HOH", "WAT"):
                    bonded = 0.6 * s <= d <= s + 0.45
        if bonded:
            adj[i].add(j)
            adj[j].add(i)
    return adj


def _within(adj: dict[int, set[int]], i: int, depth: int) -> set[int]:
    seen = {i}
    frontier = {i}
    for _ in range(depth):
        nxt = set()
        for a in frontier:
            nxt |= adj.get(a, set())
        nxt -= seen
        seen |= nxt
        frontier = nxt
    return seen


def find_clashes(
    structure: gemmi.Structure,
    positions_A: np.ndarray | None = None,
    *,
    overlap_A: float = 0.4,
    max_bond_separation: int = 3,
    include_hydrogens: bool = True,
) -> ClashReport:
    """All clashes in ``structure[0]``.

    positions_A: optional (n_atoms, 3) positions (A) in package atom order
    (model[0] -> chain -> residue -> atom) replacing the structure's."""
    st = structure.clone()
    model = st[0]
    atoms = []
    idx = 0
    res_key, res_name, names, alt = [], [], [], []
    for ci, ch in enumerate(model):
        for ri, res in enumerate(ch):
            for at in res:
                at.serial = idx
                if positions_A is not None:
                    p = positions_A[idx]
                    at.pos = gemmi.Position(float(p[0]), float(p[1]), float(p[2]))
                atoms.append(at)
                res_key.append((ci, ri))
                res_name.append(res.name)
                names.append(at.name)
                alt.append(at.altloc)
                idx += 1
    n = idx
    if positions_A is not None and len(positions_A) != n:
        raise ValueError(f"positions_A has {len(positions_A)} rows for {n} atoms")
    el = [a.element for a in atoms]
    is_h = np.array([e.is_hydrogen for e in el])
    vdw = np.array([probe_radius(e.name, an, rn) for e, an, rn in zip(el, names, res_name)])
    cov = np.array([e.covalent_r for e in el])
    metal = np.array([e.is_metal for e in el])
    polar = np.array([e.name in ("N", "O") for e in el])
    pos = np.array([[a.pos.x, a.pos.y, a.pos.z] for a in atoms]).reshape(n, 3)

    radius = max(2.0 * float(vdw.max()) if n else 0.0, 3.0)
    ns = gemmi.NeighborSearch(model, gemmi.UnitCell(), radius + 0.5).populate(include_h=include_hydrogens)
    cs = gemmi.ContactSearch(radius)
    cs.ignore = gemmi.ContactSearch.Ignore.Nothing
    cs.twice = False
    pairs, dists = [], []
    for r in cs.find_contacts(ns):
        if r.image_idx != 0:
            continue
        i, j = r.partner1.atom.serial, r.partner2.atom.serial
        if i == j:
            continue
        if alt[i] != "\0" and alt[j] != "\0" and alt[i] != alt[j]:
            continue
        pairs.append((min(i, j), max(i, j)))
        dists.append(r.dist)

    adj = _bonds(atoms, pos, el, cov, res_key, res_name, metal, pairs, dists, names)
    # polar hydrogens: H bonded to N/O
    polar_h = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(is_h):
        polar_h[i] = any(polar[j] for j in adj.get(int(i), ()))
    vdw[polar_h] = POLAR_H_A

    report = ClashReport(n_atoms=int(n if include_hydrogens else (~is_h).sum()))
    near_cache: dict[int, set[int]] = {}
    for (i, j), d in zip(pairs, dists):
        if not include_hydrogens and (is_h[i] or is_h[j]):
            continue
        limit = vdw[i] + vdw[j] - overlap_A
        if polar[i] and polar[j]:
            limit -= HBOND_ALLOWANCE_A
        elif (polar_h[i] and polar[j]) or (polar_h[j] and polar[i]):
            limit -= HBOND_H_ALLOWANCE_A
        if d >= limit:
            continue
        if i not in near_cache:
            near_cache[i] = _within(adj, i, max_bond_separation)
        if j in near_cache[i]:
            continue
        report.clashes.append(Clash(int(i), int(j), float(d), float(vdw[i] + vdw[j] - d)))
    report.clashes.sort(key=lambda c: -c.overlap_A)
    return report


def count_clashes(structure: gemmi.Structure, positions_A: np.ndarray | None = None, **kw) -> int:
    """Number of clashes (see :func:`find_clashes`)."""
    return find_clashes(structure, positions_A, **kw).n_clashes
