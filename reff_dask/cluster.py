"""The one place that creates or joins a Dask cluster, or decides that a job needs none.

Four ways: join a running cluster (``scheduler``: address or scheduler file, TLS with
``tls_dir``), start an embedded local cluster, start one through a batch system with
dask-jobqueue (``cluster="slurm"`` or ``"pbs"``; the ``hpc`` extra), or run on threads in
this process (``workers=0``; what :func:`choose_workers` picks for small jobs when no cluster
is named).
"""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import dask
from distributed import Client, LocalCluster

from .errors import InputError

#: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker it spawns. That turns
#: off glibc's dynamic mmap threshold, so every temporary array over 128 KiB is mmap'd and
#: unmapped again and its pages are faulted in afresh on each use: on the real EMD-3488 case
#: per-residue scoring took 3x the CPU time in a worker than in the client process
#: (620k minor page faults per call vs 5k; BENCHMARKS.md). The embedded cluster drops the
#: setting (glibc defaults, as in the client process); an explicit environment variable
#: still wins.
_WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

#: With no cluster named, jobs up to this many map voxels (all maps together) and model atoms
#: run on threads in this process: on one machine the threaded scheduler uses every core, and
#: worker processes only add their start-up (each imports numpy, dask and OpenMM and receives
#: the map) and the scheduler's per-task cost. Measured on 2 cores (BENCHMARKS.md, "In this
#: process or on a cluster"): ``score`` and ``bfactor`` cost 1.35-2.0x the CPU seconds and
#: 1.25-2.3x the wall time on a 2-worker cluster, from EMD-3488 (100^3, 4.5k atoms) to a
#: 300^3 tiling (120k atoms); ``refine`` on EMD-3488 96 vs 136-148 CPU s.
IN_PROCESS_VOXELS = 300**3
IN_PROCESS_ATOMS = 150_000
#: Jobs with MD (refine, ensemble) in this process run one MD task at a time; from this many
#: atoms up, groups of chains on parallel workers are worth their start-up.
IN_PROCESS_MD_ATOMS = 20_000

#: Cluster kinds ``--cluster`` accepts.
KINDS = ("local", "slurm", "pbs")
#: Files ``tls_dir`` must hold (the names deploy/tls/make-certs.sh writes).
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


@dataclass
class JobQueueSettings:
    """Batch jobs of a SLURM/PBS cluster. ``None`` fields fall back to the dask config
    (``~/.config/dask/jobqueue.yaml``, ``jobqueue.slurm.*`` / ``jobqueue.pbs.*``), then to
    the defaults below: one job of 4 cores and 16 GiB running 4 one-thread worker processes
    (walltime: dask-jobqueue's default, 30 minutes). ``tls``: temporary certificates for scheduler/workers/client (written into
    ``shared_temp_directory``, which the jobs must see; default the current folder).
    """

    jobs: int = 1
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    job_extra: list[str] = field(default_factory=list)
    prologue: list[str] = field(default_factory=list)
    tls: bool = True
    shared_temp_directory: str | None = None
    local_directory: str | None = None
    wait_seconds: float = 3600.0

    DEFAULTS = {"cores": 4, "memory": "16GiB"}


