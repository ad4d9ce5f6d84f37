"""Molecular-dynamics layer: OpenMM system preparation, GMM target force,
per-chain simulation tasks and a clash counter.  Public arrays are in Angstrom."""
