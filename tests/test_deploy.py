"""Deploy recipes (deploy/): files parse and name the right image, commands and TLS; the
SLURM/PBS path builds the right batch script; the TLS material the recipes use works."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from reff_dask.cli import build_parser
from reff_dask.cluster import JobQueueSettings, dask_client, jobqueue_cluster, tls_security
from reff_dask.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = "reff-dask:0.1.0"
TLS_ARGS = ["--tls-ca-file", "/certs/ca.pem", "--tls-cert", "/certs/cert.pem", "--tls-key", "/certs/key.pem"]


def _has_seq(cmd: list[str], seq: list[str]) -> bool:
    return any(cmd[i:i + len(seq)] == seq for i in range(len(cmd)))


def test_dockerfile_installs_package_and_runs_unprivileged():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "COPY reff_dask ./reff_dask" in text and "COPY pyproject.toml" in text
    assert "pip install --no-cache-dir '.[remote]'" in text
    assert "USER reff" in text
    extras = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "remote" in extras and "hpc" in extras


def test_compose_scheduler_workers_client_over_tls():
    c = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    s = c["services"]
    assert set(s) == {"scheduler", "worker", "client"}
    for name, svc in s.items():
        assert svc["image"] == IMAGE, name
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert any(v.endswith(":/certs:ro") for v in svc["volumes"]), name
        assert svc["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    sched = s["scheduler"]["command"]
    assert sched[:2] == ["dask", "scheduler"] and _has_seq(sched, ["--protocol", "tls"]) and _has_seq(sched, TLS_ARGS)
    worker = s["worker"]["command"]
    assert worker[:3] == ["dask", "worker", "tls://scheduler:8786"] and _has_seq(worker, TLS_ARGS)
    assert _has_seq(worker, ["--nthreads", "1"])
    assert str(s["worker"]["deploy"]["replicas"]).startswith("${REFF_WORKERS")
    client = s["client"]["command"]
    assert client[0] == "reff-dask" and _has_seq(client, ["--scheduler", "tls://scheduler:8786"])
    assert _has_seq(client, ["--tls-dir", "/certs"])
    build_parser().parse_args(client[1:])  # the client command is one the CLI accepts
    # ports published on localhost only
    assert all(p.startswith("127.0.0.1:") for p in s["scheduler"]["ports"])


def test_kubernetes_operator_cluster_and_job():
    docs = {}
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            docs[d["kind"]] = d
    assert set(docs) == {"DaskCluster", "Job", "PersistentVolumeClaim"}
    dc = docs["DaskCluster"]
    assert dc["apiVersion"] == "kubernetes.dask.org/v1"
    name = dc["metadata"]["name"]
    sched = dc["spec"]["scheduler"]["spec"]["containers"][0]
    worker = dc["spec"]["worker"]["spec"]["containers"][0]
    assert sched["image"] == worker["image"] == IMAGE
    assert sched["args"][:2] == ["dask", "scheduler"] and _has_seq(sched["args"], ["--protocol", "tls"])
    assert _has_seq(sched["args"], TLS_ARGS) and _has_seq(worker["args"], TLS_ARGS)
    address = f"tls://{name}-scheduler:8786"  # the operator's scheduler Service is <name>-scheduler
    assert worker["args"][:3] == ["dask", "worker", address]
    svc = dc["spec"]["scheduler"]["service"]
    assert svc["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    assert {p["port"] for p in svc["ports"]} == {8786, 8787}
    assert dc["spec"]["worker"]["replicas"] >= 1
    job = docs["Job"]["spec"]["template"]["spec"]
    client = job["containers"][0]
    assert client["image"] == IMAGE
    assert _has_seq(client["args"], ["--scheduler", address]) and _has_seq(client["args"], ["--tls-dir", "/certs"])
    build_parser().parse_args(client["args"][1:])
    secrets = {v["secret"]["secretName"] for spec in (job, dc["spec"]["worker"]["spec"], dc["spec"]["scheduler"]["spec"])
               for v in spec["volumes"] if "secret" in v}
    assert secrets == {"reff-dask-tls"}
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "reff-dask-data" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_slurm_job_script_tls_by_default(tmp_path):
    s = JobQueueSettings(queue="gpu", account="proj1", walltime="02:00:00", job_extra=["--exclusive"],
                         prologue=["source /opt/venv/bin/activate"], shared_temp_directory=str(tmp_path / "tls"))
    with jobqueue_cluster("slurm", s) as cluster:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://")
    lines = script.splitlines()
    for directive in ("#SBATCH -J reff-dask", "#SBATCH -p gpu", "#SBATCH -A proj1", "#SBATCH --cpus-per-task=4",
                      "#SBATCH --mem=16G", "#SBATCH -t 02:00:00", "#SBATCH --exclusive"):
        assert directive in lines, directive
    assert "source /opt/venv/bin/activate" in lines
    cmd = next(line for line in lines if "distributed.cli.dask_worker" in line).split()
    assert cmd[3].startswith("tls://")
    assert _has_seq(cmd, ["--nthreads", "1"]) and _has_seq(cmd, ["--nworkers", "4"])
    assert _has_seq(cmd, ["--protocol", "tls://"])
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        assert str(tmp_path / "tls") in cmd[cmd.index(flag) + 1]


def test_pbs_job_script_plain_when_asked():
    with jobqueue_cluster("pbs", JobQueueSettings(tls=False, cores=8, memory="32GiB", queue="workq")) as cluster:
        script = cluster.job_script()
    assert "#PBS -l select=1:ncpus=8:mem=32GB" in script and "#PBS -q workq" in script
    assert "tcp://" in script and "--tls-cert" not in script and "--nworkers 8" in script


def test_cli_cluster_options_reach_settings():
    from reff_dask.cli import _cluster_kw

    args = build_parser().parse_args(["bfactor", "-m", "m.mrc", "-p", "x.pdb", "-r", "3", "-o", "o",
                                      "--cluster", "slurm", "--jobs", "3", "--queue", "q", "--job-cores", "8",
                                      "--job-memory", "30GiB", "--job-extra=--exclusive", "--no-tls"])
    kw = _cluster_kw(args, (100**3, 4468))
    assert kw["cluster"] == "slurm" and kw["scheduler"] is None
    jq = kw["jobqueue"]
    assert (jq.jobs, jq.queue, jq.cores, jq.memory, jq.job_extra, jq.tls) == (3, "q", 8, "30GiB", ["--exclusive"], False)
    assert _cluster_kw(build_parser().parse_args(["score", "-m", "m", "-p", "p", "-r", "3", "-o", "o"]), (100**3, 4468))["cluster"] == "local"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_make_certs_gives_a_working_tls_cluster(tmp_path):
    """deploy/tls/make-certs.sh material: a TLS scheduler + worker accept a client with it, refuse plain TCP."""
    from distributed import Client, LocalCluster

    certs = tmp_path / "certs"
    r = subprocess.run(["bash", str(DEPLOY / "tls" / "make-certs.sh"), str(certs)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (certs / "key.pem").stat().st_mode & 0o077 == 0
    sec = tls_security(certs)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", security=sec,
                      dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tls://")
        with dask_client(scheduler=addr, tls_dir=certs) as client:
            assert client.submit(np.add, 2, 3).result() == 5
        with pytest.raises(Exception):
            Client(addr.replace("tls://", "tcp://"), timeout=2)
    with pytest.raises(InputError, match="lacks"):
        tls_security(tmp_path)


def test_small_jobs_run_in_this_process():
    """No cluster named: small jobs run on threads here, large ones start a local cluster; a named
    cluster or a worker count given by the user always wins."""
    from reff_dask.cluster import IN_PROCESS_ATOMS, IN_PROCESS_MD_ATOMS, IN_PROCESS_VOXELS, choose_workers

    assert choose_workers(None, None, "local", 100**3, 4468)[0] == 0  # EMD-3488
    assert choose_workers(None, None, "local", 100**3, 4468, md=True)[0] == 0
    assert choose_workers(None, None, "local", IN_PROCESS_VOXELS + 1, 4468)[0] is None
    assert choose_workers(None, None, "local", 100**3, IN_PROCESS_ATOMS + 1)[0] is None
    assert choose_workers(None, None, "local", 100**3, IN_PROCESS_MD_ATOMS + 1)[0] == 0  # scores: no MD
    assert choose_workers(None, None, "local", 100**3, IN_PROCESS_MD_ATOMS + 1, md=True)[0] is None
    assert choose_workers(2, None, "local", 100**3, 4468)[0] == 2
    assert choose_workers(0, None, "local", 512**3, 10**6)[0] == 0
    workers, line = choose_workers(None, "tcp://127.0.0.1:8786", "local", 100**3, 4468)
    assert workers is None and "tcp://127.0.0.1:8786" in line
    assert choose_workers(None, None, "slurm", 100**3, 4468)[0] is None


def test_in_process_client_is_none_and_threaded():
    import dask

    with dask_client(workers=0) as client:
        assert client is None
        assert dask.config.get("scheduler") == "threads"
