"""In-batch contrastive cross-entropy, shared by the losses whose negatives are the other samples of the batch.

Such losses declare `batch_coupled` (the inputs whose rows must come from the whole global batch under DDP: the
task all-gathers them first) and, when they accept `rows=`, `local_rows = True`: with train.local_loss each rank
then scores only its own rows against all columns (open_clip's local_loss), and the sum over ranks is the world
size times the full loss, which is what DDP's gradient averaging expects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_ce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: torch.Tensor | float,
    rows: slice | None = None,
    drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over `rows` of CE(scale * q_i . k_j over all j, target j = i).

    `drop` (N x N bool) removes pairs from the negatives; it must be symmetric when used for both directions.
    Only the requested rows of the logits are computed (b x N instead of N x N under local_loss).
    """
    rows = rows if rows is not None else slice(0, queries.shape[0])
    logits = (queries[rows] @ keys.T) * scale
    if drop is not None:
        logits = logits.masked_fill(drop[rows], float("-inf"))
    target = torch.arange(queries.shape[0], device=queries.device)[rows]
    return F.cross_entropy(logits, target)
