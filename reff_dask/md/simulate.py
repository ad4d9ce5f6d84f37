"""Per-chain GMM-guided MD (OpenMM) and a Dask-friendly segment task.

One chain is simulated at a time: its particles move, particles of other
chains within ``neighbour_cutoff_A`` of the chain are present but fixed
(mass 0), so chains cannot pass through each other.  The sub-system is cut
from the full system (see :mod:`reff_dask.md.subsystem`).

Units: public positions, targets and widths in Angstrom; OpenMM uses nm.

Determinism: a *seeded* call (``run(..., seed=s)`` and every
:func:`run_chain_segment`) starts a fresh OpenMM Context from the positions
given, with Langevin seed ``s`` and velocities drawn at the preset temperature
with the same seed; so a simulation rebuilt from the same inputs gives the same
answer as a cached one.  Verified (tests/test_md.py) on OpenMM 8.6 CPU: with
``threads=1`` cached and rebuilt runs are bit-for-bit equal; with 2 threads
they agree to ~1e-7 A after 15 steps (the threaded force summation order
varies; such differences grow chaotically over long runs).  The Langevin noise
stream depends on the CPU thread count, so pin ``threads`` for reproducible
runs across workers.  On CUDA, ``DeterministicForces`` is set.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from ..errors import NumericalError
from .force import DEFAULT_K_GMM, make_gmm_force, set_gmm_targets, set_k_gmm
from .prepare import PreparedModel
from .shield import WALL_MARGIN_A, pair_wall_force, wall_table
from .subsystem import extract_subsystem, within_cutoff

__all__ = [
    "MDPreset",
    "PRESETS",
    "get_preset",
    "choose_platform",
    "ChainSimulation",
    "ChainSegmentResult",
    "run_chain_segment",
    "clear_cache",
    "segment_seed",
]


@dataclass(frozen=True)
class MDPreset:
    """Integrator settings for one EM iteration's MD segment.

    timestep_fs: Langevin (middle) time step, fs; steps: steps per segment;
    constraints: None or "HBonds"; temperature_K; friction_per_ps;
    minimise_only: no dynamics, energy minimisation (L-BFGS) only;
    minimise_iterations: max L-BFGS iterations (0 = until converged);
    minimise_tolerance: kJ/mol/nm."""

    name: str
    timestep_fs: float
    steps: int
    constraints: str | None = None
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0
    minimise_only: bool = False
    minimise_iterations: int = 500
    minimise_tolerance: float = 10.0


#: paper: 0.1 fs x 2000 steps (0.2 ps), flexible bonds (as the paper).
#: fast: 2 fs x 100 steps (0.2 ps, the paper's simulated time), bonds to H
#: constrained; 20x fewer steps.  minimise: L-BFGS only.
PRESETS: dict[str, MDPreset] = {
    "paper": MDPreset("paper", timestep_fs=0.1, steps=2000, constraints=None),
    "fast": MDPreset("fast", timestep_fs=2.0, steps=100, constraints="HBonds"),
    "minimise": MDPreset("minimise", timestep_fs=1.0, steps=0, minimise_only=True),
}


def get_preset(preset: str | MDPreset, **overrides: Any) -> MDPreset:
    """A preset by name (or as given), with fields overridden."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    return replace(p, **overrides) if overrides else p


def choose_platform(name: str | None = None, threads: int | None = None
                    ) -> tuple[openmm.Platform, dict[str, str]]:
    """OpenMM platform and properties: ``name`` or the first of CUDA, OpenCL, CPU.

    CUDA/OpenCL use mixed precision (0.1 fs steps are lost in single precision);
    CUDA also ``DeterministicForces``.  ``threads`` sets CPU threads."""
    names = [name] if name else ["CUDA", "OpenCL", "CPU"]
    for n in names:
        try:
            plat = openmm.Platform.getPlatformByName(n)
        except Exception:
            continue
        props: dict[str, str] = {}
        if n in ("CUDA", "OpenCL", "HIP"):
            props["Precision"] = "mixed"
        if n in ("CUDA", "HIP"):
            props["DeterministicForces"] = "true"
        if n == "CPU" and threads:
            props["Threads"] = str(int(threads))
        return plat, props
    raise ValueError(f"no OpenMM platform among {names}")


