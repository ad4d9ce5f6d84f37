"""Scoring one or more models against a map: per-residue SMOCf and LoQFit, global CCC, per-chain means.

``score_models`` is the entry point for jobs (``reff-dask score``) and for the refinement
loop (before/after summaries). Models are matched residue by residue on
(chain, residue number, insertion code).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import gemmi
import numpy as np

from ..errors import InputError
from ..gmm import kernels as K
from ..gmm.mstep import SIGMA_PER_RESOLUTION, uniform_sigma
from ..io.maps import Map, check_resolution
from ..io.models import atom_table
from .blockwise import LocalParams, ModelSpec, score_local
from .ccc import global_ccc
from .loqfit import DEFAULT_CAP
from .qscore import atom_qscores
from .residues import residue_table
from .smoc import mask_radius
from . import tempy as T
from .tempy import TempyConvention


@dataclass
class ScoreSettings:
    """Settings of the scores. Lengths in Angstrom.

    window: SMOCf window in residues (centred, not crossing chain breaks).
    smoc_radius: fragment-mask radius around window atoms; None: 2.5 x max(0.225 x resolution, 1).
    loqfit_diameter_factor: LoQFit mask diameter = factor x resolution.
    loqfit_cap: upper limit on LoQFit scores.
    contour: also report the CCC over map voxels >= this level (map units).
    qscore_sigma: reference width of the Q-score (0.6 A, MapQ's default; 0.4 A, EMDB's
      validation); None: no Q-score.
    convention: "reff" (this project's scores, blockwise) or "tempy" (TEMPy 2.1.2's SMOC,
      LoQFit and CCC, whole map in memory: :mod:`.tempy`); tempy: which of TEMPy's
      definitions the "tempy" convention uses (default: all of them).
    """

    window: int = 11
    smoc_radius: float | None = None
    loqfit_diameter_factor: float = 5.0
    loqfit_cap: float = DEFAULT_CAP
    fsc_threshold: float = 0.5
    contour: float | None = None
    qscore_sigma: float | None = 0.6
    convention: str = "reff"
    tempy: TempyConvention = field(default_factory=TempyConvention)


@dataclass
class ScoreTable:
    """Per-residue scores of several models on one residue list (union over models).

    smoc, loqfit: (n_residues, n_models), NaN where a model lacks the residue or it could
    not be scored; loqfit in Angstrom (lower is better); note: per residue and model,
    '' or why a value is clamped or missing. ccc: per model label, global CCC values.
    qscore: (n_residues, n_models) mean Q-score of the residue's heavy atoms (None: not computed).
    """

    models: list[str]
    chain: list[str]
    seqnum: np.ndarray
    icode: list[str]
    name: list[str]
    smoc: np.ndarray
    loqfit: np.ndarray
    note: list[list[str]]
    ccc: dict[str, dict[str, float]]
    resolution: float
    settings: dict = field(default_factory=dict)
    qscore: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.chain)

    def chains(self) -> list[str]:
        """Chain names in table order."""
        return list(dict.fromkeys(self.chain))

    def chain_means(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per chain, per model: mean SMOCf, mean LoQFit (A) and residues scored."""
        chain = np.array(self.chain, dtype=object)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for c in self.chains():
            sel = chain == c
            out[c] = {}
            for j, label in enumerate(self.models):
                s, q = self.smoc[sel, j], self.loqfit[sel, j]
                out[c][label] = {"smocf": _nanmean(s), "loqfit": _nanmean(q),
                                 "residues": int(np.isfinite(s).sum())}
                if self.qscore is not None:
                    out[c][label]["qscore"] = _nanmean(self.qscore[sel, j])
        return out

    def model_means(self) -> dict[str, dict[str, float]]:
        """Per model: mean and median SMOCf and LoQFit over all residues, and clamp counts."""
        out = {}
        for j, label in enumerate(self.models):
            notes = [n[j] for n in self.note]
            out[label] = {"smocf_mean": _nanmean(self.smoc[:, j]), "smocf_median": _nanmedian(self.smoc[:, j]),
                          "loqfit_mean": _nanmean(self.loqfit[:, j]),
                          "loqfit_median": _nanmedian(self.loqfit[:, j]),
                          "residues": int(np.isfinite(self.smoc[:, j]).sum()),
                          "loqfit_at_cap": notes.count("loqfit_cap"),
                          "loqfit_at_nyquist": notes.count("loqfit_nyquist")}
            if self.qscore is not None:
                out[label]["qscore_mean"] = _nanmean(self.qscore[:, j])
        return out

    def rows(self) -> list[dict]:
        """One dict per residue: chain, resnum, icode, resname, then smocf/loqfit/note per model."""
        rows = []
        for i in range(len(self)):
            row = {"chain": self.chain[i], "resnum": int(self.seqnum[i]), "icode": self.icode[i],
                   "resname": self.name[i]}
            for j, label in enumerate(self.models):
                row[f"smocf_{label}"] = _num(self.smoc[i, j])
                row[f"loqfit_{label}"] = _num(self.loqfit[i, j])
                if self.qscore is not None:
                    row[f"qscore_{label}"] = _num(self.qscore[i, j])
                row[f"note_{label}"] = self.note[i][j]
            rows.append(row)
        return rows

    def summary(self) -> dict:
        """Compact JSON-ready summary: global CCC, model means and per-chain means per model."""
        return {"resolution": self.resolution, "models": self.models, "ccc": self.ccc,
                "model_means": self.model_means(), "chain_means": self.chain_means(),
                "settings": self.settings}


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _labels(structures) -> tuple[list[str], list[gemmi.Structure]]:
    if isinstance(structures, Mapping):
        return [str(k) for k in structures], list(structures.values())
    sts = list(structures)
    return [f"model{i + 1}" for i in range(len(sts))], sts


