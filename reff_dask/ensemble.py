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

import hashlib
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable

import dask
import dask.array as da
import numpy as np
import openmm
import openmm.unit as unit

from .gmm import kernels as K
from .gmm.blockwise import simulate
from .gmm.mstep import uniform_sigma
from .io.maps import Map
from .md.prepare import PreparedModel
from .md.simulate import choose_platform

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
]

ENS_ENERGY = "ens_on*depth*(1-exp(-((x-x0)^2+(y-y0)^2+(z-z0)^2)/(2*w^2)))"
DENS_ENERGY = "-k_dens*dmap(x1,y1,z1)"


@dataclass
class EnsembleSettings:
    """Settings of ensemble generation. Lengths in A, energies in kJ/mol.

    k_ens: ensemble-force constant (kJ/mol A^3, Eq. 14); k_dens: density-force constant
      (kJ/mol per atom per map standard deviation); sigma_floor: smallest sampling width
      after the shift (paper: 0.25); minimise_iterations / minimise_tolerance (kJ/mol/nm):
      each of the two L-BFGS minimisations; md_steps, timestep_fs, temperature_K: the
      optional short MD with both forces on (paper: 2000 x 0.1 fs; 0 = minimise only);
    max_members, min_members, patience, min_improvement: the growing rule;
    member_width: widths of the members' simulated maps, "resolution" (uniform, from the
      resolution) or "model" (each atom's width from the model's B column);
    in_flight: members submitted ahead of the one being added (default: 2 per worker);
    anchor: where the ensemble force's wells sit, "minimised" (the sample after the first
      minimisation, default) or "sample" (the raw draw);
    threads: OpenMM CPU threads per member (1 keeps members bit-reproducible).
    """

    resolution: float
    k_ens: float = 1000.0
    k_dens: float = 100.0
    sigma_floor: float = 0.25
    minimise_iterations: int = 200
    minimise_tolerance: float = 10.0
    md_steps: int = 0
    timestep_fs: float = 0.1
    temperature_K: float = 300.0
    max_members: int = 40
    min_members: int = 3
    patience: int = 3
    min_improvement: float = 1e-4
    member_width: str = "resolution"
    seed: int = 1
    platform: str | None = None
    threads: int | None = 1
    in_flight: int | None = None
    density_margin_A: float = 8.0
    anchor: str = "minimised"

    def check(self) -> None:
        if self.anchor not in ("sample", "minimised"):
            raise ValueError(f"anchor must be 'sample' or 'minimised', not {self.anchor!r}")
        if self.member_width not in ("resolution", "model"):
            raise ValueError(f"member_width must be 'resolution' or 'model', not {self.member_width!r}")
        if self.max_members < 1 or self.min_members < 1 or self.patience < 1:
            raise ValueError("max_members, min_members and patience must be at least 1")
        if self.k_ens < 0 or self.k_dens < 0 or self.sigma_floor <= 0:
            raise ValueError("k_ens and k_dens must be >= 0 and sigma_floor > 0")


def shifted_sigma(sigma: np.ndarray, floor: float = 0.25, use: np.ndarray | None = None) -> np.ndarray:
    """Sampling widths: ``sigma - min(sigma[use]) + floor`` (A), so the smallest is ``floor``."""
    sigma = np.asarray(sigma, dtype=float)
    ref = sigma[use] if use is not None and np.any(use) else sigma
    return np.maximum(sigma - ref.min() + floor, floor)


# ------------------------------------------------------------------ static member inputs


