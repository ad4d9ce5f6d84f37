"""PNG plot of an ensemble run: CCC against ensemble size, and RMSF (CA) against refined B."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402


def ensemble_plot(history: list[dict], single: dict[str, float], kept: int, rows: list[dict],
                  target: str | Path, member_width: str = "resolution") -> None:
    """Left: ensemble-map CCC per size, each member's own CCC, single-model CCCs, the size kept.
    Right: per-residue CA RMSF against the refined B."""
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    size = [h["size"] for h in history]
    ax[0].plot(size, [h["ccc_ensemble"] for h in history], "o-", ms=3, color="k", label="ensemble map")
    ax[0].plot(size, [h["ccc_member"] for h in history], "_", ms=10, color="C0", label="member alone")
    for k, (label, v) in enumerate(single.items()):
        ax[0].axhline(v, ls="--", lw=1, color=f"C{k + 1}", label=label)
    ax[0].axvline(kept, ls=":", color="grey", label=f"kept: {kept}")
    ax[0].set(xlabel="ensemble size", ylabel="CCC with the map",
              title=f"CCC vs ensemble size (member maps: {member_width} width)")
    ax[0].legend(fontsize=7)
    if rows:
        r = np.array([x["rmsf_A"] for x in rows])
        b = np.array([x["b_A2"] for x in rows])
        ax[1].scatter(b, r, s=4)
    ax[1].set(xlabel="refined B of CA (A^2)", ylabel="RMSF of CA (A)", title="RMSF vs B")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