def _check_overlap(m: Map, label: str, centres: np.ndarray) -> None:
    g = m.grid
    inside = np.all((centres >= np.asarray(g.origin)) & (centres <= g.upper), axis=1)
    if len(centres) == 0:
        raise InputError(label, "the model has no residues to score (only waters?)")
    if inside.sum() < 0.5 * len(centres):
        c = centres.mean(axis=0)
        raise InputError(label, f"{int((~inside).sum())} of {len(centres)} residue centres lie outside the map "
                                f"{m.path} (model centre {np.round(c, 1).tolist()} A, box "
                                f"{np.round(g.origin, 1).tolist()} to {np.round(g.upper, 1).tolist()} A): "
                                "map and model do not overlap")


def score_models(m: Map, structures: Mapping[str, gemmi.Structure] | Sequence[gemmi.Structure],
                 resolution: float, settings: ScoreSettings | None = None) -> ScoreTable:
    """Score each model against map ``m`` (resolution in A): global CCC, per-residue SMOCf and LoQFit.

    ``structures``: a mapping label -> gemmi.Structure, or a sequence (labels model1, model2, ...).
    Runs on the active Dask scheduler (a distributed client if one is active). Raises
    :class:`InputError` when a model mostly lies outside the map.
    """
    settings = settings or ScoreSettings()
    check_resolution(resolution, m.path)
    labels, sts = _labels(structures)
    if not sts:
        raise ValueError("no models to score")
    if settings.convention == "tempy":
        return _score_tempy(m, labels, sts, resolution, settings)
    if settings.convention != "reff":
        raise ValueError(f"unknown score convention {settings.convention!r}: 'reff' or 'tempy'")
    sigma = uniform_sigma(resolution)
    radius = settings.smoc_radius if settings.smoc_radius is not None else mask_radius(resolution,
                                                                                       SIGMA_PER_RESOLUTION)
    params = LocalParams(resolution, radius, settings.loqfit_diameter_factor, settings.loqfit_cap,
                         settings.fsc_threshold)
    specs, tables, ccc, atom_q = [], [], {}, []
    for label, st in zip(labels, sts):
        atoms = atom_table(st, label)
        res = residue_table(st, settings.window)
        _check_overlap(m, label, res.centre)
        sig = np.full(len(atoms), sigma)
        amp = K.amplitudes(atoms.weight, sig, m.grid.voxel_size, 1.0)
        specs.append(ModelSpec(np.column_stack([atoms.xyz, sig, amp]).astype(np.float64), res))
        tables.append(res)
        ccc[label] = global_ccc(m, atoms.xyz, atoms.weight, resolution, settings.contour)
        if settings.qscore_sigma is not None:
            q = atom_qscores(m, atoms.xyz, atoms.hydrogen, settings.qscore_sigma)
            atom_q.append(np.array([_nanmean(q[a:b]) for a, b in res.atoms]))
    local = score_local(m, specs, params)
    per_model = [(res.keys(), res.name, sc.smoc, sc.loqfit, sc.note, q)
                 for res, sc, q in zip(tables, local, atom_q or [None] * len(tables))]
    return _table(labels, per_model, ccc, resolution, asdict(settings) | {"smoc_radius": radius, "sigma_A": sigma})


