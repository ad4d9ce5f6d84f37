"""Position refinement: the EM loop with per-chain OpenMM MD as distributed tasks.

Each iteration: blockwise E-step at the current positions -> targets x' and widths
(M-step) -> every chain's MD segment runs as its own Dask task (pinned to a worker so
its OpenMM simulation stays warm there) with a force pulling atoms to x' -> positions
gathered -> CCC with the uniform width from the resolution -> convergence test ->
checkpoint. The model with the best CCC is kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import checkpoint
from .cluster import current_client, scatter_to_each
from .errors import NumericalError
from .gmm.fit import GMMState, default_sigma_min, em_iteration, model_ccc
from .gmm.mstep import uniform_sigma
from .io.maps import Map
from .md.force import default_k_gmm
from .md.placement import group_chains
from .md.prepare import PreparedModel
from .md.simulate import clear_cache, run_chain_segment


@dataclass
class RefineSettings:
    """Position stage settings.

    preset: MD protocol per EM iteration ("paper": 0.1 fs x 2000 steps; "fast";
      "minimise"); steps: override the preset's steps per segment;
      k_gmm: depth of each atom's target well (kJ/mol; None: :func:`.md.force.default_k_gmm` of the
      resolution, 300 up to 3.5 A);
    k_final: well depth of the final minimisation (None: 2/3 k_gmm). A softer pull lets the
      force field relax what the wells held: on 5ME2 -> EMD-3488 (minimise preset, vacuum) the
      final model has CCC 0.648 / angle RMSD 1.94 deg / 9 clashes at k, 0.644 / 1.61 / 7 at
      2k/3 and 0.638 / 1.28 / 7 at k/3 (BENCHMARKS.md);
    patience: stop after this many iterations without a better CCC;
    threads: OpenMM CPU threads per chain task (1: bitwise reproducible, so a resumed
      or re-run run ends in the same model; None: OpenMM's default, all cores);
    final_rounds: at most this many rounds of (targets at the current positions, whole-model
      minimisation) in the final stage (see :func:`minimise`);
    final_shift_A: the final stage stops once a round moves the atoms less than this (rms, A);
    sigma_min/sigma_max: width bounds (A) of the mixture (sigma_min None: half the largest
      voxel edge, as in the B-only stage);
    min_improvement: a CCC gain smaller than this does not count as better (EM creeps on by
      ~1e-4 per iteration long after the model stops getting closer to the answer: on
      5ME2 -> EMD-3488 the CA RMSD to 5NI1 is lowest near iteration 10 and grows after; the
      final stage's rounds, without thermal noise, do the last part better and cheaper:
      patience 3 at 2e-3 stops after 10 instead of 20 MD iterations for the same final CA
      RMSD, BENCHMARKS.md);
    target_sigma_A: the one Gaussian width (A) of the E-step that gives targets
      (None: 0.225 x resolution, see :func:`position_targets`);
    well_width_A: width (A) of every GMM well (None: each atom's width from the B stage);
    md_groups: MD tasks per EM iteration, each a group of whole chains with its neighbours
      fixed (None: one per worker of the cluster, one in-process; never more than chains).
      Fewer, larger groups cost less: every group simulates a shell of fixed neighbours
      besides its own atoms, and on haemoglobin one chain's shell is larger than the chain
      (:func:`md_groups`, BENCHMARKS.md).
    """

    resolution: float
    max_iterations: int = 300
    patience: int = 3
    preset: str = "paper"
    steps: int | None = None
    k_gmm: float | None = None
    k_final: float | None = None
    seed: int = 1
    platform: str | None = None
    threads: int | None = 1
    neighbour_cutoff_A: float = 10.0
    sigma_min: float | None = None
    sigma_max: float = 2.5
    min_improvement: float = 2e-3
    final_rounds: int = 10
    final_shift_A: float = 0.01
    target_sigma_A: float | None = None
    well_width_A: float | None = None
    md_groups: int | None = None

    def __post_init__(self) -> None:
        if self.k_gmm is None:
            self.k_gmm = default_k_gmm(self.resolution)


@dataclass
class RefineResult:
    xyz: np.ndarray              # best-CCC input-atom positions (A)
    particles: np.ndarray        # best-CCC positions of all MD particles (A), added H included
    state: GMMState              # mixture (widths in A, scale, noise) at the best iteration
    ccc_start: float
    ccc_best: float
    best_iteration: int
    history: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=dict)


#: Times an iteration's MD tasks are resubmitted after their inputs were lost with a worker.
MD_RETRIES = 3


def md_groups(prepared: PreparedModel, n: int) -> list[str | tuple[str, ...]]:
    """The simulated chains in ``n`` groups (at most one per chain) of about equal particle
    count (:func:`.md.placement.group_chains`: runs of neighbouring chains along the longest
    axis of their centres, or longest chain first onto the lightest group where chains differ
    much in size). A group of one chain is its name, a larger group a tuple of names."""
    chains = list(prepared.chains)
    n = max(1, min(int(n), len(chains)))
    if n == len(chains):
        return chains
    pos = prepared.positions_A
    centres = np.array([pos[prepared.chain_particles(c)].mean(axis=0) for c in chains])
    size = np.array([len(prepared.chain_particles(c)) for c in chains], dtype=float)
    groups = [tuple(chains[i] for i in g) for g in group_chains(centres, size, n)]
    return [g[0] if len(g) == 1 else g for g in groups]


class ChainRunner:
    """Runs one MD segment per group of chains (:func:`md_groups`), as Dask tasks when a client
    is active, else in-process."""

    def __init__(self, prepared: PreparedModel, settings: RefineSettings, run_id: str):
        self.prepared, self.settings, self.run_id = prepared, settings, run_id
        self.recoveries: list[str] = []  # MD segments that blew up and were rerun (see run_chain_segment)
        self.client = current_client()
        self._workers = self._share_prepared() if self.client is not None else []
        self.groups = md_groups(prepared, settings.md_groups or max(len(self._workers), 1))
        self._place(self._workers)

    def _follow_workers(self) -> None:
        """Workers joined or left since the last iteration: give the new ones the prepared
        model, regroup the chains for the new count (unless ``md_groups`` is set) and re-home
        the groups. A group's OpenMM system is rebuilt once on its new worker."""
        workers = sorted(self.client.scheduler_info()["workers"])
        if workers == self._workers or not workers:
            return
        self._workers = self._share_prepared()
        if not self.settings.md_groups:
            self.groups = md_groups(self.prepared, len(self._workers))
        self._place(self._workers)

    def _share_prepared(self) -> list[str]:
        """A copy of the prepared model on every worker (:func:`.cluster.scatter_to_each`);
        returns the workers' addresses."""
        self._prepared = scatter_to_each(self.client, self.prepared)
        return sorted(self._prepared)

    def _prepared_for(self, group) -> object:
        """The future of the prepared model on the group's home worker (any where it has none)."""
        return self._prepared.get(self._home.get(group), next(iter(self._prepared.values())))

    def _place(self, workers: list[str]) -> None:
        """A home worker per group (round-robin), where its OpenMM system is kept between iterations."""
        self._home = {g: workers[i % len(workers)] for i, g in enumerate(self.groups)} if workers else {}

    def _submit_all(self, chains, particles, targets, widths, kw) -> list:
        """One task per group on the cluster, gathered; resubmitted after a lost worker took the
        scattered model with it (:data:`MD_RETRIES`)."""
        from distributed.client import FutureCancelledError

        for attempt in range(MD_RETRIES + 1):
            futs = [self.client.submit(run_chain_segment, self._prepared_for(c), c, particles, targets, widths,
                                       workers=[self._home[c]] if c in self._home else None,
                                       allow_other_workers=c in self._home, pure=False, **kw)
                    for c in chains]
            try:
                return self.client.gather(futs)
            except FutureCancelledError:
                # the scattered model was lost with a worker: Dask's active memory manager keeps
                # one replica of scattered data, and scattered data cannot be recomputed. Scatter
                # it again to the workers there are now and rerun the iteration's tasks (pure
                # functions of their inputs: the same result as without the loss)
                if attempt == MD_RETRIES:
                    raise
                self._workers = self._share_prepared()
                self._place(self._workers)
        raise AssertionError("unreachable")

    @property
    def minimise_tasks(self) -> list:
        """The tasks of a minimisation of every chain (the start relaxation, the final stage): the
        whole model in one task ([None]) where the chains make one group, else the groups, each
        with its neighbours fixed at their positions from before the round (no task holds the
        whole system of an assembly: GroEL's 14-mer is 109k particles, 4 GB in one worker)."""
        return [None] if len(self.groups) == 1 else list(self.groups)

    def close(self) -> None:
        """Forget this runner's cached simulations, in this process or on every worker."""
        if self.client is None:
            clear_cache(self.run_id)
            return
        try:
            self.client.run(clear_cache, self.run_id)
        except (OSError, TimeoutError):  # a worker leaving meanwhile takes its cache with it
            pass

    def run(self, particles: np.ndarray, targets: np.ndarray, widths: np.ndarray, iteration: int,
            preset: str | None = None, chains: list | None = None) -> np.ndarray:
        """New positions of all MD particles (A) after one segment of every group of chains
        (``chains``: default :attr:`groups`, one task each; [None]: the whole model in one task)."""
        if self.client is not None:
            self._follow_workers()
        chains = self.groups if chains is None else chains
        s = self.settings
        kw = dict(run_id=self.run_id, iteration=iteration, seed=s.seed, preset=preset or s.preset,
                  k_gmm=s.k_gmm, neighbour_cutoff_A=s.neighbour_cutoff_A, steps=s.steps if not preset else None,
                  platform=s.platform, threads=s.threads)
        if self.client is None:
            results = [run_chain_segment(self.prepared, c, particles, targets, widths, **kw)
                       for c in chains]
        else:
            results = self._submit_all(chains, particles, targets, widths, kw)
        out = particles.copy()
        for r in results:
            out[r.particles] = r.particle_positions_A
            if r.recovery:
                self.recoveries.append(r.recovery)
        return out


def position_targets(m: Map, xyz: np.ndarray, weight: np.ndarray, state: GMMState, settings: RefineSettings
                     ) -> tuple[GMMState, object, np.ndarray]:
    """One E/M step for the position stage: targets x' (A) from responsibilities of Gaussians of
    one width for every atom, ``settings.target_sigma_A`` (default 0.225 x resolution); the
    mixture's scale and noise are updated, its per-atom widths (B) are left as they are.

    Why one width: per-atom widths from the B stage reach the 2.5 A cap for a tail of atoms,
    and wide Gaussians spread an atom's responsibility over its neighbours' density. On
    5ME2 -> EMD-3488 the first EM step from the start points towards the deposited 5NI1
    with cosine 0.40 (B-stage widths) vs 0.48 (uniform), and a refinement reaches CCC 0.654
    instead of 0.635 at a lower CA RMSD to 5NI1 (BENCHMARKS.md)."""
    width = settings.target_sigma_A if settings.target_sigma_A is not None else uniform_sigma(settings.resolution)
    sigma_min = default_sigma_min(m.grid) if settings.sigma_min is None else settings.sigma_min
    uniform = GMMState(np.full(len(xyz), width), state.scale, state.noise)
    new, es, targets = em_iteration(m, xyz, weight, uniform, sigma_min, settings.sigma_max)
    return GMMState(state.sigma, new.scale, new.noise), es, targets


def _heavy_only(targets: np.ndarray, prepared: PreparedModel) -> np.ndarray:
    """Targets with no pull on input hydrogens (NaN): a hydrogen has no density of its own at
    cryo-EM resolutions, and a well on it drags it into its heavy atom's density, bending the
    angles it takes part in (3J6B chain 9, with hydrogens: angle RMSD 1.37 -> 2.16 deg)."""
    if prepared.input_hydrogen is None or not prepared.input_hydrogen.any():
        return targets
    out = targets.copy()
    out[prepared.input_hydrogen] = np.nan
    return out


def well_widths(state: GMMState, settings: RefineSettings) -> np.ndarray | float:
    """Width (A) of each atom's GMM well: ``settings.well_width_A`` for all, or per atom the
    widths of ``state`` (from the B stage: wide wells for poorly resolved atoms)."""
    return settings.well_width_A if settings.well_width_A is not None else state.sigma


def refine_positions(m: Map, xyz0: np.ndarray, weight: np.ndarray, state: GMMState,
                     prepared: PreparedModel, settings: RefineSettings, outdir: str | Path | None = None,
                     run_meta: dict | None = None, resume: bool = False,
                     progress: Callable[[dict], None] | None = None) -> RefineResult:
    """EM iterations with MD until the CCC stops improving; returns the best-CCC model.

    The run starts from the positions ``prepared`` was built from; ``xyz0`` (A, all
    input atoms) gives the atoms that are not simulated (ligands, waters), which stay
    put. ``state`` (widths etc., usually from the B-only stage) starts the mixture. With
    ``outdir`` a checkpoint is written every iteration, and ``resume`` continues from it
    (``run_meta`` must match the checkpoint's).
    """
    s = settings
    run_meta = dict(run_meta or {})
    run_meta.update({k: v for k, v in asdict(s).items() if k not in ("threads", "platform", "max_iterations")})
    s_uniform = uniform_sigma(s.resolution)
    t_gmm = t_md = 0.0
    t_start = time.perf_counter()
    runner = ChainRunner(prepared, s, run_id=f"refine-{id(prepared)}")
    if resume:
        arr, meta = checkpoint.load(outdir, run_meta)
        particles, xyz = arr["particles"], arr["xyz"]
        state = GMMState(arr["sigma"], float(arr["scale"]), float(arr["noise"]))
        best = {"ccc": meta["best_ccc"], "iteration": meta["best_iteration"], "xyz": arr["best_xyz"],
                "particles": arr["best_particles"],
                "state": GMMState(arr["best_sigma"], meta["best_scale"], meta["best_noise"])}
        history, first, ccc0 = meta["history"], meta["iteration"] + 1, meta["ccc_start"]
    else:
        particles = prepared.positions_A.copy()
        xyz = prepared.input_positions_A(particles, xyz0)
        xyz0 = xyz.copy()
        t0 = time.perf_counter()
        ccc0, _ = model_ccc(m, xyz, weight, s_uniform)
        t_gmm += time.perf_counter() - t0
        # relax the start (added atoms, stretched bonds of a rough model) before any dynamics,
        # each input atom held in a well at its start position; iteration 0 is the relaxed start
        t0 = time.perf_counter()
        particles = runner.run(particles, _heavy_only(xyz, prepared), well_widths(state, s), iteration=0,
                               preset="minimise", chains=runner.minimise_tasks)
        xyz, particles = prepared.follow(particles, xyz)
        t1 = time.perf_counter()
        ccc_relaxed, _ = model_ccc(m, xyz, weight, s_uniform)
        t_md += t1 - t0
        t_gmm += time.perf_counter() - t1
        best = {"ccc": ccc_relaxed, "iteration": 0, "xyz": xyz.copy(), "particles": particles.copy(), "state": state}
        history, first = [], 1
    n_recovered = 0
    for it in range(first, s.max_iterations + 1):
        if it - best["iteration"] > s.patience:
            break
        t0 = time.perf_counter()
        state, es, targets = position_targets(m, xyz, weight, state, s)
        targets = _heavy_only(targets, prepared)
        t1 = time.perf_counter()
        particles = runner.run(particles, targets, well_widths(state, s), it)
        xyz, particles = prepared.follow(particles, xyz)
        t2 = time.perf_counter()
        ccc, ccc_mask = model_ccc(m, xyz, weight, s_uniform)
        t3 = time.perf_counter()
        if not (np.isfinite(xyz).all() and np.isfinite(ccc)):
            raise NumericalError(f"EM iteration {it}: non-finite positions or CCC after MD")
        t_gmm += (t1 - t0) + (t3 - t2)
        t_md += t2 - t1
        if ccc > best["ccc"] + s.min_improvement:
            best = {"ccc": ccc, "iteration": it, "xyz": xyz.copy(), "particles": particles.copy(), "state": state}
        row = {"iteration": it, "ccc": ccc, "ccc_mask": ccc_mask, "ccc_model_widths": es.ccc,
               "noise": state.noise, "shift_rms_A": float(np.sqrt(np.mean(np.sum((xyz - xyz0) ** 2, 1)))),
               "gmm_seconds": (t1 - t0) + (t3 - t2), "md_seconds": t2 - t1,
               "best_ccc": best["ccc"], "best_iteration": best["iteration"],  # a resumed run's too
               "recoveries": runner.recoveries[n_recovered:]}
        n_recovered = len(runner.recoveries)
        history.append(row)
        if progress:
            progress(row)
        if outdir is not None:
            checkpoint.save(outdir, {"particles": particles, "xyz": xyz, "sigma": state.sigma,
                                     "scale": np.array(state.scale), "noise": np.array(state.noise),
                                     "best_xyz": best["xyz"], "best_particles": best["particles"],
                                     "best_sigma": best["state"].sigma},
                            {"run": run_meta, "iteration": it, "best_ccc": best["ccc"],
                             "best_scale": best["state"].scale, "best_noise": best["state"].noise,
                             "best_iteration": best["iteration"], "history": history, "ccc_start": ccc0})
    runner.close()
    total = time.perf_counter() - t_start
    # wall time of this process (a resumed run counts only its own part)
    timing = {"gmm_seconds": t_gmm, "md_seconds": t_md, "overhead_seconds": max(total - t_gmm - t_md, 0.0)}
    return RefineResult(best["xyz"], best["particles"], best["state"], ccc0, best["ccc"], best["iteration"], history, timing)


def minimise(m: Map, result: RefineResult, weight: np.ndarray, prepared: PreparedModel,
             settings: RefineSettings, rounds: list | None = None, progress=None) -> np.ndarray:
    """Final stage: from the best model of ``result``, rounds of (E/M step at the current
    positions -> energy minimisation of every chain, well depth ``settings.k_final``, default
    2/3 k_gmm) until a round moves the atoms less than
    ``settings.final_shift_A`` rms, at most ``settings.final_rounds``; returns input-atom
    positions (A). ``rounds``, if given, gets one dict per round (rms shift, A, and seconds);
    ``progress`` is called with each of them as the round ends.

    The best model is an MD frame, thermal noise included (twisted peptides, rings out of
    plane); targets computed at such a frame sit partly on its distortions, so one
    minimisation keeps part of them. Each further round takes targets at the relaxed
    positions, so the force field's relaxation is not pulled back; the rounds are an EM of
    their own, without thermal noise, and much of the accuracy comes from them (5ME2 ->
    EMD-3488: CA RMSD to 5NI1 0.503 after 3 rounds, 0.492 after 8, from the same MD model;
    BENCHMARKS.md).

    The minimisation is one task of the whole model where the MD stage runs one group of chains
    (in-process, or ``md_groups=1``), else one task per group (:attr:`ChainRunner.minimise_tasks`),
    all at once, each against its neighbours as they were at the round's start: interfaces
    between groups are relaxed from both sides in turn, and the rounds go on until nothing moves."""
    xyz, state = result.xyz, result.state
    particles = result.particles.copy()
    k = settings.k_final if settings.k_final is not None else settings.k_gmm * 2.0 / 3.0
    runner = ChainRunner(prepared, replace(settings, k_gmm=k), run_id=f"minimise-{id(prepared)}")
    for r in range(max(settings.final_rounds, 1)):
        t0 = time.perf_counter()
        _, _, targets = position_targets(m, xyz, weight, state, settings)
        targets = _heavy_only(targets, prepared)
        particles = runner.run(particles, targets, well_widths(state, settings), iteration=10**6 + r,
                               preset="minimise", chains=runner.minimise_tasks)
        new, particles = prepared.follow(particles, xyz)
        shift = float(np.sqrt(np.mean(np.sum((new - xyz) ** 2, axis=1))))
        xyz = new
        row = {"round": r + 1, "shift_rms_A": shift, "seconds": time.perf_counter() - t0}
        if rounds is not None:
            rounds.append(row)
        if progress is not None:
            progress(row)
        if not np.isfinite(xyz).all():
            raise NumericalError(f"final minimisation round {r + 1} gave non-finite positions")
        if shift < settings.final_shift_A:
            break
    runner.close()
    return xyz
