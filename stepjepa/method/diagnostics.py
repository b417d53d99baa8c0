"""Is JEPA doing anything, or have the views collapsed?

A JEPA loss can be minimised trivially: map every view 1 and view 2 to the same vector.
Then the loss is ~0 and says nothing. Two symptoms show it, measured on held-out pairs
(`stepjepa.evaluation.heldout.view_embeddings`) and on the run's logged metrics:

- the views of different questions stop differing: their spread (the variance across
  questions relative to their mean squared norm) falls towards 0. The effective rank
  (RankMe) is reported too, but it does not decide: a language model's last hidden states
  share one large direction, so their uncentred RankMe sits near 1 even in healthy
  training (measured on the tiny model after 12 steps of Step-JEPA: 1.55, spread 4.4e-4;
  JEPA-only training: 1.16, spread 4.5e-5; untrained: 11.3, spread 0.12);
- the JEPA loss is ~0 within the first logged steps while the LM loss is still high: the
  views agree before the model has learned anything to predict Step 2 with.
"""

from __future__ import annotations

import math

import numpy as np

# torch is imported by the functions that measure tensors: a sweep process judges its runs'
# logged numbers with the warnings below, and importing torch only for them cost it ~1.5 CPU-s.

RANKME_EPS = 1e-7
"""Added to the normalised singular values before the entropy, as in Garrido et al. (2023)."""

COLLAPSED_SPREAD = 1e-4
"""A relative spread under 1e-4: the views of different questions are the same vector to
within 1% of its norm. On the tests' tiny Llama (module doc) ordinary Step-JEPA training
sits 4x above it and JEPA-only training 2x below; the effective rank does not separate
them (uncentred last-layer states share one dominant direction: untrained 11-15, SFT
2.3-2.8, JEPA with lambda 0.1-2 1.7-2.3 at mean cos 0.995, JEPA only 1.1-1.6). A sweep
also compares each config's spread with SFT's (`stepjepa.sweep.report`), which does not depend
on the model's scale."""

MIN_PAIRS_FOR_RANK = 4
"""With fewer pairs the rank is bounded by n itself, so a low value is no evidence."""

JEPA_LOSS_ZERO = 1e-3
"""cosine: 1 - cos < 1e-3 is an angle under 2.6 degrees between views of different states;
l2/mse on normalised hidden states (entries of order 1) are as small only for equal views."""

EARLY_LOGS = 3
"""The history rule looks at the first max(EARLY_LOGS, a quarter of the logs) entries."""

LM_STILL_HIGH = 0.5
"""The LM loss counts as still high while above this fraction of its first logged value."""


def effective_rank(embeddings) -> float:
    """RankMe (Garrido et al., 2023) of an `(n, d)` matrix: exp of the entropy of its
    singular values normalised to sum 1 (plus RANKME_EPS). 1.0 for rank-one input,
    min(n, d) for isotropic input, 0.0 for an all-zero or empty matrix."""
    import torch

    matrix = np.asarray(torch.as_tensor(embeddings).detach().cpu().double())
    if matrix.ndim != 2:
        raise ValueError(f"effective_rank needs an (n, d) matrix; got shape {matrix.shape}")
    singular = np.linalg.svd(matrix, compute_uv=False) if matrix.size else np.zeros(0)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total + RANKME_EPS
    return float(np.exp(-(p * np.log(p)).sum()))


def spread(embeddings) -> float:
    """Variance across rows relative to the rows' mean squared norm, in [0, 1]: 0 when every
    row is the same vector, ~1 for isotropic rows around the origin."""
    import torch

    x = torch.as_tensor(embeddings).double()
    power = x.pow(2).sum(dim=1).mean()
    return float((x - x.mean(dim=0)).pow(2).sum(dim=1).mean() / power) if power > 0 else 0.0