class _ClosedGather(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a gather that ended because the
    client closed (distributed's AllExit): after Ctrl-C the event-loop thread reports it, racing
    the job's one-line message. Every other asyncio report passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "AllExit"


_CLOSED_GATHER = _ClosedGather()


def _quiet() -> None:
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("asyncio").addFilter(_CLOSED_GATHER)  # the same object: added once


def tls_security(tls_dir: str | Path):
    """A :class:`distributed.Security` from ``tls_dir`` (ca.pem, cert.pem, key.pem), encryption required."""
    from distributed import Security

    d = Path(tls_dir)
    missing = [f for f in TLS_FILES if not (d / f).is_file()]
    if missing:
        raise InputError(d, f"TLS folder lacks {missing} (make them with deploy/tls/make-certs.sh)")
    ca, cert, key = (str(d / f) for f in TLS_FILES)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert,
                    tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)


def jobqueue_cluster(kind: str, settings: JobQueueSettings | None = None):
    """A dask-jobqueue ``SLURMCluster``/``PBSCluster`` with no jobs submitted yet.

    ``cluster.job_script()`` shows the batch script each job runs; ``cluster.scale(jobs=n)``
    submits them.
    """
    import dask

    try:
        import dask_jobqueue
    except ImportError:
        raise InputError(f"--cluster {kind}", "needs dask-jobqueue: pip install 'reff-dask[hpc]'") from None
    s = settings or JobQueueSettings()
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
    kw: dict = {}
    for name in ("cores", "memory", "walltime", "queue", "account"):
        value = getattr(s, name)
        if value is None and dask.config.get(f"jobqueue.{kind}.{name}", None) is None:
            value = JobQueueSettings.DEFAULTS.get(name)
        if value is not None:
            kw[name] = value
    if s.processes is not None:
        kw["processes"] = s.processes
    elif dask.config.get(f"jobqueue.{kind}.processes", None) is None:
        kw["processes"] = kw.get("cores") or dask.config.get(f"jobqueue.{kind}.cores")  # one thread per worker
    if s.job_extra:
        kw["job_extra_directives"] = list(s.job_extra)
    if s.prologue:
        kw["job_script_prologue"] = list(s.prologue)
    if s.local_directory:
        kw["local_directory"] = s.local_directory
    if s.tls:
        kw["security"] = True  # dask-jobqueue: Security.temporary(), certificates shared with the jobs
        kw["protocol"] = "tls://"
        shared = (s.shared_temp_directory or dask.config.get(f"jobqueue.{kind}.shared-temp-directory", None)
                  or os.getcwd())
        kw["shared_temp_directory"] = os.path.expanduser(os.path.expandvars(shared))
        os.makedirs(kw["shared_temp_directory"], mode=0o700, exist_ok=True)
    kw["job_name"] = "reff-dask"
    return cls(**kw)


def check_submission(kind: str, cluster) -> None:
    """SLURM: ``sbatch --test-only`` on the worker job script, so a request the cluster cannot
    grant (memory, cores, partition, time limit) stops the job at once with SLURM's own reason,
    before anything is queued, instead of waiting for workers that never come. PBS has no
    dry run: nothing is checked."""
    if kind != "slurm":
        return
    import shutil
    import subprocess
    import tempfile

    if shutil.which("sbatch") is None:
        raise InputError("--cluster slurm", "sbatch is not on PATH: run on a SLURM login node (or a host "
                                            "with the SLURM client commands and its configuration)")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="reff-dask-job-") as f:
        f.write(cluster.job_script())
        f.flush()
        r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        why = "; ".join(line.removeprefix("sbatch: error: ") for line in r.stderr.strip().splitlines()[-3:])
        raise InputError("--cluster slurm", f"SLURM refuses the worker job ({why or 'sbatch --test-only failed'}); "
                                            "check --queue, --job-cores, --job-memory and --walltime "
                                            "against the partition (sinfo)")


#: The per-iteration atom table (40 bytes per atom) travels in the task graph on purpose: a
#: graph key can be recomputed when the worker holding it is lost, scattered data cannot.
#: Dask warns from 10 MB on (a 250k-atom model); warn only from 1 GiB.
_GRAPH_WARNING = {"distributed.admin.large-graph-warning-threshold": "1GiB"}


def current_client():
    """The Dask client of the running job (a :func:`dask_client` block), or None: then tasks run
    in this process."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def scatter_to_each(client: Client, obj: object) -> dict[str, object]:
    """``obj`` placed on every worker of ``client`` as its own future (worker address -> future).

    Not one broadcast future: Dask's active memory manager trims the replicas of a key to one
    within seconds, and every task elsewhere then fetches the object again (a 14-chain GroEL
    model, ~1 GB, 7-18 s per EM iteration). A key held by one worker only is left alone.
    ``obj`` is pickled once here, not once per worker (GroEL: 6.4 s, 178 MB)."""
    workers = sorted(client.scheduler_info()["workers"])
    blob = _Pickled(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return {w: client.scatter(blob, workers=[w], hash=False) for w in workers}


class _Pickled:
    """Bytes of a pickled object that unpickle to the object itself (on the worker that gets them)."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def __reduce__(self):
        return pickle.loads, (self.blob,)


