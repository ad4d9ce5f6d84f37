"""Ensembles from refined B-factors (paper, "Ensemble algorithm", Eq. 14, "RMSF").

Each member is made from the refined model independently:

1. Sample. Every simulated atom is displaced by a draw from an isotropic Gaussian whose
   per-axis width is the atom's *shifted* width ``s_i = sigma_i - min(sigma) + sigma_floor``
   (sigma_i from the model's B column, B = 8 pi^2 sigma^2; ``sigma_floor`` = 0.25 A as in
   the paper). Hydrogens and other atoms the force field added move with the input atom
   they are bonded to, so X-H bonds are not torn. Ligands, waters and other residues
   outside the MD system stay at their refined positions in every member.
2. Locally minimise (L-BFGS, force field only) to restore stereochemistry.
3. Switch on the ensemble force (Eq. 14) anchored at the member's own minimised sample,
   and a density-guided force; optionally run a short MD segment; minimise again.

Ensemble force (Eq. 14 with a dimensionally sound width, as Eq. 10 in ``md.force``)::

    E_ens,i = k_ens / (2 pi s_i^2)^(3/2) * (1 - exp(-|x_i - a_i|^2 / (2 s_i^2)))

a_i is the anchor and s_i the shifted width (A). The paper calls a_i "the coordinates after
resampling"; by default (``anchor="minimised"``) that is the sample after step 2, so the force
keeps each member near its own stereochemically sound sample; ``anchor="sample"`` uses the raw
draw (with k_ens = 1000 this holds well-resolved atoms at torn geometry: bond RMSD 0.2 A on 5NI1
chain A, so it needs k_ens of a few units). The
prefactor is the 3-D Gaussian normalisation the paper writes as sqrt((2 pi)^3 B^3): a
well-resolved atom (small s_i) sits in a deep, narrow well and keeps its sampled place, a
poorly resolved one in a shallow, wide well and can relax. k_ens is in kJ/mol A^3 (the
paper used 1000 with its B units).

Density force: ``E_dens = -k_dens * sum_i z(x_i)`` over the simulated input (heavy) atoms,
z the experimental map in units of its standard deviation about its mean, interpolated by
OpenMM's tricubic spline (Continuous3DFunction) over the model's box plus a margin.

Ensemble map: voxel-wise mean of the members' simulated maps (Gaussians of the uniform
width from the resolution by default, the paper's "blurred maps"). Members are added in
index order and the ensemble grows until its CCC stops improving (``patience`` members
without a gain of ``min_improvement``); the ensemble kept is the best-CCC prefix.

Members are independent distributed tasks (``client.submit`` when a Dask client is
active, else in-process). Member ``k`` depends only on the inputs, ``seed`` and ``k``
(numpy ``default_rng([seed, k])`` and a Langevin seed from the same pair), so an ensemble
is the same whatever the cluster. Simulations are cached per worker process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import dask
import dask.array as da
import numpy as np

from .cluster import current_client
from .gmm import kernels as K
from .gmm.blockwise import simulate
from .gmm.mstep import uniform_sigma
from .io.maps import Map
from .md.ensemble import (
    ENS_ENERGY,
    EnsembleSettings,
    MemberInputs,
    MemberResult,
    clear_cache,
    make_member_inputs,
    run_member,
    sample_particles,
    shifted_sigma,
)

__all__ = [
    "EnsembleSettings",
    "MemberInputs",
    "MemberResult",
    "EnsembleResult",
    "shifted_sigma",
    "make_member_inputs",
    "run_member",
    "grow_ensemble",
    "relaxed_single",
    "rmsf",
    "ENS_ENERGY",
    "clear_cache",
    "sample_particles",
]

# ------------------------------------------------------------------ maps and CCC


def _pearson_sums(x: da.Array, y: da.Array, mask: da.Array | None = None) -> list:
    if mask is not None:
        x = da.where(mask, x, 0.0)
        y = da.where(mask, y, 0.0)
        n = mask.sum()
    else:
        n = x.size
    return [n, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]


def ccc_box_mask(m: Map, y: da.Array, mask: da.Array) -> tuple[float, float]:
    """Pearson CCC of map and ``y`` over the box and over ``mask`` (one pass)."""
    x = m.data.astype(np.float64)
    y = y.astype(np.float64)
    a, b = dask.compute(_pearson_sums(x, y), _pearson_sums(x, y, mask))
    return K.pearson(np.array(a, float)), K.pearson(np.array(b, float))


def fit_to_map(m: Map, y: da.Array) -> tuple[float, float]:
    """Least-squares scale and offset taking ``y`` to the map's units over the box."""
    n, sx, sy, sxx, syy, sxy = (float(v) for v in dask.compute(*_pearson_sums(m.data.astype(np.float64),
                                                                                y.astype(np.float64))))
    vy = syy - sy * sy / n
    a = (sxy - sx * sy / n) / vy if vy > 0 else 1.0
    return a, (sx - a * sy) / n


def member_map(m: Map, xyz: np.ndarray, weight: np.ndarray, sigma: np.ndarray) -> da.Array:
    """Lazy simulated map (unit mass scale, no noise) of one model on the map's grid and chunks."""
    sigma = np.broadcast_to(np.asarray(sigma, float), (len(xyz),)).copy()
    return simulate(m.grid, m.data.chunks, xyz, sigma, K.amplitudes(weight, sigma, m.grid.voxel_size, 1.0))


# ------------------------------------------------------------------ growing loop


@dataclass
class EnsembleResult:
    """The kept ensemble (best-CCC prefix) and the growth history.

    members: kept members in index order; ensemble_sum: lazy (persisted) sum of their maps;
    history: one row per member added (size, member CCC, ensemble CCC box/mask, seconds).
    """

    members: list[MemberResult]
    ensemble_sum: da.Array
    ccc: float
    ccc_mask: float
    history: list[dict]
    evaluated: int
    timing: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.members)

    def xyz(self) -> np.ndarray:
        """(members, N, 3) positions, A."""
        return np.stack([r.xyz for r in self.members])


