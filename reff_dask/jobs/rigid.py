"""`reff-dask rigid`: rigid-body fit of chains (or selected groups) into the map, before any flexible fitting."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io.models import updated_structure, write_structure
from ..domains import auto_domains
from ..scores.residues import LINK_MAX
from ..rigid import RigidResult, RigidSettings, rigid_fit, rotation_angle_deg
from .common import progress, write_json
from .inputs import load_inputs
from .segment import selection_groups

_say = progress("rigid")


def group_labels(structure, atoms, groups: list[str] | None, model_path: str) -> tuple[np.ndarray, list[str]]:
    """Group per atom and group names: one per chain (``groups`` None or ["chains"]), each
    chain's automatic domains (["auto"], :func:`reff_dask.domains.auto_domains`), or the
    ``NAME=SELECTION`` groups given (atoms no group selects are held fixed)."""
    if not groups or groups == ["chains"]:
        return atoms.chain.astype(np.int64), list(atoms.chain_names)
    if groups == ["auto"]:
        return auto_domains(structure)
    comp, names = selection_groups(structure, groups, model_path)
    if names and names[-1] == "rest":
        comp = np.where(comp == len(names) - 1, -1, comp)
        names = names[:-1]
    return comp, names


def _row(res: RigidResult, names: list[str], xyz0: np.ndarray, labels: np.ndarray) -> list[dict]:
    rows = []
    for g, name in enumerate(names):
        sel = labels == g
        if not sel.any():
            continue
        moved = float(np.sqrt(np.mean(np.sum((res.xyz[sel] - xyz0[sel]) ** 2, axis=1))))
        centre = xyz0[sel].mean(axis=0)
        shift = res.xyz[sel].mean(axis=0) - centre
        rows.append({"group": name, "atoms": int(sel.sum()), "rotation_deg": rotation_angle_deg(res.rotation[g]),
                     "centre_shift_A": float(np.linalg.norm(shift)), "rms_move_A": moved,
                     "rotation": res.rotation[g].round(6).tolist(), "translation_A": res.translation[g].round(4).tolist()})
    return rows


#: Backbone links between consecutive residues: (atom of the first, atom of the second).
_LINKS = (("C", "N"), ("O3'", "P"))


def hinge_bonds(structure, labels: np.ndarray, names: list[str]) -> list[dict]:
    """Backbone links (peptide C-N, phosphodiester O3'-P) whose two atoms lie in different rigid
    groups (or one in a group, one held): where a rigid move stretches the chain. Atom indices
    ``i``, ``j`` in package atom order; ``input_A``: the link's length in ``structure``."""
    out = []
    a = 0
    for ch in structure[0]:
        prev, prev_start = None, 0
        for res in ch:
            if prev is not None:
                for x, y in _LINKS:
                    i = next((prev_start + k for k, at in enumerate(prev) if at.name == x), None)
                    j = next((a + k for k, at in enumerate(res) if at.name == y), None)
                    if i is None or j is None or labels[i] == labels[j]:
                        continue
                    d = prev[i - prev_start].pos.dist(res[j - a].pos)
                    if d <= LINK_MAX:  # longer in the input: a chain break, not a hinge
                        gi, gj = (names[g] if g >= 0 else "held" for g in (labels[i], labels[j]))
                        out.append({"bond": f"{ch.name}/{prev.name}{prev.seqid.num} {x} - {res.name}{res.seqid.num} {y}",
                                    "groups": f"{gi} | {gj}", "i": i, "j": j, "input_A": round(d, 3)})
            prev, prev_start = res, a
            a += len(res)
    return out


def bond_lengths(hinges: list[dict], xyz: np.ndarray) -> list[float]:
    """Lengths (A) of the hinge links at positions ``xyz`` (package atom order)."""
    return [round(float(np.linalg.norm(xyz[h["i"]] - xyz[h["j"]])), 3) for h in hinges]


def run_rigid(m, structure, atoms, resolution: float, groups: list[str] | None, model_path: str
              ) -> tuple[np.ndarray, list[dict], list[dict], list[dict]]:
    """Rigid stage: moved positions (A), one report row per group, the E/M history, and the
    backbone links between groups with their lengths before and after (``rigid_A``)."""
    labels, names = group_labels(structure, atoms, groups, model_path)
    _say(f"rigid-body EM of {len(names)} group(s): {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    res = rigid_fit(m, atoms.xyz, atoms.weight, labels, RigidSettings(resolution),
                    progress=lambda r: _say(f"width {r['sigma_A']:.2f} A, iteration {r['iteration']:2d}: "
                                            f"CCC {r['ccc']:.4f}, largest group move {r['max_group_move_A']:.3f} A")
                    if r["iteration"] % 5 == 1 else None)
    rows = _row(res, names, atoms.xyz, labels)
    for r in rows:
        _say(f"  {r['group']}: turned {r['rotation_deg']:.1f} deg, centre moved {r['centre_shift_A']:.2f} A")
    hinges = hinge_bonds(structure, labels, names)
    for h, d in zip(hinges, bond_lengths(hinges, res.xyz)):
        h["rigid_A"] = d
    if hinges:
        worst = max(hinges, key=lambda h: h["rigid_A"])
        _say(f"{len(hinges)} backbone link(s) join different groups; the longest after the rigid fit: "
             f"{worst['bond']} {worst['rigid_A']:.2f} A (input {worst['input_A']:.2f}): the flexible stage "
             "(refine) closes them")
    return res.xyz, rows, res.history, hinges


def run(map_path: str, model_path: str, resolution: float, outdir: str, groups: list[str] | None = None,
        chunks=64) -> dict:
    """Fit the groups as rigid bodies; write model_rigid.pdb/.cif and report.json."""
    t0 = time.perf_counter()
    inp = load_inputs(map_path, model_path, chunks, resolution)
    xyz, rows, history, hinges = run_rigid(inp.map, inp.structure, inp.atoms, resolution, groups, model_path)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    models = write_structure(updated_structure(inp.structure, xyz=xyz), out / "model_rigid")
    report = {"command": "rigid", "map": str(map_path), "model": str(model_path), "resolution": resolution,
              "groups": rows, "hinges": hinges, "iterations": history,
              "outputs": [p.name for p in models] + ["report.json"], "wall_seconds": time.perf_counter() - t0}
    write_json(out / "report.json", report)
    _say(f"wrote {out}/")
    return report