def view_diagnostics(view1, view2, *, loss_kind: str = "cosine", temperature: float = 0.07) -> dict[str, float]:
    """Mean cosine of paired `(V, H)` views, the effective rank and spread of each, the JEPA
    loss of these pairs (the floor a run reaches on held-out data) and n_pairs. With no pair
    every value but n_pairs = 0 is nan."""
    import torch

    from stepjepa.method.losses import jepa_loss, mean_cosine

    a, b = torch.as_tensor(view1).float(), torch.as_tensor(view2).float()
    if len(a) == 0:
        return {
            "mean_cos": math.nan,
            "rank_view1": math.nan,
            "rank_view2": math.nan,
            "spread_view1": math.nan,
            "spread_view2": math.nan,
            "jepa_loss": math.nan,
            "n_pairs": 0,
        }
    return {
        "mean_cos": float(mean_cosine(a, b)),
        "rank_view1": effective_rank(a),
        "rank_view2": effective_rank(b),
        "spread_view1": spread(a),
        "spread_view2": spread(b),
        "jepa_loss": float(jepa_loss(a, b, loss_kind, temperature)),
        "n_pairs": len(a),
    }


def _rank_warnings(diag: dict) -> list[str]:
    if diag.get("n_pairs", 0) < MIN_PAIRS_FOR_RANK:
        return []
    return [
        f"JEPA views may have collapsed: {view} hardly varies across questions (spread {diag[f'spread_{key}']:.1e} "
        f"< {COLLAPSED_SPREAD:g}; effective rank of {view} {diag[f'rank_{key}']:.2f}) over {diag['n_pairs']} "
        "held-out pairs"
        for key, view in (("view1", "view 1"), ("view2", "view 2"))
        if not math.isnan(diag.get(f"spread_{key}", math.nan)) and diag[f"spread_{key}"] < COLLAPSED_SPREAD
    ]


def _history_warnings(history: list[dict]) -> list[str]:
    logs = sorted((m for m in history if "lm_loss" in m), key=lambda m: m["step"])
    if not logs:
        return []
    first_lm = logs[0]["lm_loss"]
    for m in logs[: max(EARLY_LOGS, math.ceil(len(logs) / 4))]:
        if "jepa_loss" in m and m["jepa_loss"] < JEPA_LOSS_ZERO and m["lm_loss"] > LM_STILL_HIGH * first_lm:
            return [
                f"JEPA views may have collapsed: at step {m['step']} jepa_loss is {m['jepa_loss']:.2g} "
                f"(< {JEPA_LOSS_ZERO}) while lm_loss {m['lm_loss']:.3g} is still above {LM_STILL_HIGH:.0%} "
                f"of its first value {first_lm:.3g}"
            ]
    return []


def collapse_warnings(diag: dict | None, history: list[dict], *, loss_kind: str = "cosine") -> list[str]:
    """Human-readable collapse warnings; an empty list means healthy.

    `diag` is `view_diagnostics`' output (or None); `history` the run's logged training
    metrics (dicts with step, lm_loss and, on steps that applied JEPA, jepa_loss). Rules:
    a view spread under COLLAPSED_SPREAD (with at least MIN_PAIRS_FOR_RANK pairs), and
    a jepa_loss under JEPA_LOSS_ZERO in the first logged steps while lm_loss is above
    LM_STILL_HIGH of its first value. InfoNCE is exempt from the loss rule: its loss is
    ~0 when views are told apart, and collapse shows as log(batch), not 0.
    """
    warnings = _rank_warnings(diag) if diag else []
    if loss_kind != "infonce":
        warnings += _history_warnings(history)
    return warnings


RELATIVE_SPREAD = 0.1
"""A config whose view spread is under a tenth of the SFT baseline's (same model, data and
steps) has lost most of the variation across questions that plain fine-tuning keeps."""


def relative_collapse_warnings(diag: dict | None, baseline: dict | None) -> list[str]:
    """Warnings for views that vary far less across questions than the SFT baseline's."""
    if not diag or not baseline or diag.get("n_pairs", 0) < MIN_PAIRS_FOR_RANK:
        return []
    out = []
    for key, view in (("spread_view1", "view 1"), ("spread_view2", "view 2")):
        mine, base = diag.get(key, math.nan), baseline.get(key, math.nan)
        if not (math.isnan(mine) or math.isnan(base)) and mine < RELATIVE_SPREAD * base:
            out.append(
                f"JEPA views may have collapsed: {view} varies {base / max(mine, 1e-300):.0f}x less across "
                f"questions than under SFT (spread {mine:.1e} vs {base:.1e})"
            )
    return out
