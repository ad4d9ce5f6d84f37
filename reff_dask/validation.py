"""Model geometry as refinement programs report it: deviations from the CCP4 monomer library.

Restraint targets (bond lengths in A, angles in degrees, planes, chiral centres) come from
the CCP4 monomer library through gemmi's topology (``gemmi.prepare_topology``), the same
dictionaries and links (TRANS/CIS peptides, nucleic-acid links, disulfides) that Refmac and
servalcat refine against.  Dictionaries for the standard amino acids, nucleotides, HEM,
water and common ions ship in ``reff_dask/data/monomers`` (LGPL, see its PROVENANCE.md);
``monlib`` names a fuller library (e.g. ``$CLIBD_MON``) for other residues.

Measured on heavy atoms (hydrogens are removed from a copy first, so models with and
without riding hydrogens compare alike):

* bonds / angles: RMS deviation from the targets and outliers with |z| > 4
  (z = deviation / dictionary esd);
* peptides: omega (CA-C-N-CA) of every linked pair; ``twisted`` = more than 30 deg from
  both 0 and 180 deg, ``cis`` = within 30 deg of 0 (cis-proline is listed, not counted);
* planes: atoms farther than 0.1 A from the least-squares plane of their restraint group;
* chirality: chiral centres whose volume has the wrong sign;
* clashes: :func:`reff_dask.md.clashes.count_clashes` (MolProbity's 0.4 A overlap).

Residues without a dictionary are listed in ``unknown_residues`` and contribute nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gemmi

from .errors import InputError
from .md.clashes import find_clashes

__all__ = ["BUNDLED_MONOMERS", "check_monlib", "Geometry", "validate_geometry", "geometry_changes", "read_monomers"]

#: The monomer-library subset shipped with the package.
BUNDLED_MONOMERS = Path(__file__).parent / "data" / "monomers"

Z_OUTLIER = 4.0
OMEGA_TWIST_DEG = 30.0
PLANE_OUTLIER_A = 0.1
#: Columns compared by :func:`geometry_changes` (larger is worse for every one).
WORSE_IF_HIGHER = ("bond_rmsd_A", "angle_rmsd_deg", "bond_outliers", "angle_outliers", "twisted_peptides",
                   "cis_peptides", "plane_outliers", "chiral_outliers", "clashes")


@dataclass
class Geometry:
    """Geometry summary of one model: ``overall`` and ``per_chain`` dicts with the keys of
    :data:`WORSE_IF_HIGHER` plus counts, and ``worst`` (the largest deviations, as text)."""

    overall: dict
    per_chain: dict[str, dict]
    worst: list[str] = field(default_factory=list)
    unknown_residues: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"overall": self.overall, "per_chain": self.per_chain, "worst": self.worst,
                "unknown_residues": self.unknown_residues}


def check_monlib(monlib: str | None) -> None:
    """Refuse a ``--monlib`` that is not a CCP4 monomer library folder, before any work."""
    if monlib is None:
        return
    root = Path(monlib)
    if not root.is_dir():
        raise InputError(monlib, "no such folder (--monlib wants a CCP4 monomer library folder)")
    if not (root / "list" / "mon_lib_list.cif").exists():
        raise InputError(monlib, "not a CCP4 monomer library (no list/mon_lib_list.cif)")


def read_monomers(names: list[str], monlib: str | Path | None = None) -> gemmi.MonLib:
    """Monomer dictionaries for ``names`` from ``monlib`` (a CCP4 monomer library folder)
    and the bundled subset; residues found in neither are simply absent."""
    lib = gemmi.read_monomer_lib(str(BUNDLED_MONOMERS), names, ignore_missing=True)
    if monlib is not None:
        root = Path(monlib)
        if not (root / "list" / "mon_lib_list.cif").exists():
            raise FileNotFoundError(f"{monlib}: not a CCP4 monomer library (no list/mon_lib_list.cif)")
        missing = [n for n in names if n not in lib.monomers]
        if missing:
            extra = gemmi.read_monomer_lib(str(root), missing, ignore_missing=True)
            for n in missing:
                if n in extra.monomers:
                    lib.monomers[n] = extra.monomers[n]
    return lib


class _Acc:
    """Per-chain accumulators of squared deviations and outlier counts."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def row(self, chain: str) -> dict:
        return self.rows.setdefault(chain, {"bonds": 0, "bond_sq": 0.0, "bond_outliers": 0,
                                            "angles": 0, "angle_sq": 0.0, "angle_outliers": 0,
                                            "peptides": 0, "twisted_peptides": 0, "cis_peptides": 0,
                                            "plane_atoms": 0, "plane_outliers": 0,
                                            "chirals": 0, "chiral_outliers": 0, "clashes": 0})