def seed31(*parts: object) -> int:
    """A positive 31-bit seed from ``parts`` (CRC-32 of their text joined by ':'); OpenMM treats
    0 as random."""
    return zlib.crc32(":".join(map(str, parts)).encode()) % 2147483646 + 1


def segment_seed(seed: int, iteration: int, chain: str) -> int:
    """The Langevin seed of one MD segment, from (seed, iteration, chain)."""
    return seed31(seed, iteration, chain)


#: extra reach (A) of the neighbour set taken at the start positions: chains move a few A in
#: a whole refinement, so the set stays the same from one EM iteration to the next and the
#: cached simulation is reused instead of rebuilt (a rebuild costs more than a fast segment)
NEIGHBOUR_MARGIN_A = 4.0


def neighbour_particles(prepared: PreparedModel, chain: str, positions_A: np.ndarray,
                        cutoff_A: float) -> np.ndarray:
    """Particles of other chains within ``cutoff_A`` (A) of any particle of ``chain`` at
    ``positions_A``, plus those within ``cutoff_A + NEIGHBOUR_MARGIN_A`` at the start
    (``prepared.positions_A``): a function of the inputs only, so a rebuilt simulation (on
    another worker, after a resume) has the same particles as a cached one."""
    mine = prepared.in_chains(chain)
    others = np.flatnonzero(~mine)
    near = within_cutoff(positions_A[mine], positions_A[others], cutoff_A)
    start = prepared.positions_A
    near |= within_cutoff(start[mine], start[others], cutoff_A + NEIGHBOUR_MARGIN_A)
    return others[near]


