"""TEMPy 2.1.2's definitions of SMOC, LoQFit and the global CCC (``score --convention tempy``).

Users compare SMOC and LoQFit values with TEMPy/CCP-EM numbers and the TEMPy-ReFF paper's.
This module reproduces TEMPy 2.1.2 (``TEMPy.smoc``, ``TEMPy.loqfit``, ``TEMPy.scores`` with
their defaults); each way it differs from this project's own scores is one field of
:class:`TempyConvention`, so its size can be measured alone (README, "Score conventions"):

drop_ligands     TEMPy reads models without HETATM records (ligands, waters, and any residue
                 so flagged): they are neither scored nor in the model map (EMD-3488's haems
                 sit inside residues' masks).
name_masses      atoms weigh by the first letter of the atom *name* (H 1, C 12, N 14, O 16,
                 S 32, anything else 1: a haem's FE weighs 1), not Z x occupancy.
grid_model_map   SMOC's model map: each atom's mass on the nearest point of a ~1 A grid over
                 the box, a Gaussian filter of sigma 0.225 x resolution (A ~ grid points),
                 cubic-spline resampling onto the map grid, z-scored over the box; so
                 empty voxels are negative and the value depends on the box.
half_voxel_mask  SMOC's fragment mask (voxcov) takes voxel i's centre at origin + (i + 0.5) x voxel.
number_windows   SMOC windows stop where residue numbers skip (not where the chain is broken),
                 and residues are keyed by number alone (insertion codes merge).
loqfit_lower_edge LoQFit's FSC shells are binned and labelled by their lower edge
                 (floor(f / df)), not centred on their label.
loqfit_raw       LoQFit scales both maps to [-1, 1] by their min and max and does not remove
                 the mean under the mask, so the FSC can climb back over 0.5 near Nyquist
                 and the last crossing is taken.

Always TEMPy's in this module (not switchable): LoQFit's box (2^n, 3 x 2^n or 5 x 2^n voxels
holding the mask, clamped inside the map; the whole map when it is smaller), its mask
(diameter int(5 x resolution / voxel) voxels, cosine edge max(round(d / 3), 10) voxels, on
TEMPy's radial bins), its model map (Gaussians of sigma 0.356 x resolution), crossings
interpolated in Angstrom, and clamps (no crossing or finer than Nyquist: 2 x voxel; beyond
the cap: the cap). CCC: Pearson over the box with a model map of sigma 0.225 x resolution.

Whole-array numerics (the map is read once into memory, as TEMPy does): for maps that fit
in memory. The project's own scores (:mod:`.blockwise`) stay chunked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import gemmi
import numpy as np
from scipy import ndimage

from ..gmm import kernels as K
from .loqfit import NOTE_CAP, NOTE_NONE, NOTE_NYQUIST
from .residues import _kind, _linked
from .smoc import smoc_window

#: TEMPy's masses, by the first letter of the atom name; any other letter weighs 1.
NAME_MASSES = {"H": 1.0, "C": 12.0, "N": 14.0, "O": 16.0, "S": 32.0}
#: Model-map widths (x resolution): SMOC and CCC, and LoQFit.
SIGMA_COEFF, LOQFIT_SIGMA_COEFF = 0.225, 0.356
#: Largest map (voxels) the whole-array TEMPy convention takes: 400^3 (~3 GB at its peak).
MAX_VOXELS = 400 ** 3


@dataclass(frozen=True)
class TempyConvention:
    """Which of TEMPy's definitions to use; all True is TEMPy 2.1.2 (see the module docstring)."""

    drop_ligands: bool = True
    name_masses: bool = True
    grid_model_map: bool = True
    half_voxel_mask: bool = True
    number_windows: bool = True
    loqfit_lower_edge: bool = True
    loqfit_raw: bool = True

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class TempyResidues:
    """Residues as TEMPy keys them: per chain, by residue number (first name seen)."""

    chain: list[str]
    seqnum: np.ndarray
    name: list[str]
    atoms: list[np.ndarray]    # atom indices of each residue
    window: list[np.ndarray]   # atom indices of each residue's SMOC window
    centre: np.ndarray         # (R,) atom index of the residue's CA or C1' (-1: none)


