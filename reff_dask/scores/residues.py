"""Residues to score, their centre atoms and their SMOCf windows, from a gemmi structure.

Atom indices are those of :func:`reff_dask.io.models.atom_table` (gemmi order: first
model -> chain -> residue -> atom). Waters are not scored (their atoms still count in
the simulated map). Polymer residues are joined into segments where consecutive
residues of a chain are bonded (peptide C-N or phosphodiester O3'-P shorter than
:data:`LINK_MAX`); a residue's window is up to ``window // 2`` residues either side of
it inside its segment, so windows never cross chain breaks. A ligand is a segment of
its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

#: Longest C-N (peptide) or O3'-P (phosphodiester) distance, in Angstrom, still taken as a link.
LINK_MAX = 2.5

KIND_AMINO, KIND_NUCLEIC, KIND_OTHER = 0, 1, 2


@dataclass
class ResidueTable:
    """Scored residues of one model, in gemmi order.

    chain/icode/name: per residue strings; seqnum: residue number; kind: KIND_*;
    centre: (R, 3) position (A) of the centre atom (CA; C1' or else P for nucleotides;
    otherwise the atom nearest the residue's centroid); atoms: (R, 2) [start, stop) atom
    range of the residue; window: (R, 2) [start, stop) atom range of its SMOCf window
    (contiguous because atoms are stored residue by residue).
    """

    chain: list[str]
    seqnum: np.ndarray
    icode: list[str]
    name: list[str]
    kind: np.ndarray
    centre: np.ndarray
    atoms: np.ndarray
    window: np.ndarray

    def __len__(self) -> int:
        return len(self.chain)

    def keys(self) -> list[tuple[str, int, str]]:
        """(chain, residue number, insertion code) per residue: the key matching residues across models."""
        return [(c, int(n), i) for c, n, i in zip(self.chain, self.seqnum, self.icode)]


def _kind(res: gemmi.Residue) -> int:
    info = gemmi.find_tabulated_residue(res.name)
    if info is not None and info.is_amino_acid():
        return KIND_AMINO
    if info is not None and info.is_nucleic_acid():
        return KIND_NUCLEIC
    return KIND_OTHER


def _pos(res: gemmi.Residue, name: str) -> np.ndarray | None:
    for at in res:
        if at.name == name:
            return np.array([at.pos.x, at.pos.y, at.pos.z])
    return None


def _linked(prev: gemmi.Residue, kind_prev: int, res: gemmi.Residue, kind: int) -> bool:
    if kind_prev != kind or kind == KIND_OTHER:
        return False
    a, b = ("C", "N") if kind == KIND_AMINO else ("O3'", "P")
    pa, pb = _pos(prev, a), _pos(res, b)
    return pa is not None and pb is not None and float(np.linalg.norm(pa - pb)) <= LINK_MAX


def _centre(res: gemmi.Residue, kind: int) -> int:
    """Index (within the residue) of the centre atom."""
    names = [at.name for at in res]
    wanted = ("CA",) if kind == KIND_AMINO else ("C1'", "P") if kind == KIND_NUCLEIC else ()
    for w in wanted:
        if w in names:
            return names.index(w)
    xyz = np.array([[at.pos.x, at.pos.y, at.pos.z] for at in res])
    return int(np.argmin(((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1)))


def residue_table(st: gemmi.Structure, window: int = 11) -> ResidueTable:
    """Scored residues of the first model of ``st`` with centres and SMOCf windows of ``window`` residues."""
    if window < 1:
        raise ValueError(f"window must be at least 1 residue, got {window}")
    half = window // 2
    chain, seqnum, icode, name, kind, centre, atoms, segment = [], [], [], [], [], [], [], []
    a = 0
    seg = -1
    for ch in st[0]:
        prev, prev_kind = None, None
        for res in ch:
            n = len(res)
            if res.is_water() or n == 0:
                a += n
                prev = None
                continue
            k = _kind(res)
            if prev is None or not _linked(prev, prev_kind, res, k):
                seg += 1
            c = _centre(res, k)
            p = res[c].pos
            chain.append(ch.name)
            seqnum.append(res.seqid.num)
            icode.append(res.seqid.icode.strip())
            name.append(res.name)
            kind.append(k)
            centre.append((p.x, p.y, p.z))
            atoms.append((a, a + n))
            segment.append(seg)
            a += n
            prev, prev_kind = res, k
    atoms_arr = np.array(atoms, dtype=np.int64).reshape(-1, 2)
    segment_arr = np.array(segment, dtype=np.int64)
    idx = np.arange(len(segment_arr))
    # first and last residue index of each residue's segment (segments are contiguous runs)
    seg_first = np.searchsorted(segment_arr, segment_arr, side="left")
    seg_last = np.searchsorted(segment_arr, segment_arr, side="right") - 1
    lo = np.maximum(idx - half, seg_first)
    hi = np.minimum(idx + half, seg_last)
    win = np.column_stack([atoms_arr[lo, 0], atoms_arr[hi, 1]]) if len(idx) else np.zeros((0, 2), np.int64)
    return ResidueTable(chain, np.array(seqnum, dtype=np.int64), icode, name, np.array(kind, dtype=np.int8),
                        np.array(centre, dtype=float).reshape(-1, 3), atoms_arr, win)
