"""Atomic models (PDB/mmCIF via gemmi) and the flat atom table the numerics work on.

Atom order everywhere in the package is gemmi's: first model -> chain -> residue -> atom.
Every input atom is in the table and in every written model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from ..errors import InputError
from .atomic import atomic_path

#: B = 8 pi^2 sigma^2: standard isotropic B (A^2) of a Gaussian of per-axis width sigma (A).
B_PER_SIGMA2 = 8.0 * np.pi**2


def sigma_to_b(sigma: np.ndarray) -> np.ndarray:
    """Standard B-factor (A^2) from per-axis Gaussian width sigma (A)."""
    return B_PER_SIGMA2 * np.asarray(sigma) ** 2


def b_to_sigma(b: np.ndarray) -> np.ndarray:
    """Per-axis Gaussian width sigma (A) from standard B-factor (A^2)."""
    return np.sqrt(np.maximum(np.asarray(b, dtype=float), 0.0) / B_PER_SIGMA2)


#: Smallest width (A) taken from a model's B column: B = 0 would be a delta function.
SIGMA_FLOOR = 0.05


def widths_from_b(b: np.ndarray, model_path: str) -> np.ndarray:
    """Per-axis widths sigma (A) from a model's B column (A^2), for jobs that use the model's B
    (segment, composite --use-model-b, ensemble): at least :data:`SIGMA_FLOOR`; atoms with no
    usable B (0, negative, NaN) get the smallest width of the others. Refuses a column with no
    B at all, naming the file."""
    b = np.asarray(b, dtype=float)
    ok = np.isfinite(b) & (b > 0)
    if not ok.any():
        raise InputError(model_path, "every B-factor is 0 or negative: refine B first (reff-dask bfactor or "
                                     "refine), or leave out --use-model-b")
    sigma = np.maximum(b_to_sigma(np.where(ok, b, 0.0)), SIGMA_FLOOR)
    sigma[~ok] = sigma[ok].min()
    return sigma


@dataclass
class AtomTable:
    """Flat per-atom arrays, in gemmi order.

    xyz: (N, 3) Angstrom; weight: (N,) atomic number x occupancy; b_input: (N,) the model's
    B column (A^2); chain: (N,) index into ``chain_names``; residue: (N,) running residue
    index over the whole model; hydrogen: (N,) bool.
    """

    xyz: np.ndarray
    weight: np.ndarray
    b_input: np.ndarray
    chain: np.ndarray
    residue: np.ndarray
    hydrogen: np.ndarray
    chain_names: list[str]

    def __len__(self) -> int:
        return len(self.xyz)


def model_labels(paths: list[str]) -> list[str]:
    """Short unique labels from model file names (stem; _2, _3 ... for repeats)."""
    labels: list[str] = []
    for p in paths:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(p).name.split(".")[0]) or "model"
        label, k = stem, 2
        while label in labels:
            label, k = f"{stem}_{k}", k + 1
        labels.append(label)
    return labels


def read_structure(path: str | Path) -> gemmi.Structure:
    """Read a PDB or mmCIF model; refuse unreadable or empty ones with a clear message."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "a folder, not a PDB/mmCIF model file")
    _check_text(path)
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise InputError(path, f"not a readable PDB/mmCIF model ({e})") from None
    st.setup_entities()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(path, _why_no_atoms(path))
    if len(st) > 1:
        raise InputError(path, f"{len(st)} models (MODEL records); refinement takes one: write the one "
                               "to use to its own file (e.g. gemmi convert --select-model)")
    dup: list[str] = []
    for ch in st[0]:
        for res in ch:
            seen: set[tuple[str, str]] = set()
            for at in res:
                key = (at.name, at.altloc)
                if key in seen:
                    dup.append(f"{ch.name}/{res.name}{res.seqid.num}/{at.name}")
                seen.add(key)
    if dup:
        more = f" (and {len(dup) - 5} more)" if len(dup) > 5 else ""
        raise InputError(path, f"duplicated atoms without alternate-location labels: {', '.join(dup[:5])}{more}")
    neg = [f"{ch.name}/{res.name}{res.seqid.num}/{at.name}" for ch in st[0] for res in ch for at in res if at.occ < 0]
    if neg:
        raise InputError(path, f"negative occupancy: {', '.join(neg[:5])}" + (f" (and {len(neg) - 5} more)"
                                                                            if len(neg) > 5 else ""))
    return st


def _check_text(path: Path) -> None:
    """Refuse an empty file or one that is not text (binary bytes in its first 64 KiB, gzip aside)."""
    with open(path, "rb") as f:
        head = f.read(65536)
    if not head:
        raise InputError(path, "the file is empty")
    if head[:2] == b"\x1f\x8b":
        return  # gzipped PDB/mmCIF: gemmi reads it
    if b"\x00" in head or sum(b < 9 or 13 < b < 32 or b > 126 for b in head) > 0.05 * len(head):
        raise InputError(path, "binary data, not a PDB/mmCIF text file")