class ChainSimulation:
    """GMM-guided MD of one chain with fixed neighbours.

    Parameters
    ----------
    prepared : the full model from :func:`reff_dask.md.prepare.prepare_model`.
    chain : input chain name, or None for the whole model (every particle
        mobile; used for the final minimisation, where chains relaxed one by
        one against fixed neighbours could move into the same space).
    positions_A : (n_particles, 3) positions of all MD particles, A (default:
        ``prepared.positions_A``); chooses the neighbours and sets the start.
    preset : name in :data:`PRESETS` or an :class:`MDPreset`.
    k_gmm : GMM well depth, kJ/mol per atom.
    neighbour_cutoff_A : other-chain particles within this distance (A) are
        included, fixed.  The default (10 A) equals the default non-bonded
        cutoff, so every direct non-bonded partner of a mobile atom is present.
    platform, threads : see :func:`choose_platform`.
    seed : Langevin seed for unseeded runs.

    Attributes: ``mobile`` / ``fixed`` (full-system particle indices),
    ``subset`` (sorted union; sub-system particle k is ``subset[k]``),
    ``input_atoms`` (input atom indices of the chain that are simulated, the
    row order of :meth:`run`'s result), ``system``, ``gmm_force``.
    """

    def __init__(self, prepared: PreparedModel, chain: str | None, positions_A: np.ndarray | None = None,
                 *, preset: str | MDPreset = "fast", k_gmm: float = DEFAULT_K_GMM,
                 neighbour_cutoff_A: float = 10.0, platform: str | None = None,
                 threads: int | None = None, seed: int = 1) -> None:
        self.prepared = prepared
        self.chain = chain
        self.preset = get_preset(preset)
        self.k_gmm = float(k_gmm)
        self.neighbour_cutoff_A = float(neighbour_cutoff_A)
        self.seed = int(seed)
        pos = prepared.positions_A if positions_A is None else np.asarray(positions_A, float)
        if pos.shape != (prepared.n_particles, 3):
            raise ValueError(f"positions must be ({prepared.n_particles}, 3) A")
        if chain is None:  # the whole model: every simulated particle mobile, stand-ins fixed
            self.mobile = np.flatnonzero(prepared.particle_chain != "")
            self.fixed = np.flatnonzero(prepared.particle_chain == "")
        else:
            self.mobile = prepared.chain_particles(chain)
            self.fixed = neighbour_particles(prepared, chain, pos, self.neighbour_cutoff_A)
        if len(self.mobile) == 0:
            raise ValueError(f"chain {chain!r} has no simulated particles")
        self.subset = np.union1d(self.mobile, self.fixed)
        is_mobile = np.isin(self.subset, self.mobile)
        self._mobile_sub = np.flatnonzero(is_mobile)          # sub indices of mobile
        self._fixed_sub = np.flatnonzero(~is_mobile)
        self.system = extract_subsystem(prepared.system, self.subset, is_mobile,
                                        constrain_hbonds=self.preset.constraints == "HBonds")
        self._is_mobile = is_mobile
        self._wall, self._wall_index, self._wall_at = None, -1, None
        for k, f in enumerate(self.system.getForces()):
            if f.getName() == "ContactWall":  # listed as pairs instead (see pair_wall_force)
                self._wall, self._wall_index = wall_table(f), k
        # GMM force on mobile particles that are input atoms
        pa = prepared.particle_atom[self.subset]
        gsub = np.flatnonzero(is_mobile & (pa >= 0))
        self._gmm_sub = gsub
        self.input_atoms = pa[gsub]
        order = np.argsort(self.input_atoms, kind="stable")
        self._gmm_sub, self.input_atoms = gsub[order], self.input_atoms[order]
        self.gmm_force = make_gmm_force(self._gmm_sub, pos[self.subset][self._gmm_sub],
                                        1.0, k_gmm=self.k_gmm,
                                        force_group=free_force_group(self.system))
        self.system.addForce(self.gmm_force)
        self._platform, self._props = choose_platform(platform, threads)
        self._pos_nm = pos[self.subset] / 10.0
        self._context: openmm.Context | None = None
        self._integrator: openmm.Integrator | None = None
        self._stale = False  # True when the Context has moved past self._pos_nm
        self.wall_lists = 0  # times the contact wall's pair list was made
        self._list_wall()

    def _list_wall(self, force: bool = True) -> bool:
        """(Re)list the contact wall's pairs at the current positions when ``force`` or when a
        particle has moved far enough since the list was made for a pair to have come within
        reach unlisted; returns whether it did. A live Context is
        reinitialised with its state kept."""
        if self._wall is None:
            return False
        if not force and self._wall_at is not None:
            # a heavy-heavy pair closes by both atoms' moves: half the margin each; a hydrogen
            # meets only stand-ins, which never move: the whole margin
            moved = np.sqrt(np.sum((self._pos_nm - self._wall_at) ** 2, axis=1))
            if np.all(moved <= np.where(self._wall.heavy, 0.5, 1.0) * WALL_MARGIN_A / 10.0):
                return False
        self.system.removeForce(self._wall_index)
        self._wall_index = self.system.addForce(pair_wall_force(self._wall, self._pos_nm, self._is_mobile))
        self._wall_at = self._pos_nm.copy()
        self.wall_lists += 1
        if self._context is not None:
            self._context.reinitialize(preserveState=True)
        return True

    # -- state ---------------------------------------------------------------
    def _new_context(self, seed: int) -> None:
        p = self.preset
        integ = openmm.LangevinMiddleIntegrator(p.temperature_K * unit.kelvin,
                                                p.friction_per_ps / unit.picosecond,
                                                max(p.timestep_fs, 1e-6) * unit.femtosecond)
        integ.setRandomNumberSeed(int(seed))
        integ.setConstraintTolerance(1e-6)
        self._context = None
        self._list_wall(force=self._wall_at is None or not np.array_equal(self._wall_at, self._pos_nm))
        self._context = openmm.Context(self.system, integ, self._platform, self._props)
        self._integrator = integ
        self._context.setPositions(self._pos_nm)
        if self.system.getNumConstraints():
            self._context.applyConstraints(1e-6)
        if not p.minimise_only:  # a minimisation has no use for them
            self._context.setVelocitiesToTemperature(p.temperature_K * unit.kelvin, int(seed))

    @property
    def context(self) -> openmm.Context:
        if self._context is None:
            self._new_context(self.seed)
        return self._context

    def _sync_from_context(self) -> None:
        if self._context is not None and self._stale:
            st = self._context.getState(getPositions=True)
            self._pos_nm = np.array(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        self._stale = False

    def set_positions(self, positions_A: np.ndarray) -> None:
        """Set mobile and fixed particle positions from a full (n_particles, 3) array, A."""
        pos = np.asarray(positions_A, dtype=float)
        self._pos_nm = pos[self.subset] / 10.0
        self._stale = False
        if self._context is not None:
            self._context.setPositions(self._pos_nm)
            self._context.setVelocities(np.zeros_like(self._pos_nm))

    def update_neighbours(self, positions_A: np.ndarray) -> None:
        """Move the fixed neighbour particles to their positions in a full
        (n_particles, 3) array (A), e.g. other chains after an EM iteration.
        The neighbour *set* is kept; :func:`run_chain_segment` rebuilds when it
        changes."""
        self._sync_from_context()
        pos = np.asarray(positions_A, dtype=float)
        self._pos_nm[self._fixed_sub] = pos[self.fixed] / 10.0
        if self._context is not None:
            self._context.setPositions(self._pos_nm)

    @property
    def particle_positions_A(self) -> np.ndarray:
        """(len(mobile), 3) positions of the chain's MD particles, A."""
        self._sync_from_context()
        return self._pos_nm[self._mobile_sub] * 10.0

    @property
    def positions(self) -> np.ndarray:
        """(len(input_atoms), 3) positions of the chain's simulated input atoms, A."""
        self._sync_from_context()
        return self._pos_nm[self._gmm_sub] * 10.0

    @property
    def fixed_positions_A(self) -> np.ndarray:
        """(len(fixed), 3) positions of the fixed neighbour particles, A."""
        self._sync_from_context()
        return self._pos_nm[self._fixed_sub] * 10.0

    # -- targets ---------------------------------------------------------------
    def _chain_rows(self, arr: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(arr, dtype=float)
        if len(a) == self.prepared.n_input_atoms:
            return a[self.input_atoms]
        if len(a) == len(self.input_atoms):
            return a
        raise ValueError(f"{what}: need {self.prepared.n_input_atoms} (all input atoms) or "
                         f"{len(self.input_atoms)} (this chain's) rows, got {len(a)}")

    def set_targets(self, targets_A: np.ndarray, widths_A: np.ndarray | float) -> None:
        """GMM targets (A) and widths (A), per input atom: either all input atoms
        of the model or only this chain's ``input_atoms``; NaN = no pull."""
        t = self._chain_rows(targets_A, "targets")
        w = widths_A if np.ndim(widths_A) == 0 else self._chain_rows(widths_A, "widths")
        set_gmm_targets(self.gmm_force, t, w, self._context)

    def set_k_gmm(self, k_gmm: float) -> None:
        """Change the GMM well depth, kJ/mol."""
        self.k_gmm = float(k_gmm)
        self.gmm_force.setGlobalParameterDefaultValue(0, self.k_gmm)
        if self._context is not None:
            set_k_gmm(self._context, self.k_gmm)

    # -- dynamics ----------------------------------------------------------------
    def run(self, targets_A: np.ndarray | None = None, widths_A: np.ndarray | float | None = None,
            steps: int | None = None, seed: int | None = None) -> np.ndarray:
        """One MD segment (or minimisation for ``minimise`` presets).

        With ``seed`` the segment starts a fresh Context (deterministic: same
        inputs + seed -> same output); without, it continues the current one.
        Returns the chain's input-atom positions (A), rows as ``input_atoms``."""
        if targets_A is not None:
            self.set_targets(targets_A, 1.0 if widths_A is None else widths_A)
        if seed is not None:
            self._sync_from_context()
            self._new_context(seed)
        if self.preset.minimise_only:
            return self.minimise()
        n = self.preset.steps if steps is None else int(steps)
        self.context  # create on first use
        self._sync_from_context()
        self._list_wall(force=False)
        if n > 0:
            self._integrator.step(n)
            self._stale = True
        self._sync_from_context()
        return self.positions

    def minimise(self, max_iterations: int | None = None, tolerance: float | None = None) -> np.ndarray:
        """L-BFGS energy minimisation (force field + GMM force); returns the
        chain's input-atom positions, A.  Tolerance in kJ/mol/nm."""
        p = self.preset
        it = p.minimise_iterations if max_iterations is None else int(max_iterations)
        tol = p.minimise_tolerance if tolerance is None else float(tolerance)
        self.context  # create on first use
        for _ in range(_WALL_RELISTS):
            openmm.LocalEnergyMinimizer.minimize(self._context, tol * unit.kilojoule_per_mole / unit.nanometer, it)
            self._stale = True
            self._sync_from_context()
            if not self._list_wall(force=False):  # no particle left the wall's list: done
                break
        return self.positions

    def energy(self, groups: int | set[int] = -1) -> float:
        """Potential energy of the sub-system, kJ/mol (fixed-fixed pairs included)."""
        st = self.context.getState(getEnergy=True, groups=groups)
        return st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    def gmm_energy(self) -> float:
        """Energy of the GMM force alone, kJ/mol."""
        return self.energy({self.gmm_force.getForceGroup()})


#: minimisations repeated with a fresh wall list when atoms moved beyond the old one's margin
_WALL_RELISTS = 5


def free_force_group(system: openmm.System) -> int:
    """The highest force group no force of ``system`` uses (31 if all are)."""
    used = {f.getForceGroup() for f in system.getForces()}
    for g in range(31, -1, -1):
        if g not in used:
            return g
    return 31


# ---------------------------------------------------------------------------
# Dask task
# ---------------------------------------------------------------------------

@dataclass
class ChainSegmentResult:
    """Result of :func:`run_chain_segment` (all positions in A).

    particles: full-system indices of the chain's MD particles;
    particle_positions_A: their new positions (scatter into the full array);
    input_atoms / input_positions_A: the chain's simulated input atoms and
    their new positions; rebuilt: whether the simulation was (re)built here;
    gmm_energy: GMM energy at the end, kJ/mol; recovery: what was done when the segment
    blew up (non-finite positions or energy) and was rerun, else None."""

    chain: str
    particles: np.ndarray
    particle_positions_A: np.ndarray
    input_atoms: np.ndarray
    input_positions_A: np.ndarray
    rebuilt: bool
    gmm_energy: float
    recovery: str | None = None


_CACHE: dict[tuple[str, str], tuple[tuple, ChainSimulation]] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache(run_id: str | None = None) -> None:
    """Forget cached simulations (all, or those of ``run_id``)."""
    with _CACHE_LOCK:
        for key in [k for k in _CACHE if run_id is None or k[0] == run_id]:
            del _CACHE[key]


def run_chain_segment(
    prepared: PreparedModel,
    chain: str | None,
    positions_A: np.ndarray,
    targets_A: np.ndarray,
    widths_A: np.ndarray | float,
    *,
    run_id: str = "default",
    iteration: int = 0,
    seed: int = 1,
    preset: str | MDPreset = "fast",
    k_gmm: float = DEFAULT_K_GMM,
    neighbour_cutoff_A: float = 10.0,
    steps: int | None = None,
    platform: str | None = None,
    threads: int | None = None,
    use_cache: bool = True,
) -> ChainSegmentResult:
    """One EM iteration's MD segment for one chain; a pure function of its inputs.

    positions_A: (n_particles, 3) current positions of ALL MD particles (A);
    targets_A / widths_A: per input atom (all atoms of the model, or only the
    chain's simulated atoms), A.  The ChainSimulation is kept in a module-level
    cache keyed by (run_id, chain) and reused when its settings and neighbour
    set match; otherwise (or with an empty cache, e.g. on another worker) it is
    rebuilt from the inputs.  Every call sets all sub-system positions from
    ``positions_A`` and starts from fresh velocities with seed
    ``segment_seed(seed, iteration, chain)``, so cached and rebuilt runs agree.
    """
    positions_A = np.asarray(positions_A, dtype=float)
    p = get_preset(preset)
    settings = (prepared.fingerprint, p, float(k_gmm), float(neighbour_cutoff_A),
                platform, threads)
    key = (run_id, chain)
    sim = None
    if use_cache:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None and hit[0] == settings:
            cand = hit[1]
            fixed_now = (cand.fixed if chain is None else
                         neighbour_particles(prepared, chain, positions_A, neighbour_cutoff_A))
            if np.array_equal(fixed_now, cand.fixed):
                sim = cand
    rebuilt = sim is None
    if sim is None:
        sim = ChainSimulation(prepared, chain, positions_A, preset=p, k_gmm=k_gmm,
                              neighbour_cutoff_A=neighbour_cutoff_A, platform=platform,
                              threads=threads, seed=seed)
        if use_cache:
            with _CACHE_LOCK:
                _CACHE[key] = (settings, sim)
    seg_seed = segment_seed(seed, iteration, chain)
    recovery = None
    if not _run_healthy(sim, positions_A, targets_A, widths_A, steps, seg_seed):
        # blow-up: rebuild from the given positions, minimise first, then half the time step
        # for twice the steps (the same simulated time)
        if use_cache:
            clear_cache(run_id)
        slow = replace(p, timestep_fs=p.timestep_fs / 2, steps=(steps or p.steps) * 2)
        sim = ChainSimulation(prepared, chain, positions_A, preset=slow, k_gmm=k_gmm,
                              neighbour_cutoff_A=neighbour_cutoff_A, platform=platform, threads=threads, seed=seed)
        sim.set_positions(positions_A)
        sim.set_targets(targets_A, widths_A)
        ok = True
        try:
            sim.minimise()
        except openmm.OpenMMException:
            ok = False
        ok = ok and _run_healthy(sim, None, None, None, None if p.minimise_only else slow.steps, seg_seed)
        if not ok:
            raise NumericalError(f"MD of chain {chain or 'all'} at EM iteration {iteration} gave non-finite "
                                 f"positions or energy, also after re-minimising and halving the time step "
                                 f"({p.timestep_fs:g} -> {slow.timestep_fs:g} fs)")
        recovery = (f"chain {chain or 'all'}, iteration {iteration}: non-finite positions or energy; "
                    f"re-minimised and rerun at {slow.timestep_fs:g} fs x {slow.steps} steps")
        rebuilt = True
    return ChainSegmentResult(
        chain=chain,
        particles=sim.mobile.copy(),
        particle_positions_A=sim.particle_positions_A,
        input_atoms=sim.input_atoms.copy(),
        input_positions_A=sim.positions,
        rebuilt=rebuilt,
        gmm_energy=sim.gmm_energy(),
        recovery=recovery,
    )


#: A particle that moves further than this (A) in one segment (0.2 ps, or a minimisation) has
#: blown up, though its coordinates may still be finite (seen: 1e12 A, then NaN a segment later).
MAX_SEGMENT_MOVE_A = 20.0


def _run_healthy(sim: ChainSimulation, positions_A, targets_A, widths_A, steps: int | None, seed: int) -> bool:
    """Run one segment (positions/targets set first when given); False if OpenMM fails, the
    positions or the energy come out non-finite, or a particle moved more than
    :data:`MAX_SEGMENT_MOVE_A`."""
    try:
        if positions_A is not None:
            sim.set_positions(positions_A)
            sim.set_targets(targets_A, widths_A)
        before = sim.particle_positions_A
        sim.run(steps=steps, seed=seed)
        after = sim.particle_positions_A
        if not (np.isfinite(after).all() and np.isfinite(sim.energy())):
            return False
        return bool(np.max(np.sum((after - before) ** 2, axis=1), initial=0.0) <= MAX_SEGMENT_MOVE_A**2)
    except openmm.OpenMMException:
        return False
