"""Global CCC of a model against a map, blockwise: over the box, the model's 4-sigma mask, or a contour.

The model map is made of Gaussians of one width from the resolution
(``sigma = 0.225 x resolution`` A, :func:`reff_dask.gmm.mstep.uniform_sigma`) and mass Z x occupancy,
as in :func:`reff_dask.gmm.fit.model_ccc`.
"""

from __future__ import annotations

import dask
import numpy as np

from ..gmm import kernels as K
from ..gmm.blocks import Block, per_block
from ..gmm.fit import model_ccc
from ..gmm.mstep import uniform_sigma
from ..io.maps import Map


def _contour_sums(blk: Block, data, table, idx, level) -> np.ndarray:
    """Pearson sums (n, sx, sy, sxx, syy, sxy) of map x and model y over voxels with x >= level."""
    sim = K.density_block(blk.shape, blk.start, blk.origin, blk.voxel, table[idx]).astype(np.float64)
    x = np.asarray(data, dtype=np.float64)
    sel = x >= level
    return K.pearson_sums(x[sel], sim[sel])


def contour_ccc(m: Map, xyz: np.ndarray, weight: np.ndarray, sigma: float, level: float) -> float:
    """Pearson CCC of map and model map (Gaussians of width ``sigma`` A) over voxels where the map >= ``level``."""
    sig = np.full(len(xyz), float(sigma))
    amp = K.amplitudes(weight, sig, m.grid.voxel_size, 1.0)
    parts = per_block(_contour_sums, m.grid, m.data.chunks, float(level), data=m.data,
                      atoms=(np.column_stack([xyz, sig, amp]), K.KCUT * sig))
    return K.pearson(np.sum(dask.compute(*parts), axis=0))


def global_ccc(m: Map, xyz: np.ndarray, weight: np.ndarray, resolution: float,
               contour: float | None = None) -> dict[str, float]:
    """CCC with uniform width from ``resolution`` (A): over the box, over the 4-sigma model mask, and
    (with ``contour``, map units) over map voxels at or above the contour."""
    sigma = uniform_sigma(resolution)
    box, mask = model_ccc(m, xyz, weight, sigma)
    out = {"ccc_box": float(box), "ccc_mask": float(mask)}
    if contour is not None:
        out["ccc_contour"] = float(contour_ccc(m, xyz, weight, sigma, contour))
    return out
