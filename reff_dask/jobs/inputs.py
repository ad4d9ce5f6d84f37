"""Reading and checking a job's map and model together."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import gemmi
import numpy as np

from ..errors import InputError
from ..io.maps import Map, check_map_values, check_resolution, map_stats, read_map
from ..io.models import AtomTable, atom_table, check_in_box, read_structure

#: Maps smaller than this are kept in worker memory across EM iterations.
PERSIST_BYTES = 2 * 1024**3


@dataclass
class Inputs:
    map: Map
    map_stats: dict
    structure: gemmi.Structure
    atoms: AtomTable
    atoms_outside: int


def load_inputs(map_path: str, model_path: str, chunks, resolution: float | None = None) -> Inputs:
    """Open map and model, check them against each other, and keep a small map in worker memory.

    Must run inside :func:`reff_dask.cluster.dask_client` so the map lands on the workers.
    """
    if resolution is not None:
        check_resolution(resolution, map_path)
    m = read_map(map_path, chunks)
    st = read_structure(model_path)
    atoms = atom_table(st, model_path)
    grid = m.grid
    outside = check_in_box(atoms, np.asarray(grid.origin), grid.upper, model_path, map_path)
    if outside:
        print(f"warning: {outside} of {len(atoms)} atoms of {model_path} lie outside the map box; "
              "they keep their input B-factors and positions", file=sys.stderr)
    if m.data.nbytes <= PERSIST_BYTES:
        m.data = m.data.persist()
    stats = map_stats(m)
    check_map_values(m, stats)
    for line in map_warnings(m, stats, atoms):
        print(f"warning: {line}", file=sys.stderr)
    return Inputs(m, stats, st, atoms, outside)


#: Solvent level (map median) further than this many standard deviations from zero is reported.
SOLVENT_WARN_SD = 1.0


def map_warnings(m: Map, stats: dict, atoms: AtomTable) -> list[str]:
    """What a user should know about a map before trusting a fit to it: density at the model's
    atoms below the map mean (an inverted map: protein dark), a solvent level far from zero
    (SMOCf is a Manders overlap, as in TEMPy, and reads the zero level as 'no density')."""
    out = []
    sd = stats["std"]
    idx = np.rint((atoms.xyz[~atoms.hydrogen] - np.asarray(m.grid.origin)) / np.asarray(m.grid.voxel_size))
    idx = idx.astype(np.int64)[:, ::-1]
    ok = np.all((idx >= 0) & (idx < np.asarray(m.grid.shape)), axis=1)
    if ok.any():
        at_atoms = np.asarray(m.data.vindex[tuple(idx[ok].T)].compute(), dtype=np.float64)
        z = (float(at_atoms.mean()) - stats["mean"]) / sd
        if z < 0:
            out.append(f"{m.path}: density at the model's atoms is below the map mean ({z:+.2f} sd): is the map "
                       "inverted (protein dark)? Fits and scores take protein as positive density; flip its sign")
    step = max(1, int(round((np.prod(m.grid.shape) / 2e6) ** (1 / 3))))
    sample = np.asarray(m.data[::step, ::step, ::step].compute(), dtype=np.float64)
    solvent = float(np.median(sample))
    if abs(solvent) > SOLVENT_WARN_SD * sd:
        out.append(f"{m.path}: solvent level (map median) is {solvent:.4g}, {solvent / sd:+.1f} sd from zero; "
                   "SMOCf (a Manders overlap, as in TEMPy) reads zero as empty space: subtract the solvent "
                   "level first for comparable SMOCf")
    return out


def atoms_at_cap(sigma: np.ndarray, sigma_max: float, inside: np.ndarray) -> int:
    """Atoms inside the map whose width (A) reached the cap ``sigma_max`` (A)."""
    return int(np.sum(np.isclose(sigma[inside], sigma_max, rtol=1e-3)))


def b_cap_warning(sigma: np.ndarray, sigma_max: float, inside: np.ndarray) -> str | None:
    """A line about atoms whose width reached the cap, or ``None`` when few (< 1%) did."""
    from ..io.models import sigma_to_b

    at_cap = atoms_at_cap(sigma, sigma_max, inside)
    n = int(inside.sum())
    if at_cap <= 0.01 * max(n, 1):
        return None
    return (f"{at_cap} of {n} atoms reached the width cap (sigma {sigma_max:g} A = B {float(sigma_to_b(sigma_max)):.0f}"
            " A^2): their density is weak or missing (disorder, or the model is off the map there); their B is "
            "a lower bound. Raise --sigma-max to let them widen, or check the fit of those parts")


def check_md_options(forcefield: str, implicit: str | None, platform: str | None) -> None:
    """Refuse an unknown force field, solvent file or OpenMM platform before any work."""
    import openmm
    from openmm import app

    from ..md.prepare import FORCEFIELDS, _resolve_forcefield
    from ..md.simulate import choose_platform

    try:
        app.ForceField(*_resolve_forcefield(forcefield, implicit))
    except (ValueError, OSError, KeyError) as err:
        raise InputError(f"--forcefield {forcefield} --implicit {implicit}",
                         f"OpenMM cannot load it ({err}); names: {', '.join(FORCEFIELDS)}, or OpenMM XML "
                         "files") from None
    try:
        choose_platform(platform)
    except ValueError:
        have = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        raise InputError(f"--platform {platform}", f"OpenMM has no such platform here (available: "
                                                   f"{', '.join(have)})") from None
