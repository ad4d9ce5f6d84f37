"""Q-score per atom (Pintilie et al. 2020, Nat Methods 17:328): how closely the map around an
atom follows a Gaussian centred on it.

For an atom at x: the map at x itself, counted ``N_POINTS`` times, then on shells of radius
r = 0.1, 0.2, ..., 2.0 A the points of a sphere (Fibonacci directions) that no other atom of
the model comes within 0.9 r of; ``N_POINTS`` directions first, and where fewer than that are
clear, 2 more at each of up to ``MAX_TRIES`` tries, keeping every clear point of the first try
with enough (else of the best). This is MapQ's scheme as published. The map is read at every
point by trilinear interpolation; Q is the Pearson correlation of those values with a
reference profile A exp(-r^2 / 2 sigma^2) + B at the same radii (A = map mean + 10 SD,
B = map mean - SD; the correlation does not depend on A and B). ``sigma``: 0.6 A (MapQ's
default) or 0.4 A (EMDB's validation). Hydrogens are not scored.

:func:`qscore_block` is pure numpy on one map region; :func:`atom_qscores` runs it on groups
of atoms (one per map chunk holding their centres) as Dask tasks, each with its region of the
map plus a 2 A + 1 voxel halo and the atoms around it.
"""

from __future__ import annotations

import dask
import numpy as np

N_POINTS = 8
MAX_TRIES = 50
TO_RADIUS_A = 2.0
STEP_A = 0.1
#: MapQ's default reference width (A); EMDB validation uses 0.4.
SIGMA_A = 0.6


def sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread over the sphere (Fibonacci lattice), (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5**0.5) * k
    s = np.sqrt(1.0 - z * z)
    return np.column_stack([s * np.cos(phi), s * np.sin(phi), z])


def _trilinear(region: np.ndarray, start: np.ndarray, origin: np.ndarray, voxel: np.ndarray,
               pts: np.ndarray) -> np.ndarray:
    """Map values at ``pts`` (A, x y z) from ``region`` ([z, y, x], global voxel ``start``)."""
    from scipy.ndimage import map_coordinates

    f = ((pts - origin) / voxel)[:, ::-1] - start  # fractional [z, y, x] index in the region
    return map_coordinates(region, f.T, order=1, mode="nearest")


