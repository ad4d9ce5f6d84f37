"""Per-chain PNG plots of SMOCf and LoQFit, several models overlaid (residue number on x)."""

from __future__ import annotations

from pathlib import Path

import gemmi
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402
from ..scores.api import ScoreTable  # noqa: E402


def _polymer(name: str) -> bool:
    info = gemmi.find_tabulated_residue(name)
    return info is not None and (info.is_amino_acid() or info.is_nucleic_acid())


def _with_gaps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert NaN where residue numbers jump, so lines break at gaps in the chain."""
    if len(x) < 2:
        return x.astype(float), y
    cut = np.nonzero(np.diff(x) > 1)[0] + 1
    return np.insert(x.astype(float), cut, np.nan), np.insert(y, cut, np.nan)


def chain_plot(table: ScoreTable, chain: str, target: str | Path) -> bool:
    """SMOCf (top) and LoQFit (bottom, A, lower is better) along ``chain`` for every model.

    Only polymer residues are drawn (ligands are in the tables). Returns False (and writes
    nothing) when the chain has no polymer residue.
    """
    sel = np.array([c == chain and _polymer(n) for c, n in zip(table.chain, table.name)], dtype=bool)
    if not sel.any():
        return False
    x = table.seqnum[sel]
    width = float(np.clip(4 + len(x) / 40, 7, 24))
    fig, ax = plt.subplots(2, 1, figsize=(width, 5.6), sharex=True)
    for j, label in enumerate(table.models):
        ax[0].plot(*_with_gaps(x, table.smoc[sel, j]), "-", lw=1.2, color=f"C{j}", label=label)
        ax[1].plot(*_with_gaps(x, table.loqfit[sel, j]), "-", lw=1.2, color=f"C{j}", label=label)
    ax[0].set(ylabel="SMOCf", title=f"chain {chain}")
    ax[1].set(xlabel="residue number", ylabel="LoQFit (A)")
    ax[1].axhline(table.resolution, color="grey", lw=0.8, ls="--", label=f"map resolution {table.resolution:g} A")
    ax[0].legend(loc="lower left", fontsize=8, frameon=False)
    ax[1].legend(loc="upper left", fontsize=8, frameon=False)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def fsc_plot(curves: dict, resolution: float, target: str | Path) -> None:
    """Map-model FSC against resolution for every model (and its half maps), with the 0.5 and
    0.143 lines; ``curves``: model label -> {curve name -> :class:`reff_dask.scores.fsc.FSCCurve`}."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"map": "-", "half1": "--", "half2": ":", "half1_half2": "-."}
    for j, (label, per) in enumerate(curves.items()):
        for name, c in per.items():
            if name == "half1_half2" and j > 0:
                continue  # the same for every model
            ax.plot(c.freq[1:], c.fsc[1:], styles.get(name, "-"), lw=1.3,
                    color="grey" if name == "half1_half2" else f"C{j}",
                    label="half 1 vs half 2" if name == "half1_half2" else f"{label}: {name} vs model")
    for t in (0.5, 0.143):
        ax.axhline(t, color="black", lw=0.7, ls="--")
    ax.axvline(1.0 / resolution, color="grey", lw=0.8, ls=":", label=f"map resolution {resolution:g} A")
    ax.set(xlabel="spatial frequency (1/A)", ylabel="FSC", ylim=(-0.1, 1.02), title="map-model FSC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
