"""`--cluster slurm` on a real SLURM: slurmctld + slurmd + munge started on this machine.

The fixture needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them) and root
(the daemons run as root here, as in a container); it skips, saying which, where either is
missing. The job then goes the user's way: dask-jobqueue writes a batch script, ``sbatch``
queues it, SLURM starts the worker, and the worker joins the client's scheduler over TLS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import gemmi
import numpy as np
import pytest

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _wait(check, what: str, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"SLURM test cluster: {what} did not happen within {seconds:.0f} s")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM (this machine, all its cores) with its own config and ports; yields the
    environment that points the SLURM commands at it."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM not installed here ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the SLURM daemons of this test run as root; not root here")
    d = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=reffdask
SlurmctldHost={host}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmdSpoolDir={d}/spool
StateSaveLocation={d}/state
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName={host} CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    started_munge = False
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["munged", "--force", "--pid-file", str(d / "munged.pid")], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"munged does not start here: {r.stderr.strip()[-300:]}")
        started_munge = True
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True)

    def idle() -> bool:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
        return r.stdout.strip() == "idle"

    try:
        _wait(idle, "the node coming up idle")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for name in ("slurmd", "slurmctld") + (("munged",) if started_munge else ()):
            pid = d / f"{name}.pid"
            if pid.exists():
                try:
                    os.kill(int(pid.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass


def _bfactors(path: Path) -> np.ndarray:
    st = gemmi.read_structure(str(path))
    return np.array([a.b_iso for ch in st[0] for r in ch for a in r])


def test_bfactor_on_a_real_slurm_equals_the_embedded_cluster(slurm, tmp_path, map_path, model_path):
    """`reff-dask bfactor --cluster slurm` through sbatch gives the B-factors of the embedded cluster."""
    common = [sys.executable, "-m", "reff_dask.cli", "bfactor", "-m", str(map_path), "-p", str(model_path),
              "-r", "3.2"]
    r = subprocess.run(common + ["-o", str(tmp_path / "slurm"), "--cluster", "slurm", "--jobs", "1", "--queue",
                                 "test", "--job-cores", "1", "--job-memory", "2GiB", "--walltime", "00:20:00"],
                       env=slurm, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting a SLURM cluster" in r.stderr
    local = subprocess.run(common + ["-o", str(tmp_path / "local"), "--workers", "2"], capture_output=True,
                           text=True, timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]
    b_slurm, b_local = _bfactors(tmp_path / "slurm" / "model_bfactor.pdb"), _bfactors(tmp_path / "local" /
                                                                                        "model_bfactor.pdb")
    assert len(b_slurm) == 4579
    np.testing.assert_allclose(b_slurm, b_local, atol=0.011)  # PDB B column: 2 decimals
    rs, rl = (json.loads((tmp_path / k / "report.json").read_text()) for k in ("slurm", "local"))
    assert rs["ccc_refined_b"] == pytest.approx(rl["ccc_refined_b"], abs=1e-6)


def test_a_job_slurm_cannot_run_stops_at_once_with_slurms_reason(slurm, tmp_path, map_path, model_path):
    """Workers asking for more memory than any node has: refused by `sbatch --test-only` before
    anything is queued, one line, exit 2 (it used to wait an hour for workers that never came)."""
    r = subprocess.run([sys.executable, "-m", "reff_dask.cli", "bfactor", "-m", str(map_path), "-p",
                        str(model_path), "-r", "3.2", "-o", str(tmp_path / "o"), "--cluster", "slurm", "--queue",
                        "test", "--job-cores", "1", "--job-memory", "400GiB"],
                       env=slurm, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "SLURM refuses the worker job" in r.stderr and "Traceback" not in r.stderr
    q = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True)
    assert q.stdout.strip() == ""