def qscore_block(region: np.ndarray, start, origin, voxel, xyz: np.ndarray, near: np.ndarray,
                 own: np.ndarray, avg: float, sd: float, sigma: float = SIGMA_A) -> np.ndarray:
    """Q-score of the atoms at ``xyz`` (A); ``near``: every atom that can shadow their points
    (A), ``own[i]``: the row of atom i in ``near``; ``region``: the map around them ([z, y, x],
    its voxel 0 at global voxel ``start``); ``avg``/``sd``: the whole map's mean and SD."""
    from scipy.spatial import cKDTree

    origin, voxel = np.asarray(origin, float), np.asarray(voxel, float)
    start = np.asarray(start, float)
    region = np.asarray(region, dtype=np.float64)
    radii = np.arange(0.0, TO_RADIUS_A + STEP_A / 2, STEP_A)
    n = len(xyz)
    # every atom that can shadow a point of atom i: within 1.9 x the outer radius (padded far away)
    lists = cKDTree(near).query_ball_point(xyz, 1.9 * radii[-1] + 1e-6)
    width = max((len(x) for x in lists), default=1)
    nbr = np.full((n, width, 3), 1e3)  # relative to the atom (A); padding far beyond any shell
    for i, x in enumerate(lists):
        nbr[i, :len(x)] = near[x] - xyz[i]
    nbr2 = np.sum(nbr**2, axis=-1)
    vals, refs, owner = [], [], []
    for r in radii:
        if r == 0.0:
            pts, who = np.repeat(xyz, N_POINTS, axis=0), np.repeat(np.arange(n), N_POINTS)
        else:
            best_n = np.zeros(n, dtype=np.int64)
            best_t = np.full(n, -1)
            tries: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            todo = np.arange(n)
            for t in range(MAX_TRIES):
                dirs = sphere_directions(N_POINTS + 2 * t)
                # clear: no atom but its own within 0.9 r (its own sits at r); distances from the
                # points r * dirs to each neighbour b: r^2 + |b|^2 - 2 r dirs.b
                d2 = r * r + np.min(nbr2[todo][:, :, None] - 2.0 * r * (nbr[todo] @ dirs.T), axis=1)
                clear = d2 >= (0.9 * r) ** 2
                cand = xyz[todo, None, :] + r * dirs[None, :, :]
                count = clear.sum(axis=1)
                better = count > best_n[todo]
                best_n[todo[better]], best_t[todo[better]] = count[better], t
                tries[t] = (todo, cand, clear)
                todo = todo[count < N_POINTS]
                if len(todo) == 0:
                    break
            pts_parts, who_parts = [], []
            for t, (rows, cand, clear) in tries.items():
                use = best_t[rows] == t
                pts_parts.append(cand[use][clear[use]])
                who_parts.append(np.repeat(rows[use], clear[use].sum(axis=1)))
            pts, who = np.vstack(pts_parts), np.concatenate(who_parts).astype(np.int64)
        if len(pts) == 0:
            continue
        vals.append(_trilinear(region, start, origin, voxel, pts))
        refs.append(np.full(len(pts), (avg + 10 * sd) * np.exp(-0.5 * (r / sigma) ** 2) + avg - sd))
        owner.append(who)
    u, v, who = np.concatenate(vals), np.concatenate(refs), np.concatenate(owner)
    cnt = np.bincount(who, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu, mv = np.bincount(who, u, n) / cnt, np.bincount(who, v, n) / cnt
        du, dv = u - mu[who], v - mv[who]
        num = np.bincount(who, du * dv, n)
        den = np.sqrt(np.bincount(who, du * du, n) * np.bincount(who, dv * dv, n))
        return np.where(den > 0, num / den, np.nan)


def atom_qscores(m, xyz: np.ndarray, hydrogen: np.ndarray, sigma: float = SIGMA_A,
                 avg: float | None = None, sd: float | None = None) -> np.ndarray:
    """Q-score per atom of a model (NaN for hydrogens and atoms outside the map) on map ``m``
    (:class:`reff_dask.io.maps.Map`), as one Dask task per map chunk holding atom centres."""
    g = m.grid
    origin, voxel, shape = np.asarray(g.origin, float), np.asarray(g.voxel_size, float), np.asarray(g.shape)
    if avg is None or sd is None:
        avg, sd = (float(v) for v in dask.compute(m.data.mean(), m.data.std()))
    heavy = np.flatnonzero(~np.asarray(hydrogen, bool))
    out = np.full(len(xyz), np.nan)
    idx = np.rint((xyz[heavy] - origin) / voxel).astype(np.int64)[:, ::-1]  # [z, y, x]
    inside = np.all((idx >= 0) & (idx < shape), axis=1)
    heavy, idx = heavy[inside], idx[inside]
    bounds = [np.concatenate([[0], np.cumsum(c)]) for c in m.data.chunks]
    chunk = np.column_stack([np.searchsorted(b, idx[:, d], side="right") - 1 for d, b in enumerate(bounds)])
    halo = int(np.ceil(TO_RADIUS_A / voxel.min())) + 2
    reach = TO_RADIUS_A * 2 + 0.5  # atoms that can be nearer to a point than its own atom
    from scipy.spatial import cKDTree

    tree = cKDTree(xyz[heavy])
    tasks, rows = [], []
    for key in np.unique(chunk, axis=0):
        sel = np.flatnonzero(np.all(chunk == key, axis=1))
        atoms = heavy[sel]
        lo = np.maximum(idx[sel].min(axis=0) - halo, 0)
        hi = np.minimum(idx[sel].max(axis=0) + halo + 1, shape)
        around = np.unique(np.concatenate(tree.query_ball_point(xyz[atoms], reach)))
        near = heavy[around]
        own = np.searchsorted(near, atoms)
        region = m.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        tasks.append(dask.delayed(qscore_block)(region, lo, origin, voxel, xyz[atoms], xyz[near], own,
                                                avg, sd, sigma))
        rows.append(atoms)
    for atoms, q in zip(rows, dask.compute(*tasks)):
        out[atoms] = q
    return out