@dataclass
class MemberInputs:
    """Everything a member task needs, shipped to the workers once.

    system: force field + ensemble force + density force (parameters set per member);
    base_particles (P, 3) and base_input (N, 3): refined positions (A) of MD particles and
    input atoms; parent (P,): particle whose displacement each particle copies (-1: none);
    shift_sigma (P,): sampling width of each particle (A, 0 for particles without parent);
    restrained: particles (input atoms) carrying the ensemble force, in term order.
    """

    token: str
    system: openmm.System
    base_particles: np.ndarray
    base_input: np.ndarray
    atom_map: np.ndarray
    parent: np.ndarray
    shift_sigma: np.ndarray
    restrained: np.ndarray
    settings: EnsembleSettings
    bonds: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    bond_r0: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def bond_rmsd(self, particles: np.ndarray) -> float:
        """RMS deviation (A) of heavy-atom bond lengths from the force field's r0."""
        if not len(self.bonds):
            return float("nan")
        d = np.linalg.norm(particles[self.bonds[:, 0]] - particles[self.bonds[:, 1]], axis=1)
        return float(np.sqrt(np.mean((d - self.bond_r0) ** 2)))

    def input_positions(self, particles: np.ndarray) -> np.ndarray:
        out = self.base_input.copy()
        ok = self.atom_map >= 0
        out[ok] = particles[self.atom_map[ok]]
        return out


def _parents(prepared: PreparedModel) -> np.ndarray:
    """For each MD particle: itself if it is an input atom, else a bonded input-atom particle (or -1)."""
    pa = prepared.particle_atom
    parent = np.where(pa >= 0, np.arange(len(pa)), -1)
    bonds = [(a.index, b.index) for a, b in prepared.topology.bonds()]
    for _ in range(3):  # added heavy atoms may be two bonds from an input atom
        changed = False
        for i, j in bonds:
            for a, b in ((i, j), (j, i)):
                if parent[a] < 0 and parent[b] >= 0:
                    parent[a] = parent[b]
                    changed = True
        if not changed:
            break
    return parent


def _density_function(m: Map, lower: np.ndarray, upper: np.ndarray, mean: float, std: float):
    """Continuous3DFunction of (map - mean) / std over the voxels of the box [lower, upper] (A)."""
    o = np.asarray(m.grid.origin)
    h = np.asarray(m.grid.voxel_size)
    n = np.asarray(m.grid.shape[::-1])
    lo = np.clip(np.floor((lower - o) / h).astype(int), 0, n - 1)
    hi = np.clip(np.ceil((upper - o) / h).astype(int), 0, n - 1)
    hi = np.maximum(hi, lo + 1)
    sub = m.data[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    z = (np.asarray(sub.compute(), dtype=np.float64) - mean) / (std if std > 0 else 1.0)
    a = (o + lo * h) / 10.0
    b = (o + hi * h) / 10.0
    nz, ny, nx = z.shape
    fn = openmm.Continuous3DFunction(nx, ny, nz, z.ravel().tolist(), a[0], b[0], a[1], b[1], a[2], b[2])
    return fn, z.shape


def make_member_inputs(prepared: PreparedModel, m: Map, xyz: np.ndarray, sigma: np.ndarray,
                       settings: EnsembleSettings, map_mean: float | None = None,
                       map_std: float | None = None) -> MemberInputs:
    """Build the static member inputs from the prepared model (built from the refined model).

    ``xyz`` (N, 3) and ``sigma`` (N,) are the refined positions and widths (A) of the input
    atoms; ``map_mean``/``map_std`` normalise the density force (default: the map's own).
    """
    settings.check()
    xyz = np.asarray(xyz, dtype=float)
    particles = prepared.positions_A.copy()
    ok = prepared.atom_map >= 0
    particles[prepared.atom_map[ok]] = xyz[ok]
    simulated = prepared.particle_atom[prepared.particle_atom >= 0]
    use = np.zeros(len(xyz), dtype=bool)
    use[simulated] = True
    s_atom = shifted_sigma(sigma, settings.sigma_floor, use)
    parent = _parents(prepared)
    shift = np.zeros(len(parent))
    has = parent >= 0
    shift[has] = s_atom[prepared.particle_atom[parent[has]]]

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(prepared.system))
    used = {f.getForceGroup() for f in system.getForces()}
    free = [g for g in range(31, -1, -1) if g not in used]
    restrained = np.flatnonzero(prepared.particle_atom >= 0)
    ens = openmm.CustomExternalForce(ENS_ENERGY)
    ens.addGlobalParameter("ens_on", 0.0)
    for name in ("x0", "y0", "z0", "w", "depth"):
        ens.addPerParticleParameter(name)
    for p in restrained:
        s = shift[p]
        ens.addParticle(int(p), [*(particles[p] / 10.0), s / 10.0, settings.k_ens / (2 * np.pi * s * s) ** 1.5])
    ens.setName("EnsembleForce")
    ens.setForceGroup(free[0] if free else 31)
    system.addForce(ens)

    if map_mean is None or map_std is None:
        x = m.data.astype(np.float64)
        map_mean, map_std = (float(v) for v in dask.compute(x.mean(), x.std()))
    margin = settings.density_margin_A + 3 * float(shift.max(initial=0.0))
    fn, _shape = _density_function(m, particles.min(0) - margin, particles.max(0) + margin, map_mean, map_std)
    dens = openmm.CustomCompoundBondForce(1, DENS_ENERGY)
    dens.addGlobalParameter("k_dens", 0.0)
    dens.addTabulatedFunction("dmap", fn)
    for p in restrained:
        dens.addBond([int(p)], [])
    dens.setName("DensityForce")
    dens.setForceGroup(free[1] if len(free) > 1 else 30)
    system.addForce(dens)

    h = hashlib.sha1()
    for arr in (particles, shift, parent):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(prepared.fingerprint.encode())
    h.update(repr((asdict(settings), map_mean, map_std, m.path, m.grid)).encode())
    base_input = xyz.copy()
    mass = np.array([prepared.system.getParticleMass(i).value_in_unit(unit.dalton)
                     for i in range(prepared.n_particles)])
    bonds, r0 = [], []
    for f in prepared.system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for b in range(f.getNumBonds()):
                i, j, length, _k = f.getBondParameters(b)
                if mass[i] > 1.5 and mass[j] > 1.5:
                    bonds.append((i, j))
                    r0.append(length.value_in_unit(unit.angstrom))
    return MemberInputs(h.hexdigest(), system, particles, base_input, prepared.atom_map.copy(), parent,
                        shift, restrained, settings, np.array(bonds, np.int64).reshape(-1, 2), np.array(r0))