def grow_ensemble(m: Map, inp: MemberInputs, weight: np.ndarray, model_sigma: np.ndarray,
                  mask: da.Array, progress: Callable[[dict], None] | None = None) -> EnsembleResult:
    """Add members in index order until the ensemble map's CCC stops improving.

    ``model_sigma`` (N,) is used for member maps when ``member_width == "model"``; ``mask``
    (bool, map grid) is the fixed region of the masked CCC. Members run as Dask tasks
    (``in_flight`` ahead) when a client is active, else one after another in-process.
    """
    s = inp.settings
    width = uniform_sigma(s.resolution) if s.member_width == "resolution" else model_sigma
    client = current_client()
    t_start = time.perf_counter()
    futures: dict[int, object] = {}
    if client is not None:
        n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
        ahead = s.in_flight or 2 * n_workers
        shared = _on_workers(client, inp)  # scattered again if lost with a worker (below)
        generation = 0

        def submit(k):
            if k < s.max_members and k not in futures:
                futures[k] = client.submit(run_member, shared, k, pure=False,
                                           key=f"ensemble-member-{inp.token[:10]}-{k}-g{generation}")

        for k in range(ahead):
            submit(k)
    members: list[MemberResult] = []
    history: list[dict] = []
    total = None
    best = {"ccc": -np.inf, "size": 0, "sum": None, "ccc_mask": np.nan}
    t_members = t_maps = 0.0
    for k in range(s.max_members):
        t0 = time.perf_counter()
        if client is None:
            res = run_member(inp, k)
        else:
            from distributed.client import FutureCancelledError

            for attempt in range(MEMBER_RETRIES + 1):
                try:
                    res = futures.pop(k).result()
                    break
                except FutureCancelledError:
                    # the scattered inputs were lost with a worker (Dask keeps one replica of
                    # scattered data and cannot recompute it): scatter again, resubmit every
                    # member in flight (each a pure function of its index: same result)
                    if attempt == MEMBER_RETRIES:
                        raise
                    in_flight = sorted({k, *futures})
                    for f in futures.values():
                        f.cancel()
                    futures.clear()
                    _SCATTERED.clear()
                    shared = _on_workers(client, inp)
                    generation += 1
                    for j in in_flight:
                        submit(j)
            submit(k + ahead)
        t1 = time.perf_counter()
        members.append(res)
        y = member_map(m, res.xyz, weight, width)
        total = y if total is None else total + y
        total, y = dask.persist(total, y)  # each member map is made once
        x = m.data.astype(np.float64)
        sums = dask.compute(_pearson_sums(x, y.astype(np.float64)), _pearson_sums(x, total.astype(np.float64)),
                            _pearson_sums(x, total.astype(np.float64), mask))
        c_member, c_ens, c_ens_mask = (K.pearson(np.array(v, float)) for v in sums)
        t2 = time.perf_counter()
        t_members += t1 - t0
        t_maps += t2 - t1
        row = {"size": k + 1, "member": k, "ccc_member": c_member, "ccc_ensemble": c_ens,
               "ccc_ensemble_mask": c_ens_mask, "member_seconds": res.stats.get("seconds", float("nan")),
               "rms_from_refined_A": res.stats.get("rms_from_refined_A"), "wait_seconds": t1 - t0,
               "map_seconds": t2 - t1}
        history.append(row)
        if progress:
            progress(row)
        if c_ens > best["ccc"] + s.min_improvement or best["sum"] is None:
            best = {"ccc": c_ens, "size": k + 1, "sum": total, "ccc_mask": c_ens_mask}
        if k + 1 >= s.min_members and k + 1 - best["size"] >= s.patience:
            break
    if client is not None:
        for f in futures.values():
            f.cancel()
    wall = time.perf_counter() - t_start
    timing = {"wall_seconds": wall, "waiting_for_members_seconds": t_members, "map_seconds": t_maps,
              "members_evaluated": len(members), "members_per_minute": 60.0 * len(members) / wall if wall else None}
    return EnsembleResult(members[:best["size"]], best["sum"], best["ccc"], best["ccc_mask"], history,
                          len(members), timing)


_SCATTERED: dict[tuple[int, str], object] = {}
#: Times the members in flight are resubmitted after their scattered inputs were lost.
MEMBER_RETRIES = 3


def _on_workers(client, inp: MemberInputs):
    """``inp`` scattered to every worker once per client (a future)."""
    key = (id(client), inp.token)
    fut = _SCATTERED.get(key)
    if fut is None or fut.status != "finished":
        fut = client.scatter(inp, broadcast=True, hash=False)
        _SCATTERED.clear()
        _SCATTERED[key] = fut
    return fut


def relaxed_single(inp: MemberInputs) -> MemberResult:
    """The member protocol run on the refined model without perturbation (a Dask task when a client
    is active): the single-model control for the ensemble's CCC."""
    client = current_client()
    if client is None:
        return run_member(inp, -1, perturb=False)
    return client.submit(run_member, _on_workers(client, inp), -1, perturb=False, pure=False).result()


# ------------------------------------------------------------------ RMSF


def rmsf(xyz: np.ndarray) -> np.ndarray:
    """Per-atom RMSF (A) over an ensemble ``(members, N, 3)`` about the mean structure (Eq. 15)."""
    xyz = np.asarray(xyz, dtype=float)
    d = xyz - xyz.mean(axis=0, keepdims=True)
    return np.sqrt(np.mean(np.sum(d * d, axis=2), axis=0))
