#!/usr/bin/env bash
# Run the client on a login node (or in a small job of its own): it starts the scheduler
# in this process, submits --jobs worker jobs to SLURM, runs, then cancels them.
# TLS between scheduler, workers and client is on (temporary certificates in the
# shared-temp-directory of jobqueue.yaml); pass --no-tls to turn it off.
set -euo pipefail
source ~/reff-dask/.venv/bin/activate
reff-dask bfactor -m examples/emd_3488/emd_3488.map.gz -p examples/emd_3488/5ni1.pdb -r 3.2 -o out/bfactor \
  --cluster slurm --jobs 2 --queue compute --walltime 01:00:00 --job-cores 8 --job-memory 32GiB \
  --job-prologue 'source ~/reff-dask/.venv/bin/activate'
