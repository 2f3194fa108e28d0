"""Parity of an artifact with the Keras student: figures, and a hard failure when they miss a tolerance."""
from __future__ import annotations

import numpy as np

from xtremedistil.export.base import Tolerance
from xtremedistil.errors import XtremeDistilError


class ParityError(XtremeDistilError):
    """An artifact's outputs are too far from the Keras student's: the export fails (exit code 3)."""

    exit_code = 3


def parity_figures(reference: np.ndarray, candidate: np.ndarray, reference_metric: float,
                   candidate_metric: float, positions: np.ndarray | None = None) -> dict:
    """Max |Δlogit|, argmax agreement (over `positions` when given, e.g. first word pieces) and metric delta.

    Metric delta is in points: (candidate - reference) x 100, so a drop is negative.
    """
    if reference.shape != candidate.shape:
        raise ParityError(f"artifact logits have shape {candidate.shape}, Keras student's {reference.shape}")
    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)
    if positions is not None:
        agree = agree[positions]
    return {
        "max_abs_logit_delta": float(delta.max()) if delta.size else 0.0,
        "mean_abs_logit_delta": float(delta.mean()) if delta.size else 0.0,
        "argmax_agreement": float(agree.mean()) if agree.size else 1.0,
        "reference_metric": float(reference_metric),
        "metric": float(candidate_metric),
        "metric_delta_points": round((candidate_metric - reference_metric) * 100, 6),
        "compared": int(len(reference)),
        "finite": bool(np.isfinite(candidate).all()),
    }


def parity_failures(figures: dict, tolerance: Tolerance) -> list[str]:
    """The tolerances `figures` miss, as readable phrases; empty when the artifact passes."""
    failures = []
    if not figures["finite"]:
        failures.append("logits contain NaN or Inf")
    if tolerance.max_logit_delta is not None and figures["max_abs_logit_delta"] > tolerance.max_logit_delta:
        failures.append(f"max |Δlogit| {figures['max_abs_logit_delta']:.3g} > {tolerance.max_logit_delta:g}")
    if tolerance.min_argmax_agreement is not None and figures["argmax_agreement"] < tolerance.min_argmax_agreement:
        failures.append(f"argmax agreement {figures['argmax_agreement']:.4%} < {tolerance.min_argmax_agreement:.2%}")
    if tolerance.max_metric_drop is not None and -figures["metric_delta_points"] > tolerance.max_metric_drop:
        failures.append(f"dev metric dropped {-figures['metric_delta_points']:.2f} points "
                        f"(> {tolerance.max_metric_drop:g} allowed)")
    return failures
