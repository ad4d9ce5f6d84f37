"""Fit scores: global CCC, per-residue SMOCf and LoQFit, computed blockwise over a chunked map."""

from .api import ScoreSettings, ScoreTable, score_models

__all__ = ["ScoreSettings", "ScoreTable", "score_models"]