def model_atoms(st: gemmi.Structure, conv: TempyConvention) -> tuple[gemmi.Structure, np.ndarray, np.ndarray]:
    """The structure TEMPy scores (first model; with ``conv.drop_ligands`` without the residues of
    HETATM records, waters included, as TEMPy reads models), its coordinates (A) in gemmi order
    (alternative locations kept, as TEMPy keeps them) and atom weights (mass by name, or Z x occupancy)."""
    st = st.clone()
    if conv.drop_ligands:
        for ch in st[0]:
            for i in reversed(range(len(ch))):
                if ch[i].het_flag == "H":
                    del ch[i]
        st.remove_empty_chains()
    xyz, w = [], []
    for ch in st[0]:
        for res in ch:
            for at in res:
                xyz.append((at.pos.x, at.pos.y, at.pos.z))
                w.append(NAME_MASSES.get(at.name[:1], 1.0) if conv.name_masses
                         else at.element.atomic_number * at.occ)
    return st, np.array(xyz, float).reshape(-1, 3), np.array(w, float)


def residues(st: gemmi.Structure, window: int, conv: TempyConvention) -> TempyResidues:
    """TEMPy's residue list of the first model, with SMOC windows of ``window`` residues.

    Residues are keyed by chain name and number; waters are not scored. Windows stop at skips in numbering
    (``number_windows``) or where consecutive residues are not bonded (this project's rule)."""
    half = window // 2
    by_chain: dict[str, dict[int, list]] = {}
    ends: dict[str, dict[int, list]] = {}   # first and last gemmi residue of each number
    centre_of: dict[tuple[str, int], int] = {}
    names: dict[tuple[str, int], str] = {}
    a = 0
    for ch in st[0]:
        nums = by_chain.setdefault(ch.name, {})
        first_last = ends.setdefault(ch.name, {})
        for res in ch:
            if res.is_water():  # in the model map, not scored
                a += len(res)
                continue
            n = res.seqid.num
            nums.setdefault(n, []).extend(range(a, a + len(res)))
            first_last.setdefault(n, [res, res])[1] = res
            names.setdefault((ch.name, n), res.name)
            for j, at in enumerate(res):
                if at.name in ("CA", "C1'"):  # TEMPy's LoQFit: every CA / C1' of the number, the last wins
                    centre_of[(ch.name, n)] = a + j
            a += len(res)
    out = TempyResidues([], np.zeros(0, np.int64), [], [], [], np.zeros(0, np.int64))
    nums_all, centres = [], []
    for chain, nums in by_chain.items():
        order = list(nums)
        breaks = [0]
        for p, n in zip(order, order[1:]):
            last, first = ends[chain][p][1], ends[chain][n][0]
            brk = (p + 1 != n) if conv.number_windows else not _linked(last, _kind(last), first, _kind(first))
            breaks.append(breaks[-1] + int(brk))
        contig = np.array(breaks)  # contig number per residue, non-decreasing
        for i, n in enumerate(order):
            lo = max(i - half, int(np.searchsorted(contig, contig[i], "left")))
            hi = min(i + half, int(np.searchsorted(contig, contig[i], "right")) - 1)
            out.window.append(np.concatenate([nums[order[k]] for k in range(lo, hi + 1)]).astype(np.int64))
            out.atoms.append(np.array(nums[n], np.int64))
            out.chain.append(chain)
            out.name.append(names[(chain, n)])
            nums_all.append(n)
            centres.append(centre_of.get((chain, n), -1))
    out.seqnum = np.array(nums_all, np.int64)
    out.centre = np.array(centres, np.int64)
    return out


def grid_model_map(shape, origin, voxel, xyz: np.ndarray, weight: np.ndarray, resolution: float) -> np.ndarray:
    """TEMPy's SMOC model map [z, y, x] on the map grid (``shape`` z y x, ``origin``/``voxel`` x y z, A):
    weights on the nearest point of a grid of int(n x voxel) points per axis (~1 A), a Gaussian
    filter of ``0.225 x resolution`` grid points, cubic spline onto the map grid, z-scored."""
    nz, ny, nx = shape
    n_fine = np.array([int(nx * voxel[0]), int(ny * voxel[1]), int(nz * voxel[2])])
    fine_voxel = np.array([voxel[0] * nx, voxel[1] * ny, voxel[2] * nz]) / n_fine
    fine = np.zeros(n_fine[::-1], dtype=np.float64)
    ijk = np.rint((xyz - np.asarray(origin)) / fine_voxel).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < n_fine), axis=1)
    np.add.at(fine, (ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]), weight[ok])
    fine = ndimage.gaussian_filter(fine, SIGMA_COEFF * resolution)
    scale = np.asarray(voxel, float) / fine_voxel
    zi, yi, xi = np.indices(shape, dtype=np.float64)
    coords = [zi * scale[2], yi * scale[1], xi * scale[0]]
    out = ndimage.map_coordinates(ndimage.spline_filter(fine, order=3), coords, order=3, cval=fine.min(),
                                  prefilter=False)
    sd = out.std()
    return (out - out.mean()) / sd if sd > 0 else out


