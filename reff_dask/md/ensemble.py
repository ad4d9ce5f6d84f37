"""The OpenMM half of ensemble generation (see :mod:`reff_dask.ensemble` for the algorithm):
the member system (force field + ensemble force, Eq. 14, + density force), the sampling of
a member and the member task itself. Lengths in A outside OpenMM, nm inside.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import asdict, dataclass, field

import dask
import numpy as np
import openmm
import openmm.unit as unit

from ..io.maps import Map
from .prepare import PreparedModel
from .simulate import choose_platform, free_force_group, seed31

__all__ = ["ENS_ENERGY", "DENS_ENERGY", "EnsembleSettings", "MemberInputs", "MemberResult", "shifted_sigma",
           "make_member_inputs", "member_seed", "sample_particles", "run_member", "clear_cache"]

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
    restrained = np.flatnonzero(prepared.particle_atom >= 0)
    ens = openmm.CustomExternalForce(ENS_ENERGY)
    ens.addGlobalParameter("ens_on", 0.0)
    for name in ("x0", "y0", "z0", "w", "depth"):
        ens.addPerParticleParameter(name)
    for p in restrained:
        s = shift[p]
        ens.addParticle(int(p), [*(particles[p] / 10.0), s / 10.0, settings.k_ens / (2 * np.pi * s * s) ** 1.5])
    ens.setName("EnsembleForce")
    ens.setForceGroup(free_force_group(system))
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
    dens.setForceGroup(free_force_group(system))
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
    return seed31("ensemble", seed, index)


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