def _score_tempy(m: Map, labels: list[str], sts: list[gemmi.Structure], resolution: float,
                 settings: ScoreSettings) -> ScoreTable:
    """Scores by TEMPy 2.1.2's definitions (:mod:`.tempy`), the whole map in memory."""
    conv = settings.tempy
    g = m.grid
    exp = np.asarray(m.data.compute(), dtype=np.float64)
    per_model, ccc = [], {}
    for label, st in zip(labels, sts):
        _check_overlap(m, label, residue_table(st, settings.window).centre)
        st2, xyz, w = T.model_atoms(st, conv)
        res = T.residues(st2, settings.window, conv)
        smoc = T.smoc(exp, g.origin, g.voxel_size, xyz, w, res, resolution, conv)
        loq, notes = T.loqfit(exp, g.origin, g.voxel_size, xyz, w, res, resolution, conv, settings.loqfit_cap)
        ccc[label] = {"ccc_box": T.ccc(exp, g.origin, g.voxel_size, xyz, w, resolution)}
        q = None
        if settings.qscore_sigma is not None:
            atoms = atom_table(st2, label)
            qa = atom_qscores(m, atoms.xyz, atoms.hydrogen, settings.qscore_sigma)
            q = np.array([_nanmean(qa[idx]) for idx in res.atoms])
        keys = [(c, int(n), "") for c, n in zip(res.chain, res.seqnum)]
        per_model.append((keys, res.name, smoc, loq, notes, q))
    used = asdict(settings) | {"smoc_radius": 2.5 * max(T.SIGMA_COEFF * resolution, 1.0)}
    return _table(labels, per_model, ccc, resolution, used)


def _table(labels: list[str], per_model: list, ccc: dict, resolution: float, used: dict) -> ScoreTable:
    """One ScoreTable from per-model (keys, names, smoc, loqfit, notes, qscore or None), rows the
    union of residues ordered by chain (first appearance), number, insertion code."""
    chain_order: dict[str, int] = {}
    info: dict[tuple, str] = {}
    for keys, names, *_ in per_model:
        for key, name in zip(keys, names):
            chain_order.setdefault(key[0], len(chain_order))
            info.setdefault(key, name)
    keys = sorted(info, key=lambda k: (chain_order[k[0]], k[1], k[2]))
    row = {k: i for i, k in enumerate(keys)}
    n, nm = len(keys), len(labels)
    smoc = np.full((n, nm), np.nan)
    loq = np.full((n, nm), np.nan)
    note = [[""] * nm for _ in range(n)]
    has_q = any(p[5] is not None for p in per_model)
    qres = np.full((n, nm), np.nan) if has_q else None
    for j, (mkeys, _, s, lq, notes, q) in enumerate(per_model):
        idx = np.array([row[k] for k in mkeys], dtype=np.int64)
        smoc[idx, j] = s
        loq[idx, j] = lq
        if qres is not None and q is not None:
            qres[idx, j] = q
        for i, t in zip(idx, notes):
            note[i][j] = t
    return ScoreTable(labels, [k[0] for k in keys], np.array([k[1] for k in keys], dtype=np.int64),
                      [k[2] for k in keys], [info[k] for k in keys], smoc, loq, note, ccc, resolution, used, qres)
