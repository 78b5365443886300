"""Output-by-output comparison: max abs error, relative L2 error and cosine similarity, with NaN/Inf
reported on their own, against tolerances chosen by dtype (one per output name, "" the default, as
Polygraphy's `CompareFunc.simple`)."""

from __future__ import annotations

import numpy as np

from .tolerances import MODEL_TOLERANCES as TOLERANCES  # noqa: F401  (check, tests)


def metrics(out: np.ndarray, ref: np.ndarray) -> dict:
    """max_abs, rel_l2 = ||out - ref|| / ||ref||, cosine, and nonfinite (NaN/Inf counts in out / ref)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    bad_out, bad_ref = int((~np.isfinite(out)).sum()), int((~np.isfinite(ref)).sum())
    if out.shape != ref.shape:
        return {"max_abs": float("inf"), "rel_l2": float("inf"), "cosine": 0.0, "nonfinite": [bad_out, bad_ref],
                "shape": [list(out.shape), list(ref.shape)]}
    if bad_out or bad_ref:
        return {"max_abs": float("inf"), "rel_l2": float("inf"), "cosine": 0.0, "nonfinite": [bad_out, bad_ref]}
    diff = out - ref
    n_ref, n_out = np.linalg.norm(ref), np.linalg.norm(out)
    rel = float(np.linalg.norm(diff) / n_ref) if n_ref > 0 else (0.0 if n_out == 0 else float("inf"))
    if n_ref == 0 or n_out == 0:
        cos = 1.0 if n_ref == n_out else 0.0
    else:
        cos = float(np.dot(out.ravel(), ref.ravel()) / (n_out * n_ref))
    return {"max_abs": float(np.abs(diff).max()) if diff.size else 0.0, "rel_l2": rel, "cosine": cos,
            "nonfinite": [0, 0]}


def tolerance_for(name: str, tolerances: dict) -> dict:
    """`tolerances` maps output name (or "") to {"rel_l2", "cosine"}."""
    return tolerances.get(name, tolerances[""])


def passes(m: dict, tol: dict) -> bool:
    return m["nonfinite"] == [0, 0] and m["rel_l2"] <= tol["rel_l2"] and m["cosine"] >= tol["cosine"]


def compare_outputs(outputs: dict, reference: dict, tolerances: dict, names=None) -> list[dict]:
    """One row per output name present in both: its metrics, tolerance and verdict."""
    rows = []
    for name in names or [n for n in reference if n in outputs]:
        if name not in outputs:
            rows.append({"output": name, "ok": False, "error": "missing from the runner's outputs"})
            continue
        m = metrics(outputs[name], reference[name])
        tol = tolerance_for(name, tolerances)
        rows.append({"output": name, **m, "tol": tol, "ok": passes(m, tol)})
    return rows
