"""Turn an input model (gemmi) into an OpenMM system ready for GMM-guided MD.

Units: public arrays are in Angstrom; OpenMM works in nm internally.

What is simulated: standard polymer residues (20 amino acids, DNA/RNA
nucleotides, ACE/NME caps) that the chosen force field can parameterise after
pdbfixer has added missing heavy atoms and Modeller has added hydrogens.
Everything else (waters, ions, ligands such as HEM, modified residues, residues
the force field rejects) is left out of the MD system, reported in
``PreparedModel.excluded`` and stays at its input position, present in MD as
fixed stand-ins the simulated atoms cannot enter (:mod:`reff_dask.md.shield`).

Chains are split into separate OpenMM chains (segments) at chain breaks
(peptide C-N > 2.0 A, nucleic O3'-P > 2.5 A) and around excluded residues, so
no stretched bond is made across a gap; segment ends become charged termini.
Input hydrogens are not used: Modeller places every hydrogen afresh, and an input
hydrogen maps to the added one of the same name (else it follows its residue).
A 5' phosphate on the first residue of a nucleic segment is left out (Amber's
5' templates have none).  Alternate conformations: only the first altloc of an
atom is simulated, others map to -1.

Atom order: input atoms are numbered in gemmi iteration order,
``model[0] -> chain -> residue -> atom`` (all altlocs included), the order the
rest of the package uses for its atom table.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import gemmi
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from .ideal import add_library_restraints, library_targets, omega_stiffness, set_library_equilibria
from .shield import add_contact_wall, add_shields

__all__ = [
    "ExcludedResidue",
    "PreparedModel",
    "prepare_model",
    "input_atom_table",
    "FORCEFIELDS",
]

#: Named force-field choices: name -> (force-field XML files, implicit-solvent XML).
FORCEFIELDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "amber14": (("amber14-all.xml",), "implicit/gbn2.xml"),
    "amber14-obc2": (("amber14-all.xml",), "implicit/obc2.xml"),
    "amber14-vacuum": (("amber14-all.xml",), None),
    "charmm36": (("charmm36.xml",), "implicit/gbn2.xml"),
}

_PROTEIN = {
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
}
_CAPS = {"ACE", "NME"}
_NUCLEIC = {"DA", "DC", "DG", "DT", "A", "C", "G", "U"}
_PHOSPHATE = {"P", "OP1", "OP2", "OP3", "O1P", "O2P", "O3P"}


class ExcludedResidue(NamedTuple):
    """A residue left out of MD: chain name, residue number (gemmi seqid
    string, e.g. ``"146"`` or ``"52A"``), residue name."""

    chain: str
    resnum: str
    resname: str


@dataclass
class PreparedModel:
    """An OpenMM-ready model and its map to the input atoms.

    Attributes
    ----------
    topology : openmm.app.Topology of the MD particles (one OpenMM chain per segment).
    system : openmm.System for all MD particles; force field + implicit solvent,
        no constraints, no GMM force, no CM-motion remover.
    positions_A : (n_particles, 3) float64 starting positions, Angstrom.
    atom_map : (n_input_atoms,) int64, MD particle index of each input atom or -1.
    particle_atom : (n_particles,) int64, input atom index of each particle or -1
        (hydrogens / atoms added by pdbfixer exist only in MD).
    particle_chain : (n_particles,) str array, input chain name of each particle
        ("" for the fixed stand-ins of atoms left out of MD, see :mod:`.shield`).
    chains : simulated input chain names, in input order.
    excluded : residues left out of MD (stay fixed at input positions).
    forcefield_files : XML files the system was built from.
    nonbonded_cutoff_nm : cutoff used (CutoffNonPeriodic) or None for NoCutoff.
    n_input_atoms : number of input atoms (length of ``atom_map``).
    fingerprint : content hash (positions, maps, settings); cache key for workers.
    library_terms : bonded terms whose equilibria were set from the monomer library
        (counts by kind; empty when ``library_geometry`` is off).
    riders : (rider atoms, anchor atoms) input indices per simulated residue that has input
        atoms without an MD particle (a 5' phosphate, alternate conformations after the
        first, atoms the template lacks): riders follow the anchors (the residue's nearest
        simulated atoms, nearest first) rigidly about the nearest, so no bond or angle to it
        is strained.
    rider_atoms, rider_particles : heavy riders (input indices) and their wall-only stand-in
        particles, which :meth:`place_riders` keeps where the riders are.
    input_start_A : (n_input_atoms, 3) input positions, A (the riders' reference).
    input_hydrogen : (n_input_atoms,) bool, input atoms that are hydrogens.
    """

    topology: app.Topology
    system: openmm.System
    positions_A: np.ndarray
    atom_map: np.ndarray
    particle_atom: np.ndarray
    particle_chain: np.ndarray
    chains: list[str]
    excluded: list[ExcludedResidue]
    forcefield_files: tuple[str, ...]
    nonbonded_cutoff_nm: float | None
    n_input_atoms: int = field(default=0)
    fingerprint: str = field(default="")
    library_terms: dict = field(default_factory=dict)
    riders: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    rider_atoms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rider_particles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    input_start_A: np.ndarray | None = None
    input_hydrogen: np.ndarray | None = None

    @property
    def n_particles(self) -> int:
        return self.system.getNumParticles()

    def in_chains(self, chain: str | tuple[str, ...]) -> np.ndarray:
        """(n_particles,) bool: particles of input chain ``chain`` (or of any chain of a tuple)."""
        names = (chain,) if isinstance(chain, str) else tuple(chain)
        return np.isin(self.particle_chain, names)

    def chain_particles(self, chain: str | tuple[str, ...]) -> np.ndarray:
        """MD particle indices (sorted) of input chain ``chain`` (or of a tuple of chains)."""
        return np.flatnonzero(self.in_chains(chain))

    def chain_input_atoms(self, chain: str | tuple[str, ...]) -> np.ndarray:
        """Input atom indices of ``chain`` (or of a tuple of chains) that are simulated (sorted)."""
        p = self.particle_atom[self.in_chains(chain)]
        return np.sort(p[p >= 0])

    def input_positions_A(self, particle_positions_A: np.ndarray,
                          input_positions_A: np.ndarray) -> np.ndarray:
        """Scatter MD particle positions (A) onto a copy of the input positions
        (A); unsimulated atoms keep their given positions."""
        out = np.array(input_positions_A, dtype=float, copy=True)
        m = self.atom_map >= 0
        out[m] = particle_positions_A[self.atom_map[m]]
        for riders, anchors in self.riders:
            out[riders] = _superpose(self.input_start_A[anchors], out[anchors], self.input_start_A[riders])
        return out

    def follow(self, particle_positions_A: np.ndarray, input_positions_A: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """After MD: (input positions, A, from :meth:`input_positions_A`; particle positions with
        the riders' stand-ins moved to the riders, from :meth:`place_riders`)."""
        xyz = self.input_positions_A(particle_positions_A, input_positions_A)
        return xyz, self.place_riders(particle_positions_A, xyz)

    def place_riders(self, particle_positions_A: np.ndarray, input_positions_A: np.ndarray) -> np.ndarray:
        """``particle_positions_A`` (A) with the riders' stand-ins moved to the riders' positions
        in ``input_positions_A`` (A; from :meth:`input_positions_A`): a copy."""
        out = np.array(particle_positions_A, dtype=float, copy=True)
        if len(self.rider_particles):
            out[self.rider_particles] = input_positions_A[self.rider_atoms]
        return out

    @property
    def n_riders(self) -> int:
        return int(sum(len(r) for r, _ in self.riders))


def _superpose(a0: np.ndarray, a1: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply to ``x`` the rigid motion that maps ``a0[0]`` onto ``a1[0]`` exactly and turns the
    other points of ``a0`` best onto ``a1`` about it (Kabsch about a pivot). With the pivot the
    anchor nearest the riders (the atom they are bonded to), the bond to it and every angle
    among the riders and the pivot stay as in the input (a 5' phosphate: P-O5' and the
    O-P-O5' angles; a fit about the anchors' centroid moved P off O5' by the anchors' own
    flexing: OP1-P-O5' 117 deg, ideal 106, on EMD-11007)."""
    c0, c1 = a0[0], a1[0]
    u, _s, vt = np.linalg.svd((a0 - c0).T @ (a1 - c1))
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return (x - c0) @ rot + c1


def _rider_groups(structure: gemmi.Structure, segs, atom_map: np.ndarray, in_xyz: np.ndarray,
                  n_anchors: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per simulated residue with unsimulated input atoms: (those atoms, the ``n_anchors``
    simulated atoms of the residue nearest to them)."""
    groups = []
    start = {}
    k = 0
    for ci, ch in enumerate(structure[0]):
        for ri, res in enumerate(ch):
            start[(ci, ri)] = (k, len(res))
            k += len(res)
    for ci, _kind, rlist in segs:
        for ri in rlist:
            k0, n = start[(ci, ri)]
            idx = np.arange(k0, k0 + n)
            riders, sim = idx[atom_map[idx] < 0], idx[atom_map[idx] >= 0]
            if len(riders) == 0 or len(sim) < 3:
                continue
            d = np.linalg.norm(in_xyz[sim][:, None, :] - in_xyz[riders][None, :, :], axis=2).min(1)
            groups.append((riders, sim[np.argsort(d, kind="stable")[:n_anchors]]))
    return groups


def input_atom_table(structure: gemmi.Structure) -> list[tuple[int, int, gemmi.Atom]]:
    """(chain index, residue index, atom) for every atom of ``structure[0]`` in
    the package's atom order."""
    out = []
    for ci, ch in enumerate(structure[0]):
        for ri, res in enumerate(ch):
            for at in res:
                out.append((ci, ri, at))
    return out


def _kind(res: gemmi.Residue) -> str | None:
    name = res.name.strip().upper()
    if name in _PROTEIN or name in _CAPS:
        return "protein"
    if name in _NUCLEIC:
        return "nucleic"
    # variant names (HID, CYX, ...) map to standard names through pdbNames.xml
    alias = _residue_aliases().get(name)
    if alias in _PROTEIN:
        return "protein"
    if alias in _NUCLEIC:
        return "nucleic"
    return None


_ALIASES: dict[str, str] | None = None


def _residue_aliases() -> dict[str, str]:
    """Alternative residue names from OpenMM's pdbNames.xml -> standard name."""
    global _ALIASES
    if _ALIASES is None:
        app.PDBFile._loadNameReplacementTables()
        _ALIASES = {k: v for k, v in app.PDBFile._residueNameReplacements.items()}
    return _ALIASES


def _first_atoms(res: gemmi.Residue) -> list[int]:
    """Indices (within residue) of atoms kept: first altloc of each name."""
    seen: set[str] = set()
    keep = []
    for i, at in enumerate(res):
        if at.name in seen:
            continue
        seen.add(at.name)
        keep.append(i)
    return keep


def _linked(prev: gemmi.Residue, res: gemmi.Residue, kind: str) -> bool:
    a, b, lim = ("C", "N", 2.0) if kind == "protein" else ("O3'", "P", 2.5)
    pa, pb = prev.find_atom(a, "*"), res.find_atom(b, "*")
    if pa is None or pb is None:
        return False
    return pa.pos.dist(pb.pos) <= lim


def _segments(structure: gemmi.Structure, excluded_keys: set[tuple[int, int]]):
    """Split simulated residues into linear segments.

    Returns a list of (chain_index, kind, [residue_index, ...])."""
    segs = []
    for ci, ch in enumerate(structure[0]):
        cur: list[int] = []
        cur_kind = None
        prev = None
        for ri, res in enumerate(ch):
            kind = None if (ci, ri) in excluded_keys else _kind(res)
            if kind is None:
                if cur:
                    segs.append((ci, cur_kind, cur))
                cur, cur_kind, prev = [], None, None
                continue
            if cur and (kind != cur_kind or not _linked(prev, res, kind)):
                segs.append((ci, cur_kind, cur))
                cur = []
            cur.append(ri)
            cur_kind = kind
            prev = res
        if cur:
            segs.append((ci, cur_kind, cur))
    return segs


def _pdb_line(serial: int, name: str, resname: str, resnum: int,
              xyz: gemmi.Position, element: str) -> str:
    nm = name if len(name) >= 4 or len(element) == 2 else " " + name
    return ("ATOM  %5d %-4s %3s %1s%4d    %8.3f%8.3f%8.3f%6.2f%6.2f          %2s"
            % (serial % 100000, nm[:4], resname[:3],
               "A", resnum % 10000, xyz.x, xyz.y, xyz.z, 1.0, 0.0, element.upper()))


def _write_segments(structure: gemmi.Structure, segs, atom_index: dict) -> tuple[str, list[int], list[int]]:
    """PDB text of the segments (TER between them; one OpenMM chain each).

    Returns (text, input atom index of each written atom, segment of each
    written atom)."""
    lines: list[str] = []
    written: list[int] = []
    seg_of: list[int] = []
    serial = 1
    model = structure[0]
    for si, (ci, kind, rlist) in enumerate(segs):
        ch = model[ci]
        for k, ri in enumerate(rlist):
            res = ch[ri]
            for ai in _first_atoms(res):
                at = res[ai]
                if (kind == "nucleic" and k == 0 and at.name in _PHOSPHATE) or at.is_hydrogen():
                    continue
                el = at.element.name if at.element.name != "X" else at.name[:1]
                lines.append(_pdb_line(serial, at.name, res.name, k + 1, at.pos, el))
                written.append(atom_index[(ci, ri, ai)])
                seg_of.append(si)
                serial += 1
        lines.append("TER")
    lines.append("END")
    return "\n".join(lines) + "\n", written, seg_of


def _resolve_forcefield(forcefield: str | Sequence[str], implicit: str | None | bool) -> tuple[str, ...]:
    if isinstance(forcefield, str) and forcefield in FORCEFIELDS:
        files, default_implicit = FORCEFIELDS[forcefield]
    else:
        files = (forcefield,) if isinstance(forcefield, str) else tuple(forcefield)
        default_implicit = "implicit/gbn2.xml"
    if implicit is True or implicit == "default":
        implicit = default_implicit
    if implicit:
        files = tuple(files) + (implicit,)
    return tuple(files)


def _create_system(ff: app.ForceField, top: app.Topology,
                   nonbonded_cutoff_A: float | None) -> openmm.System:
    kw = dict(constraints=None, rigidWater=False, removeCMMotion=False)
    if nonbonded_cutoff_A is None:
        return ff.createSystem(top, nonbondedMethod=app.NoCutoff, **kw)
    return ff.createSystem(top, nonbondedMethod=app.CutoffNonPeriodic,
                           nonbondedCutoff=nonbonded_cutoff_A / 10.0 * unit.nanometer, **kw)


def prepare_model(
    structure: gemmi.Structure,
    forcefield: str | Sequence[str] = "amber14",
    implicit: str | None | bool = "default",
    *,
    ph: float = 7.0,
    nonbonded_cutoff_A: float | None = 10.0,
    add_missing_atoms: bool = True,
    seed: int = 1,
    max_rounds: int = 10,
    shield: bool = True,
    library_geometry: bool = True,
    monlib: str | None = None,
    resolution_A: float | None = None,
    links_from: gemmi.Structure | None = None,
) -> PreparedModel:
    """Build the OpenMM model for ``structure`` (positions in Angstrom).

    Parameters
    ----------
    structure : input model; only ``structure[0]`` is used.
    forcefield : a key of :data:`FORCEFIELDS` (``"amber14"`` = AMBER14 + GBn2,
        ``"charmm36"`` = CHARMM36 + GBn2, ...) or OpenMM XML file name(s).
    implicit : implicit-solvent XML (e.g. ``"implicit/obc2.xml"``), ``None`` /
        ``False`` for vacuum, or ``"default"`` (the named force field's choice,
        GBn2 for raw XML names).
    ph : pH for protonation states (Modeller.addHydrogens).
    nonbonded_cutoff_A : CutoffNonPeriodic cutoff in Angstrom, or None for NoCutoff.
    add_missing_atoms : add missing heavy atoms with pdbfixer.
    seed : seeds pdbfixer and hydrogen placement (reproducible preparation).
    max_rounds : residues the force field rejects are excluded and the model
        rebuilt, at most this many times.
    shield : add the atoms left out of MD as fixed, wall-only particles
        (:mod:`reff_dask.md.shield`; chain name "" in ``particle_chain``).
    library_geometry : make the system agree with what validation measures: the equilibrium
        lengths and angles of heavy-atom bond and angle terms from the CCP4 monomer library,
        its planes and peptide omegas as restraints (:mod:`reff_dask.md.ideal`), and a wall
        0.2 A before a MolProbity clash between heavy atoms (and hydrogens, when the model has them) (:func:`.shield.add_contact_wall`);
        ``monlib`` names a fuller library than the bundled one; ``resolution_A`` (the map's)
        stiffens the omega restraints beyond 3.5 A (:func:`.ideal.omega_stiffness`).
    links_from : a model with the same atoms whose chain breaks and residue links count instead
        of ``structure``'s (``refine --rigid``: the model before the rigid stage, which opened
        the backbone where two groups meet; the MD system keeps those bonds and closes them).
    """
    from pdbfixer import PDBFixer

    files = _resolve_forcefield(forcefield, implicit)
    ff = app.ForceField(*files)
    # hydrogens are placed (and minimised) in vacuum: GBn2 makes that ~20x slower
    ff_h = app.ForceField(*[f for f in files if not f.startswith("implicit/")])
    table = input_atom_table(structure)
    n_input = len(table)
    # (chain, residue, atom position in residue) -> input index
    atom_index = {}
    idx = 0
    for ci, ch in enumerate(structure[0]):
        for ri, res in enumerate(ch):
            for ai in range(len(res)):
                atom_index[(ci, ri, ai)] = idx
                idx += 1

    model = structure[0]
    forced_out: set[tuple[int, int]] = set()
    for _round in range(max_rounds + 1):
        segs = _segments(links_from if links_from is not None else structure, forced_out)
        if not segs:
            raise ValueError("no residue of the model can be simulated")
        text, written, seg_of = _write_segments(structure, segs, atom_index)
        # Reference platform: deterministic placement of added atoms (the
        # multithreaded CPU minimiser gives run-to-run differences ~0.01 A)
        ref = openmm.Platform.getPlatformByName("Reference")
        fixer = PDBFixer(pdbfile=io.StringIO(text), platform=ref)
        top0 = fixer.topology
        atoms0 = list(top0.atoms())
        if len(atoms0) != len(written):
            raise RuntimeError("PDB round trip changed the number of atoms")
        # key (residue index, atom name) -> input atom index; survives pdbfixer
        # and Modeller (both keep residue order and atom names)
        key_to_input = {}
        for a, inp in zip(atoms0, written):
            key_to_input.setdefault((a.residue.index, a.name), inp)
        chain_seg = [c.index for c in top0.chains()]
        if len(chain_seg) != len(segs):
            raise RuntimeError("PDB round trip changed the number of chains")
        res_origin = {}  # topology residue index -> (chain index, residue index)
        for c, (ci, kind, rlist) in zip(top0.chains(), segs):
            for r, ri in zip(c.residues(), rlist):
                res_origin[r.index] = (ci, ri)
                # input hydrogens are not written (Modeller places them afresh: hydrogens of
                # a deposited model can sit where the force field's templates cannot take
                # them, which blew up MD on 3J6B chain 9); the added one of the same name
                # stands for each, the others follow their residue
                res = model[ci][ri]
                for ai in _first_atoms(res):
                    if res[ai].is_hydrogen():
                        key_to_input.setdefault((r.index, res[ai].name), atom_index[(ci, ri, ai)])

        fixer.missingResidues = {}
        if add_missing_atoms:
            fixer.findMissingAtoms()
            fixer.addMissingAtoms(seed=seed)
        modeller = app.Modeller(fixer.topology, fixer.positions)
        state = random.getstate()
        random.seed(seed)
        try:
            modeller.addHydrogens(ff_h, pH=ph, platform=ref)
        finally:
            random.setstate(state)
        top = modeller.topology
        try:
            system = _create_system(ff, top, nonbonded_cutoff_A)
            break
        except ValueError as err:  # "No template found for residue N (...)"
            m = re.search(r"for residue (\d+)", str(err))
            if m is None or _round == max_rounds:
                raise
            bad = [r for r in top.residues() if r.index == int(m.group(1))]
            # amber-style force fields: drop every unmatched residue at once
            # (getUnmatchedResidues ignores patches, so it is only a hint)
            more = [r for r in ff.getUnmatchedResidues(top)
                    if not any(f.startswith("charmm") for f in files)]
            for r in bad + more:
                forced_out.add(res_origin[r.index])

    n_part = system.getNumParticles()
    pos_nm = np.array(modeller.positions.value_in_unit(unit.nanometer), dtype=float).reshape(n_part, 3)
    particle_atom = np.full(n_part, -1, dtype=np.int64)
    atom_map = np.full(n_input, -1, dtype=np.int64)
    for a in top.atoms():
        inp = key_to_input.get((a.residue.index, a.name))
        if inp is not None:
            particle_atom[a.index] = inp
            atom_map[inp] = a.index
    # input heavy atoms keep their exact input coordinates (PDB text has 3 decimals);
    # hydrogens are where Modeller put them
    in_xyz = np.array([[at.pos.x, at.pos.y, at.pos.z] for _, _, at in table], dtype=float)
    pos_A = pos_nm * 10.0
    in_h = np.array([at.is_hydrogen() for _, _, at in table], dtype=bool)
    m = particle_atom >= 0
    m[m] = ~in_h[particle_atom[m]]
    pos_A[m] = in_xyz[particle_atom[m]]

    chain_names = [ch.name for ch in model]
    particle_chain = np.empty(n_part, dtype=object)
    for c in top.chains():
        ci = segs[c.index][0]
        for a in c.atoms():
            particle_chain[a.index] = chain_names[ci]
    n_library = {}
    if library_geometry:
        targets = library_targets(links_from if links_from is not None else structure, monlib)
        n_library = set_library_equilibria(system, particle_atom, targets)
        n_library.update(add_library_restraints(system, particle_atom, targets, pos_A,
                                                omega=omega_stiffness(resolution_A)))
    # atoms left out of MD become fixed stand-ins that simulated atoms cannot enter; heavy
    # riders (atoms of simulated residues without a particle) too: their stand-ins are moved
    # with their residue after every MD task (PreparedModel.place_riders)
    simulated_res = {(ci, ri) for ci, _k, rl in segs for ri in rl}
    left = np.array([i for i, (ci, ri, _a) in enumerate(table) if (ci, ri) not in simulated_res], dtype=np.int64)
    riders = _rider_groups(structure, segs, atom_map, in_xyz)
    top_atoms = list(top.atoms())
    rider_atoms, exempt = [], []
    for group, anchors in riders:
        own = {a.index for p in atom_map[anchors] for a in top_atoms[p].residue.atoms()}
        for r in group:
            if not in_h[r]:
                rider_atoms.append(int(r))
                exempt.append(own)
    rider_atoms = np.array(rider_atoms, dtype=np.int64)
    rider_particles = np.zeros(0, dtype=np.int64)
    stand_in = np.concatenate([left, rider_atoms]) if shield else np.zeros(0, dtype=np.int64)
    if len(stand_in):
        info = [(table[i][2].element.name, table[i][2].name, model[table[i][0]][table[i][1]].name,
                 chain_names[table[i][0]], model[table[i][0]][table[i][1]].seqid.num) for i in stand_in]
        pos_A = add_shields(system, top, pos_A, info, in_xyz[stand_in], own_wall=not library_geometry,
                            exempt=[set()] * len(left) + exempt)
        rider_particles = n_part + len(left) + np.arange(len(rider_atoms))
        particle_atom = np.concatenate([particle_atom, np.full(len(stand_in), -1, dtype=np.int64)])
        particle_chain = np.concatenate([particle_chain, np.full(len(stand_in), "", dtype=object)])
        n_part = system.getNumParticles()
    else:
        rider_atoms = np.zeros(0, dtype=np.int64)
    if library_geometry:
        # the model's hydrogens are written out (and counted in its clashes) only if it has any
        n_library["contact_wall_atoms"] = add_contact_wall(system, top, hydrogens=bool(in_h.any()))
    particle_chain = particle_chain.astype(str)
    simulated_chains = [n for n in dict.fromkeys(chain_names) if np.any(particle_chain == n)]

    excluded = []
    for ci, ch in enumerate(model):
        for ri, res in enumerate(ch):
            if (ci, ri) not in simulated_res:
                excluded.append(ExcludedResidue(ch.name, str(res.seqid).strip(), res.name))
    h = hashlib.sha1()
    for arr in (pos_A, atom_map, particle_atom):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr((files, nonbonded_cutoff_A, n_part, n_library)).encode())
    return PreparedModel(
        fingerprint=h.hexdigest(),
        topology=top,
        system=system,
        positions_A=pos_A,
        atom_map=atom_map,
        particle_atom=particle_atom,
        particle_chain=particle_chain,
        chains=simulated_chains,
        excluded=excluded,
        forcefield_files=files,
        nonbonded_cutoff_nm=None if nonbonded_cutoff_A is None else nonbonded_cutoff_A / 10.0,
        n_input_atoms=n_input,
        library_terms=n_library,
        riders=riders,
        rider_atoms=rider_atoms,
        rider_particles=rider_particles,
        input_start_A=in_xyz,
        input_hydrogen=in_h,
    )