def choose_workers(workers: int | None, scheduler: str | None, cluster: str, voxels: int, atoms: int,
                   md: bool = False) -> tuple[int | None, str]:
    """``workers`` for :func:`dask_client` and a line that says where the job runs.

    A named cluster (``scheduler``, a batch ``cluster``) or a worker count given by the user
    (0: this process) is kept; otherwise a job of at most :data:`IN_PROCESS_VOXELS` map voxels
    and :data:`IN_PROCESS_ATOMS` atoms (:data:`IN_PROCESS_MD_ATOMS` for a job with MD, ``md``)
    runs in this process (0), a larger one on an embedded cluster (None: one worker per core)."""
    if scheduler:
        return workers, f"joining the Dask cluster at {scheduler}"
    if cluster != "local":
        return workers, f"starting a {cluster.upper()} cluster through dask-jobqueue"
    size = f"map {voxels / 1e6:.1f} M voxels, model {atoms:,} atoms"
    if workers == 0:
        return 0, f"running in this process on threads (--workers 0; {size})"
    if workers is not None:
        return workers, f"starting a local cluster of {workers} worker process(es) ({size})"
    max_atoms = IN_PROCESS_MD_ATOMS if md else IN_PROCESS_ATOMS
    if voxels <= IN_PROCESS_VOXELS and atoms <= max_atoms:
        return 0, (f"running in this process on threads ({size}: up to {IN_PROCESS_VOXELS / 1e6:.0f} M voxels "
                   f"and {max_atoms:,} atoms worker processes do not pay; --workers N starts a local cluster)")
    n = min(os.cpu_count() or 1, 8)
    return None, f"starting a local cluster of {n} worker process(es) ({size})"


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                threads_per_worker: int = 1, memory_limit: str | None = None,
                cluster: str = "local", jobqueue: JobQueueSettings | None = None,
                tls_dir: str | Path | None = None) -> Iterator[Client | None]:
    """Join the cluster at ``scheduler`` (address or scheduler-file path; TLS certificates
    from ``tls_dir``), start a batch-system cluster (``cluster="slurm"``/``"pbs"``,
    ``jobqueue`` settings), or start an embedded local one with ``workers`` processes
    (default: one per core, at most 8); ``workers=0``: no cluster, Dask's threaded scheduler
    in this process (yields None).

    The client is the default for all Dask computations inside the ``with`` block.
    """
    with dask.config.set(_GRAPH_WARNING), _client(scheduler, workers, threads_per_worker, memory_limit,
                                                  cluster, jobqueue, tls_dir) as client:
        yield client


def dashboard_line(client: Client) -> str:
    """Where the cluster's Dask dashboard is (task stream, worker memory, progress of every
    computation), or why there is none: the scheduler serves it only with bokeh installed."""
    try:
        served = "dashboard" in client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 (an old or unusual scheduler: say what is known)
        served = False
    if served:
        return f"Dask dashboard: {client.dashboard_link}"
    return "Dask dashboard: not served (the scheduler has no bokeh; pip install 'reff-dask[dashboard]')"


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Worker processes started inside this block ignore SIGINT (they inherit SIG_IGN).

    Ctrl-C in a terminal reaches the whole process group: without this each worker prints its
    own KeyboardInterrupt traceback while the client is already shutting the cluster down.
    The client alone handles it and stops the workers; the handler is restored as soon as
    the cluster is up."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextmanager
def _client(scheduler: str | None, workers: int | None, threads_per_worker: int, memory_limit: str | None,
            cluster: str, jobqueue: JobQueueSettings | None, tls_dir: str | Path | None
            ) -> Iterator[Client | None]:
    _quiet()
    security = tls_security(tls_dir) if tls_dir else None
    if scheduler:
        kw = {"security": security} if security is not None else {}
        if os.path.isfile(scheduler):
            client = Client(scheduler_file=scheduler, **kw)
        else:
            client = Client(scheduler, **kw)
        try:
            yield client
        finally:
            client.close()
        return
    if cluster in ("slurm", "pbs"):
        s = jobqueue or JobQueueSettings()
        with jobqueue_cluster(cluster, s) as jq, Client(jq) as client:
            check_submission(cluster, jq)
            jq.scale(jobs=s.jobs)
            client.wait_for_workers(1, timeout=s.wait_seconds)
            yield client
        return
    if cluster != "local":
        raise InputError(f"--cluster {cluster}", f"unknown cluster kind; choose one of {KINDS}")
    if workers == 0:
        with dask.config.set(scheduler="threads"):
            yield None
        return
    n = workers or min(os.cpu_count() or 1, 8)
    # dashboard_address ":0": the scheduler's HTTP endpoints on a free port. With None it still
    # binds 8787 and warns, on every run, when another cluster on the node holds that port
    with dask.config.set(_WORKER_ENV):
        with _children_ignore_sigint():
            local = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                 dashboard_address=":0", memory_limit=memory_limit or "auto",
                                 silence_logs=logging.ERROR)
        with local, Client(local) as client:
            yield client
