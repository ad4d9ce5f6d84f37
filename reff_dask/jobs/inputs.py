"""Reading and checking a job's map and model together."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import gemmi
import numpy as np

from ..errors import InputError
from ..io.maps import Map, check_map_values, map_stats, read_map
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
    if resolution is not None and not (0.5 <= resolution <= 50):
        raise InputError(map_path, f"resolution {resolution} A is outside 0.5-50 A")
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
    return Inputs(m, stats, st, atoms, outside)


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