# ------------------------------------------------------------------ one member (a task)


@dataclass
class MemberResult:
    """One member: input-atom positions (A) and what happened to it."""

    index: int
    xyz: np.ndarray
    stats: dict = field(default_factory=dict)


def member_seed(seed: int, index: int) -> int:
    """Positive 31-bit Langevin seed for member ``index`` (OpenMM treats 0 as random)."""
    return zlib.crc32(f"ensemble:{seed}:{index}".encode()) % 2147483646 + 1


def sample_particles(inp: MemberInputs, index: int) -> np.ndarray:
    """Perturbed particle positions (A) of member ``index``: Gaussian displacement per input atom,
    copied to the particles bonded to it."""
    rng = np.random.default_rng([int(inp.settings.seed), int(index)])
    d_atom = rng.standard_normal((len(inp.base_particles), 3))  # one draw per particle slot
    d = np.zeros_like(inp.base_particles)
    has = inp.parent >= 0
    d[has] = d_atom[inp.parent[has]] * inp.shift_sigma[has, None]
    return inp.base_particles + d


_CACHE: dict[tuple[str, int], tuple] = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _context(inp: MemberInputs, seed: int):
    """(context, integrator, ensemble force) for ``inp``: cached per thread when no MD runs,
    fresh (seeded Langevin) otherwise."""
    s = inp.settings
    key = (inp.token, threading.get_ident())
    if s.md_steps <= 0:
        with _LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
    plat, props = choose_platform(s.platform, s.threads)
    if s.md_steps > 0:
        integ = openmm.LangevinMiddleIntegrator(s.temperature_K * unit.kelvin, 1.0 / unit.picosecond,
                                                s.timestep_fs * unit.femtosecond)
        integ.setRandomNumberSeed(int(seed))
    else:
        integ = openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(inp.system, integ, plat, props)
    ens = next(f for f in inp.system.getForces() if f.getName() == "EnsembleForce")
    out = (ctx, integ, ens)
    if s.md_steps <= 0:
        with _LOCK:
            for old in [k for k in _CACHE if k[0] != inp.token]:  # one job's simulations at a time
                del _CACHE[old]
            _CACHE[key] = out
    return out


