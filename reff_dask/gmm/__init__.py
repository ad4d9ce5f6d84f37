"""Gaussian mixture model of a map: per-block kernels, blockwise E-step, M-step."""
