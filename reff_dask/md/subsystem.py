"""Cut a particle subset out of an OpenMM System (per-chain sub-systems).

Every force is copied through its XML serialisation: per-particle entries are
kept for the subset (in subset order) and every term (bond, angle, torsion,
CMAP, exception, exclusion, interaction group) whose particles all lie in the
subset is kept with re-numbered indices.  This avoids residue templates, so a
neighbour chain can be cut mid-residue.  Each force's XML is split into lines
once per system (a worker cuts the same system every EM iteration); a cut is then
numpy on the index arrays and one format per kept line.  Units: nm (OpenMM).
"""

from __future__ import annotations

import re
import threading

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
_TERM_LISTS = {"Bonds", "Angles", "Torsions", "Exceptions", "Exclusions"}


_INDEX = re.compile(r'(?<= )(p\d+|a\d|b\d|index)="(\d+)"')
_SECTION = re.compile(r"^\t<(\w+)>$")


class _Section:
    """One list of a force's XML (per-particle entries or terms), parsed once: its lines, and for
    each line the particle indices it names (term lines) or none (structure lines)."""

    def __init__(self, tag: str, ftype: str, lines: list[str]):
        self.tag, self.lines = tag, lines
        self.by_position = tag == "Particles" and ftype != "CustomExternalForce"  # entry k is particle k
        if self.by_position:
            return
        found = [[int(v) for _, v in _INDEX.findall(ln)] for ln in lines]
        self.term = np.array([bool(f) for f in found])
        width = {len(f) for f in found if f}
        if len(width) > 1:
            raise NotImplementedError(f"{ftype} {tag}: terms with different particle counts")
        self.idx = np.array([f for f in found if f], dtype=np.int64).reshape(-1, width.pop() if width else 0)
        self._templates: list[str] | None = None

    def templates(self) -> list[str]:
        """Term lines with their particle indices as format fields."""
        if self._templates is None:
            out = []
            for ln, t in zip(self.lines, self.term):
                if t:
                    k = iter(range(self.idx.shape[1]))
                    ln = _INDEX.sub(lambda m: f'{m.group(1)}="{{{next(k)}}}"', ln.replace("{", "{{").replace("}", "}}"))
                out.append(ln)
            self._templates = out
        return self._templates

    def cut(self, remap: np.ndarray, keep_pos: np.ndarray, skip_keys: np.ndarray | None) -> list[str]:
        if self.by_position:
            return [self.lines[k] for k in keep_pos]
        new = remap[self.idx]
        keep = (new >= 0).all(axis=1)
        if skip_keys is not None and self.idx.shape[1] == 2:
            lo, hi = self.idx.min(axis=1), self.idx.max(axis=1)
            keep &= ~np.isin(lo * len(remap) + hi, skip_keys)
        tpl, out, t = self.templates(), [], 0
        for ln, is_term in zip(tpl, self.term):
            if not is_term:
                out.append(ln)
                continue
            if keep[t]:
                out.append(ln.format(*new[t].tolist()))
            t += 1
        return out


class _ForceText:
    """A force's XML serialisation split into verbatim lines and :class:`_Section` lists."""

    def __init__(self, force: openmm.Force):
        xml = openmm.XmlSerializer.serialize(force)
        self.ftype = force.__class__.__name__
        lines = xml.split("\n")
        self.parts: list[str | tuple[str, _Section, str]] = []
        i = 0
        while i < len(lines):
            m = _SECTION.match(lines[i])
            tag = m.group(1) if m else None
            if tag in _TERM_LISTS or tag in ("Particles", "InteractionGroups"):
                j = lines.index(f"\t</{tag}>", i + 1)
                self.parts.append((lines[i], _Section(tag, self.ftype, lines[i + 1:j]), lines[j]))
                i = j + 1
                continue
            if tag in ("ParticleOffsets", "ExceptionOffsets"):
                raise NotImplementedError(f"{self.ftype} with parameter offsets")
            self.parts.append(lines[i])
            i += 1

    def cut(self, remap: np.ndarray, skip_keys: np.ndarray | None) -> openmm.Force:
        keep_pos = np.flatnonzero(remap >= 0)
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                head, sec, tail = part
                out.append(head)
                out.extend(sec.cut(remap, keep_pos, skip_keys if sec.tag == "Bonds" else None))
                out.append(tail)
        return openmm.XmlSerializer.deserialize("\n".join(out))


#: parsed forces and hydrogen bonds of the last systems cut (a worker cuts the same prepared
#: system many times; a system must not change once cut: keyed by identity, particle and
#: force counts)
_PARSED: dict[tuple, tuple[openmm.System, list[_ForceText], list]] = {}
_PARSED_LOCK = threading.Lock()


def _parsed(system: openmm.System) -> tuple[list[_ForceText], list[tuple[int, int, float]]]:
    key = (id(system), system.getNumParticles(), system.getNumForces())
    with _PARSED_LOCK:
        hit = _PARSED.get(key)
        if hit is not None and hit[0] is system:
            return hit[1], hit[2]
    texts = [_ForceText(f) for f in system.getForces() if f.__class__.__name__ not in _SKIPPED]
    hbonds = hydrogen_bonds(system)
    with _PARSED_LOCK:
        if len(_PARSED) >= 2:
            _PARSED.clear()
        _PARSED[key] = (system, texts, hbonds)
    return texts, hbonds


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
    for f in system.getForces():
        name = f.__class__.__name__
        if name not in _SKIPPED and name not in _SUPPORTED:
            raise NotImplementedError(f"cannot cut {name} into a sub-system")
    texts, hbonds = _parsed(system)
    skip_keys = None
    if constrain_hbonds:
        skip = []
        for i, j, r0 in hbonds:
            if mobile_full[i] and mobile_full[j]:
                sub.addConstraint(int(remap[i]), int(remap[j]), r0)
                skip.append(i * n + j)
        skip_keys = np.array(sorted(skip), dtype=np.int64)
    for text in texts:
        sub.addForce(text.cut(remap, skip_keys if text.ftype == "HarmonicBondForce" else None))
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