def _positions_A(ctx: openmm.Context) -> np.ndarray:
    return np.array(ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * 10.0


def _energy(ctx: openmm.Context) -> float:
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def run_member(inp: MemberInputs, index: int, perturb: bool = True) -> MemberResult:
    """Make ensemble member ``index``: sample, minimise, ensemble + density forces, (MD), minimise.

    With ``perturb=False`` the same protocol runs from the refined model itself (a control:
    what the forces alone do to one model)."""
    t0 = time.perf_counter()
    s = inp.settings
    seed = member_seed(s.seed, index)
    ctx, integ, ens = _context(inp, seed)
    tol = s.minimise_tolerance * unit.kilojoule_per_mole / unit.nanometer
    sample = sample_particles(inp, index) if perturb else inp.base_particles.copy()
    ctx.setParameter("ens_on", 0.0)
    ctx.setParameter("k_dens", 0.0)
    ctx.setPositions(sample / 10.0)
    e_sample = _energy(ctx)
    openmm.LocalEnergyMinimizer.minimize(ctx, tol, s.minimise_iterations)
    anchors = sample if s.anchor == "sample" else _positions_A(ctx)
    e_min1 = _energy(ctx)
    for j, p in enumerate(inp.restrained):
        _, params = ens.getParticleParameters(j)
        ens.setParticleParameters(j, int(p), [*(anchors[p] / 10.0), params[3], params[4]])
    ens.updateParametersInContext(ctx)
    ctx.setParameter("ens_on", 1.0)
    ctx.setParameter("k_dens", float(s.k_dens))
    if s.md_steps > 0:
        ctx.setVelocitiesToTemperature(s.temperature_K * unit.kelvin, seed)
        integ.step(int(s.md_steps))
    openmm.LocalEnergyMinimizer.minimize(ctx, tol, s.minimise_iterations)
    final = _positions_A(ctx)
    e_final = _energy(ctx)
    xyz = inp.input_positions(final)
    moved = np.sqrt(np.mean(np.sum((xyz - inp.base_input) ** 2, axis=1)[inp.atom_map >= 0]))
    stats = {"energy_sampled": e_sample, "energy_minimised": e_min1, "energy_final": e_final,
             "rms_from_refined_A": float(moved),
             "rms_final_from_sample_A": float(np.sqrt(np.mean(np.sum((final - sample) ** 2, axis=1)))),
             "bond_rmsd_A": inp.bond_rmsd(final), "bond_rmsd_refined_A": inp.bond_rmsd(inp.base_particles),
             "seconds": time.perf_counter() - t0}
    return MemberResult(int(index), xyz, stats)


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


def _client():
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def grow_ensemble(m: Map, inp: MemberInputs, weight: np.ndarray, model_sigma: np.ndarray,
                  mask: da.Array, progress: Callable[[dict], None] | None = None) -> EnsembleResult:
    """Add members in index order until the ensemble map's CCC stops improving.

    ``model_sigma`` (N,) is used for member maps when ``member_width == "model"``; ``mask``
    (bool, map grid) is the fixed region of the masked CCC. Members run as Dask tasks
    (``in_flight`` ahead) when a client is active, else one after another in-process.
    """
    s = inp.settings
    width = uniform_sigma(s.resolution) if s.member_width == "resolution" else model_sigma
    client = _client()
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
    client = _client()
    if client is None:
        return run_member(inp, -1, perturb=False)
    return client.submit(run_member, _on_workers(client, inp), -1, perturb=False, pure=False).result()


# ------------------------------------------------------------------ RMSF


def rmsf(xyz: np.ndarray) -> np.ndarray:
    """Per-atom RMSF (A) over an ensemble ``(members, N, 3)`` about the mean structure (Eq. 15)."""
    xyz = np.asarray(xyz, dtype=float)
    d = xyz - xyz.mean(axis=0, keepdims=True)
    return np.sqrt(np.mean(np.sum(d * d, axis=2), axis=0))