def _summary(r: dict) -> dict:
    out = {k: v for k, v in r.items() if not k.endswith("_sq")}
    out["bond_rmsd_A"] = math.sqrt(r["bond_sq"] / r["bonds"]) if r["bonds"] else 0.0
    out["angle_rmsd_deg"] = math.sqrt(r["angle_sq"] / r["angles"]) if r["angles"] else 0.0
    return out


def validate_geometry(structure: gemmi.Structure, monlib: str | Path | None = None,
                      clashes: bool = True, n_worst: int = 10) -> Geometry:
    """Geometry of model 0 of ``structure`` against the monomer library (see module doc)."""
    st = structure.clone()
    st.remove_hydrogens()
    st.remove_empty_chains()
    while len(st) > 1:
        del st[1]
    st.setup_entities()
    chain_of: list[str] = []
    label: list[str] = []
    for ch in st[0]:
        for res in ch:
            for at in res:
                chain_of.append(ch.name)
                label.append(f"{ch.name}/{res.name}{res.seqid.num}{res.seqid.icode.strip()}:{at.name}")
    st.assign_serial_numbers()  # serial k+1 = k-th atom in the order above
    names = st[0].get_all_residue_names()
    lib = read_monomers(names, monlib)
    unknown = sorted({f"{ch.name}/{res.name}{res.seqid.num}" for ch in st[0] for res in ch
                      if res.name not in lib.monomers})
    # gemmi makes restraints for a residue without a dictionary from its own coordinates
    # (deviation 0): leave out every restraint that touches one
    skip = {at.serial - 1 for ch in st[0] for res in ch if res.name not in lib.monomers for at in res}
    topo = gemmi.prepare_topology(st, lib, model_index=0, h_change=gemmi.HydrogenChange.NoChange,
                                  reorder=False, ignore_unknown_links=True)
    acc = _Acc()
    for ch in st[0]:
        acc.row(ch.name)
    worst: list[tuple[float, str]] = []

    def idx(atom: gemmi.Atom) -> int:
        return atom.serial - 1

    def known(atoms) -> bool:
        return not skip or not any(idx(a) in skip for a in atoms)

    for b in topo.bonds:
        if not known(b.atoms):
            continue
        i = idx(b.atoms[0])
        d = b.calculate() - b.restr.value
        r = acc.row(chain_of[i])
        r["bonds"] += 1
        r["bond_sq"] += d * d
        z = abs(d) / max(b.restr.esd, 1e-6)
        if z > Z_OUTLIER:
            r["bond_outliers"] += 1
            worst.append((z, f"bond {label[i]}-{b.atoms[1].name} {b.calculate():.3f} A "
                             f"(ideal {b.restr.value:.3f}, z {z:.1f})"))
    for a in topo.angles:
        if not known(a.atoms):
            continue
        i = idx(a.atoms[1])
        v = math.degrees(a.calculate())
        d = v - a.restr.value
        r = acc.row(chain_of[i])
        r["angles"] += 1
        r["angle_sq"] += d * d
        z = abs(d) / max(a.restr.esd, 1e-6)
        if z > Z_OUTLIER:
            r["angle_outliers"] += 1
            worst.append((z, f"angle {a.atoms[0].name}-{label[i]}-{a.atoms[2].name} {v:.1f} deg "
                             f"(ideal {a.restr.value:.1f}, z {z:.1f})"))
    seen_plane: set[int] = set()
    plane_bad: set[int] = set()
    for p in topo.planes:
        if len(p.atoms) < 4 or not known(p.atoms):
            continue
        coeff = gemmi.find_best_plane(p.atoms)
        for at in p.atoms:
            i = idx(at)
            dist = abs(gemmi.get_distance_from_plane(at.pos, coeff))
            if i not in seen_plane:
                seen_plane.add(i)
                acc.row(chain_of[i])["plane_atoms"] += 1
            if dist > PLANE_OUTLIER_A and i not in plane_bad:
                plane_bad.add(i)
                acc.row(chain_of[i])["plane_outliers"] += 1
                worst.append((dist / 0.02, f"plane {label[i]} {dist:.2f} A off ({p.restr.label})"))
    for c in topo.chirs:
        if c.restr.sign == gemmi.ChiralityType.Both or not known(c.atoms):
            continue
        i = idx(c.atoms[0])
        r = acc.row(chain_of[i])
        r["chirals"] += 1
        if c.restr.is_wrong(c.calculate()):
            r["chiral_outliers"] += 1
            worst.append((100.0, f"chirality {label[i]} inverted"))
    for ch in st[0]:
        r = acc.row(ch.name)
        for prev, nxt in zip(ch, list(ch)[1:]):
            c, n = prev.find_atom("C", "*"), nxt.find_atom("N", "*")
            if c is None or n is None or c.pos.dist(n.pos) > 2.0:
                continue
            if prev.find_atom("CA", "*") is None or nxt.find_atom("CA", "*") is None:
                continue
            omega = math.degrees(gemmi.calculate_omega(prev, nxt))
            off = min(abs(omega), 180.0 - abs(omega))
            r["peptides"] += 1
            tag = f"{ch.name}/{prev.name}{prev.seqid.num}-{nxt.name}{nxt.seqid.num}"
            if off > OMEGA_TWIST_DEG:
                r["twisted_peptides"] += 1
                worst.append((off / 6.0, f"peptide {tag} omega {omega:.0f} deg (twisted)"))
            elif abs(omega) < OMEGA_TWIST_DEG and nxt.name != "PRO":
                r["cis_peptides"] += 1
                worst.append((5.0, f"peptide {tag} omega {omega:.0f} deg (cis, non-proline)"))
    if clashes:
        for name, n in _clashes_per_chain(structure).items():
            acc.row(name)["clashes"] += n
    total: dict = {}
    for r in acc.rows.values():
        for k, v in r.items():
            total[k] = total.get(k, 0) + v
    worst.sort(key=lambda t: -t[0])
    return Geometry(overall=_summary(total) if total else {},
                    per_chain={k: _summary(v) for k, v in acc.rows.items()},
                    worst=[w for _, w in worst[:n_worst]], unknown_residues=unknown)


def _clashes_per_chain(structure: gemmi.Structure) -> dict[str, int]:
    """Clash count per chain of model 0 (a clash between two chains counts for the chain of
    its first atom); hydrogens take part, as in MolProbity's clashscore."""
    chain = [ch.name for ch in structure[0] for res in ch for _ in res]
    out: dict[str, int] = {}
    for cl in find_clashes(structure).clashes:
        out[chain[cl.i]] = out.get(chain[cl.i], 0) + 1
    return out


def geometry_changes(before: dict, after: dict) -> dict:
    """For each column of :data:`WORSE_IF_HIGHER`, (before, after) where ``after`` is worse."""
    return {k: (before.get(k), after.get(k)) for k in WORSE_IF_HIGHER
            if k in before and k in after and after[k] > before[k] + (1e-4 if isinstance(after[k], float) else 0)}
