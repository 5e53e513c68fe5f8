"""The training loss: cross-entropy of each position's logits against its next token.

    loss = mean_{t: target_t != IGNORE_INDEX} (lse(z_t) - z_t[target_t])       no weights
    loss = sum_t w_t (lse(z_t) - z_t[target_t])                                weights (B, T)

Targets that are IGNORE_INDEX (padding, the prompt of a question, colour words a
greyscale image cannot show) add nothing. Weights, when given, sum to 1 over the
trained targets (the trainer's `target_weights`: answer words weighted up, or every
sequence given an equal share), so the weighted sum is still a mean per token.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..backend import on_device_of
from ..data import IGNORE_INDEX


def next_token_loss(logits: Tensor, targets, weights=None) -> Tensor:
    """logits (B, T, V), targets (B, T) integer ids or IGNORE_INDEX, weights (B, T) or
    None -> the scalar loss above. Targets and weights may be arrays on any device."""
    ids = targets.data if isinstance(targets, Tensor) else targets
    ids = ids if hasattr(ids, "dtype") else np.asarray(ids)
    if ids.shape != logits.shape[:2]:
        raise ValueError(
            f"targets: expected shape {logits.shape[:2]} (B, T) like the tokens, "
            f"got {tuple(ids.shape)}"
        )
    if weights is not None and weights.shape != ids.shape:
        raise ValueError(
            f"weights: expected shape {tuple(ids.shape)} like the targets, "
            f"got {tuple(weights.shape)}"
        )
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)  # (B*T, V)
    flat_targets = on_device_of(logits, ids.reshape(-1))  # (B*T,)
    if weights is None:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX)
    per_token = F.cross_entropy(flat_logits, flat_targets, IGNORE_INDEX, reduction="none")
    flat_weights = on_device_of(per_token, weights.reshape(-1).astype(per_token.dtype))
    return (per_token * Tensor(flat_weights)).sum()  # (B*T,) weighted, summed
