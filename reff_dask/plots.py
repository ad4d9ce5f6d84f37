"""PNG plots of job histories (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io.atomic import atomic_path  # noqa: E402


def bfactor_plot(history: list[dict], b_final: np.ndarray, target: str | Path) -> None:
    """CCC and noise term per iteration, and the histogram of refined B (A^2)."""
    it = [h["iteration"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(it, [h["ccc"] for h in history], "o-", ms=3)
    ax[0].set(xlabel="iteration", ylabel="CCC (refined widths)", title="fit")
    ax[1].plot(it, [h["noise"] for h in history], "o-", ms=3, color="C1")
    ax[1].set(xlabel="iteration", ylabel="noise term E (map units)", title="background")
    ax[2].hist(b_final, bins=60, color="C2")
    ax[2].set(xlabel="B (A^2)", ylabel="atoms", title="refined B")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def refine_plot(history: list[dict], b_history: list[dict], target: str | Path,
                ccc_start: float | None = None, ccc_final: float | None = None) -> None:
    """CCC (uniform B from the resolution) per position iteration, after the B stage's CCC;
    the input model's CCC and the final (minimised) model's as reference lines."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    if b_history:
        ax[0].plot([h["iteration"] for h in b_history], [h["ccc"] for h in b_history], "o-", ms=3,
                   color="C2")
    ax[0].set(xlabel="B-stage iteration", ylabel="CCC (refined widths)", title="B-factor stage")
    ax[1].plot([h["iteration"] for h in history], [h["ccc"] for h in history], "o-", ms=3, label="after MD")
    if ccc_start is not None:
        ax[1].axhline(ccc_start, color="0.5", ls=":", label=f"input model {ccc_start:.3f}")
    if ccc_final is not None:
        ax[1].axhline(ccc_final, color="C3", ls="--", label=f"final, minimised {ccc_final:.3f}")
    ax[1].legend(fontsize=8, loc="lower right")
    ax[1].set(xlabel="EM iteration", ylabel="CCC (uniform B from resolution)", title="position refinement")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
