"""A ChimeraX command file (``view.cxc``) for a job's outputs: the map at a contour that encloses
the model's volume, the models, residues coloured by SMOCf (or atoms by B-factor) and the worst
ten residues labelled (Q-scores, where computed, are loaded as residue attributes too, with the
command to colour by them).

Open it in ChimeraX with ``open OUTDIR/view.cxc``. It starts a fresh session (``close session``)
so the models get the numbers the commands use: the map #1, the models #2, #3, ... in the
order given. Per-residue scores reach ChimeraX as residue attributes (``smocf_<model>``) from
attribute-assignment files (``.defattr``) written beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import write_text
from ..io.maps import Map

#: Volume per heavy atom (A^3): 1.21 A^3/Da (protein partial specific volume 0.73 cm^3/g) x ~14 Da
#: per heavy atom, hydrogens included.
VOLUME_PER_ATOM_A3 = 17.0
#: Residues labelled: the lowest SMOCf of the last model.
N_WORST = 10


def enclosing_level(m: Map, n_heavy_atoms: int) -> float:
    """The map value above which the map encloses the model's volume (``n_heavy_atoms`` x
    :data:`VOLUME_PER_ATOM_A3`): a contour that shows the molecule at its size. From a strided
    sample of about 2 M voxels."""
    voxel = float(np.prod(m.grid.voxel_size))
    total = float(np.prod(m.grid.shape))
    frac = min(max(n_heavy_atoms * VOLUME_PER_ATOM_A3 / voxel / total, 1e-6), 0.5)
    step = max(1, int(round((total / 2e6) ** (1 / 3))))
    sample = np.asarray(m.data[::step, ::step, ::step].compute(), dtype=np.float64).ravel()
    return float(np.quantile(sample, 1.0 - frac))


def residue_spec(model_id: int, chain: str, seqnum: int, icode: str = "") -> str:
    """ChimeraX spec of one residue, e.g. ``#3/A:12`` (``#3/A:12B`` with an insertion code)."""
    return f"#{model_id}/{chain}:{int(seqnum)}{icode.strip()}"


def defattr(name: str, specs: list[str], values: np.ndarray) -> str:
    """A ChimeraX attribute-assignment file: residue attribute ``name``, one line per finite value."""
    lines = [f"attribute: {name}", "recipient: residues", "match mode: 1-to-1"]
    lines += [f"\t{s}\t{v:.4f}" for s, v in zip(specs, values) if np.isfinite(v)]
    return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    return "_".join("".join(c if c.isalnum() or c == "_" else "_" for c in text).split("_")).lower() or "model"


def write_view(outdir: str | Path, map_path: str | Path, level: float, models: dict[str, str | Path],
               table=None, job: str = "reff-dask") -> list[str]:
    """Write ``view.cxc`` (and one ``smocf_<label>.defattr`` per scored model) to ``outdir``;
    return the file names. ``models``: label -> model file, in the order they are opened (#2, #3,
    ...); ``table``: a :class:`reff_dask.scores.ScoreTable` whose model labels are keys of
    ``models`` (None: colour by B-factor instead)."""
    out = Path(outdir)
    names = []
    map_file = Path(map_path).resolve()
    cmds = [f"# {job}: ChimeraX view of this job's map and models (open this file in ChimeraX)",
            "close session"]
    if map_file.suffix == ".zarr" or map_file.is_dir():
        cmds.append(f"# the map is a Zarr store ({map_file}), which ChimeraX does not read: "
                    "convert it to MRC to see it here")
        first = 1
    else:
        cmds += [f"open {_quote(map_file)}", f"volume #1 level {level:.6g} style mesh"]
        first = 2
    ids = {}
    for k, (label, path) in enumerate(models.items()):
        ids[label] = first + k
        cmds += [f"open {_quote(Path(path).resolve())}", f"rename #{ids[label]} {_quote(label)}"]
    cmds.append("hide atoms; show cartoons")
    last = list(models)[-1]
    for label in list(models)[:-1]:
        cmds.append(f"color #{ids[label]} lightgray; transparency #{ids[label]} 50 target c")
    scored = [label for label in models if table is not None and label in table.models]
    for label in scored:
        j = table.models.index(label)
        specs = [residue_spec(ids[label], c, n, i) for c, n, i in zip(table.chain, table.seqnum, table.icode)]
        attr = f"smocf_{_label(label)}"
        name = f"{attr}.defattr"
        write_text(out / name, defattr(attr, specs, table.smoc[:, j]))
        names.append(name)
        cmds += [f"open {_quote((out / name).resolve())}",
                 f"color byattribute {attr} #{ids[label]} palette red:white:blue range 0,1 noValueColor gray"]
        if table.qscore is not None:
            qattr = f"qscore_{_label(label)}"
            write_text(out / f"{qattr}.defattr", defattr(qattr, specs, table.qscore[:, j]))
            names.append(f"{qattr}.defattr")
            cmds += [f"open {_quote((out / (qattr + '.defattr')).resolve())}",
                     f"# by Q-score instead: color byattribute {qattr} #{ids[label]} palette red:white:blue "
                     "range 0,1 noValueColor gray"]
    if last in scored:
        j = table.models.index(last)
        s = table.smoc[:, j]
        for k in [int(k) for k in np.argsort(np.where(np.isfinite(s), s, np.inf))[:N_WORST] if np.isfinite(s[k])]:
            spec = residue_spec(ids[last], table.chain[k], table.seqnum[k], table.icode[k])
            cmds.append(f'label {spec} residues text "{table.chain[k]}:{table.name[k]}{int(table.seqnum[k])}'
                        f'{table.icode[k].strip()} SMOCf {s[k]:.2f}"')
    elif table is None:
        cmds.append(f"color bfactor #{ids[last]} palette blue:white:red")
    cmds.append(f"view #{ids[last]}")
    write_text(out / "view.cxc", "\n".join(cmds) + "\n")
    return ["view.cxc"] + names


def _quote(x) -> str:
    s = str(x)
    return f'"{s}"' if any(c.isspace() for c in s) else s