def _why_no_atoms(path: Path) -> str:
    """Say why gemmi found no atom: an mmCIF without the coordinate columns, a PDB without records."""
    try:
        doc = gemmi.cif.read(str(path))
    except (RuntimeError, ValueError, OSError):
        doc = None
    if doc is not None and len(doc) and any(True for _ in doc[0]):
        table = doc[0].find_mmcif_category("_atom_site.")
        if not table or len(table) == 0:
            return "mmCIF without atoms (no _atom_site table)"
        tags = set(table.tags)
        missing = [c for c in ("Cartn_x", "Cartn_y", "Cartn_z") if f"_atom_site.{c}" not in tags]
        if missing:
            return f"mmCIF _atom_site table lacks {', '.join(missing)}"
        return "mmCIF _atom_site table holds no atom gemmi can read"
    return "no ATOM/HETATM records (not a PDB or mmCIF model?)"


def atom_table(st: gemmi.Structure, path: str | Path = "model") -> AtomTable:
    """Flatten the first model of ``st`` into an :class:`AtomTable`."""
    model = st[0]
    n = model.count_atom_sites()
    xyz = np.empty((n, 3))
    weight = np.empty(n)
    b = np.empty(n)
    chain = np.empty(n, dtype=np.int32)
    residue = np.empty(n, dtype=np.int64)
    hydrogen = np.zeros(n, dtype=bool)
    names: list[str] = []
    unknown: list[str] = []
    i = 0
    r = 0
    for ci, ch in enumerate(model):
        names.append(ch.name)
        for res in ch:
            for at in res:
                z = at.element.atomic_number
                if z <= 0:
                    unknown.append(f"{ch.name}/{res.name}{res.seqid.num}/{at.name} element '{at.element.name}'")
                p = at.pos
                xyz[i] = (p.x, p.y, p.z)
                weight[i] = z * at.occ
                b[i] = at.b_iso
                chain[i] = ci
                residue[i] = r
                hydrogen[i] = at.is_hydrogen()
                i += 1
            r += 1
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise InputError(path, f"atoms with unknown element: {', '.join(unknown[:5])}{more}")
    if not np.all(np.isfinite(xyz)):
        raise InputError(path, "some atom coordinates are not finite numbers")
    if weight.sum() <= 0:
        raise InputError(path, "all atoms have zero occupancy")
    return AtomTable(xyz, weight, b, chain, residue, hydrogen, names)


def updated_structure(st: gemmi.Structure, xyz: np.ndarray | None = None,
                      b_iso: np.ndarray | None = None) -> gemmi.Structure:
    """A copy of ``st`` with new coordinates (A) and/or B-factors (A^2) for every atom, in gemmi order."""
    out = st.clone()
    i = 0
    for ch in out[0]:
        for res in ch:
            for at in res:
                if xyz is not None:
                    at.pos = gemmi.Position(*map(float, xyz[i]))
                if b_iso is not None:
                    at.b_iso = float(b_iso[i])
                i += 1
    n = out[0].count_atom_sites()
    for arr in (xyz, b_iso):
        if arr is not None and len(arr) != n:
            raise ValueError(f"got {len(arr)} values for {n} atoms")
    return out


def write_structure(st: gemmi.Structure, stem: str | Path) -> list[Path]:
    """Write ``st`` as ``stem.cif`` and, where the PDB format can hold it, ``stem.pdb`` (atomically)."""
    stem = Path(stem)
    written = []
    cif = stem.with_suffix(".cif")
    with atomic_path(cif) as tmp:
        st.make_mmcif_document().write_file(str(tmp))
    written.append(cif)
    if _fits_pdb(st):
        pdb = stem.with_suffix(".pdb")
        with atomic_path(pdb) as tmp:
            st.write_pdb(str(tmp))
        written.append(pdb)
    return written


def _fits_pdb(st: gemmi.Structure) -> bool:
    model = st[0]
    return model.count_atom_sites() < 100000 and all(len(ch.name) <= 2 for ch in model)


def check_in_box(atoms: AtomTable, lower: np.ndarray, upper: np.ndarray, path: str | Path,
                 map_path: str | Path) -> int:
    """Count atoms outside the map box; refuse a model mostly outside it. Returns the count outside."""
    inside = np.all((atoms.xyz >= lower) & (atoms.xyz <= upper), axis=1)
    n_out = int((~inside).sum())
    if n_out > 0.5 * len(atoms):
        c = atoms.xyz.mean(axis=0)
        raise InputError(path, f"{n_out} of {len(atoms)} atoms lie outside the box of map {map_path} "
                               f"(model centre {np.round(c, 1).tolist()} A, box {np.round(lower, 1).tolist()} to "
                               f"{np.round(upper, 1).tolist()} A); is the model fitted to this map, "
                               f"and is the map origin right?")
    return n_out