def gaussian_model_map(shape, origin, voxel, xyz: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of Gaussians of width ``sigma`` (A) and mass ``weight``, cut at 4 sigma, on the whole grid."""
    sig = np.full(len(xyz), float(sigma))
    amp = K.amplitudes(weight, sig, voxel, 1.0)
    return K.density_block(tuple(shape), np.zeros(3, np.int64), origin, voxel,
                           np.column_stack([xyz, sig, amp])).astype(np.float64)


def ccc(exp: np.ndarray, origin, voxel, xyz: np.ndarray, weight: np.ndarray, resolution: float) -> float:
    """TEMPy.scores' CCC: Pearson over the whole box with Gaussians of sigma 0.225 x resolution."""
    sim = gaussian_model_map(exp.shape, origin, voxel, xyz, weight, SIGMA_COEFF * resolution)
    a, b = exp - exp.mean(), sim - sim.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def smoc(exp: np.ndarray, origin, voxel, xyz: np.ndarray, weight: np.ndarray, res: TempyResidues,
         resolution: float, conv: TempyConvention) -> np.ndarray:
    """SMOC per residue of ``res`` (TEMPy's FastSMOC, contig windows)."""
    voxel = np.asarray(voxel, float)
    if conv.grid_model_map:
        sim = grid_model_map(exp.shape, origin, voxel, xyz, weight, resolution)
    else:
        sim = gaussian_model_map(exp.shape, origin, voxel, xyz, weight, SIGMA_COEFF * resolution)
    radius = 2.5 * max(SIGMA_COEFF * resolution, 1.0)
    mask_origin = np.asarray(origin, float) + (0.5 * voxel if conv.half_voxel_mask else 0.0)
    start = np.zeros(3, np.int64)
    return np.array([smoc_window(exp, sim, start, mask_origin, voxel, xyz[w], radius) for w in res.window])


# --- LoQFit ---------------------------------------------------------------------------------------

def box_size(diameter: int, map_shape) -> tuple[int, int, int]:
    """TEMPy's FFT box: the smallest 2^n, 3 x 2^n or 5 x 2^n >= ``diameter`` voxels; the map's
    own shape when any of its axes is shorter."""
    p2, p3, p5 = 2, 3, 5
    while True:
        if diameter <= p2:
            n = p2
            break
        if diameter <= p3:
            n = p3
            break
        if diameter <= p5:
            n = p5
            break
        p2, p3, p5 = 2 * p2, 2 * p3, 2 * p5
    if any(d < n for d in map_shape):
        return tuple(int(d) for d in map_shape)
    return (n, n, n)


def soft_mask(diameter: int, box, edge: int) -> np.ndarray:
    """TEMPy's spherical mask [z, y, x]: centred on box / 2 (moved in where the sphere and its
    edge do not fit, as TEMPy moves it), on its radial bins (r.max() / (int(r.max()) - 1) wide)."""
    c = [b / 2 for b in box]
    radius = int(diameter / 2)
    for i in (0, 2, 1):
        if c[i] - radius - edge < 0:
            c[i] = radius + edge
    if c[0] + radius > box[0]:
        c[0] = box[0] - radius - edge
    for i in (2, 1):
        if c[i] + radius + edge >= box[i]:
            c[i] = box[i] - radius - edge
    z, y, x = np.meshgrid(*(np.arange(-ci, b - ci) for ci, b in zip(c, box)), indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    bins = np.linspace(0, r.max(), int(r.max()))
    lab = np.searchsorted(bins, r, "right") - 1
    mask = np.zeros(tuple(box))
    for n in range(radius, radius + edge):
        mask[lab == n] = (math.cos(math.pi * (n - radius) / edge) + 1.0) / 2.0
    mask[lab <= radius] = 1.0
    return mask


@dataclass(frozen=True)
class LoQFitBox:
    """Box, mask and FSC shells of TEMPy's LoQFit for one map."""

    box: tuple[int, int, int]
    mask: np.ndarray
    labels: np.ndarray   # shell of each rfftn coefficient
    n_labels: int
    resolution: np.ndarray  # A per reported shell (shells up to 0.5 / voxel; shell 0: 1000)
    nyquist: float


def loqfit_box(resolution: float, voxel, map_shape, lower_edge: bool = True) -> LoQFitBox:
    """TEMPy's LoQFit geometry for a map of ``map_shape`` [z, y, x] and ``voxel`` (A, x first)."""
    apix = float(voxel[0])
    d = max(int(resolution * 5 / apix), 6)
    edge = max(int(round(d / 3)), 10)
    box = box_size(d + 2 * edge, map_shape)
    mask = soft_mask(d, box, edge)
    qx = np.fft.rfftfreq(box[2])
    qr = np.sqrt(np.fft.fftfreq(box[0])[:, None, None] ** 2 + np.fft.fftfreq(box[1])[None, :, None] ** 2
                 + qx[None, None, :] ** 2)
    step = float(np.min(qx[qx > 0]))
    nbins = int(qr.max() / step)
    qbins = np.linspace(0, nbins * step, nbins + 1)
    if lower_edge:
        labels = np.searchsorted(qbins, qr, "right") - 1
    else:
        labels = np.rint(qr / step).astype(np.int64)
    keep = qbins <= 0.5
    f = qbins[keep].copy()
    f[0] = 1e-6
    res = apix / f
    res[0] = 1000.0
    return LoQFitBox(box, mask, labels.ravel(), int(labels.max()) + 1, res, 2.0 * float(min(voxel)))


def _fsc(a: np.ndarray, b: np.ndarray, geom: LoQFitBox) -> np.ndarray:
    fa, fb = np.fft.rfftn(a).ravel(), np.fft.rfftn(b).ravel()
    n = geom.n_labels
    num = np.bincount(geom.labels, fa.real * fb.real + fa.imag * fb.imag, n)
    pa = np.bincount(geom.labels, fa.real ** 2 + fa.imag ** 2, n)
    pb = np.bincount(geom.labels, fb.real ** 2 + fb.imag ** 2, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / np.sqrt(pa * pb))[:len(geom.resolution)]


def crossing(fsc: np.ndarray, res: np.ndarray, threshold: float = 0.5) -> float:
    """TEMPy's rule: the last shell where the FSC drops from above to below ``threshold``
    (strictly), linearly interpolated in Angstrom; 0.0 when it never does."""
    out = 0.0
    prev_r, prev_c = 1001.0, 1.0
    for r, c in zip(res, fsc):
        if c < threshold and prev_c > threshold:
            out = float(r + (threshold - c) * (prev_r - r) / (prev_c - c))
        prev_r, prev_c = r, c
    return out


def loqfit(exp: np.ndarray, origin, voxel, xyz: np.ndarray, weight: np.ndarray, res: TempyResidues,
           resolution: float, conv: TempyConvention, cap: float = 18.0) -> tuple[np.ndarray, list[str]]:
    """LoQFit (A) and clamp note per residue of ``res`` (NaN for residues without CA / C1')."""
    voxel = np.asarray(voxel, float)
    sim = gaussian_model_map(exp.shape, origin, voxel, xyz, weight, LOQFIT_SIGMA_COEFF * resolution)
    if conv.loqfit_raw:
        exp = 2.0 * (exp - exp.min()) / (exp.max() - exp.min()) - 1.0
        sim = 2.0 * (sim - sim.min()) / (sim.max() - sim.min()) - 1.0
    geom = loqfit_box(resolution, voxel, exp.shape, conv.loqfit_lower_edge)
    box = np.array(geom.box)
    half_l = np.where(box % 2 == 1, (box - 1) // 2, box // 2)
    half_r = box - half_l
    shape = np.array(exp.shape)
    w = geom.mask
    sw = w.sum()
    out = np.full(len(res.chain), np.nan)
    notes = [""] * len(res.chain)
    for i, a in enumerate(res.centre):
        if a < 0:
            continue
        c = np.rint((xyz[a] - np.asarray(origin)) / voxel).astype(np.int64)[::-1]
        c = np.where(c - half_l < 0, half_l, c)
        c = np.where(c + half_r >= shape, shape - half_r, c)
        sl = tuple(slice(int(ci - hl), int(ci + hr)) for ci, hl, hr in zip(c, half_l, half_r))
        e, s = exp[sl], sim[sl]
        if not conv.loqfit_raw:
            e = e - (w * e).sum() / sw
            s = s - (w * s).sum() / sw
        r = crossing(_fsc(e * w, s * w, geom), geom.resolution)
        note = NOTE_NONE
        if r < geom.nyquist:
            r, note = geom.nyquist, NOTE_NYQUIST
        if r > cap:
            r, note = cap, NOTE_CAP
        out[i], notes[i] = r, note
    return out, notes
